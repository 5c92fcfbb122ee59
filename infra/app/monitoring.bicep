// Azure Monitor alerts and one workbook, written against the relay's telemetry as data (shared/telemetry.py): every
// query filters on the fixed dimensions of the relay's records (customDimensions.event, .code, .app, ...) and on its
// metric names, never on the message text, which carries values an app wrote (an app choosing the request id
// "secret.expiry" must fire nothing). tests/infra/test_monitoring.py extracts every event, dimension and metric name
// used here and in monitoring-workbook.json and checks each against what the relay really emits
// (tests/unit/test_telemetry.py emitted()), so a renamed dimension breaks a test, not the on-call rota.
//
// Where the data lands (the classic Application Insights tables, which a rule scoped to the component queries):
// - the relay's log records are `traces` rows, their fields in customDimensions: the Azure Monitor exporter turns a
//   log record without exception information into MessageData and its attributes into properties
//   (azure-monitor-opentelemetry-exporter, export/logs/_exporter.py, _convert_log_to_envelope). Nothing the relay
//   logs carries exc_info, so no event lands in `exceptions` instead;
// - its OpenTelemetry metrics are `customMetrics` rows (name, value, valueCount, valueSum, valueMin, valueMax), their
//   attributes in customDimensions, one row per export interval (60 s) and attribute set
//   (export/metrics/_exporter.py, _convert_point_to_envelope):
//   * a counter is exported as a delta (the exporter asks for DELTA temporality), so sum(valueSum) over a window is
//     the count in it;
//   * a histogram arrives as sum, count, min and max only: "Azure Monitor currently flattens the histogram
//     instrument into our five supported aggregation types, and support for percentiles is underway" ("Add and
//     modify Azure Monitor OpenTelemetry", https://learn.microsoft.com/azure/azure-monitor/app/opentelemetry-add-modify,
//     "Add custom metrics"), so percentiles are computed from the records (mail.sent's enqueueToOutcomeMs, the
//     graphLatencyMs of every answered call), and the metrics give averages and maxima;
//   * a gauge (mailrelay.queue_depth, mailrelay.mailbox_recipients_used) is cumulative: the last value set is
//     exported again every interval, by each process that set it, until the process ends. Queries therefore take a
//     gauge's latest value (arg_max) or its maximum, never its sum.
// Sampling: the distro samples traces (spans) only, not logs or metrics; host.json's sampling (the host's own
// telemetry) excludes Trace besides.
//
// Log search alert rules ("Create or edit a log search alert rule",
// https://learn.microsoft.com/azure/azure-monitor/alerts/alerts-create-log-alert-rule): up to six dimensions per
// rule, each a string or number column of the result, one alert per combination; ago() takes timespan literals only
// (hence the minutes are written into the query text below); every rule here is stateful (autoMitigate), so an alert
// notifies once when it fires and once when it resolves.

param location string = resourceGroup().location
param tags object = {}

@description('Prefix of the alert, action group and workbook names.')
param namePrefix string

@description('Resource id of the Application Insights component (the alerts and the workbook query its traces and customMetrics).')
param appInsightsId string

@description('Recipient of the alert e-mails. Empty: no action group; the alerts still fire in the portal.')
param alertEmail string = ''

@minValue(1)
@description('429 answers from Graph in 15 minutes, per app and sender mailbox, that raise the throttling alert. The relay paces each mailbox below Graph\'s limits, so a steady rate of 429s means something else shares the mailbox\'s budget.')
param throttledAlertThreshold int = 10

@minValue(1)
@maxValue(100)
@description('Share of a mailbox\'s daily recipient budget (MAILBOX_RECIPIENTS_PER_DAY), in percent, at which the budget alert fires: 80 is the gauge mailrelay.mailbox_recipients_used at 0.8. A whole percentage because Bicep\'s @minValue/@maxValue take integers only, so a value out of range is refused at deployment, naming the parameter.')
param mailboxRecipientsAlertPercent int = 80

@minValue(15)
@maxValue(60)
@description('Minutes an app\'s outbox may hold mail with nothing sent for that app before the "mail waiting" alert fires. At least 15: the queue depth is read every 5 minutes (queueDepthSchedule) and the rule needs readings across the window.')
param mailWaitingAlertMinutes int = 30

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

// --- The queries ---------------------------------------------------------------------------------------------------

// Any dead letter: one alert per code, with its hint (the fix an admin can make) in the alert's dimensions.
var deadLetterQuery = '''
traces
| where tostring(customDimensions.event) == "mail.deadlettered"
| extend code = tostring(customDimensions.code), hint = tostring(customDimensions.hint)
| extend app = tostring(customDimensions.app), sender = tostring(customDimensions.sender)
| project timestamp, code, hint, app, sender, deadLetters = 1
'''

// Poison depth above zero: the latest reading of each app's poison queues (the host's <queue>-poison, which also holds
// the relay's dead-letter envelopes, and the relay's retry-poison), by the queue-depth timer.
var poisonDepthQuery = '''
customMetrics
| where name == "mailrelay.queue_depth"
| extend app = tostring(customDimensions.app), queue = tostring(customDimensions.queue)
| where queue in ("poison", "retry-poison")
| summarize arg_max(timestamp, value) by app, queue
| project timestamp, app, queue, depth = value
'''

// A 429 rate: Graph's throttling answers per app and mailbox (the relay gives the try back and waits Retry-After).
var throttledQuery = '''
customMetrics
| where name == "mailrelay.throttled"
| extend app = tostring(customDimensions.app), sender = tostring(customDimensions.sender)
| project timestamp, app, sender, throttled = valueSum
'''

// Unknown outcomes: a send that may or may not have been accepted (timeout, 5xx, a crash during the call), by code.
var unknownQuery = '''
customMetrics
| where name == "mailrelay.unknown"
| extend app = tostring(customDimensions.app), sender = tostring(customDimensions.sender)
| extend code = tostring(customDimensions.code)
| project timestamp, app, sender, code, unknown = valueSum
'''

// Credential health: the expiry check's findings. Exact equality on the event name, so the check's own troubles
// (secret.expiry.store, secret.expiry.channel) fire neither rule; a token failure in the secretless modes is a
// critical finding of this same event (kind token-failed), an outage of the identity endpoint a warning.
var credentialQuery = '''
traces
| where tostring(customDimensions.event) == "secret.expiry"
| extend state = tostring(customDimensions.state), kind = tostring(customDimensions.kind)
| extend credential = tostring(customDimensions.credential), secretName = tostring(customDimensions.secretName)
| extend registration = tostring(customDimensions.registration)
| where state == "__STATE__"
| project timestamp, registration, kind, credential, secretName, findings = 1
'''

// A mailbox near its daily recipient budget: the highest share any instance saw, per sender, in percent.
var recipientsQuery = '''
customMetrics
| where name == "mailrelay.mailbox_recipients_used"
| extend sender = tostring(customDimensions.sender)
| project timestamp, sender, usedPercent = value * 100
'''

// Mail waiting but nothing sent: every outbox reading of an app over the last N minutes above zero (readings
// reaching back at least N - 10 minutes, two timer periods), and no mailrelay.sent for that app in those minutes.
var waitingQueryTemplate = '''
let waiting = customMetrics
| where timestamp > ago(__MINUTES__m)
| where name == "mailrelay.queue_depth"
| extend app = tostring(customDimensions.app), queue = tostring(customDimensions.queue)
| where queue == "outbox"
| summarize fewest = min(value), earliest = min(timestamp), timestamp = max(timestamp) by app;
let sentByApp = customMetrics
| where timestamp > ago(__MINUTES__m)
| where name == "mailrelay.sent"
| extend app = tostring(customDimensions.app)
| summarize sent = sum(valueSum) by app;
waiting
| where fewest > 0 and earliest < ago(__COVERED__m)
| join kind=leftouter sentByApp on app
| where isnull(sent) or sent == 0
| project timestamp, app, waiting = fewest
'''

var waitingQuery = replace(replace(waitingQueryTemplate, '__MINUTES__', string(mailWaitingAlertMinutes)), '__COVERED__', string(mailWaitingAlertMinutes - 10))

// --- The rules -----------------------------------------------------------------------------------------------------

// Each rule: its query, the column it measures and how (Total of a count column, Maximum of a reading), when it
// fires, and the columns that split it into one alert per value (the dimensions). Severity: 0 critical .. 4 verbose.
var alertRules = [
  {
    name: 'deadlettered'
    displayName: 'Graph Mail Relay: mail dead-lettered'
    description: 'A request was dead-lettered (event mail.deadlettered): it will not be retried. The alert carries the code and its hint, the fix an admin can make. Fix the cause, then `mailrelay dead-letters list` and requeue (infra/README.md, Alerts).'
    severity: 1
    frequency: 'PT5M'
    window: 'PT15M'
    query: deadLetterQuery
    measure: 'deadLetters'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: ['code', 'hint', 'app', 'sender']
  }
  {
    name: 'poison-depth'
    displayName: 'Graph Mail Relay: poison queue not empty'
    description: 'An app\'s poison queue (dead letters, or messages the host moved after maxDequeueCount) or the relay\'s retry-poison queue holds messages (gauge mailrelay.queue_depth). `mailrelay dead-letters list` shows them; requeue once the cause is fixed. Resolves when the queue is read empty.'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    query: poisonDepthQuery
    measure: 'depth'
    aggregation: 'Maximum'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: ['app', 'queue']
  }
  {
    name: 'throttled'
    displayName: 'Graph Mail Relay: Graph throttling (429)'
    description: 'Graph answered 429 at least ${throttledAlertThreshold} times in 15 minutes for one app and mailbox (metric mailrelay.throttled). The relay retries after Retry-After, so mail is late, not lost; look for other software sending as that mailbox with the same app registration, or lower the pacing limits.'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    query: throttledQuery
    measure: 'throttled'
    aggregation: 'Total'
    operator: 'GreaterThanOrEqual'
    threshold: throttledAlertThreshold
    dimensions: ['app', 'sender']
  }
  {
    name: 'unknown-outcome'
    displayName: 'Graph Mail Relay: unknown send outcomes'
    description: 'A sendMail call may or may not have been accepted (metric mailrelay.unknown: a timeout, a 5xx, a crash during the call). The relay resolves it before any second try (Sent Items, or SEND_UNKNOWN_OUTCOME); check the workbook\'s resolutions and `mailrelay status` for the request.'
    severity: 2
    frequency: 'PT5M'
    window: 'PT15M'
    query: unknownQuery
    measure: 'unknown'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: ['app', 'sender', 'code']
  }
  {
    name: 'credential-critical'
    displayName: 'Graph Mail Relay: Graph credential failing or expired'
    description: 'The expiry check found the Graph credential expired, disabled or missing, or no Graph token can be had in the secretless modes (event secret.expiry, state critical): the relay cannot send. The dimensions say which credential and finding; `mailrelay expiry check` and `mailrelay doctor` name the fix.'
    severity: 1
    frequency: 'PT15M'
    window: 'PT1H'
    query: replace(credentialQuery, '__STATE__', 'critical')
    measure: 'findings'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: ['registration', 'kind', 'credential', 'secretName']
  }
  {
    name: 'credential-warning'
    displayName: 'Graph Mail Relay: Graph credential expires soon'
    description: 'The expiry check warned (event secret.expiry, state warning): the client secret or certificate reaches a warning threshold (EXPIRY_WARN_DAYS), its dates disagree with Entra, or a token could not be had for now. Renew it as infra/README.md says for the credential mode.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT1H'
    query: replace(credentialQuery, '__STATE__', 'warning')
    measure: 'findings'
    aggregation: 'Total'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: ['registration', 'kind', 'credential', 'secretName']
  }
  {
    name: 'recipient-budget'
    displayName: 'Graph Mail Relay: mailbox near its daily recipient budget'
    description: 'A sender mailbox has used ${mailboxRecipientsAlertPercent}% or more of its daily recipient budget (gauge mailrelay.mailbox_recipients_used against MAILBOX_RECIPIENTS_PER_DAY). The relay holds further mail until recipients leave its sliding 24-hour window rather than let Exchange block the mailbox. Check the workbook\'s pacing headroom, and spread the load over more mailboxes if this recurs.'
    severity: 2
    frequency: 'PT15M'
    window: 'PT15M'
    query: recipientsQuery
    measure: 'usedPercent'
    aggregation: 'Maximum'
    operator: 'GreaterThanOrEqual'
    threshold: mailboxRecipientsAlertPercent
    dimensions: ['sender']
  }
  {
    name: 'mail-waiting'
    displayName: 'Graph Mail Relay: mail waiting, nothing sent'
    description: 'An app\'s outbox has held mail for ${mailWaitingAlertMinutes} minutes and nothing was sent for that app (gauge mailrelay.queue_depth, metric mailrelay.sent). Check the Function App is running, the credential alerts, and the app\'s dead letters; mail a client enqueued hidden for a later sendAt also counts, so check `mailrelay status --app`.'
    severity: 1
    frequency: 'PT5M'
    window: 'PT1H'
    query: waitingQuery
    measure: 'waiting'
    aggregation: 'Maximum'
    operator: 'GreaterThan'
    threshold: 0
    dimensions: ['app']
  }
]

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in alertRules: {
  name: 'alert-${namePrefix}-${rule.name}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      appInsightsId
    ]
    evaluationFrequency: rule.frequency
    windowSize: rule.window
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: rule.aggregation
          metricMeasureColumn: rule.measure
          operator: rule.operator
          threshold: rule.threshold
          dimensions: [for dimension in rule.dimensions: {
            name: dimension
            operator: 'Include'
            values: [
              '*'
            ]
          }]
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
}]

// --- The workbook --------------------------------------------------------------------------------------------------

// One workbook on the component: volume and outcomes per app and mailbox, latency percentiles, top dead-letter codes,
// pacing headroom, queue depths and credential health. Its queries live in monitoring-workbook.json (the workbook's
// own serialized form, "Programmatically manage workbooks",
// https://learn.microsoft.com/azure/azure-monitor/visualize/workbooks-automate); the component's id replaces the
// placeholder in fallbackResourceIds, which the queries run against. A workbook's resource name is a GUID.
resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, namePrefix, 'mailrelay-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Graph Mail Relay (${namePrefix})'
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: replace(loadTextContent('monitoring-workbook.json'), '__APP_INSIGHTS_ID__', appInsightsId)
    version: '1.0'
  }
}

output alertIds array = [for (rule, i) in alertRules: alerts[i].id]
output workbookId string = workbook.id
