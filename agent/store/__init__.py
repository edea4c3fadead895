"""Durable local state: the session log's SQLite store."""

from agent.errors import StoreError
from agent.store.logstore import LogStore, SessionMeta, session_db_path

__all__ = ["LogStore", "SessionMeta", "StoreError", "session_db_path"]
