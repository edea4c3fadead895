"""The session log on disk: one SQLite file per session, written before anything is acked.

``LogStore(path)`` keeps the entries of one session (seq, epoch, hash and the
canonical bytes, which are what was signed), the agent's durable vote (the epoch it
knows and whom it voted for) and a row of metadata for the activity report. It runs
in WAL mode with ``synchronous=FULL``: a write returns only once it is on disk, and
a crash of the writer at any moment leaves a database that opens and holds whole
transactions only. ``apply(Persist)`` performs one request of the replication core
(``agent.session.log``) in one transaction, so a truncation, the entries after it and
a vote are durable together or not at all.

SQLite does blocking I/O: run it off the event loop (``asyncio.to_thread``), one
request at a time, in order, then call ``SessionLog.persisted(request.id, now)``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from agent import identity
from agent.errors import DecodeError, LocalProtocolError, StoreError
from agent.protocol.log import Entry, decode_entry
from agent.session.log import Persist, VoteRecord

SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq   INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    hash  TEXT    NOT NULL,
    data  BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS vote (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    epoch     INTEGER NOT NULL,
    voted_for TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    session_id  TEXT,
    room        TEXT,
    started     REAL,
    ended       REAL,
    primary_csr TEXT,
    title       TEXT
);
"""


@dataclass(frozen=True)
class SessionMeta:
    """What the activity report shows about a session besides its entries."""

    session_id: str | None = None
    room: str | None = None
    started: float | None = None
    "Unix seconds."
    ended: float | None = None
    "Unix seconds."
    primary_csr: str | None = None
    "Peer id of the primary CSR."
    title: str | None = None


def session_db_path(session_id: str) -> Path:
    """Where a session's log lives: ``identity.home()/sessions/<session_id>.sqlite``."""
    if not SESSION_ID_RE.fullmatch(session_id):
        raise LocalProtocolError(f"a session id is 1..64 of A-Z a-z 0-9 _ -, not {session_id!r}")
    return identity.home() / "sessions" / f"{session_id}.sqlite"


class LogStore:
    """One session's log in one SQLite file. Not thread-safe: use it from one thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():  # private: chats and notes (SQLite copies the mode to -wal)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable session database ({exc})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing

    def append(self, entries: Iterable[Entry]) -> None:
        """Add entries in one transaction, durable when this returns."""
        with self._transaction():
            self._insert(entries)

    def truncate_from(self, seq: int) -> None:
        """Drop every entry with seq >= ``seq``, durably."""
        with self._transaction():
            self._db.execute("DELETE FROM entries WHERE seq >= ?", (seq,))

    def save_vote(self, vote: VoteRecord) -> None:
        with self._transaction():
            self._save_vote(vote)

    def apply(self, request: Persist) -> None:
        """Perform one ``Persist`` request of the replication core in one transaction."""
        with self._transaction():
            if request.truncate_from is not None:
                self._db.execute("DELETE FROM entries WHERE seq >= ?", (request.truncate_from,))
            self._insert(request.entries)
            if request.vote is not None:
                self._save_vote(request.vote)

    def set_meta(self, **values: object) -> None:
        """Update metadata fields (``session_id``, ``room``, ``started``, ...)."""
        names = {f.name for f in fields(SessionMeta)}
        unknown = set(values) - names
        if unknown:
            raise LocalProtocolError(f"unknown session metadata: {', '.join(sorted(unknown))}")
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO meta (id) VALUES (1)")
            for name, value in values.items():
                self._db.execute(f"UPDATE meta SET {name} = ? WHERE id = 1", (value,))  # noqa: S608

    # -- reading

    def load(self) -> list[Entry]:
        """Every entry, in seq order. Raises ``StoreError`` for a row that does not parse."""
        out = []
        for seq, data in self._db.execute("SELECT seq, data FROM entries ORDER BY seq"):
            try:
                entry = decode_entry(bytes(data))
            except DecodeError as exc:
                raise StoreError(
                    f"{self.path}: entry {seq} does not parse ({exc.message})"
                ) from None
            out.append(entry)
        return out

    def rows(self) -> Iterator[tuple[int, int, str, bytes]]:
        """Raw rows (seq, epoch, hash, data) in seq order, unchecked (for the verifier)."""
        for seq, epoch, digest, data in self._db.execute(
            "SELECT seq, epoch, hash, data FROM entries ORDER BY seq"
        ):
            yield seq, epoch, digest, bytes(data)

    def last(self) -> tuple[int, int, str] | None:
        """(epoch, seq, hash) of the last entry, or None for an empty log."""
        row = self._db.execute(
            "SELECT epoch, seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def load_vote(self) -> VoteRecord | None:
        row = self._db.execute("SELECT epoch, voted_for FROM vote WHERE id = 1").fetchone()
        return None if row is None else VoteRecord(row[0], row[1])

    def meta(self) -> SessionMeta:
        cols = [f.name for f in fields(SessionMeta)]
        row = self._db.execute(f"SELECT {', '.join(cols)} FROM meta WHERE id = 1").fetchone()  # noqa: S608
        return SessionMeta() if row is None else SessionMeta(*row)

    def __len__(self) -> int:
        count: int = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return count

    # -- helpers

    def _insert(self, entries: Iterable[Entry]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO entries (seq, epoch, hash, data) VALUES (?, ?, ?, ?)",
            ((e.seq, e.epoch, e.digest, e.raw) for e in entries),
        )

    def _save_vote(self, vote: VoteRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO vote (id, epoch, voted_for) VALUES (1, ?, ?)",
            (vote.epoch, vote.voted_for),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
