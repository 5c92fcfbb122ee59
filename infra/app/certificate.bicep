// Certificate mode (GRAPH_CREDENTIAL=certificate): the Key Vault certificate the relay signs its client assertions
// with, under a policy that renews it automatically. Deployed only in that mode (main.bicep).
//
// ARM cannot create a Key Vault certificate: certificates are data-plane objects (there is no
// Microsoft.KeyVault/vaults/certificates resource type), so a deployment script creates it, as Microsoft's Graph
// Bicep quickstart does (microsoftgraph/msgraph-bicep-types, quickstart-templates/create-client-app-sp-with-kv-cert:
// "These Key Vault operations are not currently supported in Bicep, so the template file makes use of a deployment
// script"). The script is infra/scripts/ensure-graph-certificate.sh: it creates the certificate when missing, keeps
// it (and its private key) when present, sets the policy below either way, and outputs the current version's public
// part, which app/entra-app.bicep registers on the app (with deployEntraApp).
//
// The script runs as its own user-assigned identity, never the relay's, holding Key Vault Certificates Officer on
// the vault: "Perform any action on the certificates of a key vault, excluding reading the secret and key portions"
// (learn.microsoft.com/azure/role-based-access-control/built-in-roles/security#key-vault-certificates-officer).
// So the script can create and renew, and cannot read the private key; the relay can read it (Key Vault Secrets
// User: "Read secret contents including secret portion of a certificate with private key", same page), and cannot
// create or renew.
//
// Renewal tells Entra nothing: see infra/scripts/sync-app-certificate.sh and infra/README.md "Certificate".

@description('Region of the deployment script and its identity.')
param location string

param tags object = {}

@description('Name of the Key Vault (RBAC authorisation).')
param keyVaultName string

@minLength(1)
@maxLength(127)
@description('Name of the Key Vault certificate (GRAPH_CERTIFICATE_NAME); its secret of the same name holds the key.')
param certificateName string

@description('Subject of the self-signed certificate, e.g. CN=graph-mail-relay.')
param subject string

@minValue(1)
@maxValue(24)
@description('Validity of each version, in months.')
param validityInMonths int = 12

@minValue(7)
@maxValue(180)
@description('Days before expiry at which Key Vault renews (AutoRenew).')
param renewDaysBeforeExpiry int = 60

@description('Name of the deployment script\'s identity.')
param scriptIdentityName string

// utcNow() is allowed only as a parameter default. A new value on every deployment makes the script run on every
// `azd provision` ("forceUpdateTag: Changing this value between template deployments forces the deployment script
// to re-execute", deployment-script-bicep): its outputs must be the CURRENT version, or the Bicep would register an
// older public key on the app than the one Key Vault now serves.
@description('Leave empty: the deployment time, so the script runs on every provision.')
param runTag string = utcNow()

// Key Vault Certificates Officer (same id in every tenant).
var certificatesOfficerRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'a4417e6f-fecd-4de8-b567-7b0420556985')

// The certificate policy, in the shape `az keyvault certificate create --policy` takes (az keyvault certificate
// get-default-policy; Key Vault REST "Create Certificate", CertificatePolicy). Why each value:
// - issuer Self: Entra ID accepts a self-signed certificate as an app credential; no CA, no issuer cost.
// - exportable true: otherwise the secret of the same name holds no private key and the relay cannot sign
//   ("About Azure Key Vault certificates", Exportable or Non-exportable key).
// - reuseKey false: each renewal makes a new key pair, so a leaked key dies with its version.
// - contentType application/x-pem-file: the secret holds the key and certificate in PEM, one of the two formats the
//   relay reads (the shared contract: PEM or PKCS#12).
// - AutoRenew at renewDaysBeforeExpiry (default 60): before the relay's first expiry warning (EXPIRY_WARN_DAYS,
//   30 by default), so a warning means renewal or the app registration's update did not happen.
var certificatePolicy = {
  issuerParameters: {
    name: 'Self'
  }
  keyProperties: {
    exportable: true
    keyType: 'RSA'
    keySize: 2048
    reuseKey: false
  }
  secretProperties: {
    contentType: 'application/x-pem-file'
  }
  x509CertificateProperties: {
    subject: subject
    validityInMonths: validityInMonths
    keyUsage: [
      'digitalSignature'
    ]
  }
  lifetimeActions: [
    {
      action: {
        actionType: 'AutoRenew'
      }
      trigger: {
        daysBeforeExpiry: renewDaysBeforeExpiry
      }
    }
  ]
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource scriptIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: scriptIdentityName
  location: location
  tags: tags
}

// Key Vault Certificates Officer for the script's identity: create the certificate, set its policy, read its public
// part; not its private key (see the top of this file).
resource scriptCertificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, scriptIdentity.id, certificatesOfficerRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: certificatesOfficerRoleId
    principalId: scriptIdentity.properties.principalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: the deployment script creates the Graph certificate and sets its renewal policy.'
  }
}

// What it costs: each run starts an Azure Container Instance with the az CLI image and a storage account for the
// script's files, both billed while they exist; cleanupPreference OnSuccess deletes them when the script succeeds (a
// failed run keeps them for its logs until retentionInterval, 1 hour, passes). (Microsoft's "Use deployment scripts in
// Bicep": the service creates the storage account and the container instance in the resource group.) The storage
// account it creates uses an account key; a policy that forbids shared keys in the resource group blocks the
// script (assumed from that page: the script's storage account is reached by key).
resource ensureCertificate 'Microsoft.Resources/deploymentScripts@2023-08-01' = {
  name: 'graph-certificate-${certificateName}'
  location: location
  tags: tags
  kind: 'AzureCLI'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${scriptIdentity.id}': {}
    }
  }
  properties: {
    azCliVersion: '2.63.0'
    forceUpdateTag: runTag
    timeout: 'PT30M'
    retentionInterval: 'PT1H'
    cleanupPreference: 'OnSuccess'
    environmentVariables: [
      {
        name: 'VAULT_NAME'
        value: keyVault.name
      }
      {
        name: 'CERTIFICATE_NAME'
        value: certificateName
      }
      {
        name: 'CERTIFICATE_POLICY'
        value: string(certificatePolicy)
      }
    ]
    scriptContent: loadTextContent('../scripts/ensure-graph-certificate.sh')
  }
  dependsOn: [
    scriptCertificatesOfficer
  ]
}

@description('Base64 DER of the current certificate version (a Graph keyCredential\'s key).')
output publicKey string = ensureCertificate.properties.outputs.publicKey

@description('SHA-1 thumbprint (hex) of the current version.')
output thumbprint string = ensureCertificate.properties.outputs.thumbprint

@description('Start of the current version\'s validity.')
output notBefore string = ensureCertificate.properties.outputs.notBefore

@description('End of the current version\'s validity.')
output expires string = ensureCertificate.properties.outputs.expires

@description('Principal id of the deployment script\'s identity.')
output scriptPrincipalId string = scriptIdentity.properties.principalId
