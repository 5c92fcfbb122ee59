// One declared app's roles (main.bicep's parameter apps; infra/README.md, "Apps"): its principals may enqueue on its
// own queue and use its own payload container, and nothing else. The queue is the identity: the relay knows the app
// from the queue a message came from, so only this app's principals may hold Message Sender on it.
//
// The queue (<mailQueueName>-<name>), the host's poison queue for it and the container (mail-payloads-<name>) are
// created by main.bicep's storage module. The relay's identity needs nothing here: its Storage Queue Data Contributor
// (queue triggers read and delete, the host moves poison messages) and Storage Blob Data Owner are on the account
// (app/rbac.bicep), which covers every app's queue, poison queue and container as it covers the outbox.
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

@description('Object ids of the service principals or managed identities that enqueue for this app. Empty: the queue and container exist, and nobody may use them yet.')
param principalIds array = []

// Built-in role definitions (the same ids in every tenant).
var storageQueueDataMessageSenderRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a') // Storage Queue Data Message Sender
var storageBlobDataContributorRoleId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'ba92f5b4-2d11-453d-a403-e96b0029c9fe') // Storage Blob Data Contributor

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
