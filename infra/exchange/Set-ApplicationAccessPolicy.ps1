<#
.SYNOPSIS
    LEGACY model: restricts the relay's app to the members of one mail-enabled security group with an
    Exchange Online Application Access Policy.

.DESCRIPTION
    Microsoft advises against creating new Application Access Policies: RBAC for Applications
    (Set-RbacApplicationScope.ps1) replaces them. Use this script only where the tenant already
    relies on policies, or to reproduce an older setup.

    In this model the app holds Microsoft Graph's Mail.Send as an APPLICATION permission with admin
    consent in Entra ID (infra/README.md, step 2; or the Bicep module with
    exchangeScopeModel = 'ApplicationAccessPolicy'), and the policy narrows it:

        New-ApplicationAccessPolicy -AppId <app> -PolicyScopeGroupId <group> -AccessRight RestrictAccess

    The policy restricts every Graph mail permission the app holds, not only Mail.Send: Microsoft lists
    Mail.Read, Mail.ReadBasic, Mail.ReadBasic.All, Mail.ReadWrite and Mail.Send (with the MailboxSettings,
    Calendars and Contacts ones) among the permissions a policy limits
    (https://learn.microsoft.com/graph/auth-limit-mailbox-access, "Supported permissions").
    So the optional permissions are narrowed to the same group, and what each needs here is its Entra admin
    consent as an APPLICATION permission (infra/README.md, step 2), then this one policy:
      - Mail.Read: the relay's Sent Items look-ups of unknown sends (main.bicep grantSentItemsRead);
      - Mail.ReadWrite: messages over 3 MB (large attachments or bodies), which Graph takes only through a
        draft and an upload session, and creating those needs Mail.ReadWrite
        (https://learn.microsoft.com/graph/api/attachment-createuploadsession). Without it such a message
        cannot be sent. Mail.ReadWrite lets the app create, read, change and delete all mail of the group's
        mailboxes (and it includes reading, so Mail.Read is then not needed for the look-ups).
    The Bicep module (deployEntraApp) consents Mail.Send and, with grantSentItemsRead, Mail.Read; Mail.ReadWrite
    is consented in the portal (API permissions > Add > Microsoft Graph > Application permissions).

    It is idempotent: existing policies for the app are listed first; a policy that already restricts
    the app to the group is left alone. A policy for the app that differs (other group, DenyAccess) is
    reported and left alone unless -Replace is given (a policy's group cannot be edited in place).
    It prints the plan before changing anything; -WhatIf shows the plan and stops.

    Changes take effect after 30 minutes to 2 hours, sometimes longer. Check with Test-ExchangeScope.ps1.
    Who runs it: an Exchange Administrator (Organization Management).

.PARAMETER AppId
    Application (client) id of the app registration: GRAPH_CLIENT_ID.
    In managed-identity mode (no app registration), the client id of the relay's user-assigned identity
    (RELAY_IDENTITY_CLIENT_ID); -IdentityClientId is the same parameter. The identity's service principal then holds
    Graph's Mail.Send as an app role (main.bicep, app/identity-graph-roles.bicep), and the policy names it by that
    client id, its appId. Assumed: New-ApplicationAccessPolicy documents -AppId as an application's id and no
    Microsoft page mentions managed identities; a managed identity's token carries its client id as appid, which
    is what Exchange matches. Check with Test-ExchangeScope.ps1 -IdentityClientId, and prefer RBAC for Applications.

.PARAMETER GroupIdentity
    The MAIL-ENABLED SECURITY GROUP whose members the relay may send as (address preferred). Policies
    accept no other group type. Add EXPIRY_ALERT_SENDER as a member too.

.PARAMETER Description
    Description stored on the policy.

.PARAMETER UserPrincipalName
    Admin account for Connect-ExchangeOnline when no session is open yet.

.PARAMETER Replace
    Remove the app's other policies (after confirmation) and create the right one.

.EXAMPLE
    ./Set-ApplicationAccessPolicy.ps1 -AppId 11111111-2222-3333-4444-555555555555 -GroupIdentity relay-senders@contoso.com -WhatIf
#>
#Requires -Modules ExchangeOnlineManagement
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)]
    [Alias('IdentityClientId')]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [Parameter(Mandatory)]
    [ValidateNotNullOrEmpty()]
    [string] $GroupIdentity,

    [ValidateNotNullOrEmpty()]
    [string] $Description = 'Graph Mail Relay: may send only as members of this group',

    [string] $UserPrincipalName,

    [switch] $Replace
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'ExchangeScope.Common.ps1')  # Get-Prop, Connect-ExchangeIfNeeded

Write-Warning 'Application Access Policies are the legacy model; Microsoft advises against new ones. Prefer Set-RbacApplicationScope.ps1 (RBAC for Applications).'

# --- look ---------------------------------------------------------------------------------------

Connect-ExchangeIfNeeded -UserPrincipalName $UserPrincipalName

$group = Get-DistributionGroup -Identity $GroupIdentity -ErrorAction SilentlyContinue
if ($null -eq $group) {
    throw "Mail-enabled group '$GroupIdentity' not found. Create a mail-enabled security group with the sending mailboxes as members first."
}
if ("$(Get-Prop $group 'RecipientTypeDetails')" -ne 'MailUniversalSecurityGroup') {
    throw "'$GroupIdentity' is a $(Get-Prop $group 'RecipientTypeDetails'); an Application Access Policy needs a mail-enabled security group."
}
$groupAddress = "$(Get-Prop $group 'PrimarySmtpAddress')"
$groupIds = @((Get-Prop $group 'PrimarySmtpAddress'), (Get-Prop $group 'ExternalDirectoryObjectId'), (Get-Prop $group 'Identity'),
    (Get-Prop $group 'Name'), (Get-Prop $group 'DistinguishedName'), (Get-Prop $group 'Guid')) |
    Where-Object { $_ } | ForEach-Object { "$_".ToLowerInvariant() }

$policies = @(Get-ApplicationAccessPolicy -ErrorAction SilentlyContinue | Where-Object { "$(Get-Prop $_ 'AppId')" -eq $AppId })
$matching = @($policies | Where-Object {
        "$(Get-Prop $_ 'AccessRight')" -eq 'RestrictAccess' -and (
            @((Get-Prop $_ 'ScopeName'), (Get-Prop $_ 'ScopeIdentity'), (Get-Prop $_ 'ScopeIdentityRaw')) |
            Where-Object { $_ -and $groupIds -contains "$_".ToLowerInvariant() }
        )
    })
$others = @($policies | Where-Object { $matching -notcontains $_ })

# --- say what will happen -------------------------------------------------------------------------

Write-Host ''
Write-Host "Application Access Policy: app $AppId may send only as the members of $groupAddress."
foreach ($policy in $policies) {
    Write-Host "  existing policy: $(Get-Prop $policy 'AccessRight') on '$(Get-Prop $policy 'ScopeName')' ($(Get-Prop $policy 'Identity'))"
}
if ($matching.Count -gt 0) {
    Write-Host '  The right policy exists: no change.'
}
else {
    Write-Host "  will CREATE: New-ApplicationAccessPolicy -AppId $AppId -PolicyScopeGroupId $groupAddress -AccessRight RestrictAccess"
}
foreach ($other in $others) {
    if ($Replace) {
        Write-Host "  will REMOVE: policy $(Get-Prop $other 'Identity') ($(Get-Prop $other 'AccessRight') on '$(Get-Prop $other 'ScopeName')')"
    }
    else {
        Write-Warning "The app has another policy: $(Get-Prop $other 'AccessRight') on '$(Get-Prop $other 'ScopeName')' ($(Get-Prop $other 'Identity')). Policies combine; review it, or run with -Replace to remove it."
    }
}
Write-Host ''

# --- do ---------------------------------------------------------------------------------------

if ($Replace) {
    foreach ($other in $others) {
        $id = "$(Get-Prop $other 'Identity')"
        if ($PSCmdlet.ShouldProcess("application access policy $id", 'Remove-ApplicationAccessPolicy')) {
            Remove-ApplicationAccessPolicy -Identity $id -Confirm:$false
            Write-Host "Removed policy $id."
        }
    }
}

if ($matching.Count -eq 0) {
    if ($PSCmdlet.ShouldProcess("app $AppId", "New-ApplicationAccessPolicy -PolicyScopeGroupId $groupAddress -AccessRight RestrictAccess")) {
        New-ApplicationAccessPolicy -AppId $AppId -PolicyScopeGroupId $groupAddress -AccessRight RestrictAccess -Description $Description | Out-Null
        Write-Host 'Created the application access policy.'
    }
}

Write-Host ''
Write-Host 'Reminder: in this model the app needs Mail.Send as an APPLICATION permission with admin consent in Entra ID (README step 2).'
# The policy narrows every Graph mail permission the app holds, so the optional Mail.Read (Sent Items look-ups of
# unknown sends; main.bicep grantSentItemsRead) and Mail.ReadWrite (messages over 3 MB: draft + upload session)
# reach the same mailboxes as Mail.Send and no others:
# https://learn.microsoft.com/powershell/module/exchange/new-applicationaccesspolicy,
# https://learn.microsoft.com/graph/auth-limit-mailbox-access ("Supported permissions").
Write-Host 'Optional: Mail.Read (APPLICATION permission, admin consent) lets the relay resolve unknown sends in Sent Items; this policy limits it to the same mailboxes.'
Write-Host 'Optional: Mail.ReadWrite (APPLICATION permission, admin consent) lets the relay send messages over 3 MB (draft + upload session); this policy limits it to the same mailboxes too.'
Write-Host 'Exchange applies policy changes after 30 minutes to 2 hours, sometimes longer. Then verify:'
Write-Host "  ./Test-ExchangeScope.ps1 -AppId $AppId -Model ApplicationAccessPolicy -AllowedAddress <member> -DeniedAddress <non-member>"
