// The apps' declaration (main.bicep's parameter apps) checked before anything is created for an app.
//
// No resources. main.bicep passes one list per rule: the names of the apps that break it. Each parameter takes at most
// zero elements (@maxLength(0) on an array: "the maximum length for string and array parameters", Bicep's
// "Parameters" page, Decorators), so one offending name makes Azure Resource Manager refuse the deployment of this
// module, naming the parameter, which names the rule; the deployment's inputs (portal: the deployment
// relay-apps-check, Inputs) show the names. The storage account depends on this module, so no app gets a queue, a
// container or a role while its declaration breaks a rule.
//
// Why not fail('...'): infra/check.sh parses every file with pycep-parser, which does not know fail() (main.bicep's
// header). The wording of Azure Resource Manager's refusal is its own (assumed: no Microsoft page quotes it).
// The relay checks the same rules at start (shared/settings.py parse_apps) and names the app there.

@maxLength(0)
@description('Apps whose name is shorter than 2 or longer than 24 characters.')
param namesOfWrongLength array = []

@maxLength(0)
@description('Apps whose name holds a character other than lower-case letters, digits and hyphens (upper-case letters included).')
param namesWithOtherCharacters array = []

@maxLength(0)
@description('Apps whose name does not start with a lower-case letter.')
param namesNotStartingWithALetter array = []

@maxLength(0)
@description('Apps whose name holds two hyphens in a row or ends with one.')
param namesWithMisplacedHyphens array = []

@maxLength(0)
@description('Apps named default, retry, poison or retry-poison: the implicit app (the outbox), or a name that would make the app\'s queue one of the relay\'s own (mail-outbox-retry, mail-outbox-poison, mail-outbox-retry-poison).')
param namesReserved array = []

@maxLength(0)
@description('Apps declared more than once.')
param namesDeclaredTwice array = []

@maxLength(0)
@description('Apps named <another app>-poison, whose queue would be the other app\'s poison queue.')
param namesTakingAPoisonQueue array = []

@maxLength(0)
@description('Apps without senders.')
param namesWithoutSenders array = []

@maxLength(0)
@description('Apps with a sender that is not on allowedSenders (ALLOWED_SENDERS bounds every app\'s senders).')
param namesWithSendersNotAllowed array = []

@maxLength(0)
@description('Apps whose name is another app\'s but for hyphens (billing-eu, billingeu): they would share a status table, mailstatus<name without its hyphens> (table names hold letters and digits only).')
param namesSharingAStatusTable array = []
