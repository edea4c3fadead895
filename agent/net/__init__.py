"""Thin asyncio glue around the sans-I/O cores: signaling client, aiortc peer."""
