<#
.SYNOPSIS
    Verifies the relay's Exchange scope: for each address given, may the app send as it or not?
    Prints a table of expected vs actual and exits 1 on any mismatch.

.DESCRIPTION
    RBAC for Applications:  Test-ServicePrincipalAuthorization -Identity <service principal> -Resource <mailbox>
                            (the row for role "Application Mail.Send"; InScope True = allowed; and
                            for "Application Mail.Read": denied addresses must not be readable either,
                            allowed ones must be with -SentItemsRead; for "Application Mail.ReadWrite":
                            denied addresses must not be writable, allowed ones must be with
                            -LargeMessages)
                            https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac
    Application Access Policy: Test-ApplicationAccessPolicy -Identity <mailbox> -AppId <app>
                            (AccessCheckResult Granted = allowed)

    -Model Auto (the default) tests whichever models the app is configured with, both if both are.

    Timing: Exchange applies scope and policy changes after 30 minutes to 2 hours, sometimes longer.
    The test cmdlets read the configuration, so they may already show the new result while sends
    still follow the old one (or the other way round) during that window; test again later, and
    confirm with a real send (infra/README.md, step 7).

    What this cannot see: a tenant-wide Entra ID consent of Mail.Send, Mail.Read or Mail.ReadWrite. In the
    RBAC model such a consent lets the app send as (read, write) anyone whatever this table says;
    Set-RbacApplicationScope.ps1 checks for it. Nor, in the policy model, whether the app holds Mail.Read or
    Mail.ReadWrite at all (Entra consents: `mailrelay doctor` shows the token's roles); the policy narrows
    every Graph mail permission the app holds to the same mailboxes
    (https://learn.microsoft.com/graph/auth-limit-mailbox-access, "Supported permissions").

    Read-only: it changes nothing. -WhatIf lists what it would test.

.PARAMETER AppId
    Application (client) id of the app registration: GRAPH_CLIENT_ID.
    In managed-identity mode (no app registration), the client id of the relay's user-assigned identity
    (RELAY_IDENTITY_CLIENT_ID); -IdentityClientId is the same parameter. Exchange's service principal for the
    identity carries that id as its AppId (Set-RbacApplicationScope.ps1 -IdentityClientId -IdentityPrincipalId).

.PARAMETER AllowedAddress
    Mailboxes the relay SHOULD be able to send as (members of the scope group; ALLOWED_SENDERS).

.PARAMETER DeniedAddress
    Mailboxes it should NOT be able to send as (anyone outside the group, e.g. an executive's mailbox).

.PARAMETER Model
    RbacForApplications, ApplicationAccessPolicy or Auto (default).

.PARAMETER SentItemsRead
    The app should also read the allowed mailboxes (Set-RbacApplicationScope.ps1 -GrantSentItemsRead):
    each allowed address must be in scope of "Application Mail.Read" too. Without it, read access is
    checked only on denied addresses, which must never be readable.

.PARAMETER LargeMessages
    The app should also create drafts in the allowed mailboxes, for messages over 3 MB
    (Set-RbacApplicationScope.ps1 -GrantLargeMessages): each allowed address must be in scope of
    "Application Mail.ReadWrite" too. Without it, write access is checked only on denied addresses, which
    must never be writable.

.PARAMETER UserPrincipalName
    Admin account for Connect-ExchangeOnline when no session is open yet.

.EXAMPLE
    ./Test-ExchangeScope.ps1 -AppId 11111111-2222-3333-4444-555555555555 `
        -AllowedAddress noreply@contoso.com,billing@contoso.com -DeniedAddress ceo@contoso.com

.EXAMPLE
    ./Test-ExchangeScope.ps1 -AppId 11111111-2222-3333-4444-555555555555 -SentItemsRead `
        -AllowedAddress noreply@contoso.com -DeniedAddress ceo@contoso.com

.EXAMPLE
    ./Test-ExchangeScope.ps1 -AppId 11111111-2222-3333-4444-555555555555 -SentItemsRead -LargeMessages `
        -AllowedAddress noreply@contoso.com -DeniedAddress ceo@contoso.com
#>
#Requires -Modules ExchangeOnlineManagement
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)]
    [Alias('IdentityClientId')]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [string[]] $AllowedAddress = @(),

    [string[]] $DeniedAddress = @(),

    [ValidateSet('Auto', 'RbacForApplications', 'ApplicationAccessPolicy')]
    [string] $Model = 'Auto',

    [string] $UserPrincipalName,

    [switch] $SentItemsRead,

    [switch] $LargeMessages
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'ExchangeScope.Common.ps1')  # Get-Prop, Connect-ExchangeIfNeeded

# Exchange's application roles (https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac).
$SendRoleName = 'Application Mail.Send'
$ReadRoleName = 'Application Mail.Read'
$ReadWriteRoleName = 'Application Mail.ReadWrite'

function Get-RbacVerdict {
    # One role's verdict for one mailbox, from Test-ServicePrincipalAuthorization's rows (one row per
    # role the app is assigned, InScope True when the mailbox is in that assignment's scope).
    param($Rows, [string] $Role)
    $mine = @($Rows | Where-Object { "$(Get-Prop $_ 'RoleName')" -eq $Role })
    $inScope = @($mine | Where-Object { "$(Get-Prop $_ 'InScope')" -eq 'True' })
    if ($inScope.Count -gt 0) {
        return [pscustomobject]@{ Actual = 'Allowed'; Detail = "scope: $((@($inScope | ForEach-Object { Get-Prop $_ 'AllowedResourceScope' }) | Select-Object -Unique) -join ', ')" }
    }
    if ($mine.Count -eq 0) {
        return [pscustomobject]@{ Actual = 'Denied'; Detail = "no '$Role' assignment for the app" }
    }
    return [pscustomobject]@{ Actual = 'Denied'; Detail = "not in scope: $((@($mine | ForEach-Object { Get-Prop $_ 'AllowedResourceScope' }) | Select-Object -Unique) -join ', ')" }
}

function New-ResultRow {
    param($Case, [string] $Model, [string] $Access, [string] $Actual, [string] $Detail)
    [pscustomobject]@{
        Address  = $Case.Address
        Model    = $Model
        Access   = $Access
        Expected = $Case.Expected
        Actual   = $Actual
        # The same verdict words as `mailrelay doctor --allowed ... --denied ...`.
        Result   = if ($Actual -eq $Case.Expected) { 'ok' }
                   elseif ($Case.Expected -eq 'Denied' -and $Actual -eq 'Allowed') { 'fail: NOT RESTRICTED' }
                   else { 'fail' }
        Detail   = $Detail
    }
}

$cases = @()
$cases += @($AllowedAddress | Where-Object { $_ } | ForEach-Object { [pscustomobject]@{ Address = $_; Expected = 'Allowed' } })
$cases += @($DeniedAddress | Where-Object { $_ } | ForEach-Object { [pscustomobject]@{ Address = $_; Expected = 'Denied' } })
if ($cases.Count -eq 0) {
    throw 'Give at least one -AllowedAddress or -DeniedAddress.'
}

Write-Host "Testing whether app $AppId may send as: $(($cases | ForEach-Object { "$($_.Address) (expect $($_.Expected.ToLowerInvariant()))" }) -join ', ')."
if (-not $PSCmdlet.ShouldProcess("app $AppId, $($cases.Count) address(es)", 'Test the Exchange scope (read-only)')) {
    return
}

Connect-ExchangeIfNeeded -UserPrincipalName $UserPrincipalName

# --- which models are configured -------------------------------------------------------------

$sp = Get-ServicePrincipal -Identity $AppId -ErrorAction SilentlyContinue
$policies = @(Get-ApplicationAccessPolicy -ErrorAction SilentlyContinue | Where-Object { "$(Get-Prop $_ 'AppId')" -eq $AppId })
$models = switch ($Model) {
    'RbacForApplications' { @('RbacForApplications') }
    'ApplicationAccessPolicy' { @('ApplicationAccessPolicy') }
    default {
        $found = @()
        if ($null -ne $sp) { $found += 'RbacForApplications' }
        if ($policies.Count -gt 0) { $found += 'ApplicationAccessPolicy' }
        $found
    }
}
if (@($models).Count -eq 0) {
    throw "App $AppId has neither an Exchange service principal (RBAC for Applications) nor an application access policy. Run Set-RbacApplicationScope.ps1 first."
}
if ($models -contains 'RbacForApplications' -and $null -eq $sp) {
    throw "Exchange has no service principal for app $AppId; RBAC for Applications is not set up (Set-RbacApplicationScope.ps1)."
}
Write-Host "Model(s): $($models -join ', ')"

# --- test ----------------------------------------------------------------------------------------

$results = foreach ($case in $cases) {
    foreach ($m in $models) {
        if ($m -eq 'RbacForApplications') {
            # Send, always; read, on a denied address always (reading a mailbox outside the scope is a
            # leak whatever the relay needs) and on an allowed one when Sent Items look-ups are wanted;
            # read-write likewise, on an allowed one when messages over 3 MB (drafts) are wanted.
            $roles = @($SendRoleName)
            if ($SentItemsRead -or $case.Expected -eq 'Denied') { $roles += $ReadRoleName }
            if ($LargeMessages -or $case.Expected -eq 'Denied') { $roles += $ReadWriteRoleName }
            try {
                # -Identity takes "any value that uniquely identifies the service principal": Name, DN, GUID,
                # AppId or ServiceId (office-docs-powershell, Test-ServicePrincipalAuthorization.md); unlike
                # New-ManagementRoleAssignment -App (ObjectId, see Set-RbacApplicationScope.ps1) nothing here
                # depends on the deprecated ServiceId: the Identity Exchange reports, else the app id.
                $spIdentity = if (Get-Prop $sp 'Identity') { "$(Get-Prop $sp 'Identity')" } else { $AppId }
                $rows = @(Test-ServicePrincipalAuthorization -Identity $spIdentity -Resource $case.Address)
                foreach ($role in $roles) {
                    $verdict = Get-RbacVerdict $rows $role
                    New-ResultRow $case $m $role $verdict.Actual $verdict.Detail
                }
            }
            catch {
                foreach ($role in $roles) { New-ResultRow $case $m $role 'Error' $_.Exception.Message }
            }
        }
        else {
            # A policy narrows the app's access to the mailbox whatever the permission (Mail.Send, Mail.Read,
            # Mail.ReadWrite): https://learn.microsoft.com/powershell/module/exchange/new-applicationaccesspolicy,
            # https://learn.microsoft.com/graph/auth-limit-mailbox-access ("Supported permissions").
            try {
                $check = Test-ApplicationAccessPolicy -Identity $case.Address -AppId $AppId
                $verdict = "$(Get-Prop $check 'AccessCheckResult')"
                $actual = if ($verdict -eq 'Granted') { 'Allowed' } else { 'Denied' }
                New-ResultRow $case $m 'any permission' $actual "AccessCheckResult: $verdict"
            }
            catch {
                New-ResultRow $case $m 'any permission' 'Error' $_.Exception.Message
            }
        }
    }
}

$results | Format-Table -AutoSize Address, Model, Access, Expected, Actual, Result, Detail | Out-String -Width 200 | Write-Host

$bad = @($results | Where-Object { $_.Result -ne 'ok' })
if (@($results | Where-Object { $_.Result -eq 'fail: NOT RESTRICTED' }).Count -gt 0) {
    Write-Warning ('The scope does not restrict: a denied address is allowed. Likely causes: a tenant-wide Mail.Send, ' +
        'Mail.Read or Mail.ReadWrite consent in Entra beside RBAC for Applications (they add up: Set-RbacApplicationScope.ps1 -RemoveEntraConsent); ' +
        'an unscoped or other-scoped Application Mail.Send / Mail.Read / Mail.ReadWrite assignment; no management scope or access policy at all; ' +
        'the scope or policy on the wrong group.')
}
if (@($results | Where-Object { $_.Result -eq 'fail' -and $_.Expected -eq 'Allowed' -and $_.Access -notin @($ReadRoleName, $ReadWriteRoleName) }).Count -gt 0) {
    Write-Warning ('An allowed address is denied. Likely causes: not in the mail-enabled group or scope; replication ' +
        'pending; EWS disabled (Get-CASMailbox <mailbox> | fl EwsEnabled); no Exchange Online mailbox.')
}
if (@($results | Where-Object { $_.Result -eq 'fail' -and $_.Expected -eq 'Allowed' -and $_.Access -eq $ReadRoleName }).Count -gt 0) {
    Write-Warning ("An allowed address is not readable: no '$ReadRoleName' assignment over the sending scope. " +
        'Run Set-RbacApplicationScope.ps1 -GrantSentItemsRead, or deploy with grantSentItemsRead=false and leave the relay send-only (SEND_UNKNOWN_OUTCOME decides unknown sends).')
}
if (@($results | Where-Object { $_.Result -eq 'fail' -and $_.Expected -eq 'Allowed' -and $_.Access -eq $ReadWriteRoleName }).Count -gt 0) {
    Write-Warning ("An allowed address is not writable: no '$ReadWriteRoleName' assignment over the sending scope, so messages over 3 MB " +
        '(draft + upload session) cannot be sent from it. Run Set-RbacApplicationScope.ps1 -GrantLargeMessages.')
}
if ($models -contains 'RbacForApplications') {
    Write-Host 'Note: a tenant-wide Entra consent of Mail.Send, Mail.Read or Mail.ReadWrite would allow every mailbox regardless of this table; Set-RbacApplicationScope.ps1 checks for it.'
}
if (($SentItemsRead -or $LargeMessages) -and $models -contains 'ApplicationAccessPolicy') {
    Write-Host 'Note (policy model): the policy covers Mail.Read and Mail.ReadWrite like Mail.Send; whether the app holds them at all is its Entra consent (mailrelay doctor shows the token roles).'
}
Write-Host 'Changes take 30 minutes to 2 hours, sometimes longer, to apply: a fresh change can show fail for a while.'
if ($bad.Count -gt 0) {
    Write-Error "$($bad.Count) of $(@($results).Count) check(s) did not match the expectation." -ErrorAction Continue
    exit 1
}
Write-Host "All $(@($results).Count) check(s) match."
