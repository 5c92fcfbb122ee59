# Helpers shared by the Exchange scope scripts; each script dot-sources this file.

function Get-Prop {
    # Property value or $null, without tripping StrictMode on objects that lack it.
    param($Object, [string] $Name)
    if ($null -eq $Object) { return $null }
    $p = $Object.PSObject.Properties[$Name]
    if ($null -eq $p) { return $null }
    return $p.Value
}

function Connect-ExchangeIfNeeded {
    # Reuse an open Exchange Online session (not a Security & Compliance one); else connect.
    param([string] $UserPrincipalName)
    $sessions = @(Get-ConnectionInformation -ErrorAction SilentlyContinue | Where-Object {
            (Get-Prop $_ 'State') -eq 'Connected' -and "$(Get-Prop $_ 'ConnectionUri')" -notmatch 'compliance'
        })
    if ($sessions.Count -gt 0) {
        Write-Verbose "Using the open Exchange Online session of $(Get-Prop $sessions[0] 'UserPrincipalName')."
        return
    }
    Write-Host 'Connecting to Exchange Online...'
    $connect = @{ ShowBanner = $false }
    if ($UserPrincipalName) { $connect.UserPrincipalName = $UserPrincipalName }
    Connect-ExchangeOnline @connect
}
