"""The session's record: what happens goes into the signed session log, and at the end
into an activity report.

Today the primary CSR's agent is the log's only voter and sequencer: every entry is
signed, hash-chained and made durable in SQLite (``agent.store``) before it counts,
and ``peerdesk log verify`` checks the file offline. Replicating it to assistants
and the customer (``agent.session.log`` already does it, tested over a faulty
network) is the next step; until then entries only another participant may author
(a customer's chat lines, consent answers and system information) are left out.
Status values are mapped to entries in one place, ``observe``; a value that does not
fit the log's strict schema is logged and left out, never allowed to stop the session.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from pathlib import Path
from typing import Any

from agent import status
from agent.errors import PeerDeskError
from agent.identity import Identity
from agent.session.log import SessionLog
from agent.store.logstore import LogStore, session_db_path

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON without floats (the log's canonical form has integers only in bodies)."""
    if isinstance(value, float):
        return round(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class SessionRecord:
    """The primary CSR's log of one session, and its reports."""

    def __init__(self, me: Identity, room: str) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        self.session_id = f"{stamp}-{room}"
        self.me = me.peer_id
        self.path = session_db_path(self.session_id)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._store = LogStore(self.path)
        now = time.monotonic()
        self.core = SessionLog(
            self.me, me.key, voters={self.me}, sequencer=self.me, epoch=0, now=now, solo=True
        )
        self.core.start(room, me.name, now)
        self._people: dict[str, tuple[str, str, bool]] = {}
        self._wake = asyncio.Event()
        self._writer = asyncio.ensure_future(self._persist_loop())
        self._wake.set()

    # -- writing

    def write(self, kind: str, body: dict[str, Any]) -> None:
        try:
            self.core.propose(kind, _plain(body), time.monotonic())
        except PeerDeskError as exc:
            # Entries another participant must author (a customer's chat, consent and
            # system information) wait for the log to be replicated to them.
            quiet = exc.code in ("not_allowed", "wrong_author")
            (log.debug if quiet else log.warning)(
                "left out of the session log (%s): %s", kind, exc.message
            )
            return
        self._wake.set()

    def observe(self, event: status.Status) -> None:
        """Record what a status value says happened."""
        if isinstance(event, status.Joined):
            role = "customer" if event.role == "customer" else "assistant"
            self._people[event.peer] = (event.name, role, event.primary)
            self.write(
                "participant",
                {
                    "peer": event.peer,
                    "name": event.name,
                    "role": role,
                    "primary": event.primary,
                    "action": "joined",
                },
            )
        elif isinstance(event, status.Left) and event.peer in self._people:
            name, role, primary = self._people[event.peer]
            action = "left" if event.reason == "left" else "lost"
            self.write(
                "participant",
                {
                    "peer": event.peer,
                    "name": name,
                    "role": role,
                    "primary": primary,
                    "action": action,
                },
            )
        elif isinstance(event, status.ChatReceived) and not event.history:
            self.write(
                "chat",
                {
                    "from": event.from_,
                    "name": event.name,
                    "text": event.text,
                    "to": list(event.to) if event.to else None,
                },
            )
        elif isinstance(event, status.ConsentChanged):
            self.write(
                "consent",
                {
                    "id": event.id,
                    "cap": event.cap,
                    "state": event.state,
                    "csr": self.me,
                    "customer": event.peer,
                },
            )
        elif isinstance(event, status.ControlChanged):
            # the log's own token (of the entry this one replaces), which only grows
            current = self.core.state.control
            token = list(current.token) if current is not None else [0, 0]
            self.write("control", {"holder": event.holder, "token": token, "by": self.me})
        elif isinstance(event, status.FileProgress) and event.state in ("done", "failed"):
            direction = "to_customer" if event.direction == "send" else "from_customer"
            self.write(
                "file",
                {
                    "id": event.id,
                    "name": event.name or "?",
                    "size": event.size,
                    "sha256": event.sha256,
                    "direction": direction,
                    "by": self.me,
                    "state": event.state,
                },
            )
        elif isinstance(event, status.SysInfoReceived):
            self.write("sysinfo", {"customer": event.peer, "data": event.data})

    def chat(self, name: str, text: str, to: tuple[str, ...] | None) -> None:
        self.write(
            "chat", {"from": self.me, "name": name, "text": text, "to": list(to) if to else None}
        )

    # -- the end

    async def finish(self, reason: str) -> tuple[Path, Path] | None:
        """Close the log with ``session_end`` and write the JSON and HTML reports."""
        from agent import report

        self.write("session_end", {"by": self.me, "reason": reason[:200]})
        await self._flush()
        self._writer.cancel()
        entries = [e.to_obj() for e in self.core.entries]
        await asyncio.to_thread(self._store.close)
        try:
            return await asyncio.to_thread(
                report.write_reports, entries, self.path.parent, session_id=self.session_id
            )
        except (PeerDeskError, OSError) as exc:
            log.warning("could not write the session report: %s", exc)
            return None

    async def _flush(self, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        self._wake.set()
        while self.core.durable_seq < len(self.core.entries) - 1:
            if time.monotonic() > deadline:
                log.warning("the session log did not reach the disk in time")
                return
            await asyncio.sleep(0.01)

    async def _persist_loop(self) -> None:
        """Entries reach the disk off the event loop, in order, before they count."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while requests := self.core.persist_requests():
                for request in requests:
                    await asyncio.to_thread(self._store.apply, request)
                    self.core.persisted(request.id, time.monotonic())
            while self.core.next_event() is not None:
                pass
            self.core.messages_to_send()  # nobody else holds the log yet
