// The relay's Function App: Flex Consumption, Linux, Python 3.11, one user-assigned identity.
// Pattern of the Flex quickstarts (Azure-Samples/functions-quickstart-*-azd, infra/app/api.bicep).
//
// Every connection is identity-based: no connection string, account key or instrumentation key
// appears in the settings. AZURE_CLIENT_ID makes DefaultAzureCredential / ManagedIdentityCredential
// in the relay's code pick the same user-assigned identity as the Functions host.

@description('Name of the Function App.')
param name string

param location string = resourceGroup().location
param tags object = {}

@description('azd service name (azure.yaml); azd finds the app by the azd-service-name tag.')
param serviceName string = 'relay'

@description('Resource id of the Flex Consumption (FC1) plan.')
param appServicePlanId string

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Name of the storage account (AzureWebJobsStorage, queues, tables).')
param storageAccountName string

@description('Blob container that holds the Flex deployment package.')
param deploymentContainerName string

@description('Application Insights connection string (endpoint + resource id; with local auth off it grants nothing by itself).')
param applicationInsightsConnectionString string

@minValue(1)
@maxValue(4)
@description('Cap on instances: 4 = Graph\'s 4 concurrent requests per app, one message per instance (host.json).')
param maximumInstanceCount int = 4

param instanceMemoryMB int = 2048

@description('Relay settings (names as in DESIGN.md), merged with the platform settings below.')
param appSettings object = {}

resource stg 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

// The Functions host's own storage connection, identity-based (AzureWebJobsStorage__*): the blob
// service for leases, timers and the deployment package, the queue service for the queue trigger
// and the relay's dead-letter writes, the table service for the relay's tables.
var storageSettings = {
  AzureWebJobsStorage__blobServiceUri: stg.properties.primaryEndpoints.blob
  AzureWebJobsStorage__queueServiceUri: stg.properties.primaryEndpoints.queue
  AzureWebJobsStorage__tableServiceUri: stg.properties.primaryEndpoints.table
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
}

// Application Insights with Entra ID auth: the connection string names the resource, the
// authentication string makes the host and the OpenTelemetry exporter use the identity
// (Monitoring Metrics Publisher on the component; see rbac.bicep).
var monitoringSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

var identitySettings = {
  AZURE_CLIENT_ID: identityClientId
}

module site 'br/public:avm/res/web/site:0.15.1' = {
  name: '${serviceName}-flex-consumption'
  params: {
    kind: 'functionapp,linux'
    name: name
    location: location
    tags: union(tags, { 'azd-service-name': serviceName })
    serverFarmResourceId: appServicePlanId
    managedIdentities: {
      systemAssigned: false
      userAssignedResourceIds: [
        identityId
      ]
    }
    // Key Vault references in app settings (if an admin adds one) resolve with the same identity.
    keyVaultAccessIdentityResourceId: identityId
    httpsOnly: true
    clientAffinityEnabled: false
    // azd deploys with an Entra token (Kudu /api/publish), so the SCM publishing password stays
    // off. (Flex Consumption has no FTP endpoint at all.)
    basicPublishingCredentialsPolicies: [
      {
        name: 'scm'
        allow: false
      }
    ]
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${stg.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        // Graph: at most 4 concurrent requests per app. One message per instance (host.json:
        // batchSize 1, newBatchThreshold 0) times at most 4 instances = at most 4 sends in flight.
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      alwaysOn: false
      minTlsVersion: '1.2'
    }
    appSettingsKeyValuePairs: union(appSettings, storageSettings, monitoringSettings, identitySettings)
  }
}

output name string = site.outputs.name
output resourceId string = site.outputs.resourceId
