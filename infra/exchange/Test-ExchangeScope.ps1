<#
.SYNOPSIS
    Verifies the relay's Exchange scope: for each address given, may the app send as it or not?
    Prints a table of expected vs actual and exits 1 on any mismatch.

.DESCRIPTION
    RBAC for Applications:  Test-ServicePrincipalAuthorization -Identity <service principal> -Resource <mailbox>
                            (the row for role "Application Mail.Send"; InScope True = allowed)
    Application Access Policy: Test-ApplicationAccessPolicy -Identity <mailbox> -AppId <app>
                            (AccessCheckResult Granted = allowed)

    -Model Auto (the default) tests whichever models the app is configured with, both if both are.

    Timing: Exchange applies scope and policy changes after 30 minutes to 2 hours, sometimes longer.
    The test cmdlets read the configuration, so they may already show the new result while sends
    still follow the old one (or the other way round) during that window; test again later, and
    confirm with a real send (infra/README.md, step 7).

    What this cannot see: a tenant-wide Entra ID consent of Mail.Send. In the RBAC model such a consent
    lets the app send as anyone whatever this table says; Set-RbacApplicationScope.ps1 checks for it.

    Read-only: it changes nothing. -WhatIf lists what it would test.

.PARAMETER AppId
    Application (client) id of the app registration: GRAPH_CLIENT_ID.

.PARAMETER AllowedAddress
    Mailboxes the relay SHOULD be able to send as (members of the scope group; ALLOWED_SENDERS).

.PARAMETER DeniedAddress
    Mailboxes it should NOT be able to send as (anyone outside the group, e.g. an executive's mailbox).

.PARAMETER Model
    RbacForApplications, ApplicationAccessPolicy or Auto (default).

.PARAMETER UserPrincipalName
    Admin account for Connect-ExchangeOnline when no session is open yet.

.EXAMPLE
    ./Test-ExchangeScope.ps1 -AppId 11111111-2222-3333-4444-555555555555 `
        -AllowedAddress noreply@contoso.com,billing@contoso.com -DeniedAddress ceo@contoso.com
#>
#Requires -Modules ExchangeOnlineManagement
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)]
    [ValidatePattern('^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$')]
    [string] $AppId,

    [string[]] $AllowedAddress = @(),

    [string[]] $DeniedAddress = @(),

    [ValidateSet('Auto', 'RbacForApplications', 'ApplicationAccessPolicy')]
    [string] $Model = 'Auto',

    [string] $UserPrincipalName
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
. (Join-Path $PSScriptRoot 'ExchangeScope.Common.ps1')  # Get-Prop, Connect-ExchangeIfNeeded

$RoleName = 'Application Mail.Send'

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
        $actual = 'Denied'
        $detail = ''
        try {
            if ($m -eq 'RbacForApplications') {
                $spIdentity = if (Get-Prop $sp 'Identity') { "$(Get-Prop $sp 'Identity')" } else { $AppId }
                $rows = @(Test-ServicePrincipalAuthorization -Identity $spIdentity -Resource $case.Address |
                    Where-Object { "$(Get-Prop $_ 'RoleName')" -eq $RoleName })
                $inScope = @($rows | Where-Object { "$(Get-Prop $_ 'InScope')" -eq 'True' })
                if ($inScope.Count -gt 0) {
                    $actual = 'Allowed'
                    $detail = "scope: $((@($inScope | ForEach-Object { Get-Prop $_ 'AllowedResourceScope' }) | Select-Object -Unique) -join ', ')"
                }
                elseif ($rows.Count -eq 0) {
                    $detail = "no '$RoleName' assignment for the app"
                }
                else {
                    $detail = "not in scope: $((@($rows | ForEach-Object { Get-Prop $_ 'AllowedResourceScope' }) | Select-Object -Unique) -join ', ')"
                }
            }
            else {
                $check = Test-ApplicationAccessPolicy -Identity $case.Address -AppId $AppId
                $verdict = "$(Get-Prop $check 'AccessCheckResult')"
                if ($verdict -eq 'Granted') { $actual = 'Allowed' }
                $detail = "AccessCheckResult: $verdict"
            }
        }
        catch {
            $actual = 'Error'
            $detail = $_.Exception.Message
        }
        [pscustomobject]@{
            Address  = $case.Address
            Model    = $m
            Expected = $case.Expected
            Actual   = $actual
            # The same verdict words as `mailrelay doctor --allowed ... --denied ...`.
            Result   = if ($actual -eq $case.Expected) { 'ok' }
                       elseif ($case.Expected -eq 'Denied' -and $actual -eq 'Allowed') { 'fail: NOT RESTRICTED' }
                       else { 'fail' }
            Detail   = $detail
        }
    }
}

$results | Format-Table -AutoSize Address, Model, Expected, Actual, Result, Detail | Out-String -Width 200 | Write-Host

$bad = @($results | Where-Object { $_.Result -ne 'ok' })
if (@($results | Where-Object { $_.Result -eq 'fail: NOT RESTRICTED' }).Count -gt 0) {
    Write-Warning ('The scope does not restrict: a denied address is allowed. Likely causes: a tenant-wide Mail.Send ' +
        'consent in Entra beside RBAC for Applications (the two add up: Set-RbacApplicationScope.ps1 -RemoveEntraConsent); ' +
        'no management scope or access policy at all; the scope or policy on the wrong group.')
}
if (@($results | Where-Object { $_.Result -eq 'fail' -and $_.Expected -eq 'Allowed' }).Count -gt 0) {
    Write-Warning ('An allowed address is denied. Likely causes: not in the mail-enabled group or scope; replication ' +
        'pending; EWS disabled (Get-CASMailbox <mailbox> | fl EwsEnabled); no Exchange Online mailbox.')
}
if ($models -contains 'RbacForApplications') {
    Write-Host 'Note: a tenant-wide Entra consent of Mail.Send would allow every mailbox regardless of this table; Set-RbacApplicationScope.ps1 checks for it.'
}
Write-Host 'Changes take 30 minutes to 2 hours, sometimes longer, to apply: a fresh change can show fail for a while.'
if ($bad.Count -gt 0) {
    Write-Error "$($bad.Count) of $(@($results).Count) check(s) did not match the expectation." -ErrorAction Continue
    exit 1
}
Write-Host "All $(@($results).Count) check(s) match."
