// The Graph client secret in Key Vault, always with an expiry (exp). Deployed only when main.bicep
// gets graphClientSecret; the usual path is `az keyvault secret set ... --expires` (README step 5).
//
// The relay's timer reads exp and warns before it passes; a secret without exp would never warn,
// so expiresOn is required here (an empty or short value fails validation before anything is written).

@description('Name of the Key Vault.')
param keyVaultName string

@description('Name of the secret (GRAPH_CLIENT_SECRET_NAME).')
param secretName string

@secure()
@description('The client secret VALUE from Entra ID (not the secret id).')
param secretValue string

@minLength(20)
@description('Expiry of the client secret in Entra ID, ISO 8601 UTC, e.g. 2027-05-01T00:00:00Z. Required with the secret.')
param expiresOn string

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource graphClientSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: secretName
  properties: {
    value: secretValue
    contentType: 'Entra ID client secret (Graph Mail Relay)'
    attributes: {
      enabled: true
      exp: dateTimeToEpoch(expiresOn)
    }
  }
}

output name string = graphClientSecret.name
output expiresOn string = expiresOn
