# Install PeerDesk for the current user (no administrator rights) and register peerdesk:// links.
#   powershell -ExecutionPolicy Bypass -File installers\windows\install.ps1 [-Exe dist\peerdesk.exe] [-Autostart]
# Undo with %LOCALAPPDATA%\Programs\PeerDesk\uninstall.ps1.
param(
    [string]$Exe = (Join-Path $PSScriptRoot "..\..\dist\peerdesk.exe"),
    [switch]$Autostart
)
$ErrorActionPreference = "Stop"
$dir = Join-Path $env:LOCALAPPDATA "Programs\PeerDesk"
New-Item -ItemType Directory -Force -Path $dir | Out-Null
Copy-Item -Force $Exe (Join-Path $dir "peerdesk.exe")
Copy-Item -Force (Join-Path $PSScriptRoot "uninstall.ps1") (Join-Path $dir "uninstall.ps1")
$target = Join-Path $dir "peerdesk.exe"

# The URL scheme, per user: HKCU\Software\Classes\peerdesk (see peerdesk-url.reg for the
# same keys as a file). "--" ends the options, so a link can never pass a flag.
$key = "HKCU:\Software\Classes\peerdesk"
New-Item -Force -Path $key | Out-Null
Set-ItemProperty -Path $key -Name "(Default)" -Value "URL:PeerDesk join link"
Set-ItemProperty -Path $key -Name "URL Protocol" -Value ""
New-Item -Force -Path "$key\DefaultIcon" | Out-Null
Set-ItemProperty -Path "$key\DefaultIcon" -Name "(Default)" -Value "`"$target`",0"
New-Item -Force -Path "$key\shell\open\command" | Out-Null
Set-ItemProperty -Path "$key\shell\open\command" -Name "(Default)" -Value "`"$target`" join -- `"%1`""

# Start menu shortcut
$shell = New-Object -ComObject WScript.Shell
$lnk = $shell.CreateShortcut((Join-Path ([Environment]::GetFolderPath("Programs")) "PeerDesk.lnk"))
$lnk.TargetPath = $target
$lnk.Arguments = "start"
$lnk.Save()

if ($Autostart) {
    Set-ItemProperty -Path "HKCU:\Software\Microsoft\Windows\CurrentVersion\Run" -Name "PeerDesk" -Value "`"$target`""
}
Write-Output "PeerDesk is installed in $dir; peerdesk:// links open it. Uninstall: $dir\uninstall.ps1"
