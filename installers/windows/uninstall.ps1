# Remove what install.ps1 added: the program folder, the peerdesk:// scheme, the shortcut, autostart.
$ErrorActionPreference = "SilentlyContinue"
Remove-Item -Recurse -Force "HKCU:\Software\Classes\peerdesk"
Remove-ItemProperty -Path "HKCU:\Software\Microsoft\Windows\CurrentVersion\Run" -Name "PeerDesk"
Remove-Item -Force (Join-Path ([Environment]::GetFolderPath("Programs")) "PeerDesk.lnk")
$dir = Join-Path $env:LOCALAPPDATA "Programs\PeerDesk"
Set-Location $env:TEMP
Remove-Item -Recurse -Force $dir
Write-Output "PeerDesk is uninstalled."
