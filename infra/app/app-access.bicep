// One declared app's roles (main.bicep's parameter apps; infra/README.md, "Apps"): its principals may enqueue on its
// own queue, use its own payload container and read its own status table, and nothing else. The queue is the
// identity: the relay knows the app from the queue a message came from, so only this app's principals may hold
// Message Sender on it.
//
// The queue (<mailQueueName>-<name>), the host's poison queue for it, the container (mail-payloads-<name>) and the
// status table (mailstatus<name without its hyphens>) are created by main.bicep's storage module. The relay's identity
// needs nothing here: its Storage Queue Data Contributor (queue triggers read and delete, the host moves poison
// messages), Storage Blob Data Owner and Storage Table Data Contributor (status records: write, read, delete) are on
// the account (app/rbac.bicep), which covers every app's queue, poison queue, container and table as it covers the
// outbox and mailstatus (a role on table data may be scoped to the storage account, and then reaches all its tables:
// https://learn.microsoft.com/azure/storage/tables/assign-azure-role-data-access).
//
// Every assignment is named guid(scope, principalId, roleDefinitionId), so a redeploy finds the same assignment
// instead of failing with RoleAssignmentExists, and carries principalType ServicePrincipal (app identities: a
// principal Entra has not replicated yet is otherwise refused, app/rbac.bicep's note).

@description('Name of the relay\'s storage account.')
param storageAccountName string

@minLength(2)
@maxLength(24)
@description('The app\'s name (apps-check.bicep has checked the rest of the rule).')
param appName string

@description('The app\'s queue, <mailQueueName>-<appName>.')
param queueName string

@description('The app\'s payload container, mail-payloads-<appName>.')
param payloadContainerName string

@minLength(3)
@maxLength(63)
@description('The app\'s status table, mailstatus<appName without its hyphens> (shared/apps.py status_table).')
param statusTableName string

@description('Object ids of the service principals or managed identities that enqueue for this app. Empty: the queue and container exist, and nobody may use them yet.')
param principalIds array = []

// Built-in role definitions (the same ids in every tenant).
var storageQueueDataMessageSenderRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a') // Storage Queue Data Message Sender
var storageBlobDataContributorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe') // Storage Blob Data Contributor
var storageTableDataReaderRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '76199698-9eea-4c19-bc75-cec21354c6b6') // Storage Table Data Reader

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource appQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: queueName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource appPayloadContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: payloadContainerName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource appStatusTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' existing = {
  parent: tableService
  name: statusTableName
}

// Storage Queue Data Message Sender, scoped to this app's queue: add messages, nothing else (no peek, no read, no
// delete). Not the outbox, not another app's queue, not the relay's retry or poison queues.
resource appMessageSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  name: guid(appQueue.id, principalId, storageQueueDataMessageSenderRoleId)
  scope: appQueue
  properties: {
    roleDefinitionId: storageQueueDataMessageSenderRoleId
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: may enqueue send requests for app ${appName}.'
  }
}]

// Storage Blob Data Contributor, scoped to this app's payload container: upload, read and delete its own large
// attachments and bodies (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage#storage-blob-data-contributor).
// Another app's container is out of its reach, unlike the shared mail-payloads (app/rbac.bicep's note on what
// Contributor there allows).
resource appPayloadContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  name: guid(appPayloadContainer.id, principalId, storageBlobDataContributorRoleId)
  scope: appPayloadContainer
  properties: {
    roleDefinitionId: storageBlobDataContributorRoleId
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: may upload large attachments and bodies for app ${appName}.'
  }
}]

// Storage Table Data Reader, scoped to this app's status table: read its own status records (`mailrelay status --app`,
// the client library's status()), no write, no delete
// (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage#storage-table-data-reader).
// Not mailstatus (the outbox's records and every sender mailbox's pace row), not another app's table.
resource appStatusReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in principalIds: {
  name: guid(appStatusTable.id, principalId, storageTableDataReaderRoleId)
  scope: appStatusTable
  properties: {
    roleDefinitionId: storageTableDataReaderRoleId
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Graph Mail Relay: may read the status records of app ${appName}.'
  }
}]
