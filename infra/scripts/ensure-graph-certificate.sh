#!/usr/bin/env bash
# Makes sure the Key Vault certificate the relay signs in to Entra ID with exists, under the policy main.bicep
# gives it (AutoRenew before expiry), and prints its public part. Idempotent: an existing certificate is kept
# (never replaced: its private key may be in use); only its policy is set again.
#
# Run by app/certificate.bicep as a deployment script (kind AzureCLI: the az CLI container, where
# AZ_SCRIPTS_OUTPUT_PATH names the file whose JSON becomes the resource's outputs; Microsoft's
# "Use deployment scripts in Bicep", learn.microsoft.com/azure/azure-resource-manager/bicep/deployment-script-bicep),
# because ARM cannot create a Key Vault certificate: certificates are data-plane objects, with no
# Microsoft.KeyVault/vaults/certificates resource type. Microsoft's own Graph Bicep quickstart does the same
# (microsoftgraph/msgraph-bicep-types, quickstart-templates/create-client-app-sp-with-kv-cert/main.bicep:
# "These Key Vault operations are not currently supported in Bicep, so the template file makes use of a
# deployment script"). An admin may run it by hand too (az login, Key Vault Certificates Officer on the vault).
#
# Environment (all required):
#   VAULT_NAME           the Key Vault's name
#   CERTIFICATE_NAME     the certificate's name (GRAPH_CERTIFICATE_NAME)
#   CERTIFICATE_POLICY   the policy, as JSON (az keyvault certificate get-default-policy's shape)
# Output (stdout, and AZ_SCRIPTS_OUTPUT_PATH when set): {"publicKey": base64 DER of the current version (the
# Graph keyCredential's key), "thumbprint": SHA-1 hex, "notBefore", "expires", "version"}. Never the private key:
# the identity running it holds Key Vault Certificates Officer, which Microsoft describes as every action on
# certificates "excluding reading the secret and key portions" (built-in roles, Key Vault Certificates Officer).
set -euo pipefail

: "${VAULT_NAME:?VAULT_NAME is required}"
: "${CERTIFICATE_NAME:?CERTIFICATE_NAME is required}"
: "${CERTIFICATE_POLICY:?CERTIFICATE_POLICY is required}"

policy_file="$(mktemp)"
trap 'rm -f "$policy_file"' EXIT
printf '%s' "$CERTIFICATE_POLICY" >"$policy_file"

# A role assignment made in the same deployment can take minutes to reach Key Vault ("Troubleshoot Azure RBAC":
# changes can take up to 10 minutes to take effect); until then Key Vault answers 403 Forbidden. Retry that, and
# only that, for up to ~10 minutes.
last_output=""

with_rbac_retry() {
  # Runs "$@"; its combined output is left in last_output. Returns the command's status.
  local attempt status=1
  for attempt in $(seq 1 40); do
    last_output="$("$@" 2>&1)" && return 0
    status=$?
    if grep -qiE 'Forbidden|not authorized' <<<"$last_output"; then
      echo "Key Vault refused (role not effective yet?), retrying in 15 s ($attempt/40)" >&2
      sleep 15
      continue
    fi
    return "$status"
  done
  return "$status"
}

exists() {
  # 0: the certificate exists; 1: Key Vault says it does not (CertificateNotFound); anything else fails the script,
  # so an outage is never mistaken for "missing" and answered with a second certificate.
  if with_rbac_retry az keyvault certificate show --vault-name "$VAULT_NAME" --name "$CERTIFICATE_NAME" --query id -o tsv; then
    return 0
  fi
  if grep -qiE 'NotFound|was not found' <<<"$last_output"; then
    return 1
  fi
  printf '%s\n' "$last_output" >&2
  exit 1
}

if exists; then
  echo "Certificate '$CERTIFICATE_NAME' exists in '$VAULT_NAME': kept; setting its policy." >&2
  # Policy only (lifetime action, validity, subject of the NEXT version): the current version is untouched.
  with_rbac_retry az keyvault certificate set-attributes --vault-name "$VAULT_NAME" --name "$CERTIFICATE_NAME" \
    --policy "@$policy_file" -o none || { printf '%s\n' "$last_output" >&2; exit 1; }
else
  echo "Creating certificate '$CERTIFICATE_NAME' in '$VAULT_NAME' (self-signed, policy from main.bicep)." >&2
  with_rbac_retry az keyvault certificate create --vault-name "$VAULT_NAME" --name "$CERTIFICATE_NAME" \
    --policy "@$policy_file" -o none || { printf '%s\n' "$last_output" >&2; exit 1; }
fi

# A self-signed certificate completes within seconds; wait for the operation in case create returned early.
for _ in $(seq 1 60); do
  status="$(az keyvault certificate pending show --vault-name "$VAULT_NAME" --name "$CERTIFICATE_NAME" \
    --query status -o tsv 2>/dev/null || echo completed)"
  [[ "$status" == "completed" ]] && break
  if [[ "$status" == "failed" || "$status" == "cancelled" ]]; then
    echo "Key Vault could not create '$CERTIFICATE_NAME': operation $status" >&2
    exit 1
  fi
  sleep 5
done

result="$(az keyvault certificate show --vault-name "$VAULT_NAME" --name "$CERTIFICATE_NAME" \
  --query '{publicKey: cer, thumbprint: x509ThumbprintHex, notBefore: attributes.notBefore, expires: attributes.expires, version: id}' \
  -o json)"
printf '%s\n' "$result"
if [[ -n "${AZ_SCRIPTS_OUTPUT_PATH:-}" ]]; then
  printf '%s' "$result" >"$AZ_SCRIPTS_OUTPUT_PATH"
fi
