"""PeerDesk tray icon and local dashboard."""
