"""PeerDesk signaling server: rooms and relays of sealed payloads; it never sees content."""
