// Optional: the Entra ID app registration the relay signs in as, with the Microsoft Graph Bicep
// extension (bicepconfig.json: microsoftGraphV1 = microsoftgraph/v1.0:1.0.0, Bicep 0.36.1+).
// Deployed only when main.bicep's deployEntraApp is true, but compiled on every `azd provision` whatever
// deployEntraApp says: hence azure.yaml's requiredVersions.azd (an older azd brings an older Bicep).
//
// Who can deploy it: Graph resources are created with the deploying user's own directory rights.
// Creating the app and its service principal needs Application Administrator (or Cloud Application
// Administrator); the Mail.Send and Mail.Read grants to Microsoft Graph (grantMailSend, grantMailRead)
// need Privileged Role Administrator or Global Administrator. Without them, create the app in the portal instead
// (infra/README.md, step 1) and leave deployEntraApp false.
//
// The credential follows main.bicep's graphCredential (GRAPH_CREDENTIAL):
//   federated    a federated identity credential that trusts the relay's user-assigned identity (below);
//   certificate  the Key Vault certificate's public key in keyCredentials (app/certificate.bicep makes it);
//   secret       nothing here: a client secret's value could not be kept out of the deployment; create one with
//                `az ad app credential reset` (README step 5).
// With deployEntraApp this module owns the app's keyCredentials: exactly the current certificate in certificate
// mode, none in the others (the app is the relay's own, one per environment). managed-identity mode has no app
// registration at all; main.bicep does not deploy this module then. The Exchange Online scope is set by
// infra/exchange/*.ps1.
//
// Note for infra/check.sh: pycep-parser 0.5.1 (the version checkov pins) predates the `extension`
// keyword; check.sh blanks that one line before parsing. Everything else here is plain Bicep.

extension microsoftGraphV1

@description('Display name of the app registration (free to change: the app is found by uniqueName).')
param displayName string

// The Graph extension identifies an application by uniqueName ("Required, DeployTimeConstant, Identifier ...
// used as an alternate key. Immutable.": microsoftgraph/msgraph-bicep-types, generated/microsoftgraph/
// microsoft.graph/v1.0/1.0.0/types.md, Microsoft.Graph/applications@v1.0): a redeploy with the same uniqueName
// updates the same app. main.bicep derives it from the azd environment (its resource token), so two
// environments in one tenant get two apps, and a new display name renames the app instead of creating a second
// one that holds none of the first one's consent, secrets or Exchange scope.
@minLength(1)
@description('Unique name (alternate key) of the app registration, one per azd environment: graph-mail-relay-<resource token>.')
param uniqueName string

@description('Grant Mail.Send (application permission) with admin consent, tenant-wide. Only for the ApplicationAccessPolicy model: with RBAC for Applications this consent would add to the Exchange scope and defeat it.')
param grantMailSend bool = false

@description('Declare and grant Mail.Read (application permission) with admin consent, tenant-wide, so the relay can look an unknown send up in the sender\'s Sent Items. Only for the ApplicationAccessPolicy model, where the policy narrows it to the same mailboxes as Mail.Send; with RBAC for Applications Exchange grants "Application Mail.Read" instead (infra/exchange), and an Entra consent would let the app read every mailbox in the tenant.')
param grantMailRead bool = false

@description('federated mode: principal (object) id of the relay\'s user-assigned identity, the subject of the federated identity credential. Empty: no federated credential.')
param federatedIdentityPrincipalId string = ''

@minLength(1)
@maxLength(120)
@description('Name of the federated identity credential (the extension\'s alternate key under the app; URL friendly, at most 120 characters).')
param federatedCredentialName string = 'graph-mail-relay-identity'

@description('certificate mode: base64 DER of the Key Vault certificate\'s current version (app/certificate.bicep). Empty: no key credential.')
param certificatePublicKey string = ''

@description('certificate mode: start of the certificate\'s validity (ISO 8601).')
param certificateNotBefore string = ''

@description('certificate mode: end of the certificate\'s validity (ISO 8601).')
param certificateExpires string = ''

// Microsoft Graph's first-party application id, the same in every tenant.
var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'

// Id of Microsoft Graph's application role (not the delegated scope) "Mail.Send": "Send mail as any
// user". Fixed across tenants; checked against the permissions reference
// (learn.microsoft.com/graph/permissions-reference#mailsend): b633e1c5-b582-4048-a93e-9f11b44c7e96.
var mailSendAppRoleId = 'b633e1c5-b582-4048-a93e-9f11b44c7e96'

// Id of Microsoft Graph's application role "Mail.Read": "Read mail in all mailboxes" (bodies,
// attachments and extended properties; Mail.ReadBasic leaves extended properties out, and the relay's
// Sent Items look-up filters on one). Same source: 810c84a8-4a9e-49e6-bf7d-12d183f40d01.
var mailReadAppRoleId = '810c84a8-4a9e-49e6-bf7d-12d183f40d01'

// The application permissions declared on the app (type Role = application permission, not the
// delegated Scope). Mail.Read only when it is granted below: a declared permission invites the portal's
// "Grant admin consent" button, which in the RBAC model would open every mailbox to reading.
var mailSendAccess = {
  id: mailSendAppRoleId
  type: 'Role'
}
var mailReadAccess = {
  id: mailReadAppRoleId
  type: 'Role'
}
var declaredAccess = grantMailRead ? concat(array(mailSendAccess), array(mailReadAccess)) : array(mailSendAccess)

// Workload identity federation with a managed identity ("Configure an application to trust a managed identity",
// learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity): the issuer is
// the managed identity's tenant's v2.0 authority, the subject its principal (object) id, the audience
// api://AzureADTokenExchange. The same expressions as Microsoft's quickstart (microsoftgraph/msgraph-bicep-types,
// quickstart-templates/msi-as-a-fic-secretless/main.bicep: issuer '${loginEndpoint}${tenantId}/v2.0' with
// loginEndpoint = environment().authentication.loginEndpoint, which ends in '/'). The identity lives in this
// deployment's tenant, hence tenant(), not graphTenantId. Entra checks none of the three when the credential is
// saved: a wrong one fails only at token time (Entra error codes reference: AADSTS700211 issuer, AADSTS700212
// audience, AADSTS700213 subject: "No matching federated identity record found for presented assertion ..."), which `mailrelay doctor`
// names.
var federatedIdentityIssuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
// The public cloud's token exchange audience; the Graph Bicep extension deploys to the public cloud only (the same
// quickstart: "Microsoft Graph Bicep file deployment is only supported in Public Cloud"), and the relay asks its
// identity for a token for exactly this audience.
var federatedIdentityAudience = 'api://AzureADTokenExchange'

// keyCredentials entry for the certificate (Graph keyCredential: type AsymmetricX509Cert, usage Verify, key = the
// certificate's raw data in base64; customKeyIdentifier left out, so Graph sets it to the thumbprint). As in
// Microsoft's quickstart create-client-app-sp-with-kv-cert (microsoftgraph/msgraph-bicep-types), from the
// deployment script's outputs.
var certificateKeyCredential = {
  displayName: 'graph-mail-relay Key Vault certificate'
  type: 'AsymmetricX509Cert'
  usage: 'Verify'
  key: certificatePublicKey
  startDateTime: certificateNotBefore
  endDateTime: certificateExpires
}
var keyCredentials = empty(certificatePublicKey) ? [] : array(certificateKeyCredential)

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  notes: 'Graph Mail Relay: sends mail with POST /users/{sender}/sendMail. Exchange Online limits which mailboxes it may send as (infra/exchange).'
  // Declares Mail.Send (and with grantMailRead Mail.Read) as APPLICATION permissions. Declaring grants
  // nothing by itself; consent is the appRoleAssignedTo below (or the portal's "Grant admin consent").
  requiredResourceAccess: [
    {
      resourceAppId: microsoftGraphAppId
      resourceAccess: declaredAccess
    }
  ]
  keyCredentials: keyCredentials
}

// federated mode: the app trusts tokens the relay's user-assigned identity gets for api://AzureADTokenExchange.
// A child of the application, named '<app uniqueName>/<credential name>' (Microsoft.Graph/applications/
// federatedIdentityCredentials@v1.0: name is "Required, Identifier ... Alternate key", generated/microsoftgraph/
// microsoft.graph/v1.0/1.0.0/types.md; the quickstart's name: '${myApp.uniqueName}/msiAsFic'). A redeploy finds it
// by that name and updates it in place.
resource federatedCredential 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = if (!empty(federatedIdentityPrincipalId)) {
  name: '${app.uniqueName}/${federatedCredentialName}'
  description: 'Graph Mail Relay: the Function App\'s user-assigned managed identity signs in as this app.'
  issuer: federatedIdentityIssuer
  subject: federatedIdentityPrincipalId
  audiences: [
    federatedIdentityAudience
  ]
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
}

resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: microsoftGraphAppId
}

// Admin consent of the application permission: an app role assignment from Microsoft Graph's
// service principal to ours.
//
// A second `azd provision` must leave it as it is. The extension keys appRoleAssignedTo by the composite
// (appRoleId, principalId) inside the resource service principal (resourceId): microsoftgraph/msgraph-bicep-types,
// src/swagger-generation/output/metadata.json ("containerEntitySet": "servicePrincipals", "keyProperty":
// "resourceId", "compositeKeyProperties": ["appRoleId", "principalId"]), from PR #164 "Update appRoleAssignedTo
// metadata to support all principal types" (August 2024). Before it the key was (appRoleId, resourceId), and
// a redeploy was reported to fail with "EntitlementGrant entry already exists" (msgraph-bicep-types issue #161,
// appRoleAssignedTo@beta, Bicep 0.29). The assignment is "updatable": false in that metadata, so the three
// properties below never change for a given app (the ids are fixed, the principal is this app's service
// principal): a redeploy finds the same assignment by its key. The pinned extension, v1.0 1.0.0 (July 2025),
// carries that key. If a tenant still answers "already exists", infra/README.md's troubleshooting table says
// what to do (provision with DEPLOY_ENTRA_APP=false once the app exists: the app is then referenced by
// GRAPH_CLIENT_ID, and nothing in Entra is touched).
resource mailSendGrant 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantMailSend) {
  appRoleId: mailSendAppRoleId
  principalId: servicePrincipal.id
  resourceId: microsoftGraph.id
}

// Admin consent of Mail.Read, for the Sent Items look-up; the application access policy that narrows
// Mail.Send narrows it too (a policy restricts the app's access to mailboxes whatever the permission:
// https://learn.microsoft.com/powershell/module/exchange/new-applicationaccesspolicy).
resource mailReadGrant 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantMailRead) {
  appRoleId: mailReadAppRoleId
  principalId: servicePrincipal.id
  resourceId: microsoftGraph.id
}

@description('Application (client) id: GRAPH_CLIENT_ID.')
output appId string = app.appId

@description('Object id of the app registration.')
output applicationObjectId string = app.id

@description('Object id of the service principal (enterprise application); the Exchange scripts need it.')
output servicePrincipalId string = servicePrincipal.id

@description('Issuer of the federated identity credential (empty without one).')
output federatedCredentialIssuer string = empty(federatedIdentityPrincipalId) ? '' : federatedIdentityIssuer
