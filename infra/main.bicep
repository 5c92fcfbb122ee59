// Graph Mail Relay: the Azure side, deployed by `azd up` (see infra/README.md for the full order).
//
// One resource group holds: a user-assigned identity, a Flex Consumption Function App (Linux,
// Python 3.11), a storage account (queues mail-outbox, mail-outbox-poison and the relay-internal
// mail-outbox-retry and mail-outbox-retry-poison; tables expirywarnings and mailstatus, which holds the status
// records of the outbox (the implicit app default) and one pace row per sender mailbox; the Flex deployment container, the relay's overflow container and mail-payloads, where apps put large attachments and
// bodies for the relay to fetch (claim check); shared keys off), a Key Vault (RBAC, soft delete, purge protection) for the
// Graph client secret or certificate (graphCredential: secret, certificate; federated and managed-identity store nothing), Log Analytics + Application Insights (Entra auth only), log alerts on the
// relay's telemetry dimensions, a workbook and an optional action group (app/monitoring.bicep); per declared app (param apps) a queue, its poison queue, a payload container, a status
// table mailstatus<name without its hyphens> for its status records, and its principals' roles there
// (app/app-access.bicep). The Entra app registration is optional (app/entra-app.bicep); the
// Exchange Online scope is set by the scripts in infra/exchange/, never by this template.
//
// Syntax note: infra/check.sh parses every file with pycep-parser (the parser checkov uses), which
// knows less Bicep than the compiler. Keep expressions on one line, avoid user-defined types,
// lambdas (map/filter with =>, except filter), fail() and nullable `type?` parameters, and keep comment runs
// inside an object to four lines (the fifth fails to parse; longer comments go above the declaration).

targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the azd environment (AZURE_ENV_NAME); names the resource group and seeds the unique suffix of every resource name.')
param environmentName string

@minLength(1)
@description('Region for every resource. It must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of whoever runs azd (AZURE_PRINCIPAL_ID). Gets Key Vault Secrets Officer on the vault so it can store the Graph client secret (README step 5). Empty: no assignment.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
@description('Kind of principal in principalId (AZURE_PRINCIPAL_TYPE): User for a person, ServicePrincipal for a pipeline.')
param principalType string = 'User'

@description('Resource group name. Empty: rg-<environmentName>.')
param resourceGroupName string = ''

// ---------------------------------------------------------------------------------------------
// Entra ID app registration (the identity that calls Microsoft Graph)
// ---------------------------------------------------------------------------------------------

@description('Tenant of the app registration (GRAPH_TENANT_ID). Defaults to the tenant of the subscription.')
param graphTenantId string = tenant().tenantId

@description('Application (client) id of the app registration (GRAPH_CLIENT_ID). Ignored when deployEntraApp is true (the new app\'s id is used).')
param graphClientId string = ''

@description('Create the app registration, its service principal and (ApplicationAccessPolicy model only) the Mail.Send consent, and Mail.Read with grantSentItemsRead, with the Microsoft Graph Bicep extension. Needs directory privileges; off by default (README step 1).')
param deployEntraApp bool = false

@description('Display name of the app registration created when deployEntraApp is true. Renaming it renames the same app: its unique name comes from the environment (graph-mail-relay-<resource token>), not from this.')
param entraAppDisplayName string = 'Graph Mail Relay'

@allowed([
  'RbacForApplications'
  'ApplicationAccessPolicy'
])
@description('How Exchange Online narrows Mail.Send (DESIGN.md, "The Exchange scope"). RbacForApplications: no tenant-wide Entra consent (it would add to the scope and defeat it). ApplicationAccessPolicy: the Entra consent is required and the policy restricts it.')
param exchangeScopeModel string = 'RbacForApplications'

// Read access resolves unknown sends (a timeout, a 5xx, a worker that died during the Graph call):
// the relay looks the request's mark up in the sender's Sent Items before any second send
// (shared/delivery.py). The lookup filters on a single-value extended property, which Mail.ReadBasic
// does not cover (https://learn.microsoft.com/en-us/graph/permissions-reference), so Mail.Read it is.
// RBAC for Applications: the scripts in infra/exchange assign "Application Mail.Read" with the same
// management scope as "Application Mail.Send" (Set-RbacApplicationScope.ps1 -GrantSentItemsRead);
// nothing in Entra. ApplicationAccessPolicy: the Entra consent of Mail.Read (app/entra-app.bicep,
// with deployEntraApp), narrowed by the same policy as Mail.Send.
@description('Let the app read the mail of the mailboxes it may send as (Graph application permission Mail.Read, scoped by Exchange exactly like Mail.Send), so an unknown send is resolved by looking its mark up in the sender\'s Sent Items instead of guessed with sendUnknownOutcome. Mail.Read grants reading ALL mail (bodies and attachments included) in every mailbox of the scope, not only Sent Items: worth it when the scope holds send-only mailboxes (noreply@ and the like) whose mail is the relay\'s own, not when it holds people\'s mailboxes. false: send-only, least privilege; unknown sends then follow sendUnknownOutcome. Here it adds Mail.Read to the Entra app (ApplicationAccessPolicy model, deployEntraApp); for RBAC for Applications run infra/exchange/Set-RbacApplicationScope.ps1 -GrantSentItemsRead.')
param grantSentItemsRead bool = true

@minLength(1)
@maxLength(127)
@description('Name of the Key Vault secret that holds the Graph client secret (GRAPH_CLIENT_SECRET_NAME).')
param graphClientSecretName string = 'graph-client-secret'

@secure()
@description('Optional: the client secret VALUE (not its id) to store in Key Vault. Prefer `az keyvault secret set` (README step 5): azd keeps parameters in plain text in .azure/<env>/.')
param graphClientSecret string = ''

@description('End date of graphClientSecret, ISO 8601 UTC, e.g. 2027-05-01T00:00:00Z; stored as the secret\'s exp attribute. Required when graphClientSecret is given.')
param graphClientSecretExpiresOn string = ''

// How the relay proves itself to Entra ID (GRAPH_CREDENTIAL; infra/README.md compares the four modes):
//   secret            a client secret in Key Vault (graphClientSecretName); expires, can leak; the default.
//   certificate       a Key Vault certificate (graphCertificateName) with an AutoRenew policy (app/certificate.bicep);
//                     the relay signs with its private key, which never leaves Key Vault and the relay's process.
//   federated         no stored credential: the app registration trusts the relay's user-assigned identity
//                     (a federated identity credential, app/entra-app.bicep with deployEntraApp).
//   managed-identity  no app registration: the user-assigned identity itself calls Graph (app/identity-graph-roles.bicep
//                     under ApplicationAccessPolicy; Exchange RBAC for Applications otherwise). deployEntraApp is
//                     IGNORED in this mode (no app is created); GRAPH_CLIENT_ID is set to the identity's client id.
// Never a system-assigned identity: it is created and deleted with the Function App, so a re-created app would get a
// new principal id that neither a federated credential's subject, an app role assignment nor Exchange's service
// principal knows (Microsoft: "Managed identity types", lifecycle "shared with the Azure resource"); api.bicep turns it off.
@allowed([
  'secret'
  'certificate'
  'federated'
  'managed-identity'
])
@description('How the relay signs in to Entra ID (GRAPH_CREDENTIAL): secret (client secret in Key Vault, default), certificate (Key Vault certificate with AutoRenew; renewal must be registered on the app: infra/scripts/sync-app-certificate.sh), federated (the app registration trusts the relay\'s user-assigned identity: nothing stored, nothing expires), managed-identity (the identity itself calls Graph, no app registration; deployEntraApp is ignored).')
param graphCredential string = 'secret'

@minLength(1)
@maxLength(127)
@description('certificate mode: name of the Key Vault certificate (GRAPH_CERTIFICATE_NAME); the relay reads its key through the secret of the same name.')
param graphCertificateName string = 'graph-client-certificate'

@description('certificate mode: subject of the self-signed certificate Key Vault creates.')
param graphCertificateSubject string = 'CN=graph-mail-relay'

@minValue(1)
@maxValue(24)
@description('certificate mode: validity of each certificate version, in months.')
param graphCertificateValidityMonths int = 12

@minValue(7)
@maxValue(180)
@description('certificate mode: days before expiry at which Key Vault renews the certificate (AutoRenew). Keep it above the largest of expiryWarnDays, so a warning means the renewal, or its registration on the app, did not happen.')
param graphCertificateRenewDaysBeforeExpiry int = 60

// ---------------------------------------------------------------------------------------------
// Relay behaviour (app settings, names as in shared/DESIGN.md)
// ---------------------------------------------------------------------------------------------

@description('Mailboxes the relay may send as, comma-separated (ALLOWED_SENDERS). The Exchange scope must include each of them.')
param allowedSenders string = ''

@minValue(1)
@maxValue(100)
@description('Attempts per send request before a transient failure is dead-lettered (SEND_MAX_ATTEMPTS). 1 = never retry.')
param sendMaxAttempts int = 8

@description('Age in hours after which a request that still fails transiently is dead-lettered (SEND_MAX_AGE_HOURS), 0.01 to 168.')
param sendMaxAgeHours string = '24'

@description('NCRONTAB schedule of the secret expiry check (EXPIRY_CHECK_SCHEDULE), in UTC. Default: daily at 07:00.')
param expiryCheckSchedule string = '0 0 7 * * *'

@description('Days before the secret\'s expiry at which to warn, once each (EXPIRY_WARN_DAYS).')
param expiryWarnDays string = '30,14,7,3,1'

@description('Mailbox the expiry warning is sent from (EXPIRY_ALERT_SENDER); must be on allowedSenders and inside the Exchange scope.')
param expiryAlertSender string = ''

@description('Recipients of the expiry warning, comma-separated (EXPIRY_ALERT_RECIPIENTS).')
param expiryAlertRecipients string = ''

@secure()
@description('Optional webhook (e.g. a Teams workflow URL) for expiry warnings (EXPIRY_ALERT_WEBHOOK_URL); a channel that does not need the expiring secret.')
param expiryAlertWebhookUrl string = ''

@description('Principal (object) ids of the apps allowed to enqueue mail on the outbox (the implicit app default), their service principals or managed identities (the assignments carry principalType ServicePrincipal, so a user or group id is refused): each gets Storage Queue Data Message Sender on the mail-outbox queue only (not on the relay-internal retry queue) and Storage Blob Data Contributor on mail-payloads. IGNORED when apps are declared (see apps): no app then holds a role on the outbox.')
param senderPrincipalIds array = []

// Apps as principals (issue 20; infra/README.md, "Apps"). Each declared app enqueues on its own queue,
// <mailQueueName>-<name> (the queue is the identity: the relay knows the app from the queue a message came from),
// and only its principals hold Storage Queue Data Message Sender there; each gets its own payload container,
// mail-payloads-<name>, and its own status table, mailstatus<name without its hyphens>, which only its principals (and
// the relay) may read. The same declaration, less `principals`, is the relay's MAILRELAY_APPS setting.
// The names are checked below (appDeclarationCheck) as far as Bicep's functions reach; the relay checks the whole
// declaration again at start (shared/settings.py parse_apps) and refuses it, named.
@description('The apps that share the relay, each {"name": "billing", "senders": ["billing@contoso.com"], "principals": ["<Entra object id>"]}: name 2 to 24 lower-case letters, digits and single hyphens, starting with a letter, not default, retry, poison or retry-poison, and not another app\'s name but for hyphens (billing-eu and billingeu would share a status table); senders, exact addresses, each on allowedSenders; principals, the object ids of the service principals or managed identities that enqueue for it (Storage Queue Data Message Sender on its queue mail-outbox-<name> only, Storage Blob Data Contributor on its container mail-payloads-<name> only, Storage Table Data Reader on its status table mailstatus<name without its hyphens> only, e.g. mailstatusbillingeu for billing-eu); optional messagesPerMinute (1 to 30) and recipientsPerDay (1 to 10,000), its share of each of its sender mailboxes, passed to the relay, which refuses shares that do not fit a mailbox\'s limits; optional maxScheduled (1 to 100,000, default 1,000), how many requests waiting for their sendAt it may hold; optional graph ({"credential": "federated", "clientId": "<its app registration>"}, or secretName / certificateName in the relay\'s vault), its own Graph app registration, set up by its owners (a federated credential to the relay\'s identity needs no secret). Empty: the single outbox, as before. With apps declared, senderPrincipalIds is ignored.')
param apps array = []

@description('Principal (object) ids of apps or operators that may read the status records (`mailrelay status`, the client library\'s status()): each gets Storage Table Data Reader on the mailstatus table only, which holds the status records of the outbox (the implicit app default) and the pace rows, not a declared app\'s: an app\'s records are in its own table, mailstatus<name without its hyphens>, which its principals read (see apps). The records hold states, codes, timestamps and sender mailboxes, never subjects, bodies or recipients.')
param statusReaderPrincipalIds array = []

@allowed([
  'resend'
  'deadletter'
])
@description('What the relay does with an unknown send (Graph timed out, answered 5xx, or the worker died during the call: the message may or may not have gone out) when it cannot read the sender\'s Sent Items (no Mail.Read in the Exchange scope, see grantSentItemsRead, or saveToSentItems off) (SEND_UNKNOWN_OUTCOME). resend: send again, at least once; a recipient may get the mail twice. deadletter: dead-letter it with the reason, at most once; a mail may be lost, and an operator decides.')
param sendUnknownOutcome string = 'resend'

@description('Days a status record is kept after its last change (STATUS_RETENTION_DAYS), 0.01 to 3650. Also the window in which a request id is sent at most once: a repeat of an id after its record has expired is sent again.')
param statusRetentionDays string = '30'

@description('NCRONTAB schedule of the clean-up of expired status records (STATUS_CLEANUP_SCHEDULE), in UTC. Default: hourly at minute 30.')
param statusCleanupSchedule string = '0 30 * * * *'

@description('NCRONTAB schedule on which each queue\'s depth is recorded as the metric mailrelay.queue_depth (QUEUE_DEPTH_SCHEDULE), in UTC: the alerts on poison depth and on mail waiting with nothing sent read it. Default: every 5 minutes.')
param queueDepthSchedule string = '0 */5 * * * *'

// Large messages (shared/payloads.py): both settings take fractions (shared/settings.py reads them as numbers, not
// whole numbers), so they are strings like statusRetentionDays: Bicep's @minValue/@maxValue take integers only, and
// the relay checks the range on first use (a value out of range fails naming the setting; `mailrelay doctor` shows it).
// Exchange Online's maximum message size is 35 MB by default, and admins may raise it to 150 MB
// (https://learn.microsoft.com/graph/api/attachment-createuploadsession, and DESIGN.md "Limits to respect").
@description('Largest message the relay sends, in MB (MAX_MESSAGE_SIZE_MB), 1 to 150: body and attachments together, as Exchange Online counts them. Default 35, Exchange Online\'s default maximum message size; raise it only as far as the sending mailboxes\' MaxSendSize (Set-Mailbox), or Exchange refuses what the relay accepts. Over 3 MB the relay sends through a draft and an upload session, which needs Mail.ReadWrite in the app\'s Exchange scope (infra/exchange/Set-RbacApplicationScope.ps1 -GrantLargeMessages).')
param maxMessageSizeMb string = '35'

@description('Days a claim-checked payload (a large attachment or body in the mail-payloads container) that nobody deleted is kept (PAYLOAD_RETENTION_DAYS), 8 to 3650 (at least 7 days of sendAt plus SEND_MAX_AGE_HOURS). The relay deletes a payload once its request is sent; a dead-lettered request keeps its payloads so it can be requeued, until this many days have passed. Default 30.')
param payloadRetentionDays string = '30'

@description('E-mail address that receives the Azure Monitor alerts (app/monitoring.bicep: dead letters, poison queues, Graph throttling, unknown outcomes, the Graph credential, mailbox budgets, mail waiting). Empty: the alerts are still created, without notification.')
param alertEmail string = ''

// The alerts' thresholds (app/monitoring.bicep says why each default; infra/README.md, "Alerts").
@minValue(1)
@description('429 answers from Graph in 15 minutes, per app and sender mailbox, that raise the throttling alert. Default 10.')
param throttledAlertThreshold int = 10

@minValue(1)
@maxValue(100)
@description('Percent of a mailbox\'s daily recipient budget (gauge mailrelay.mailbox_recipients_used x 100) at which the budget alert fires, 1 to 100. Default 80 (a share of 0.8).')
param mailboxRecipientsAlertPercent int = 80

@minValue(15)
@maxValue(60)
@description('Minutes an app\'s outbox may hold mail with nothing sent for that app before the "mail waiting" alert fires, 15 to 60. Default 30.')
param mailWaitingAlertMinutes int = 30

// ---------------------------------------------------------------------------------------------
// Capacity
// ---------------------------------------------------------------------------------------------

// Graph's limits hold per app and mailbox (4 concurrent requests), Exchange's per mailbox (30 a minute,
// 10,000 recipients a day): the relay paces each mailbox itself, shared by every instance (the pace row of
// each sender mailbox in Table mailstatus, shared/pacing.py), so this cap is not what keeps Graph within its
// limits: that holds whatever the instance count. What the cap still bounds is spend and blast radius during a
// backlog: instances x 12 sends at once per queue function (host.json batchSize 8 + newBatchThreshold 4; Flex
// Consumption applies the cap per function, event-driven-scaling.md "Limit scale-out").
//
// Why 40 and not the former 4. Microsoft's docs have moved on the lowest value Flex Consumption accepts:
// "The lowest maximum scale is currently `40`" (MicrosoftDocs/azure-docs, articles/azure-functions/
// flex-consumption-plan.md, Considerations, 2024-2025 revisions), then, by issue 18's account of a February
// 2026 change, 40 with lower values only in some regions as a preview (that revision was not among those
// read here), and "The lowest maximum scale is currently `1`" / "Currently the lowest maximum instance count
// value is `1`" in the newest revisions read (flex-consumption-plan.md Considerations; event-driven-scaling.md
// "Limit scale-out", ms.date 08/03/2026). 40 is the one value every revision accepts in every region, so it is
// the default: the template deploys wherever the README suggests. A lower cap (down to 1) is accepted by the
// parameter for regions and times where the platform takes it; where it does not, the deployment fails on the
// Function App (assumed: no Microsoft page states the error). To cap cost below 40 instances without that risk, lower the per-instance
// concurrency instead (host.json batchSize / newBatchThreshold), or set the cap after deployment with
// `az functionapp scale config set --maximum-instance-count N` where the region accepts N (infra/README.md).
@minValue(1)
@maxValue(1000)
@description('Maximum on-demand instances of the Flex Consumption app, per function (1 to 1000). Default 40: the lowest value Microsoft\'s docs have accepted in every region (lower values only in some regions, depending on the docs revision; see the comment above and infra/README.md). Each instance runs up to 12 sends at once (host.json); the relay paces each sender mailbox to Graph\'s and Exchange\'s limits whatever the count, so the cap bounds cost during a backlog, not Graph\'s load.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Memory per Flex Consumption instance, in MB.')
param instanceMemoryMB int = 2048

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication of the storage account that holds the queues.')
param storageSkuName string = 'Standard_LRS'

@minValue(30)
@maxValue(730)
@description('Retention of the Log Analytics workspace, in days.')
param logRetentionInDays int = 30

// ---------------------------------------------------------------------------------------------
// SMTP listener (optional; issue 22, app/smtp.bicep, docs/smtp.md)
// ---------------------------------------------------------------------------------------------

// Devices and legacy apps that speak only SMTP log in to a listener that puts each mail on its app's queue before it
// answers 250. Off by default. Before turning it on, store its two Key Vault secrets (the logins file and the TLS
// certificate, names below) and push its image (smtp/Dockerfile); docs/smtp.md gives the order.
@description('Deploy the SMTP listener (app/smtp.bicep): a virtual network, a Container Apps environment and a Container App with TCP ingress on 587 (STARTTLS) and 465 (implicit TLS), running as the relay\'s identity. Needs smtpImage, smtpAllowedSourceCidrs and the two Key Vault secrets first (docs/smtp.md).')
param deploySmtpListener bool = false

@description('The listener\'s image, built from smtp/Dockerfile (build context: the repository root) and pushed to your registry, e.g. myregistry.azurecr.io/mailrelay-smtp:0.1.0. Required with deploySmtpListener.')
param smtpImage string = ''

@description('Private registry the image is pulled from with the relay\'s identity (e.g. myregistry.azurecr.io), which needs AcrPull there (not assigned here: the registry is yours, wherever it is). Empty: a public image.')
param smtpRegistryServer string = ''

@description('IPv4 ranges in CIDR notation that may connect to the listener: the public addresses of the sites whose devices send (e.g. ["203.0.113.10/32"]). Required with deploySmtpListener: an empty list refuses the deployment. ["0.0.0.0/0"] opens it to the internet.')
param smtpAllowedSourceCidrs array = []

@description('Name the devices connect to and the TLS certificate is for (SMTP_HOSTNAME), e.g. smtp-relay.contoso.com, with a DNS record to SMTP_STATIC_IP. Empty: the Container App\'s own name (SMTP_FQDN).')
param smtpHostname string = ''

@minLength(1)
@maxLength(127)
@description('Key Vault secret holding the listener\'s logins file (JSON; docs/smtp.md).')
param smtpLoginsSecretName string = 'smtp-logins'

@minLength(1)
@maxLength(127)
@description('Key Vault certificate (or secret) holding the listener\'s TLS certificate chain and private key as PEM (content type application/x-pem-file).')
param smtpTlsCertificateName string = 'smtp-tls'

@description('Address space of the listener\'s virtual network (CIDR, /27 or larger; its one subnet takes all of it). Change it if it overlaps a network you peer with.')
param smtpVnetAddressPrefix string = '10.42.0.0/24'

@minValue(1)
@maxValue(30)
@description('Listener replicas always running, 1 or more: an SMTP server must answer, so it never scales to zero.')
param smtpMinReplicas int = 1

@minValue(1)
@maxValue(30)
@description('Most listener replicas the TCP scale rule may run.')
param smtpMaxReplicas int = 3

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'graph-mail-relay'
}
var functionAppName = '${abbrs.webSitesFunctions}mailrelay-${resourceToken}'
var storageAccountName = '${abbrs.storageStorageAccounts}${resourceToken}'
var keyVaultName = '${abbrs.keyVaultVaults}relay-${resourceToken}'
// The Flex deployment package lives here (the Functions host also keeps its own blobs in the account).
var deploymentContainerName = 'app-package-${take(resourceToken, 12)}'

// Queue and table names. The relay reads MAIL_QUEUE_NAME; the poison queue is the Functions host's
// own name for the dead-letter queue: <queue>-poison.
var mailQueueName = 'mail-outbox'
var poisonQueueName = '${mailQueueName}-poison'
// What the relay writes that does not fit in a 64 KiB queue message (a dead letter's request, a retry
// copy): only the relay's identity reaches it (Storage Blob Data Owner on the account); apps get no role.
var overflowContainerName = 'mail-relay-overflow'
// The relay's own retry queue (shared/settings.py retry_queue_name; function_app.py binds
// "%MAIL_QUEUE_NAME%-retry"): transient retries and requests waiting on a claim or a settling time.
// Only the relay's identity writes it, so apps cannot forge retry state (apps get Message Sender on
// mail-outbox alone, app/rbac.bicep). Its poison queue is where the host moves a retry message whose
// function kept failing.
var retryQueueName = '${mailQueueName}-retry'
var retryPoisonQueueName = '${retryQueueName}-poison'
var expiryWarningsTableName = 'expirywarnings'
// Claim check (issue 12): apps upload large attachments and bodies here (Storage Blob Data Contributor on this
// container only, app/rbac.bicep) and name the blob in the request; the relay reads them with its own identity
// (Storage Blob Data Owner on the account), checks size and sha256, and deletes them once the request is sent.
// Dead-lettered requests keep theirs until PAYLOAD_RETENTION_DAYS. Never public.
var payloadContainerName = 'mail-payloads'
// Status records (shared/status.py TABLE_NAME): one per sender mailbox and request id, the atomic
// claim before Graph and what became of each request. Replaces the former sentrequests ledger. This table holds the
// outbox's (the implicit app default); each declared app's are in a table of its own (appStatusTableNames below).
var statusTableName = 'mailstatus'
// The relay's pacing per sender mailbox (shared/pacing.py) lives in the same table: one row per sender mailbox,
// RowKey "pace", in the partition of that mailbox's status records, so freeing a slot joins the outcome's write
// in one entity group transaction. There is no separate pace table (the former mailpace).

// ---------------------------------------------------------------------------------------------
// Apps (the parameter apps; infra/README.md, "Apps")
// ---------------------------------------------------------------------------------------------

// The relay's own queues and containers (the storage module below adds each app's).
var relayQueues = [
  {
    name: mailQueueName
  }
  {
    name: poisonQueueName
  }
  {
    name: retryQueueName
  }
  {
    name: retryPoisonQueueName
  }
]
var relayContainers = [
  {
    name: deploymentContainerName
    publicAccess: 'None'
  }
  {
    name: overflowContainerName
    publicAccess: 'None'
  }
  {
    name: payloadContainerName
    publicAccess: 'None'
  }
]
// Each app's queue and the host's poison queue for it (shared/apps.py app_queue; function_app.py binds
// "%MAIL_QUEUE_NAME%-<name>"), and its payload container. The relay's identity needs no role of its own on them: its
// Storage Queue Data Contributor and Storage Blob Data Owner are on the account (app/rbac.bicep), as for the outbox.
var appQueues = [for app in apps: {
  name: '${mailQueueName}-${app.name}'
}]
var appPoisonQueues = [for app in apps: {
  name: '${mailQueueName}-${app.name}-poison'
}]
var appPayloadContainers = [for app in apps: {
  name: '${payloadContainerName}-${app.name}'
  publicAccess: 'None'
}]
// Each app's status table (shared/apps.py status_table): mailstatus followed by the app's name without its hyphens,
// as table names hold letters and digits only, 3 to 63 of them, case-insensitive
// (https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model); 10 + at most 24
// characters fit. A role on table data is scoped to a subscription, resource group, storage account or table, nothing
// narrower (https://learn.microsoft.com/azure/storage/tables/assign-azure-role-data-access), so a table of its own is
// how an app's principals read its records and no other app's (Storage Table Data Reader there, app/app-access.bicep).
// The relay's identity needs no role of its own on them: its Storage Table Data Contributor is on the account
// (app/rbac.bicep), which holds every table in it. Names alike but for hyphens would share a table: refused below
// (appNamesSharingAStatusTable). replace(): "Bicep string functions", replace
// (https://learn.microsoft.com/azure/azure-resource-manager/bicep/bicep-functions-string#replace).
var appStatusTableNames = [for app in apps: '${statusTableName}${replace(app.name, '-', '')}']
var appStatusTables = [for name in appStatusTableNames: {
  name: name
}]
// MAILRELAY_APPS: the declaration less `principals`, which the relay never reads (shared/apps.py): the app settings
// hold names, senders and the shares (messagesPerMinute, recipientsPerDay: the app's part of each sender mailbox's
// minute and day, shared/pacing.py), each only when declared, as the relay reads an absent share as none. string() of
// an array is its JSON ("Bicep string functions", string); union() of objects merges their properties ("Bicep
// object functions", union).
var relayApps = [for app in apps: union({ name: app.name, senders: app.?senders ?? [] }, contains(app, 'messagesPerMinute') ? { messagesPerMinute: app.messagesPerMinute } : {}, contains(app, 'recipientsPerDay') ? { recipientsPerDay: app.recipientsPerDay } : {}, contains(app, 'maxScheduled') ? { maxScheduled: app.maxScheduled } : {}, contains(app, 'graph') ? { graph: app.graph } : {})]
// The outbox is the implicit app `default`. With apps declared, no app holds a role there: senderPrincipalIds is
// ignored (not refused: Bicep's fail() is beyond the parser infra/check.sh runs). Assignments made by an earlier
// deployment stay until removed by hand (an incremental deployment deletes nothing; infra/README.md, "Apps").
var outboxSenderPrincipalIds = empty(apps) ? senderPrincipalIds : []

// The checks of the names, as far as Bicep reaches without fail(), user-defined types or map() (the header's note):
// each rule is a list of the names that break it, and app/apps-check.bicep takes each list with @maxLength(0), so a
// name that breaks a rule fails the deployment naming the rule, before the storage account (which depends on it)
// gets a queue or the app a role. Same rules as the relay's (shared/apps.py NAME_RULE, RESERVED_NAMES). Characters
// are checked one by one: the names joined, split by a loop (range() parses only as a loop's source here).
var appNames = [for app in apps: app.name]
var reservedAppNames = [
  'default'
  'retry'
  'poison'
  'retry-poison'
]
var appNameLetters = 'abcdefghijklmnopqrstuvwxyz'
var appNameCharacters = '${appNameLetters}0123456789-'
var appNamesJoined = join(appNames, '')
var appNamesCharacterList = [for i in range(0, length(appNamesJoined)): substring(appNamesJoined, i, 1)]
var appNamesStrayCharacters = filter(appNamesCharacterList, character => !contains(appNameCharacters, character))
var appSenderList = [for sender in split(allowedSenders, ','): toLower(trim(sender))]
var appsWithoutSenders = filter(apps, app => empty(app.?senders ?? []))
var appsWithSendersNotAllowed = filter(apps, app => !empty(filter(app.?senders ?? [], sender => !contains(appSenderList, toLower(trim(sender))))))
var appNamesWithoutSenders = [for app in appsWithoutSenders: app.name]
var appNamesWithSendersNotAllowed = [for app in appsWithSendersNotAllowed: app.name]
var appNamesOfWrongLength = filter(appNames, name => length(name) < 2 || length(name) > 24)
var appNamesWithOtherCharacters = filter(appNames, name => !empty(filter(appNamesStrayCharacters, character => contains(name, character))))
var appNamesNotStartingWithALetter = filter(appNames, name => !contains(appNameLetters, first(name)))
var appNamesWithMisplacedHyphens = filter(appNames, name => contains(name, '--') || endsWith(name, '-'))
var appNamesReserved = filter(appNames, name => contains(reservedAppNames, name))
var appNamesDeclaredTwice = filter(appNames, name => length(filter(appNames, other => other == name)) > 1)
// An app named <other app>-poison would enqueue on the other app's poison queue.
var appNamesTakingAPoisonQueue = filter(appNames, name => !empty(filter(appNames, other => name == '${other}-poison')))
// Two apps whose names differ only by hyphens (billing-eu, billingeu) would share one status table (appStatusTableNames);
// the same name twice is appNamesDeclaredTwice's.
var appNamesSharingAStatusTable = filter(appNames, name => !empty(filter(appNames, other => other != name && replace(other, '-', '') == replace(name, '-', ''))))

// Entra consent of Mail.Send only for the legacy model: with RBAC for Applications it would widen
// the Exchange scope to every mailbox in the tenant.
var grantMailSendInEntra = exchangeScopeModel == 'ApplicationAccessPolicy'
// Mail.Read in Entra likewise only for the legacy model (the policy narrows it like Mail.Send);
// with RBAC for Applications, Exchange grants "Application Mail.Read" itself (infra/exchange).
var grantMailReadInEntra = grantMailSendInEntra && grantSentItemsRead

// Which pieces each credential mode needs (graphCredential above).
// Key Vault is read by the relay for Graph only in secret and certificate modes; in federated and managed-identity
// modes the relay never reads it (the vault stays, for the other modes and an easy switch, but the relay's identity
// holds no role on it then: app/rbac.bicep).
var graphCredentialInKeyVault = graphCredential == 'secret' || graphCredential == 'certificate'
// managed-identity mode has no app registration: deployEntraApp is ignored there (not refused: Bicep's fail() is
// beyond the parser infra/check.sh runs).
var deployEntraAppRegistration = deployEntraApp && graphCredential != 'managed-identity'
// managed-identity mode under an application access policy: Graph's app roles go to the identity's service
// principal; under RBAC for Applications no Entra consent at all (Exchange's RBAC points at the identity).
var grantGraphRolesToIdentity = graphCredential == 'managed-identity' && exchangeScopeModel == 'ApplicationAccessPolicy'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

// The relay's only identity: storage (host and queues), Key Vault, Application Insights.
module identity 'br/public:avm/res/managed-identity/user-assigned-identity:0.4.1' = {
  name: 'relay-identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}mailrelay-${resourceToken}'
    location: location
    tags: tags
  }
}

// ---------------------------------------------------------------------------------------------
// Storage: queues, tables, the Flex deployment container. Entra ID only (no shared key).
// ---------------------------------------------------------------------------------------------

module storage 'br/public:avm/res/storage/storage-account:0.8.3' = {
  name: 'relay-storage'
  scope: rg
  params: {
    name: storageAccountName
    location: location
    tags: tags
    kind: 'StorageV2'
    skuName: storageSkuName
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    dnsEndpointType: 'Standard'
    // Flex Consumption without VNet integration reaches storage over its public endpoint;
    // access is Entra ID only (shared key off), so the endpoint accepts no keys or SAS.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    blobServices: {
      containers: concat(relayContainers, appPayloadContainers)
      containerDeleteRetentionPolicyEnabled: true
      containerDeleteRetentionPolicyDays: 7
      deleteRetentionPolicyEnabled: true
      deleteRetentionPolicyDays: 7
    }
    queueServices: {
      queues: concat(relayQueues, appQueues, appPoisonQueues)
    }
    // The relay's tables, then each app's status table (appStatusTableNames).
    tableServices: {
      tables: concat([
        {
          name: expiryWarningsTableName
        }
        {
          name: statusTableName
        }
      ], appStatusTables)
    }
  }
  // No queue, container or role for any app before its name passed the checks.
  dependsOn: [
    appDeclarationCheck
  ]
}

// ---------------------------------------------------------------------------------------------
// Monitoring: Log Analytics + workspace-based Application Insights, Entra auth only.
// ---------------------------------------------------------------------------------------------

module logAnalytics 'br/public:avm/res/operational-insights/workspace:0.11.1' = {
  name: 'relay-log-analytics'
  scope: rg
  params: {
    name: '${abbrs.operationalInsightsWorkspaces}mailrelay-${resourceToken}'
    location: location
    tags: tags
    dataRetention: logRetentionInDays
  }
}

module appInsights 'br/public:avm/res/insights/component:0.6.0' = {
  name: 'relay-app-insights'
  scope: rg
  params: {
    name: '${abbrs.insightsComponents}mailrelay-${resourceToken}'
    location: location
    tags: tags
    workspaceResourceId: logAnalytics.outputs.resourceId
    // No instrumentation-key ingestion: the app sends with its identity
    // (APPLICATIONINSIGHTS_AUTHENTICATION_STRING + Monitoring Metrics Publisher).
    disableLocalAuth: true
  }
}

// ---------------------------------------------------------------------------------------------
// Key Vault: the Graph client secret. RBAC only, soft delete, purge protection.
// ---------------------------------------------------------------------------------------------

module keyVault 'br/public:avm/res/key-vault/vault:0.13.0' = {
  name: 'relay-key-vault'
  scope: rg
  params: {
    name: keyVaultName
    location: location
    tags: tags
    sku: 'standard'
    // Set explicitly: older AVM versions defaulted to access policies (false).
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enableVaultForDeployment: false
    enableVaultForTemplateDeployment: false
    enableVaultForDiskEncryption: false
    // The Flex app has no VNet integration here, so it reads the vault over the public endpoint;
    // data access is RBAC only (Key Vault Secrets User for the relay's identity).
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    // Audit log of every secret read and write goes to the workspace.
    diagnosticSettings: [
      {
        workspaceResourceId: logAnalytics.outputs.resourceId
      }
    ]
  }
}

// Optional: the secret itself, always with an expiry (exp) that the relay's timer watches. Secret mode only: in the
// other modes no client secret is stored, even when graphClientSecret is given.
module graphSecret 'app/secret.bicep' = if (graphCredential == 'secret' && !empty(graphClientSecret)) {
  name: 'relay-graph-secret'
  scope: rg
  params: {
    keyVaultName: keyVault.outputs.name
    secretName: graphClientSecretName
    secretValue: graphClientSecret
    expiresOn: graphClientSecretExpiresOn
  }
}

// Certificate mode: the Key Vault certificate with its AutoRenew policy, made by a deployment script (ARM cannot
// create a Key Vault certificate), which runs as its own identity with Key Vault Certificates Officer.
module graphCertificate 'app/certificate.bicep' = if (graphCredential == 'certificate') {
  name: 'relay-graph-certificate'
  scope: rg
  params: {
    location: location
    tags: tags
    keyVaultName: keyVault.outputs.name
    certificateName: graphCertificateName
    subject: graphCertificateSubject
    validityInMonths: graphCertificateValidityMonths
    renewDaysBeforeExpiry: graphCertificateRenewDaysBeforeExpiry
    scriptIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}mailrelay-certscript-${resourceToken}'
  }
}

// ---------------------------------------------------------------------------------------------
// Optional Entra app registration (Microsoft Graph Bicep extension)
// ---------------------------------------------------------------------------------------------

module entraApp 'app/entra-app.bicep' = if (deployEntraAppRegistration) {
  name: 'relay-entra-app'
  scope: rg
  params: {
    displayName: entraAppDisplayName
    // One app registration per azd environment: the Graph extension finds the app by uniqueName, so a name
    // from the environment's resource token (subscription, environment name, region) keeps two environments
    // in one tenant apart and survives a change of display name.
    uniqueName: 'graph-mail-relay-${resourceToken}'
    grantMailSend: grantMailSendInEntra
    grantMailRead: grantMailReadInEntra
    // federated: the subject of the federated identity credential is the relay's identity (empty: none).
    federatedIdentityPrincipalId: graphCredential == 'federated' ? identity.outputs.principalId : ''
    // certificate: the current certificate's public key and dates, from the deployment script (empty: none).
    certificatePublicKey: graphCredential == 'certificate' ? graphCertificate!.outputs.publicKey : ''
    certificateNotBefore: graphCredential == 'certificate' ? graphCertificate!.outputs.notBefore : ''
    certificateExpires: graphCredential == 'certificate' ? graphCertificate!.outputs.expires : ''
  }
}

// managed-identity mode, application access policy model: Mail.Send (and Mail.Read with grantSentItemsRead) assigned
// to the identity's service principal, for the policy to narrow.
module identityGraphRoles 'app/identity-graph-roles.bicep' = if (grantGraphRolesToIdentity) {
  name: 'relay-identity-graph-roles'
  scope: rg
  params: {
    identityPrincipalId: identity.outputs.principalId
    grantMailRead: grantSentItemsRead
  }
}

// The Graph caller's client id: in managed-identity mode the identity's own (the relay requires GRAPH_CLIENT_ID, when
// set, to equal AZURE_CLIENT_ID there), else the app registration's.
var effectiveGraphClientId = graphCredential == 'managed-identity' ? identity.outputs.clientId : (deployEntraAppRegistration ? entraApp!.outputs.appId : graphClientId)

// ---------------------------------------------------------------------------------------------
// Compute: Flex Consumption plan + Function App
// ---------------------------------------------------------------------------------------------

module plan 'br/public:avm/res/web/serverfarm:0.1.1' = {
  name: 'relay-plan'
  scope: rg
  params: {
    name: '${abbrs.webServerFarms}mailrelay-${resourceToken}'
    location: location
    tags: tags
    sku: {
      name: 'FC1'
      tier: 'FlexConsumption'
    }
    reserved: true
  }
}

module api 'app/api.bicep' = {
  name: 'relay-function-app'
  scope: rg
  params: {
    name: functionAppName
    location: location
    tags: tags
    serviceName: 'relay'
    appServicePlanId: plan.outputs.resourceId
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: appInsights.outputs.connectionString
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    appSettings: {
      GRAPH_CREDENTIAL: graphCredential
      GRAPH_TENANT_ID: graphTenantId
      GRAPH_CLIENT_ID: effectiveGraphClientId
      KEY_VAULT_URI: keyVault.outputs.uri
      GRAPH_CLIENT_SECRET_NAME: graphClientSecretName
      GRAPH_CERTIFICATE_NAME: graphCertificateName
      ALLOWED_SENDERS: allowedSenders
      MAIL_QUEUE_NAME: mailQueueName
      SEND_MAX_ATTEMPTS: string(sendMaxAttempts)
      SEND_MAX_AGE_HOURS: sendMaxAgeHours
      // The relay's hints and `mailrelay doctor` depend on the model the scripts in infra/exchange set up.
      EXCHANGE_SCOPE_MODEL: exchangeScopeModel == 'ApplicationAccessPolicy' ? 'policy' : 'rbac'
      EXPIRY_CHECK_SCHEDULE: expiryCheckSchedule
      EXPIRY_WARN_DAYS: expiryWarnDays
      EXPIRY_ALERT_SENDER: expiryAlertSender
      EXPIRY_ALERT_RECIPIENTS: expiryAlertRecipients
      EXPIRY_ALERT_WEBHOOK_URL: expiryAlertWebhookUrl
      SEND_UNKNOWN_OUTCOME: sendUnknownOutcome
      STATUS_RETENTION_DAYS: statusRetentionDays
      STATUS_CLEANUP_SCHEDULE: statusCleanupSchedule
      QUEUE_DEPTH_SCHEDULE: queueDepthSchedule
      MAX_MESSAGE_SIZE_MB: maxMessageSizeMb
      PAYLOAD_RETENTION_DAYS: payloadRetentionDays
      MAILRELAY_APPS: string(relayApps)
    }
  }
  // Roles first, so the host's first start and azd's first deployment find their access in place.
  dependsOn: [
    rbac
  ]
}

// ---------------------------------------------------------------------------------------------
// Role assignments (least privilege; see app/rbac.bicep)
// ---------------------------------------------------------------------------------------------

module rbac 'app/rbac.bicep' = {
  name: 'relay-rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    mailQueueName: mailQueueName
    statusTableName: statusTableName
    payloadContainerName: payloadContainerName
    keyVaultName: keyVault.outputs.name
    appInsightsName: appInsights.outputs.name
    relayPrincipalId: identity.outputs.principalId
    relayReadsKeyVault: graphCredentialInKeyVault
    deployerManagesCertificates: graphCredential == 'certificate'
    senderPrincipalIds: outboxSenderPrincipalIds
    statusReaderPrincipalIds: statusReaderPrincipalIds
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
  }
}

// The apps' declaration checked (the appNames... lists above): a module of no resources whose parameters, one per
// rule, each take at most zero names (@maxLength(0)); Azure Resource Manager refuses a parameter value that breaks its
// constraint, naming the parameter.
module appDeclarationCheck 'app/apps-check.bicep' = {
  name: 'relay-apps-check'
  scope: rg
  params: {
    namesOfWrongLength: appNamesOfWrongLength
    namesWithOtherCharacters: appNamesWithOtherCharacters
    namesNotStartingWithALetter: appNamesNotStartingWithALetter
    namesWithMisplacedHyphens: appNamesWithMisplacedHyphens
    namesReserved: appNamesReserved
    namesDeclaredTwice: appNamesDeclaredTwice
    namesTakingAPoisonQueue: appNamesTakingAPoisonQueue
    namesWithoutSenders: appNamesWithoutSenders
    namesWithSendersNotAllowed: appNamesWithSendersNotAllowed
    namesSharingAStatusTable: appNamesSharingAStatusTable
  }
}

// Each app's roles, on its own queue, payload container and status table only (app/app-access.bicep). Its queue,
// poison queue, container and table are created by the storage module (their names above), which waits for
// appDeclarationCheck.
module appAccess 'app/app-access.bicep' = [for (app, i) in apps: {
  name: 'relay-app-${app.name}'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    appName: app.name
    queueName: '${mailQueueName}-${app.name}'
    payloadContainerName: '${payloadContainerName}-${app.name}'
    statusTableName: appStatusTableNames[i]
    principalIds: app.?principals ?? []
  }
}]

// ---------------------------------------------------------------------------------------------
// Monitoring: alerts on the relay's telemetry dimensions, and a workbook (app/monitoring.bicep)
// ---------------------------------------------------------------------------------------------

module monitoring 'app/monitoring.bicep' = {
  name: 'relay-monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    namePrefix: 'mailrelay-${resourceToken}'
    appInsightsId: appInsights.outputs.resourceId
    alertEmail: alertEmail
    throttledAlertThreshold: throttledAlertThreshold
    mailboxRecipientsAlertPercent: mailboxRecipientsAlertPercent
    mailWaitingAlertMinutes: mailWaitingAlertMinutes
  }
}

// ---------------------------------------------------------------------------------------------
// SMTP listener (optional): app/smtp.bicep
// ---------------------------------------------------------------------------------------------

// The relay's identity already holds what the listener needs on storage: Storage Queue Data Contributor and Storage Blob
// Data Owner on the account (app/rbac.bicep), which cover every app's queue (enqueue) and payload container (the MIME's
// claim check). The module adds Key Vault Secrets User on its two secrets only. MAILRELAY_APPS and ALLOWED_SENDERS are
// the Function's own values, so the listener checks senders against the same lists the relay does.
module smtpListener 'app/smtp.bicep' = if (deploySmtpListener) {
  name: 'relay-smtp'
  scope: rg
  params: {
    location: location
    tags: tags
    vnetName: 'vnet-mailrelay-smtp-${resourceToken}'
    vnetAddressPrefix: smtpVnetAddressPrefix
    environmentName: 'cae-mailrelay-${resourceToken}'
    workspaceResourceId: logAnalytics.outputs.resourceId
    appName: 'ca-mailrelay-smtp-${resourceToken}'
    image: smtpImage
    registryServer: smtpRegistryServer
    identityId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    identityPrincipalId: identity.outputs.principalId
    keyVaultName: keyVault.outputs.name
    keyVaultUri: keyVault.outputs.uri
    loginsSecretName: smtpLoginsSecretName
    tlsCertificateName: smtpTlsCertificateName
    allowedSourceCidrs: smtpAllowedSourceCidrs
    relayApps: string(relayApps)
    allowedSenders: allowedSenders
    mailQueueName: mailQueueName
    queueServiceUri: 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}'
    hostname: smtpHostname
    minReplicas: smtpMinReplicas
    maxReplicas: smtpMaxReplicas
  }
  // The identity's storage roles before the first mail is enqueued; no app's queue before its name passed the checks.
  dependsOn: [
    rbac
    appDeclarationCheck
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd writes them to .azure/<env>/.env)
// ---------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output RESOURCE_GROUP string = rg.name
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output RELAY_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output RELAY_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output KEY_VAULT_NAME string = keyVault.outputs.name
output KEY_VAULT_URI string = keyVault.outputs.uri
output GRAPH_TENANT_ID string = graphTenantId
output GRAPH_CLIENT_ID string = effectiveGraphClientId
output GRAPH_CLIENT_SECRET_NAME string = graphClientSecretName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output STORAGE_QUEUE_SERVICE_URI string = 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}/'
output STORAGE_TABLE_SERVICE_URI string = 'https://${storage.outputs.name}.table.${environment().suffixes.storage}/'
output MAIL_QUEUE_NAME string = mailQueueName
output MAIL_QUEUE_URL string = 'https://${storage.outputs.name}.queue.${environment().suffixes.storage}/${mailQueueName}'
output MAIL_POISON_QUEUE_NAME string = poisonQueueName
output RETRY_QUEUE_NAME string = retryQueueName
output STATUS_TABLE_NAME string = statusTableName
output PAYLOAD_CONTAINER_NAME string = payloadContainerName
output APPLICATIONINSIGHTS_NAME string = appInsights.outputs.name
output LOG_ANALYTICS_WORKSPACE_ID string = logAnalytics.outputs.resourceId
output EXCHANGE_SCOPE_MODEL string = exchangeScopeModel
output GRANT_SENT_ITEMS_READ bool = grantSentItemsRead
output ENTRA_APP_SERVICE_PRINCIPAL_ID string = deployEntraAppRegistration ? entraApp!.outputs.servicePrincipalId : ''
output GRAPH_CREDENTIAL string = graphCredential
output GRAPH_CERTIFICATE_NAME string = graphCertificateName
output GRAPH_CERTIFICATE_THUMBPRINT string = graphCredential == 'certificate' ? graphCertificate!.outputs.thumbprint : ''
// The listener (empty without deploySmtpListener): the name devices use, the app's own name, and the environment's
// address for a DNS record of your own name.
output SMTP_HOSTNAME string = deploySmtpListener ? smtpListener!.outputs.greetingName : ''
output SMTP_FQDN string = deploySmtpListener ? smtpListener!.outputs.fqdn : ''
output SMTP_STATIC_IP string = deploySmtpListener ? smtpListener!.outputs.staticIp : ''
