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
         (New-ManagementRoleAssignment -App -Role "Application Mail.Send" -CustomResourceScope).

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

.PARAMETER AppId
    Application (client) id of the app registration: GRAPH_CLIENT_ID.

.PARAMETER ServicePrincipalObjectId
    Object id of the app's SERVICE PRINCIPAL (Entra ID > Enterprise applications > the app >
    Object ID; or `az ad sp show --id <AppId> --query id -o tsv`). Not the app registration's object id.

.PARAMETER GroupIdentity
    The mail-enabled security group whose members the relay may send as: address, name or DN. It must be
    mail-enabled: a MemberOfGroup scope matches only groups Exchange recognises (an Entra-only group, none).
    Membership is direct (MemberOfGroup does not expand nested groups). Add EXPIRY_ALERT_SENDER too.

.PARAMETER ScopeName
    Name of the management scope. Default: "Graph Mail Relay senders".

.PARAMETER AssignmentName
    Name of the management role assignment. Default: "Graph Mail Relay Mail.Send".

.PARAMETER DisplayName
    Display name of the Exchange service principal, used when it is created. Default: "Graph Mail Relay".

.PARAMETER UserPrincipalName
    Admin account for Connect-ExchangeOnline when no session is open yet.

.PARAMETER SkipEntraConsentCheck
    Do not look for a tenant-wide Entra consent of Mail.Send (no Microsoft Graph PowerShell needed).

.PARAMETER RemoveEntraConsent
    Remove a tenant-wide Entra consent of Mail.Send if one is found (asks for confirmation).

.EXAMPLE
    ./Set-RbacApplicationScope.ps1 -AppId 11111111-2222-3333-4444-555555555555 `
        -ServicePrincipalObjectId 66666666-7777-8888-9999-000000000000 `
        -GroupIdentity relay-senders@contoso.com -WhatIf

.EXAMPLE
    ./Set-RbacApplicationScope.ps1 -AppId $env:GRAPH_CLIENT_ID -ServicePrincipalObjectId $spId `
        -GroupIdentity relay-senders@contoso.com -RemoveEntraConsent
#>
#Requires -Modules ExchangeOnlineManagement
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $ServicePrincipalObjectId,

    [Parameter(Mandatory)]
    [ValidateNotNullOrEmpty()]
    [string] $GroupIdentity,

    [ValidateNotNullOrEmpty()]
    [string] $ScopeName = 'Graph Mail Relay senders',

    [ValidateNotNullOrEmpty()]
    [string] $AssignmentName = 'Graph Mail Relay Mail.Send',

    [ValidateNotNullOrEmpty()]
    [string] $DisplayName = 'Graph Mail Relay',

    [string] $UserPrincipalName,

    [switch] $SkipEntraConsentCheck,

    [switch] $RemoveEntraConsent
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'ExchangeScope.Common.ps1')  # Get-Prop, Connect-ExchangeIfNeeded

$RoleName = 'Application Mail.Send'
$GraphAppId = '00000003-0000-0000-c000-000000000000'     # Microsoft Graph, every tenant
$MailSendAppRoleId = 'b633e1c5-b582-4048-a93e-9f11b44c7e96' # Graph application role Mail.Send

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

$assignment = Get-ManagementRoleAssignment -Identity $AssignmentName -ErrorAction SilentlyContinue
if ($null -ne $assignment -and "$(Get-Prop $assignment 'Role')" -ne $RoleName) {
    throw "Role assignment '$AssignmentName' exists for role '$(Get-Prop $assignment 'Role')', not '$RoleName'. Remove it or choose another -AssignmentName."
}
$assignmentScope = if ($null -ne $assignment) { "$(Get-Prop $assignment 'CustomResourceScope')" } else { $null }
$assignmentMatches = $null -ne $assignment -and $assignmentScope -eq $ScopeName

# Other Mail.Send assignments for this app (unscoped or scoped elsewhere) would widen its reach.
$otherAssignments = @()
if ($null -ne $sp) {
    $otherAssignments = @(Get-ManagementRoleAssignment -Role $RoleName -ErrorAction SilentlyContinue | Where-Object {
            "$(Get-Prop $_ 'Name')" -ne $AssignmentName -and (Test-ServicePrincipalMatch $_ $sp)
        })
}

# --- say what will happen -------------------------------------------------------------------------

Write-Host ''
Write-Host "RBAC for Applications: app $AppId may send only as the direct members of '$(Get-Prop $group 'Name')'."
Write-Host '  1. Exchange service principal ' -NoNewline
if ($null -ne $sp) { Write-Host "exists ('$(Get-Prop $sp 'DisplayName')'): no change." }
else { Write-Host "will be CREATED: New-ServicePrincipal -AppId $AppId -ObjectId $ServicePrincipalObjectId -DisplayName '$DisplayName'." }
Write-Host "  2. Management scope '$ScopeName' " -NoNewline
if ($scopeMatches) { Write-Host 'exists with the right filter: no change.' }
elseif ($null -ne $scope) { Write-Host "will be UPDATED: filter '$scopeFilter' -> `"$filter`"." }
else { Write-Host "will be CREATED: -RecipientRestrictionFilter `"$filter`"." }
Write-Host "  3. Role assignment '$AssignmentName' ($RoleName) " -NoNewline
if ($assignmentMatches) { Write-Host "exists, scoped to '$ScopeName': no change." }
elseif ($null -ne $assignment) { Write-Host "will be UPDATED: scope '$assignmentScope' -> '$ScopeName'." }
else { Write-Host "will be CREATED for the app, scope '$ScopeName'." }
foreach ($other in $otherAssignments) {
    Write-Warning "Another '$RoleName' assignment for this app exists: '$(Get-Prop $other 'Name')' (scope: '$(Get-Prop $other 'CustomResourceScope')'). Permissions add up: it widens what the app may send as. Remove it unless intended: Remove-ManagementRoleAssignment -Identity '$(Get-Prop $other 'Name')'."
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

if (-not $assignmentMatches) {
    if ($null -ne $assignment) {
        if ($PSCmdlet.ShouldProcess("role assignment '$AssignmentName'", "Set-ManagementRoleAssignment -CustomResourceScope '$ScopeName'")) {
            Set-ManagementRoleAssignment -Identity $AssignmentName -CustomResourceScope $ScopeName
            Write-Host "Updated role assignment '$AssignmentName'."
        }
    }
    elseif ($PSCmdlet.ShouldProcess("app $AppId", "New-ManagementRoleAssignment -Role '$RoleName' -CustomResourceScope '$ScopeName'")) {
        # -App takes the Exchange service principal's ServiceId, the GUID Get-ServicePrincipal returns
        # (New-ManagementRoleAssignment, office-docs-powershell): not the Entra object id, not the app id.
        $appIdentity = "$(Get-Prop $sp 'ServiceId')"
        if (-not $appIdentity) { throw "Get-ServicePrincipal returned no ServiceId for app $AppId; run New-ServicePrincipal first." }
        New-ManagementRoleAssignment -Name $AssignmentName -App $appIdentity -Role $RoleName -CustomResourceScope $ScopeName | Out-Null
        Write-Host "Created role assignment '$AssignmentName'."
    }
}

# --- the Entra consent that would defeat the scope ---------------------------------------------

if (-not $SkipEntraConsentCheck) {
    if (-not (Get-Command Get-MgServicePrincipalAppRoleAssignment -ErrorAction SilentlyContinue)) {
        Write-Warning ("Could not check for a tenant-wide Entra consent of Mail.Send (Microsoft Graph PowerShell is not installed). " +
            "Check by hand: az rest --method get --url `"https://graph.microsoft.com/v1.0/servicePrincipals/$ServicePrincipalObjectId/appRoleAssignments`" " +
            "and look for appRoleId $MailSendAppRoleId. If present, remove it (Entra ID > Enterprise applications > the app > Permissions), or the scope above has no effect.")
    }
    else {
        # Get-MgServicePrincipal and the assignment listing need Application.Read.All; removing a
        # consent needs AppRoleAssignment.ReadWrite.All as well (Remove-MgServicePrincipalAppRoleAssignment).
        $scopes = if ($RemoveEntraConsent) { @('Application.Read.All', 'AppRoleAssignment.ReadWrite.All') } else { @('Application.Read.All') }
        Write-Host 'Checking Entra ID for a tenant-wide consent of Mail.Send (Microsoft Graph PowerShell)...'
        Connect-MgGraph -Scopes $scopes -NoWelcome
        $graphSp = Get-MgServicePrincipal -Filter "appId eq '$GraphAppId'"
        $consents = @(Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $ServicePrincipalObjectId -All | Where-Object {
                "$($_.AppRoleId)" -eq $MailSendAppRoleId -and "$($_.ResourceId)" -eq "$($graphSp.Id)"
            })
        if ($consents.Count -eq 0) {
            Write-Host 'No tenant-wide Entra consent of Mail.Send: the Exchange scope is the only grant. Good.'
        }
        else {
            Write-Warning 'The app ALSO holds Mail.Send consented tenant-wide in Entra ID. Permissions add up: the app can send as ANY mailbox, whatever the scope above says.'
            if ($RemoveEntraConsent) {
                foreach ($consent in $consents) {
                    if ($PSCmdlet.ShouldProcess("Entra app role assignment $($consent.Id) (Mail.Send)", 'Remove-MgServicePrincipalAppRoleAssignment')) {
                        Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $ServicePrincipalObjectId -AppRoleAssignmentId $consent.Id
                        Write-Host 'Removed the tenant-wide Entra consent of Mail.Send.'
                    }
                }
            }
            else {
                Write-Warning 'Run again with -RemoveEntraConsent, or remove it in Entra ID > Enterprise applications > the app > Permissions > Revoke.'
            }
        }
    }
}

Write-Host ''
Write-Host 'Exchange applies these changes after 30 minutes to 2 hours, sometimes longer. Then verify:'
Write-Host "  ./Test-ExchangeScope.ps1 -AppId $AppId -Model RbacForApplications -AllowedAddress <member> -DeniedAddress <non-member>"
