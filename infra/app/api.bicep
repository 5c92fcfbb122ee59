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
@maxValue(1000)
@description('Flex Consumption\'s cap on on-demand instances, per function (main.bicep\'s maximumInstanceCount explains the value).')
param maximumInstanceCount int = 40

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
//
// The relay's telemetry as data (shared/telemetry.py; the alerts and the workbook in monitoring.bicep query its
// dimensions). With host.json "telemetryMode": "OpenTelemetry" ("Use OpenTelemetry with Azure Functions",
// https://learn.microsoft.com/azure/azure-functions/opentelemetry-howto), PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY
// makes the Python worker call the Azure Monitor distro's configure_azure_monitor() itself at start-up, with
// logger_name from PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME (azure-functions-python-worker, otel.py
// initialize_azure_monitor, and the worker's utils/constants.py for both names), and tell the host it exports its
// own telemetry (capability WorkerOpenTelemetryEnabled) so the host stops forwarding the log text a second time.
// Without the setting only the message text arrives and customDimensions stays empty. The logger name keeps the
// export to the relay's own "mailrelay" logger: the default (the root logger) would also export the Azure SDKs'
// HTTP logging and the exporter's own records, whose export logs again.
// Entra-only ingestion keeps working: the worker passes no credential, and the exporter then builds one from
// APPLICATIONINSIGHTS_AUTHENTICATION_STRING itself ("Authorization=AAD;ClientId=<id>" becomes
// ManagedIdentityCredential(client_id=<id>): azure-monitor-opentelemetry-exporter, export/_base.py
// _get_authentication_credential, since 1.0.0b36, "Enabled Entra ID Credential configuration via env var"; the
// distro 1.8.11 that requirements.txt resolves to today pins the exporter ~=1.0.0b58); the host in OpenTelemetry
// mode reads it too (azure-functions-host, Diagnostics/OpenTelemetry/OpenTelemetryConfigurationExtensions.cs,
// GetTokenCredential). Microsoft documents the setting's value for Functions in "Microsoft Entra authentication for
// Application Insights" (https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication, "Environment
// variable configuration"); that page's Python tab shows only configure_azure_monitor(credential=...), which the
// worker does not pass, so the exporter's source above is what shows the Python side honours the setting.
var monitoringSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  PYTHON_APPLICATIONINSIGHTS_LOGGER_NAME: 'mailrelay'
}

var identitySettings = {
  AZURE_CLIENT_ID: identityClientId
}

// The Python worker's thread pool. The worker runs every synchronous function of a worker process in ONE
// ThreadPoolExecutor whose max_workers is PYTHON_THREADPOOL_THREAD_COUNT; unset, on Python 3.9 and later it
// passes None, so Python's default applies: min(32, os.cpu_count() + 4), about 5 threads on a 1-vCPU
// instance (Azure/azure-functions-python-worker, azure_functions_worker/dispatcher.py,
// _get_sync_tp_max_workers and _create_sync_call_tp; Microsoft's "Improve throughput performance of Python
// apps in Azure Functions", learn.microsoft.com/azure/azure-functions/python-scale-performance-reference,
// "Set up max workers within a language worker process"). The host hands a queue function up to
// batchSize + newBatchThreshold messages at once (host.json: 8 + 4 = 12), and the relay has two queue
// functions sharing that pool (send_mail on mail-outbox, retry_mail on mail-outbox-retry): 2 x 12 = 24
// threads, so neither function's messages wait on threads the other holds where one instance runs both (the
// local host, and any plan without Flex Consumption's per-function scaling). On Flex Consumption each queue
// function scales on its own instances and needs 12; the pool starts threads only as work arrives, so the
// unused 12 cost nothing. The app settings reference gives 32 as the setting's maximum
// (learn.microsoft.com/azure/azure-functions/functions-app-settings#python_threadpool_thread_count);
// Flex Consumption's list of deprecated settings names FUNCTIONS_WORKER_PROCESS_COUNT ("Setting not valid")
// but not this one (functions-app-settings#flex-consumption-plan-deprecations), so one worker process per
// instance and this pool are what Flex runs. tests/infra/test_wiring.py recomputes 24 from host.json and
// function_app.py.
var workerSettings = {
  PYTHON_THREADPOOL_THREAD_COUNT: '24'
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
        // Per function: up to maximumInstanceCount instances x (8 + 4 = 12) messages each (host.json);
        // Graph is bounded per sender mailbox by the pacing (shared/pacing.py), whatever the count.
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
    appSettingsKeyValuePairs: union(appSettings, storageSettings, monitoringSettings, identitySettings, workerSettings)
  }
}

output name string = site.outputs.name
output resourceId string = site.outputs.resourceId
