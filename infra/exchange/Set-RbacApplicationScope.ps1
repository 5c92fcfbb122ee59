<#
.SYNOPSIS
    Lets the relay's app send mail only as the members of one group: Exchange Online RBAC for
    Applications (the recommended model, generally available since 2023).

.DESCRIPTION
    Microsoft Graph's Mail.Send reaches every mailbox in the tenant unless Exchange Online narrows it.
    With RBAC for Applications, Exchange itself grants the app the role "Application Mail.Send",
    limited to a management scope. This script makes sure that, in order:

      1. an Exchange service principal points at the app's Entra service principal
         (New-ServicePrincipal -AppId -ObjectId);
      2. a management scope holds the direct members of the group
         (New-ManagementScope -RecipientRestrictionFilter "MemberOfGroup -eq '<group DN>'");
      3. a role assignment gives the app "Application Mail.Send" within that scope
         (New-ManagementRoleAssignment -App -Role "Application Mail.Send" -CustomResourceScope);
      4. with -GrantSentItemsRead, a second assignment gives it "Application Mail.Read" within the
         SAME scope, so the relay can resolve an unknown send (a timeout, a 5xx, a worker that died
         during the call) by looking its mark up in the sender's Sent Items instead of guessing;
      5. with -GrantLargeMessages, a third assignment gives it "Application Mail.ReadWrite" within the
         SAME scope, so the relay can send messages over 3 MB: Graph's sendMail takes attachments up to
         3 MB inline, larger ones need a draft (POST /users/{id}/messages), an upload session
         (attachments/createUploadSession) and POST /messages/{id}/send, and creating the draft and the
         session needs Mail.ReadWrite, not only Mail.Send
         (https://learn.microsoft.com/graph/api/user-post-messages,
          https://learn.microsoft.com/graph/api/attachment-createuploadsession; the send itself is Mail.Send,
          https://learn.microsoft.com/graph/api/message-send).

    Role and cmdlet names as in Microsoft's "Role Based Access Control for Applications in Exchange
    Online": https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac
    ("Application Mail.Send" = Graph Mail.Send, "Application Mail.Read" = Graph Mail.Read,
    "Application Mail.ReadWrite" = Graph Mail.ReadWrite, in its list of supported application roles;
    New-ServicePrincipal, New-ManagementScope, New-ManagementRoleAssignment -App -Role
    -CustomResourceScope, Test-ServicePrincipalAuthorization).

    What Mail.Read costs: it lets the app read ALL mail in every mailbox of the scope (bodies and
    attachments included), not only Sent Items. The look-up filters on a single-value extended
    property, which the lesser Mail.ReadBasic does not cover
    (https://learn.microsoft.com/en-us/graph/permissions-reference). For send-only mailboxes
    (noreply@ and the like, whose mail is the relay's own) it is worth it: without it an unknown
    send is either sent again (SEND_UNKNOWN_OUTCOME=resend, a possible duplicate) or dead-lettered
    (deadletter, a possible loss). Keep people's mailboxes out of the scope group either way.
    Without -GrantSentItemsRead nothing is removed: an existing Mail.Read assignment is reported.

    What Mail.ReadWrite costs: it lets the app create, read, change and delete ALL mail in every mailbox of
    the scope (not send it: that stays Mail.Send). It includes reading, so with it the Sent Items look-ups
    work too, whatever -GrantSentItemsRead says. Without it, a message over 3 MB cannot be sent: Graph
    refuses the draft (403 ErrorAccessDenied) and the request is dead-lettered with the reason.
    Without -GrantLargeMessages nothing is removed: an existing Mail.ReadWrite assignment is reported.

    It is idempotent: each object is looked up first, left alone when it already matches, updated
    when it differs (scope filter, assignment scope), created when missing. It prints the plan before
    changing anything; -WhatIf shows the plan and stops.

    IMPORTANT: Entra ID and Exchange permissions add up. If Mail.Send is also consented tenant-wide
    in Entra ID (API permissions > Grant admin consent, or an appRoleAssignedTo), the app can send as
    ANY mailbox and this scope changes nothing. Do not grant that consent for this model; remove it
    if it exists (this script checks, and removes it with -RemoveEntraConsent).

    Changes take effect after 30 minutes to 2 hours, sometimes longer (Exchange caches permissions).
    Check with Test-ExchangeScope.ps1.

    Who runs it: a member of Exchange's Organization Management role group (Entra role: Exchange
    Administrator). The Entra consent check also needs Microsoft Graph PowerShell with
    Application.Read.All (removal: Application.Read.All and AppRoleAssignment.ReadWrite.All).
    It looks for tenant-wide consents of Mail.Send, Mail.Read, Mail.ReadWrite, Mail.ReadBasic and Mail.ReadBasic.All:
    each would reach every mailbox.

.PARAMETER AppId
    Application (client) id of the app registration: GRAPH_CLIENT_ID.

.PARAMETER ServicePrincipalObjectId
    Object id of the app's SERVICE PRINCIPAL (Entra ID > Enterprise applications > the app >
    Object ID; or `az ad sp show --id <AppId> --query id -o tsv`). Not the app registration's object id.

.PARAMETER IdentityClientId
    managed-identity mode (GRAPH_CREDENTIAL=managed-identity, no app registration): the client id of the relay's
    user-assigned identity (azd output RELAY_IDENTITY_CLIENT_ID; `az identity show --query clientId`). Used instead
    of -AppId: a managed identity's service principal carries the identity's client id as its appId.

.PARAMETER IdentityPrincipalId
    managed-identity mode: the principal id of the relay's user-assigned identity (azd output
    RELAY_IDENTITY_PRINCIPAL_ID; `az identity show --query principalId`). Used instead of -ServicePrincipalObjectId:
    New-ServicePrincipal -ObjectId takes the service principal's object id ("The Object ID property from Enterprise
    applications", MicrosoftDocs/office-docs-powershell, exchange/exchange-ps/ExchangePowerShell/
    New-ServicePrincipal.md), and a managed identity's principalId is exactly that: "The id of the service principal
    object associated with the created identity" (ARM reference, Microsoft.ManagedIdentity/userAssignedIdentities,
    properties.principalId). Never a system-assigned identity's: it changes whenever the Function App is re-created.

.PARAMETER GroupIdentity
    The mail-enabled security group whose members the relay may send as: address, name or DN. It must be
    mail-enabled: a MemberOfGroup scope matches only groups Exchange recognises (an Entra-only group, none).
    Membership is direct (MemberOfGroup does not expand nested groups). Add EXPIRY_ALERT_SENDER too.

.PARAMETER ScopeName
    Name of the management scope. Default: "Graph Mail Relay senders".

.PARAMETER AssignmentName
    Name of the management role assignment. Default: "Graph Mail Relay Mail.Send".

.PARAMETER ReadAssignmentName
    Name of the "Application Mail.Read" assignment made with -GrantSentItemsRead.
    Default: "Graph Mail Relay Mail.Read".

.PARAMETER ReadWriteAssignmentName
    Name of the "Application Mail.ReadWrite" assignment made with -GrantLargeMessages.
    Default: "Graph Mail Relay Mail.ReadWrite".

.PARAMETER GrantSentItemsRead
    Also assign "Application Mail.Read" over the same management scope (step 4 above). The Bicep
    parameter grantSentItemsRead (default true) records the intent; this switch acts on it.

.PARAMETER GrantLargeMessages
    Also assign "Application Mail.ReadWrite" over the same management scope (step 5 above), for messages
    over 3 MB (large attachments or bodies: draft + upload session). Up to MAX_MESSAGE_SIZE_MB (35 by default).

.PARAMETER DisplayName
    Display name of the Exchange service principal, used when it is created. Default: "Graph Mail Relay".

.PARAMETER UserPrincipalName
    Admin account for Connect-ExchangeOnline when no session is open yet.

.PARAMETER SkipEntraConsentCheck
    Do not look for a tenant-wide Entra consent of Mail.Send, Mail.Read or Mail.ReadWrite (no Microsoft Graph
    PowerShell needed).

.PARAMETER RemoveEntraConsent
    Remove a tenant-wide Entra consent of a mail permission (Mail.Send, Mail.Read, Mail.ReadWrite, Mail.ReadBasic,
    Mail.ReadBasic.All) if one is found (asks for
    confirmation).

.EXAMPLE
    ./Set-RbacApplicationScope.ps1 -AppId 11111111-2222-3333-4444-555555555555 `
        -ServicePrincipalObjectId 66666666-7777-8888-9999-000000000000 `
        -GroupIdentity relay-senders@contoso.com -WhatIf

.EXAMPLE
    ./Set-RbacApplicationScope.ps1 -AppId $env:GRAPH_CLIENT_ID -ServicePrincipalObjectId $spId `
        -GroupIdentity relay-senders@contoso.com -RemoveEntraConsent

.EXAMPLE
    ./Set-RbacApplicationScope.ps1 -AppId $env:GRAPH_CLIENT_ID -ServicePrincipalObjectId $spId `
        -GroupIdentity relay-senders@contoso.com -GrantSentItemsRead

.EXAMPLE
    ./Set-RbacApplicationScope.ps1 -AppId $env:GRAPH_CLIENT_ID -ServicePrincipalObjectId $spId `
        -GroupIdentity relay-senders@contoso.com -GrantSentItemsRead -GrantLargeMessages

.EXAMPLE
    # managed-identity mode: Exchange's RBAC points at the relay's user-assigned identity itself.
    ./Set-RbacApplicationScope.ps1 -IdentityClientId $env:RELAY_IDENTITY_CLIENT_ID `
        -IdentityPrincipalId $env:RELAY_IDENTITY_PRINCIPAL_ID -GroupIdentity relay-senders@contoso.com -GrantSentItemsRead
#>
#Requires -Modules ExchangeOnlineManagement
[CmdletBinding(SupportsShouldProcess, DefaultParameterSetName = 'AppRegistration')]
param(
    [Parameter(Mandatory, ParameterSetName = 'AppRegistration')]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [Parameter(Mandatory, ParameterSetName = 'AppRegistration')]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $ServicePrincipalObjectId,

    [Parameter(Mandatory, ParameterSetName = 'ManagedIdentity')]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $IdentityClientId,

    [Parameter(Mandatory, ParameterSetName = 'ManagedIdentity')]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $IdentityPrincipalId,

    [Parameter(Mandatory)]
    [ValidateNotNullOrEmpty()]
    [string] $GroupIdentity,

    [ValidateNotNullOrEmpty()]
    [string] $ScopeName = 'Graph Mail Relay senders',

    [ValidateNotNullOrEmpty()]
    [string] $AssignmentName = 'Graph Mail Relay Mail.Send',

    [ValidateNotNullOrEmpty()]
    [string] $ReadAssignmentName = 'Graph Mail Relay Mail.Read',

    [ValidateNotNullOrEmpty()]
    [string] $ReadWriteAssignmentName = 'Graph Mail Relay Mail.ReadWrite',

    [ValidateNotNullOrEmpty()]
    [string] $DisplayName = 'Graph Mail Relay',

    [string] $UserPrincipalName,

    [switch] $SkipEntraConsentCheck,

    [switch] $RemoveEntraConsent,

    [switch] $GrantSentItemsRead,

    [switch] $GrantLargeMessages
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'ExchangeScope.Common.ps1')  # Get-Prop, Connect-ExchangeIfNeeded

if ($PSCmdlet.ParameterSetName -eq 'ManagedIdentity') {
    # The identity's service principal is the Graph caller: its client id is the AppId Exchange knows it by, its
    # principal id the service principal's object id (see -IdentityPrincipalId). From here on both modes are one.
    $AppId = $IdentityClientId
    $ServicePrincipalObjectId = $IdentityPrincipalId
}

# Exchange's application roles (https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac).
$SendRoleName = 'Application Mail.Send'
$ReadRoleName = 'Application Mail.Read'
$ReadWriteRoleName = 'Application Mail.ReadWrite'
if (@($AssignmentName, $ReadAssignmentName, $ReadWriteAssignmentName | Sort-Object -Unique).Count -ne 3) {
    throw '-AssignmentName, -ReadAssignmentName and -ReadWriteAssignmentName must differ.'
}
$GraphAppId = '00000003-0000-0000-c000-000000000000'     # Microsoft Graph, every tenant
# Graph application roles whose tenant-wide Entra consent would defeat the scope (permissions-reference ids).
$EntraConsentsThatWiden = @{
    'b633e1c5-b582-4048-a93e-9f11b44c7e96' = 'Mail.Send' # send as any user
    '810c84a8-4a9e-49e6-bf7d-12d183f40d01' = 'Mail.Read' # read mail in all mailboxes
    'e2a3a72e-5f79-4c64-b1b1-878b674786c9' = 'Mail.ReadWrite' # read and write mail in all mailboxes
    '6be147d2-ea4f-4b5a-a3fa-3eab6f3c140a' = 'Mail.ReadBasic' # basic properties of all mail in all mailboxes
    '693c5e45-0940-467d-9b8a-1022fb9d42ef' = 'Mail.ReadBasic.All' # the same (mailrelay doctor warns on each)
}

function Get-NormalizedFilter {
    # Exchange may store a filter with other spacing or parentheses; compare what it means.
    param([string] $Filter)
    if (-not $Filter) { return '' }
    return ($Filter -replace '[\s()]', '').ToLowerInvariant()
}

function Test-ServicePrincipalMatch {
    # Does a role assignment's assignee name our service principal?
    param($Assignment, $ServicePrincipal)
    $assignee = @((Get-Prop $Assignment 'RoleAssignee'), (Get-Prop $Assignment 'RoleAssigneeName')) |
        Where-Object { $_ } | ForEach-Object { "$_" }
    $ours = @((Get-Prop $ServicePrincipal 'Identity'), (Get-Prop $ServicePrincipal 'Name'),
        (Get-Prop $ServicePrincipal 'DisplayName'), (Get-Prop $ServicePrincipal 'ObjectId'),
        (Get-Prop $ServicePrincipal 'AppId')) | Where-Object { $_ } | ForEach-Object { "$_" }
    foreach ($a in $assignee) { if ($ours -contains $a) { return $true } }
    return $false
}

function Get-RoleAssignmentPlan {
    # The app's assignment of one role under one name: does it exist, is it scoped to $Scope, and which
    # other assignments of the same role does the app hold (they add up and widen its reach)?
    param([string] $Role, [string] $Name, [string] $Scope, $ServicePrincipal)
    $assignment = Get-ManagementRoleAssignment -Identity $Name -ErrorAction SilentlyContinue
    if ($null -ne $assignment -and "$(Get-Prop $assignment 'Role')" -ne $Role) {
        throw "Role assignment '$Name' exists for role '$(Get-Prop $assignment 'Role')', not '$Role'. Remove it or choose another name."
    }
    $current = if ($null -ne $assignment) { "$(Get-Prop $assignment 'CustomResourceScope')" } else { $null }
    $others = @()
    if ($null -ne $ServicePrincipal) {
        $others = @(Get-ManagementRoleAssignment -Role $Role -ErrorAction SilentlyContinue | Where-Object {
                "$(Get-Prop $_ 'Name')" -ne $Name -and (Test-ServicePrincipalMatch $_ $ServicePrincipal)
            })
    }
    return [pscustomobject]@{
        Role         = $Role
        Name         = $Name
        Scope        = $Scope
        Exists       = $null -ne $assignment
        CurrentScope = $current
        Matches      = $null -ne $assignment -and $current -eq $Scope
        Others       = $others
    }
}

function Write-RoleAssignmentPlan {
    param($Plan, [string] $Step, [string] $Widens)
    Write-Host "  $Step. Role assignment '$($Plan.Name)' ($($Plan.Role)) " -NoNewline
    if ($Plan.Matches) { Write-Host "exists, scoped to '$($Plan.Scope)': no change." }
    elseif ($Plan.Exists) { Write-Host "will be UPDATED: scope '$($Plan.CurrentScope)' -> '$($Plan.Scope)'." }
    else { Write-Host "will be CREATED for the app, scope '$($Plan.Scope)'." }
    foreach ($other in $Plan.Others) {
        Write-Warning "Another '$($Plan.Role)' assignment for this app exists: '$(Get-Prop $other 'Name')' (scope: '$(Get-Prop $other 'CustomResourceScope')'). Permissions add up: it widens $Widens. Remove it unless intended: Remove-ManagementRoleAssignment -Identity '$(Get-Prop $other 'Name')'."
    }
}

function Invoke-RoleAssignmentPlan {
    # $Cmdlet: the script's $PSCmdlet, so -WhatIf and -Confirm apply here too.
    param($Plan, $ServicePrincipal, $Cmdlet)
    if ($Plan.Matches) { return }
    if ($Plan.Exists) {
        if ($Cmdlet.ShouldProcess("role assignment '$($Plan.Name)'", "Set-ManagementRoleAssignment -CustomResourceScope '$($Plan.Scope)'")) {
            Set-ManagementRoleAssignment -Identity $Plan.Name -CustomResourceScope $Plan.Scope
            Write-Host "Updated role assignment '$($Plan.Name)'."
        }
    }
    elseif ($Cmdlet.ShouldProcess("app $AppId", "New-ManagementRoleAssignment -Role '$($Plan.Role)' -CustomResourceScope '$($Plan.Scope)'")) {
        # -App takes "the ObjectId GUID value from the output of the Get-ServicePrincipal cmdlet"
        # (MicrosoftDocs/office-docs-powershell, exchange/exchange-ps/ExchangePowerShell/
        # New-ManagementRoleAssignment.md, -App; it named ServiceId until 2023). That ObjectId is the Entra
        # service principal's object id that New-ServicePrincipal -ObjectId recorded; -ServiceId "is being
        # deprecated. Use the ObjectId parameter instead." (New-ServicePrincipal.md). Not the app id.
        $appIdentity = "$(Get-Prop $ServicePrincipal 'ObjectId')"
        if (-not $appIdentity) { throw "Get-ServicePrincipal returned no ObjectId for app $AppId; run New-ServicePrincipal first." }
        New-ManagementRoleAssignment -Name $Plan.Name -App $appIdentity -Role $Plan.Role -CustomResourceScope $Plan.Scope | Out-Null
        Write-Host "Created role assignment '$($Plan.Name)'."
    }
}

# --- look ---------------------------------------------------------------------------------------

Connect-ExchangeIfNeeded -UserPrincipalName $UserPrincipalName

$group = Get-Group -Identity $GroupIdentity -ErrorAction SilentlyContinue
if ($null -eq $group) {
    throw "Group '$GroupIdentity' not found in Exchange Online. Create a mail-enabled security group with the sending mailboxes as members first."
}
$groupType = "$(Get-Prop $group 'RecipientTypeDetails')"
if ($groupType -notin @('MailUniversalSecurityGroup', 'MailUniversalDistributionGroup')) {
    # A management scope's MemberOfGroup filter matches members of groups Exchange recognises, i.e.
    # mail-enabled ones; an Entra-only security group is not an Exchange recipient, so the scope would
    # match nobody and every send would be denied (learn.microsoft.com/exchange/permissions-exo/application-rbac).
    throw "'$GroupIdentity' is a $groupType. A MemberOfGroup scope works only with a group Exchange recognises: use a mail-enabled security group."
}
$groupDn = "$(Get-Prop $group 'DistinguishedName')"
# OPATH: a single quote inside the quoted value is doubled.
$filter = "MemberOfGroup -eq '$($groupDn.Replace("'", "''"))'"

$sp = Get-ServicePrincipal -Identity $AppId -ErrorAction SilentlyContinue
if ($null -ne $sp -and "$(Get-Prop $sp 'ObjectId')" -and "$(Get-Prop $sp 'ObjectId')" -ne $ServicePrincipalObjectId) {
    throw "Exchange already has a service principal for app $AppId with object id $(Get-Prop $sp 'ObjectId'), not $ServicePrincipalObjectId. Check which enterprise application is the relay's."
}

$scope = Get-ManagementScope -Identity $ScopeName -ErrorAction SilentlyContinue
$scopeFilter = if ($null -ne $scope) { "$(Get-Prop $scope 'RecipientFilter')" } else { $null }
$scopeMatches = $null -ne $scope -and (Get-NormalizedFilter $scopeFilter) -eq (Get-NormalizedFilter $filter)

# Mail.Send, and Mail.Read and Mail.ReadWrite over the same scope: the Sent Items look-up and the drafts of large
# messages must reach exactly the mailboxes the app may send as (other assignments of any of these roles,
# unscoped or scoped elsewhere, widen its reach).
$sendPlan = Get-RoleAssignmentPlan -Role $SendRoleName -Name $AssignmentName -Scope $ScopeName -ServicePrincipal $sp
$readPlan = Get-RoleAssignmentPlan -Role $ReadRoleName -Name $ReadAssignmentName -Scope $ScopeName -ServicePrincipal $sp
$readWritePlan = Get-RoleAssignmentPlan -Role $ReadWriteRoleName -Name $ReadWriteAssignmentName -Scope $ScopeName -ServicePrincipal $sp

# --- say what will happen -------------------------------------------------------------------------

Write-Host ''
Write-Host "RBAC for Applications: app $AppId may send only as the direct members of '$(Get-Prop $group 'Name')'."
if ($GrantSentItemsRead) { Write-Host "  It may also read the mail of those mailboxes, and of no others (Sent Items look-ups)." }
if ($GrantLargeMessages) { Write-Host "  It may also create, change and delete the mail of those mailboxes, and of no others (drafts of messages over 3 MB)." }
Write-Host '  1. Exchange service principal ' -NoNewline
if ($null -ne $sp) { Write-Host "exists ('$(Get-Prop $sp 'DisplayName')'): no change." }
else { Write-Host "will be CREATED: New-ServicePrincipal -AppId $AppId -ObjectId $ServicePrincipalObjectId -DisplayName '$DisplayName'." }
Write-Host "  2. Management scope '$ScopeName' " -NoNewline
if ($scopeMatches) { Write-Host 'exists with the right filter: no change.' }
elseif ($null -ne $scope) { Write-Host "will be UPDATED: filter '$scopeFilter' -> `"$filter`"." }
else { Write-Host "will be CREATED: -RecipientRestrictionFilter `"$filter`"." }
Write-RoleAssignmentPlan $sendPlan '3' 'what the app may send as'
if ($GrantSentItemsRead) {
    Write-RoleAssignmentPlan $readPlan '4' 'whose mail the app may read'
}
else {
    if ($GrantLargeMessages) {
        Write-Host "  4. '$ReadRoleName' not requested (-GrantSentItemsRead); '$ReadWriteRoleName' (step 5) includes reading, so the relay can still look in Sent Items."
    }
    else {
        Write-Host "  4. '$ReadRoleName' not requested (-GrantSentItemsRead): the relay cannot look in Sent Items; unknown sends follow SEND_UNKNOWN_OUTCOME."
    }
    # Nothing is removed without being asked: report what the app can read today.
    $held = @($readPlan.Others)
    if ($readPlan.Exists) { $held += Get-ManagementRoleAssignment -Identity $ReadAssignmentName }
    foreach ($h in $held) {
        Write-Warning "The app holds '$ReadRoleName' through '$(Get-Prop $h 'Name')' (scope: '$(Get-Prop $h 'CustomResourceScope')'): it can read all mail in those mailboxes. Run with -GrantSentItemsRead to keep it on the sending scope only, or remove it: Remove-ManagementRoleAssignment -Identity '$(Get-Prop $h 'Name')'."
    }
}
if ($GrantLargeMessages) {
    Write-RoleAssignmentPlan $readWritePlan '5' 'whose mail the app may create, change and delete'
}
else {
    Write-Host "  5. '$ReadWriteRoleName' not requested (-GrantLargeMessages): messages over 3 MB (draft + upload session) cannot be sent (Graph refuses the draft: 403 ErrorAccessDenied)."
    # Nothing is removed without being asked: report what the app can write today.
    $held = @($readWritePlan.Others)
    if ($readWritePlan.Exists) { $held += Get-ManagementRoleAssignment -Identity $ReadWriteAssignmentName }
    foreach ($h in $held) {
        Write-Warning "The app holds '$ReadWriteRoleName' through '$(Get-Prop $h 'Name')' (scope: '$(Get-Prop $h 'CustomResourceScope')'): it can read, change and delete all mail in those mailboxes. Run with -GrantLargeMessages to keep it on the sending scope only, or remove it: Remove-ManagementRoleAssignment -Identity '$(Get-Prop $h 'Name')'."
    }
}
Write-Host ''

# --- do ---------------------------------------------------------------------------------------

if ($null -eq $sp) {
    if ($PSCmdlet.ShouldProcess("app $AppId", 'New-ServicePrincipal')) {
        $sp = New-ServicePrincipal -AppId $AppId -ObjectId $ServicePrincipalObjectId -DisplayName $DisplayName
        Write-Host "Created Exchange service principal '$(Get-Prop $sp 'DisplayName')'."
    }
}

if (-not $scopeMatches) {
    if ($null -ne $scope) {
        if ($PSCmdlet.ShouldProcess("management scope '$ScopeName'", "Set-ManagementScope -RecipientRestrictionFilter `"$filter`"")) {
            Set-ManagementScope -Identity $ScopeName -RecipientRestrictionFilter $filter
            Write-Host "Updated management scope '$ScopeName'."
        }
    }
    elseif ($PSCmdlet.ShouldProcess("management scope '$ScopeName'", "New-ManagementScope -RecipientRestrictionFilter `"$filter`"")) {
        New-ManagementScope -Name $ScopeName -RecipientRestrictionFilter $filter | Out-Null
        Write-Host "Created management scope '$ScopeName'."
    }
}

Invoke-RoleAssignmentPlan $sendPlan $sp $PSCmdlet
if ($GrantSentItemsRead) {
    Invoke-RoleAssignmentPlan $readPlan $sp $PSCmdlet
}
if ($GrantLargeMessages) {
    Invoke-RoleAssignmentPlan $readWritePlan $sp $PSCmdlet
}

# --- the Entra consent that would defeat the scope ---------------------------------------------

if (-not $SkipEntraConsentCheck) {
    $widening = ($EntraConsentsThatWiden.Values | Sort-Object) -join ' or '
    if (-not (Get-Command Get-MgServicePrincipalAppRoleAssignment -ErrorAction SilentlyContinue)) {
        Write-Warning ("Could not check for a tenant-wide Entra consent of $widening (Microsoft Graph PowerShell is not installed). " +
            "Check by hand: az rest --method get --url `"https://graph.microsoft.com/v1.0/servicePrincipals/$ServicePrincipalObjectId/appRoleAssignments`" " +
            "and look for appRoleId $(($EntraConsentsThatWiden.Keys | Sort-Object) -join ' or '). If present, remove it (Entra ID > Enterprise applications > the app > Permissions), or the scope above has no effect.")
    }
    else {
        # Get-MgServicePrincipal and the assignment listing need Application.Read.All; removing a
        # consent needs AppRoleAssignment.ReadWrite.All as well (Remove-MgServicePrincipalAppRoleAssignment).
        $scopes = if ($RemoveEntraConsent) { @('Application.Read.All', 'AppRoleAssignment.ReadWrite.All') } else { @('Application.Read.All') }
        Write-Host "Checking Entra ID for a tenant-wide consent of $widening (Microsoft Graph PowerShell)..."
        Connect-MgGraph -Scopes $scopes -NoWelcome
        $graphSp = Get-MgServicePrincipal -Filter "appId eq '$GraphAppId'"
        $consents = @(Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $ServicePrincipalObjectId -All | Where-Object {
                $EntraConsentsThatWiden.ContainsKey("$($_.AppRoleId)") -and "$($_.ResourceId)" -eq "$($graphSp.Id)"
            })
        if ($consents.Count -eq 0) {
            Write-Host "No tenant-wide Entra consent of $($widening): the Exchange scope is the only grant. Good."
        }
        else {
            foreach ($consent in $consents) {
                $permission = $EntraConsentsThatWiden["$($consent.AppRoleId)"]
                $reach = switch ($permission) {
                    'Mail.Send' { 'send as ANY mailbox' }
                    'Mail.ReadWrite' { 'read, change and delete the mail of ANY mailbox' }
                    default { 'read the mail of ANY mailbox' }
                }
                Write-Warning "The app ALSO holds $permission consented tenant-wide in Entra ID. Permissions add up: the app can $reach, whatever the scope above says."
                if ($RemoveEntraConsent) {
                    if ($PSCmdlet.ShouldProcess("Entra app role assignment $($consent.Id) ($permission)", 'Remove-MgServicePrincipalAppRoleAssignment')) {
                        Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $ServicePrincipalObjectId -AppRoleAssignmentId $consent.Id
                        Write-Host "Removed the tenant-wide Entra consent of $permission."
                    }
                }
            }
            if (-not $RemoveEntraConsent) {
                Write-Warning 'Run again with -RemoveEntraConsent, or remove it in Entra ID > Enterprise applications > the app > Permissions > Revoke.'
            }
        }
    }
}

Write-Host ''
Write-Host 'Exchange applies these changes after 30 minutes to 2 hours, sometimes longer. Then verify:'
$verifyRead = if ($GrantSentItemsRead) { ' -SentItemsRead' } else { '' }
$verifyWrite = if ($GrantLargeMessages) { ' -LargeMessages' } else { '' }
Write-Host "  ./Test-ExchangeScope.ps1 -AppId $AppId -Model RbacForApplications -AllowedAddress <member> -DeniedAddress <non-member>$verifyRead$verifyWrite"
