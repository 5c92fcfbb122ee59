// managed-identity mode (GRAPH_CREDENTIAL=managed-identity) under the ApplicationAccessPolicy model only: Microsoft
// Graph's application permissions assigned to the relay's user-assigned identity's service principal, narrowed by
// the application access policy (infra/exchange/Set-ApplicationAccessPolicy.ps1 -AppId <identity client id>).
//
// A managed identity cannot be given API permissions in the portal ("API permissions" belongs to app registrations);
// Microsoft documents an app role assignment to its service principal instead ("Assign a managed identity access to
// an application role", learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-assign-app-role-
// managed-identity: principalId = the managed identity's service principal, resourceId = the resource app's
// service principal, appRoleId = the role). The Graph Bicep extension makes the same assignment
// (Microsoft.Graph/appRoleAssignedTo@v1.0, as app/entra-app.bicep does for an app; Microsoft Graph's service
// principal found with `existing` by its appId, as in microsoftgraph/msgraph-bicep-types quickstart
// msi-as-a-fic-secretless).
//
// Under RbacForApplications main.bicep does not deploy this module: no Entra consent at all, Exchange's RBAC for
// Applications points at the identity (Set-RbacApplicationScope.ps1 -IdentityClientId -IdentityPrincipalId), and a
// tenant-wide Graph role here would add to the scope and defeat it, exactly as for an app registration.
//
// Who can deploy it: assigning an app role of Microsoft Graph needs Privileged Role Administrator or Global
// Administrator (the same as the admin consent in app/entra-app.bicep).

extension microsoftGraphV1

@description('Principal (object) id of the relay\'s user-assigned identity: its service principal\'s id.')
param identityPrincipalId string

@description('Also assign Mail.Read (Sent Items look-ups of unknown sends), narrowed by the same policy.')
param grantMailRead bool = false

// Microsoft Graph's first-party application id, the same in every tenant.
var microsoftGraphAppId = '00000003-0000-0000-c000-000000000000'

// Microsoft Graph application roles (learn.microsoft.com/graph/permissions-reference): Mail.Send "Send mail as any
// user", Mail.Read "Read mail in all mailboxes"; the same ids as app/entra-app.bicep.
var mailSendAppRoleId = 'b633e1c5-b582-4048-a93e-9f11b44c7e96'
var mailReadAppRoleId = '810c84a8-4a9e-49e6-bf7d-12d183f40d01'

resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: microsoftGraphAppId
}

// Keyed by (appRoleId, principalId) under resourceId, never updated (app/entra-app.bicep explains the key): the
// three values are fixed for a given identity, so a redeploy finds the same assignment.
resource identityMailSend 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {
  appRoleId: mailSendAppRoleId
  principalId: identityPrincipalId
  resourceId: microsoftGraph.id
}

resource identityMailRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = if (grantMailRead) {
  appRoleId: mailReadAppRoleId
  principalId: identityPrincipalId
  resourceId: microsoftGraph.id
}

@description('Object id of Microsoft Graph\'s service principal in this tenant.')
output microsoftGraphServicePrincipalId string = microsoftGraph.id
