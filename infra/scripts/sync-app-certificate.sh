#!/usr/bin/env bash
# Registers the CURRENT version of the relay's Key Vault certificate on the app registration, so Entra ID accepts
# the client assertions the relay signs with it. Idempotent: when the app already holds a key credential with the
# certificate's thumbprint, nothing changes.
#
# Why it exists: Key Vault renews the certificate on its own (the policy's AutoRenew lifetime action, set by
# app/certificate.bicep) but tells Entra nothing. The renewed version has a new key pair; the relay reads the
# newest version from Key Vault, and Entra refuses its assertions (AADSTS700027: the key is not registered on the
# app) until the app registration holds the new public key. Run this:
#   - right after each renewal: Key Vault publishes Microsoft.KeyVault.CertificateNewVersionCreated (and, before
#     it, CertificateNearExpiry) to Event Grid (learn.microsoft.com/azure/key-vault/general/event-grid-overview);
#     route them to whatever runs this script (an Automation runbook, a pipeline, a person);
#   - when the relay's expiry check warns that Key Vault's certificate is not among the app's key credentials
#     (EXPIRY_COMPARE_ENTRA), or `mailrelay doctor` shows AADSTS700027;
#   - after any `azd provision` in certificate mode without deployEntraApp (with it, the Bicep sets the key).
#
# What it needs: az login as an OWNER of the app registration, or an Application Administrator / Cloud
# Application Administrator (they may update any application's credentials); and read access to the
# certificate (Key Vault Certificates Officer, which main.bicep gives AZURE_PRINCIPAL_ID in certificate mode, or
# Key Vault Reader). It never reads the private key.
#
# How: `az ad app credential reset --id <app> --keyvault <vault> --cert <name> --append` reads the certificate's
# public part (cer) and dates from Key Vault and appends it to keyCredentials, keeping the others
# (Azure/azure-cli, src/azure-cli/azure/cli/command_modules/role/custom.py, _process_certificate case 6 "Use
# existing cert from KeyVault", and _validate_app_dates, which ends the key credential no later than the
# certificate). The old key stays registered until it expires; remove it once the relay runs on the new one:
#   az ad app credential delete --id <app> --key-id <keyId> --cert
#
# Usage: sync-app-certificate.sh --vault-name NAME --certificate-name NAME --app-id CLIENT_ID [--dry-run]
# Exit: 0 registered (already or now); 1 error; 2 usage; 3 --dry-run and the key is missing.
set -euo pipefail

usage() {
  sed -n 's/^# Usage: //p' "$0" >&2
  exit 2
}

vault="" name="" app_id="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vault-name) vault="${2:-}"; shift 2 ;;
    --certificate-name) name="${2:-}"; shift 2 ;;
    --app-id) app_id="${2:-}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[[ -n "$vault" && -n "$name" && -n "$app_id" ]] || usage
if ! [[ "$app_id" =~ ^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$ ]]; then
  echo "--app-id must be the application (client) id, a GUID: $app_id" >&2
  exit 2
fi

# The current version: what the relay reads (GET /secrets/{name} without a version is the newest).
cert_info="$(az keyvault certificate show --vault-name "$vault" --name "$name" \
  --query '[x509ThumbprintHex, attributes.expires]' -o tsv)"
read -r thumbprint expires <<<"$(tr '\n\t' '  ' <<<"$cert_info")"
if [[ -z "${thumbprint:-}" ]]; then
  echo "Key Vault '$vault' returned no certificate '$name'." >&2
  exit 1
fi
thumbprint="${thumbprint^^}"

# keyCredentials' customKeyIdentifier defaults to the certificate's SHA-1 thumbprint (Graph, keyCredential
# resource type: "When not provided in the payload, defaults to the thumbprint of the certificate"). It is an
# Edm.Binary, so the JSON carries it base64-encoded; tools differ in whether they show those bytes or a hex
# string, so all three spellings count as a match.
thumbprint_b64="$(printf '%b' "$(sed 's/../\\x&/g' <<<"$thumbprint")" | base64 | tr -d '\n')"
thumbprint_text_b64="$(printf '%s' "$thumbprint" | base64 | tr -d '\n')"

registered="$(az ad app credential list --id "$app_id" --cert --query '[].customKeyIdentifier' -o tsv)"
while IFS= read -r identifier; do
  [[ -z "$identifier" ]] && continue
  if [[ "${identifier^^}" == "$thumbprint" || "$identifier" == "$thumbprint_b64" || "$identifier" == "$thumbprint_text_b64" ]]; then
    echo "App $app_id already holds certificate '$name' (thumbprint $thumbprint, expires $expires): nothing to do."
    exit 0
  fi
done <<<"$registered"

if [[ "$dry_run" -eq 1 ]]; then
  echo "App $app_id does NOT hold certificate '$name' (thumbprint $thumbprint, expires $expires): would append it."
  exit 3
fi

echo "Appending certificate '$name' (thumbprint $thumbprint, expires $expires) to app $app_id's key credentials."
az ad app credential reset --id "$app_id" --keyvault "$vault" --cert "$name" --append \
  --end-date "$expires" --display-name "graph-mail-relay $thumbprint" -o none
echo "Done. Entra ID accepts the new key within minutes; the relay picks it up on its next token."
