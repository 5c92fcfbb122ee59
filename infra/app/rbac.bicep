// Role assignments: what each identity needs and nothing more.
//
// Every assignment is named guid(scope, principalId, roleDefinitionId), so a redeploy finds the
// same assignment instead of failing with RoleAssignmentExists.
//
// The relay's identity (user-assigned, shared by the Functions host and the relay's code):
//   Storage Queue Data Contributor  storage account  queue triggers (mail-outbox, mail-outbox-retry); writes the
//                                                    retry queue and dead-letter envelopes to mail-outbox-poison
//   Storage Table Data Contributor  storage account  tables expirywarnings and mailstatus (status records and
//                                                    one pace row per sender mailbox), and each declared app's
//                                                    status table mailstatus<name without its hyphens>
//   Storage Blob Data Owner         storage account  host leases/timers/keys and the Flex deployment container;
//                                                    mail-relay-overflow; mail-payloads: read, check and delete payloads
//   Key Vault Secrets User          key vault        read the Graph client secret and its exp attribute, or (certificate
//                                                    mode) the certificate's key through its secret:
//                                                    "Read secret contents including secret portion of a certificate with private key"
//                                                    (built-in roles, security#key-vault-secrets-user). Key Vault
//                                                    Certificate User would add reading certificate objects, which the
//                                                    relay does not do. Only in secret and certificate modes: in
//                                                    federated and managed-identity modes it reads no vault (relayReadsKeyVault).
//   Monitoring Metrics Publisher    App Insights     send telemetry with Entra auth (local auth is off)
// The storage account is dedicated to the relay, so account scope means exactly its queues,
// tables and containers.
//
// Apps that enqueue mail (senderPrincipalIds):
//   Storage Queue Data Message Sender  the mail-outbox queue only (add messages; no read, no delete).
//   NOT the retry queue: retry state lives where only the relay's identity writes, so an app cannot
//   forge attempt counts or origins (DESIGN.md, "Trust and delivery"; tests/infra checks the scope).
//   Storage Blob Data Contributor      the mail-payloads container only (claim check: upload a large attachment
//                                      or body, name it in the request). No other container: not the relay's
//                                      overflow, not the host's blobs, not the deployment package.
//   What Contributor on the container still allows (no built-in blob role only writes): each app may read,
//   overwrite and delete any payload in mail-payloads, other apps' included, and, through Azure Resource Manager,
//   change or delete the container itself (containers/write and containers/delete are among the role's actions;
//   container soft delete keeps a deleted container 7 days, main.bicep; public access stays impossible, the
//   account forbids it). The reference on the queue carries each payload's size and sha256, which the relay
//   checks before it sends, so a swapped payload is refused rather than sent; that one app can read another
//   app's attachments is not prevented here.
//
// Declared apps (main.bicep's parameter apps) get their roles in app/app-access.bicep, on their own queue
// mail-outbox-<name>, container mail-payloads-<name> and status table mailstatus<name without its hyphens> only; with
// apps declared, main.bicep passes an empty senderPrincipalIds here, so no app holds a role on the outbox. The relay's
// account-scoped roles above cover the apps' queues, poison queues, containers and status tables as they cover the
// outbox and mailstatus (a table role assigned on the account reaches every table in it:
// https://learn.microsoft.com/azure/storage/tables/assign-azure-role-data-access).
//
// Status readers (statusReaderPrincipalIds, optional):
//   Storage Table Data Reader          the mailstatus table only (mailrelay status, the client's status()): the
//                                      outbox's records; the pace rows in it carry counts and times per sender
//                                      mailbox, nothing more. A declared app's records are in its own table, read by
//                                      its principals (app/app-access.bicep), not by these.
//
// principalType: set to 'ServicePrincipal' wherever the principal is an app identity (the relay's managed
// identity, the enqueuing apps' service principals or managed identities). Azure RBAC resolves a role
// assignment's principal in Microsoft Entra ID; a principal just created (the relay's identity, in this same
// deployment) may not have replicated there yet, and the assignment then fails with PrincipalNotFound unless
// principalType is given ("Troubleshoot Azure RBAC", Symptom - Role assignment with new principal fails,
// https://learn.microsoft.com/azure/role-based-access-control/troubleshooting, aka.ms/docs-principaltype).
// Status readers may be apps or operators (users, groups), so theirs stays unset: a wrong type is refused.
//
// Whoever runs azd (optional, principalId):
//   Key Vault Secrets Officer          key vault        store/rotate the Graph client secret (README step 5)
//   Key Vault Certificates Officer     key vault        certificate mode only: read the certificate's public part for
//                                                    infra/scripts/sync-app-certificate.sh, renew it by hand; not its
//                                                    private key ("excluding reading the secret and key portions")

@description('Name of the relay\'s storage account.')
param storageAccountName string

@description('Name of the queue the relay consumes (mail-outbox).')
param mailQueueName string

@description('Name of the Key Vault.')
param keyVaultName string

@description('Name of the Application Insights component.')
param appInsightsName string

@description('Principal id of the relay\'s user-assigned identity.')
param relayPrincipalId string

@description('The relay reads its Graph credential from Key Vault (secret and certificate modes): it gets Key Vault Secrets User.')
param relayReadsKeyVault bool = true

@description('Certificate mode: the deployer gets Key Vault Certificates Officer, to register renewals on the app (infra/scripts/sync-app-certificate.sh).')
param deployerManagesCertificates bool = false

@description('Name of the table of status records (mailstatus).')
param statusTableName string

@description('Name of the blob container where apps put large attachments and bodies for the relay (mail-payloads).')
param payloadContainerName string

@description('Principal (object) ids of the apps allowed to enqueue mail: service principals or managed identities (their assignments carry principalType ServicePrincipal).')
param senderPrincipalIds array = []

@description('Principal ids of the apps or operators allowed to read the status records.')
param statusReaderPrincipalIds array = []

@description('Principal id of whoever runs azd; empty to skip.')
param deployerPrincipalId string = ''

@description('User, ServicePrincipal or Group.')
param deployerPrincipalType string = 'User'

// Built-in role definitions (the same ids in every tenant).
var storageQueueDataContributorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '974c5e8b-45b9-4653-ba55-5f855dd0fb88') // Storage Queue Data Contributor
var storageTableDataContributorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3') // Storage Table Data Contributor
var storageBlobDataOwnerRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b') // Storage Blob Data Owner
var keyVaultSecretsUserRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4633458b-17de-408a-b874-0445c86b69e6') // Key Vault Secrets User
var monitoringMetricsPublisherRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '3913510d-42f4-4e42-8a64-420c390055eb') // Monitoring Metrics Publisher
var storageQueueDataMessageSenderRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a') // Storage Queue Data Message Sender
var storageTableDataReaderRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '76199698-9eea-4c19-bc75-cec21354c6b6') // Storage Table Data Reader
var keyVaultSecretsOfficerRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7') // Key Vault Secrets Officer
var keyVaultCertificatesOfficerRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'a4417e6f-fecd-4de8-b567-7b0420556985') // Key Vault Certificates Officer
// Storage Blob Data Contributor: read, write and delete blob containers and data
// (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage#storage-blob-data-contributor).
var storageBlobDataContributorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe') // Storage Blob Data Contributor

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource mailQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: mailQueueName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource statusTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = {
  parent: tableService
  name: statusTableName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

// The claim-check container (main.bicep creates it in the storage module). A role assignment takes a container
// as its scope like a queue or a table: the same pattern as AVM's storage-account/blob-service/container module
// (Azure/bicep-registry-modules, scope: container, name guid(container.id, principalId, roleDefinitionId)).
resource payloadContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: payloadContainerName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// --- the relay's identity ---------------------------------------------------------------------

// Storage Queue Data Contributor: the queue triggers read and delete mail-outbox and mail-outbox-retry
// messages; the relay writes mail-outbox-retry (its own retries) and mail-outbox-poison, the host the
// poison queues after maxDequeueCount.
resource relayQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, relayPrincipalId, storageQueueDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: storageQueueDataContributorRoleId
    principalId: relayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: consume mail-outbox and its retry queue, write retries and dead letters.'
  }
}

// Storage Table Data Contributor: the relay's tables (expirywarnings; mailstatus, with the pace rows).
resource relayTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, relayPrincipalId, storageTableDataContributorRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: storageTableDataContributorRoleId
    principalId: relayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: expiry warnings sent, status records, send claims and pace rows.'
  }
}

// Storage Blob Data Owner: the Functions host's blobs (leases, timer schedule, keys) and the Flex
// deployment container. Functions documents Owner (not Contributor) for AzureWebJobsStorage. It also covers
// the relay's own containers: mail-relay-overflow, and mail-payloads (read, check and delete the payloads apps
// upload; delete expired ones), so the relay needs no assignment of its own on mail-payloads.
resource relayBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, relayPrincipalId, storageBlobDataOwnerRoleId)
  scope: storageAccount
  properties: {
    roleDefinitionId: storageBlobDataOwnerRoleId
    principalId: relayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: Functions host storage and the Flex deployment package.'
  }
}

// Key Vault Secrets User: read the Graph client secret (value and exp), or the certificate's key and certificate
// through the secret of the same name; no write, no list of keys. Not in federated and managed-identity modes.
resource relaySecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (relayReadsKeyVault) {
  name: guid(keyVault.id, relayPrincipalId, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: keyVaultSecretsUserRoleId
    principalId: relayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: read the Graph client secret or certificate.'
  }
}

// Monitoring Metrics Publisher: telemetry with Entra auth (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
resource relayMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, relayPrincipalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: monitoringMetricsPublisherRoleId
    principalId: relayPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: send telemetry to Application Insights (local auth is off).'
  }
}

// --- apps that enqueue mail --------------------------------------------------------------------

// Storage Queue Data Message Sender, scoped to the mail-outbox queue: add messages, nothing else.
resource senderMessageSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for senderPrincipalId in senderPrincipalIds: {
  name: guid(mailQueue.id, senderPrincipalId, storageQueueDataMessageSenderRoleId)
  scope: mailQueue
  properties: {
    roleDefinitionId: storageQueueDataMessageSenderRoleId
    principalId: senderPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: may enqueue send requests on mail-outbox.'
  }
}]

// Storage Blob Data Contributor, scoped to the mail-payloads container: upload the large attachments and bodies a
// request names (the client library, `mailrelay send --attach`). Nothing wider: no other container, no queue.
resource senderPayloadContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for senderPrincipalId in senderPrincipalIds: {
  name: guid(payloadContainer.id, senderPrincipalId, storageBlobDataContributorRoleId)
  scope: payloadContainer
  properties: {
    roleDefinitionId: storageBlobDataContributorRoleId
    principalId: senderPrincipalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: may upload large attachments and bodies to mail-payloads.'
  }
}]

// --- status readers ----------------------------------------------------------------------------

// Storage Table Data Reader, scoped to the mailstatus table: read status records, nothing else (no
// write, no other table). The records carry no subject, body or recipient address.
resource statusReaderTableDataReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for statusReaderPrincipalId in statusReaderPrincipalIds: {
  name: guid(statusTable.id, statusReaderPrincipalId, storageTableDataReaderRoleId)
  scope: statusTable
  properties: {
    roleDefinitionId: storageTableDataReaderRoleId
    principalId: statusReaderPrincipalId
    description: 'Graph Mail Relay: may read the status records (mailrelay status).'
  }
}]

// --- whoever runs azd --------------------------------------------------------------------------

// Key Vault Secrets Officer: set and rotate the Graph client secret (az keyvault secret set).
resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(keyVault.id, deployerPrincipalId, keyVaultSecretsOfficerRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: keyVaultSecretsOfficerRoleId
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    description: 'Graph Mail Relay: the deployer stores and rotates the Graph client secret.'
  }
}

// Key Vault Certificates Officer (certificate mode): read the certificate's public part and dates for
// infra/scripts/sync-app-certificate.sh, renew by hand; "excluding reading the secret and key portions"
// (learn.microsoft.com/azure/role-based-access-control/built-in-roles/security#key-vault-certificates-officer).
resource deployerCertificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId) && deployerManagesCertificates) {
  name: guid(keyVault.id, deployerPrincipalId, keyVaultCertificatesOfficerRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: keyVaultCertificatesOfficerRoleId
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    description: 'Graph Mail Relay: the deployer registers renewed Graph certificates on the app registration.'
  }
}
