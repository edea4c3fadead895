"""Wire types and codecs, shared by the agent and the signaling server. No I/O here."""
