// Azure Monitor log alerts on the relay's structured log events, sent to an action group (e-mail).
//
// The relay logs with `extra={"event": ...}` (shared/handlers.py and the expiry check). Where those
// fields reach Application Insights (OpenTelemetry logging) they are customDimensions.event; with the
// Functions host's default Python log forwarding only the message text arrives. Each query therefore
// matches the field OR the event name, which leads the relay's message text
// ("mail.deadlettered: <code> [queueMessageId=… sender=…]"). infra/README.md lists these names.
//
//   relay event          severity   alert
//   mail.deadlettered    error      (a) a request went to mail-outbox-poison
//   secret.expiry        >= warning (b) the Graph client secret nears its exp date

param location string = resourceGroup().location
param tags object = {}

@description('Prefix of the alert and action group names.')
param namePrefix string

@description('Resource id of the Application Insights component (the alerts query its traces table).')
param appInsightsId string

@description('Recipient of the alert e-mails. Empty: no action group; the alerts still fire in the portal.')
param alertEmail string = ''

var deadLetterQuery = '''
traces
| where tostring(customDimensions.event) == "mail.deadlettered" or message has "mail.deadlettered"
| project timestamp, message, code = tostring(customDimensions.code), sender = tostring(customDimensions.sender), hint = tostring(customDimensions.hint)
'''

// severityLevel: 0 verbose, 1 information, 2 warning, 3 error, 4 critical.
var secretExpiryQuery = '''
traces
| where tostring(customDimensions.event) == "secret.expiry" or message has "secret.expiry"
| where severityLevel >= 2
| project timestamp, message, severityLevel
'''

module actionGroup 'br/public:avm/res/insights/action-group:0.8.0' = if (!empty(alertEmail)) {
  name: 'relay-action-group'
  params: {
    name: 'ag-${namePrefix}'
    groupShortName: 'mailrelay'
    location: 'global'
    tags: tags
    emailReceivers: [
      {
        name: 'relay-admin'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroupIds = empty(alertEmail) ? [] : [actionGroup!.outputs.resourceId]

// (a) A send request was dead-lettered: it will not be retried until someone fixes the cause
// and re-queues it from mail-outbox-poison (DESIGN.md, "Outcomes").
resource deadLetterAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-deadlettered'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Graph Mail Relay: mail dead-lettered'
    description: 'A send request went to the mail-outbox-poison queue (relay event mail.deadlettered). The trace carries code and hint; fix the cause, then re-queue the envelope.'
    severity: 1
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: deadLetterQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

// (b) The expiry check warned: the Graph client secret expires soon (or already has).
resource secretExpiryAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-secret-expiry'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Graph Mail Relay: client secret expires soon'
    description: 'The expiry check logged secret.expiry at warning level or above. Create a new client secret in Entra ID and store it with az keyvault secret set --expires (infra/README.md, step 5).'
    severity: 2
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT1H'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: secretExpiryQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actionGroupIds
    }
  }
}

output deadLetterAlertId string = deadLetterAlert.id
output secretExpiryAlertId string = secretExpiryAlert.id
