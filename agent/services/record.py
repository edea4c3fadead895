"""The session's record: the replicated, signed session log on this agent, and the
activity report it becomes.

Every agent that holds the log has one ``SessionRecord``: the primary CSR (which
sequences it from ``session_start``), each admitted assistant CSR and the primary
customer (which follow it and vote). The glue is thin: ``agent.session.log`` decides,
this module feeds it the ``log`` channel's messages (``receive``), hands what it
sends to ``send(peer, text)`` (the runtime knows which link reaches whom), performs
its disk writes in order off the event loop (``agent.store``: an entry is durable
before it is acknowledged), runs its timer, and turns its events into calls on the
runtime (``on_epoch``) and into status values.

What happens is written by whoever may author it (``agent.session.logstate``):
CSRs write participants, control changes, file records, their own chat lines and
notes; the customer's agent writes its consent answers, the system information it
sent and its own chat lines. Status values are mapped to entries in one place,
``observe``; a value that does not fit the log's strict schema is logged and left out,
never allowed to stop the session.

Notes are sealed (ChaCha20-Poly1305) with a key only CSRs have: the customer's agent
keeps and replicates them without being able to read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import status
from agent.errors import PeerDeskError
from agent.identity import Identity
from agent.protocol import log as lw
from agent.session.log import Committed, EpochChanged, Refused, SessionLog, Truncated
from agent.store.logstore import LogStore, session_db_path

log = logging.getLogger(__name__)

HEARTBEAT = 0.5
"""Seconds between the sequencer's heartbeats when nothing is written (commits are
announced at once). Loss of the primary is noticed by the links' own keepalives."""
SILENCE = 1.5
"""Seconds without a heartbeat after which a voter agrees the sequencer is gone (it
votes in a take-over only then); the runtime stands after 2 s of link silence."""

MAX_DEFERRED = 1000
"Entries a joiner keeps waiting until its copy of the log names it."

Send = Callable[[str, str], None]
"Send a log message (JSON text) to a peer's ``log`` channel; dropped if no link reaches it."


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
    """This agent's copy of one session's log, its part in replicating it, and its reports.

    ``primary``: the primary CSR's peer id when this agent follows (an assistant or
    the customer); None when this agent is the primary and starts the log.
    """

    def __init__(
        self,
        me: Identity,
        room: str,
        *,
        send: Send,
        emit: Callable[[status.Status], None],
        primary: str | None = None,
        role: str = "csr",
        on_epoch: Callable[[int, str], None] | None = None,
    ) -> None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
        # a follower's id names it too: two agents sharing a data directory never share a file
        suffix = (
            "" if primary is None else f"-{'assistant' if role == 'csr' else role}-{me.peer_id}"
        )
        self.session_id = f"{stamp}-{room}{suffix}"
        self.me = me.peer_id
        self.role = role
        self._send = send
        self._emit = emit
        self._on_epoch = on_epoch
        self.note_key: bytes | None = secrets.token_bytes(32) if primary is None else None
        "The key that seals notes: made by the primary, given to assistants, never to customers."
        self.path = session_db_path(self.session_id)
        self._store: LogStore | None = None
        "Opened off the event loop by the persist task (SQLite creates and syncs the file)."
        now = time.monotonic()
        self.core = SessionLog(
            self.me,
            me.key,
            voters={primary or self.me},
            sequencer=primary or self.me,
            epoch=0,
            now=now,
            auto_elect=False,
            heartbeat=HEARTBEAT,
            election_timeout=(SILENCE, SILENCE),
        )
        if primary is None:
            self.core.start(room, me.name, now)
        self._people: dict[str, tuple[str, str, bool]] = {}
        self._deferred: list[tuple[str, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._rearm = asyncio.Event()
        self._armed: float | None = None
        self._closed = False
        self._tasks = [
            asyncio.ensure_future(self._persist_loop()),
            asyncio.ensure_future(self._timer_loop()),
        ]
        self._wake.set()

    def rebind(self, *, send: Send, emit: Callable[[status.Status], None]) -> None:
        """Route the log's messages and reports through a new owner (the session an
        assistant hosts after a take-over; the log goes on in the same epoch)."""
        self._send = send
        self._emit = emit
        self._on_epoch = None

    # -- the network

    def receive(self, peer: str, data: str | bytes) -> None:
        """A message from ``peer``'s ``log`` channel (``peer`` as its join proved it)."""
        if self._closed:
            return
        self.core.receive(peer, data, time.monotonic())
        self._pump()

    def sync(self) -> None:
        """Ask the sequencer for the log so far (a joiner, once its link is open)."""
        if not self._closed:
            self.core.request_sync(time.monotonic())
            self._pump()

    def take_over(self) -> bool:
        """The primary is gone: stand for sequencer of the next epoch (the voters
        grant it only if they lost the primary too). False when this agent cannot."""
        if self._closed:
            return False
        try:
            self.core.start_election(time.monotonic())
        except PeerDeskError as exc:
            log.info("cannot stand for the session log: %s", exc.message)
            return False
        self._pump()
        return True

    @property
    def leads(self) -> bool:
        """Whether this agent sequences the log now."""
        return self.core.sequencer == self.me

    # -- writing

    def write(self, kind: str, body: dict[str, Any]) -> None:
        """Append (as sequencer) or propose an entry; what the policy refuses is logged.

        A joiner's first lines may come before its copy of the log names it as a
        participant: they wait (in order, at most ``MAX_DEFERRED``) until it does.
        """
        if self._closed:
            return
        if not self._ready():
            if len(self._deferred) < MAX_DEFERRED:
                self._deferred.append((kind, body))
            else:
                log.warning("left out of the session log (%s): the log has not reached us", kind)
            return
        try:
            self.core.propose(kind, _plain(body), time.monotonic())
        except PeerDeskError as exc:
            quiet = exc.code in ("not_allowed", "wrong_author", "session_ended")
            (log.debug if quiet else log.warning)(
                "left out of the session log (%s): %s", kind, exc.message
            )
            return
        self._pump()

    def chat(self, name: str, text: str, to: tuple[str, ...] | None) -> None:
        """Our own chat line."""
        self.write(
            "chat", {"from": self.me, "name": name, "text": text, "to": list(to) if to else None}
        )

    def note(self, text: str) -> None:
        """A CSR's note, sealed for the CSRs."""
        if self.note_key is None:
            raise PeerDeskError("only a CSR of this session can write notes", code="not_allowed")
        try:
            sealed = lw.seal_note(self.note_key, text)
        except ValueError as exc:
            raise PeerDeskError(str(exc), code="bad_note") from None
        self.write("note", {"sealed": sealed, "by": self.me})

    def observe(self, event: status.Status) -> None:
        """Record what a status value of this agent says happened (CSR side)."""
        if self.role != "csr":
            return
        if isinstance(event, status.Joined) and event.peer != self.me:
            if event.role == "customer":
                role = "customer"
            else:  # the primary CSR, as an assistant sees it, or an admitted assistant
                role = "csr" if event.primary else "assistant"
            self._people[event.peer] = (event.name, role, event.primary)
            if self.leads:  # followers learn participants from the log itself
                self._participant(event.peer, event.name, role, event.primary, "joined")
        elif isinstance(event, status.Rejoined) and event.peer in self._people and self.leads:
            name, role, primary = self._people[event.peer]  # the seat, from a new agent
            self._people[event.peer] = (event.name, role, primary)
            self._participant(event.peer, event.name, role, primary, "joined")
        elif isinstance(event, status.Left) and (seat := self._seat(event.peer)) is not None:
            name, role, primary = seat
            action = "left" if event.reason == "left" else "lost"
            if self.leads or action == "lost":
                self._participant(event.peer, name, role, primary, action)
        elif isinstance(event, status.ControlChanged) and self.leads:
            # the log's own token (of the entry this one replaces), which only grows
            current = self.core.state.control
            if current is not None and current.holder == event.holder:
                return
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

    def _seat(self, peer: str) -> tuple[str, str, bool] | None:
        """Who ``peer`` was: as this agent saw it join, else as the log names it (a
        join announced before this copy of the log opened, such as the primary's when
        its first channel message beats the end of our join)."""
        if peer in self._people:
            return self._people[peer]
        person = self.core.state.people.get(peer)
        return None if person is None else (person.name, person.role, person.primary)

    def _participant(self, peer: str, name: str, role: str, primary: bool, action: str) -> None:
        self.write(
            "participant",
            {"peer": peer, "name": name, "role": role, "primary": primary, "action": action},
        )

    def consent(self, id: str, cap: str, state: str, csr: str, reason: str = "") -> None:
        """The customer's answer (customer side); ``reason`` when the agent could not
        honour a grant (no display, ...)."""
        body = {"id": id, "cap": cap, "state": state, "csr": csr, "customer": self.me}
        if reason:
            body["reason"] = reason[: lw.MAX_REASON_CHARS]
        self.write("consent", body)

    def sysinfo(self, data: Mapping[str, Any]) -> None:
        """What the customer's agent sent as system information (customer side)."""
        self.write("sysinfo", {"customer": self.me, "data": dict(data)})

    # -- the end

    async def settle(self, within: float = 1.0) -> None:
        """Wait (bounded) until every entry we hold is committed."""
        deadline = time.monotonic() + within
        while self.core.committed_seq < len(self.core.entries) - 1:
            self._committed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), left)

    async def end(self, reason: str) -> None:
        """Write ``session_end`` (once) and wait, bounded, until the other holders have it:
        the sequencer does this before it tells anyone the session ended."""
        if not self.core.state.ended:
            # First every holder acknowledges what we hold: a joiner's own lines that
            # waited for its copy to name it are proposed before that acknowledgement
            # (one ordered channel), so they make it into the log before its end.
            await self.settle(0.5)
            self.write("session_end", {"by": self.me, "reason": reason[:200]})
            await self.settle(1.0)

    async def finish(self, reason: str, *, end: bool) -> tuple[Path, Path] | None:
        """Close the log (with ``session_end`` when ``end``), write the JSON and HTML
        reports and stop; returns their paths."""
        from agent import report

        if end:
            await self.end(reason)
        await self._flush()
        self._closed = True
        for task in self._tasks:
            task.cancel()
        entries = [e.to_obj() for e in self.core.entries]
        if self._store is None:
            return None
        await asyncio.to_thread(self._store.close)
        key = self.note_key
        opener = None if key is None else (lambda e: lw.open_note(key, e["body"]["sealed"]))
        try:
            return await asyncio.to_thread(
                report.write_reports,
                entries,
                self.path.parent,
                session_id=self.session_id,
                open_note=opener,
            )
        except (PeerDeskError, OSError) as exc:
            log.warning("could not write the session report: %s", exc)
            return None

    async def close(self) -> None:
        """Stop without a report (the session failed before it began)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._store is not None:
            await asyncio.to_thread(self._store.close)

    async def _flush(self, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        self._wake.set()
        while self.core.durable_seq < len(self.core.entries) - 1:
            if time.monotonic() > deadline:
                log.warning("the session log did not reach the disk in time")
                return
            await asyncio.sleep(0.01)

    # -- the glue loop

    def _ready(self) -> bool:
        person = self.core.state.people.get(self.me)
        return bool(self.core.entries) and person is not None and person.present

    def _pump(self) -> None:
        if self._deferred and self._ready():
            waiting, self._deferred = self._deferred, []
            for kind, body in waiting:
                self.write(kind, body)
        for peer, text in self.core.messages_to_send():
            self._send(peer, text)
        while (event := self.core.next_event()) is not None:
            if isinstance(event, Committed):
                self._committed.set()
            elif isinstance(event, EpochChanged):
                if self._on_epoch is not None:
                    self._on_epoch(event.epoch, event.sequencer)
            elif isinstance(event, Refused):
                self._refused(event)
            elif isinstance(event, Truncated):
                log.info("session log: dropped a diverged tail from seq %d", event.from_seq)
        self._wake.set()
        if self.core.get_timer() != self._armed:
            self._armed = self.core.get_timer()
            self._rearm.set()

    def _refused(self, event: Refused) -> None:
        if event.peer is None:  # our own proposal: the policy said no
            log.debug("left out of the session log: %s", event.detail)
            return
        if event.reason == "session_ended":  # a line that crossed the end: nobody's fault
            log.info("session log: after the end, from %s: %s", event.peer, event.detail)
            return
        log.warning("session log: refused from %s: %s (%s)", event.peer, event.detail, event.reason)
        self._emit(
            status.Error(
                reason=f"the session log refused an entry from {event.peer}: {event.detail}",
                code="log_refused",
            )
        )

    def _open_store(self) -> LogStore:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return LogStore(self.path)

    async def _persist_loop(self) -> None:
        """Entries reach the disk off the event loop, in order, before they count."""
        try:
            self._store = await asyncio.to_thread(self._open_store)
        except (PeerDeskError, OSError) as exc:
            # Replication and take-over still work from memory; only the record is lost.
            log.warning("the session log cannot be kept on disk: %s", exc)
            self._emit(
                status.Error(
                    reason=f"this session's log is kept in memory only: {exc}", code="no_record"
                )
            )
        while True:
            await self._wake.wait()
            self._wake.clear()
            while requests := self.core.persist_requests():
                for request in requests:
                    if self._store is not None:
                        try:
                            await asyncio.to_thread(self._store.apply, request)
                        except (PeerDeskError, OSError) as exc:
                            log.error("the session log could not be written: %s", exc)
                            self._emit(
                                status.Error(
                                    reason=f"the session log could not be written: {exc}",
                                    code="no_record",
                                )
                            )
                            self._store = None
                    self.core.persisted(request.id, time.monotonic())
                    self._pump()

    async def _timer_loop(self) -> None:
        """Heartbeats and retries, when the core says (and not more often: idle CPU)."""
        while True:
            deadline = self.core.get_timer()
            delay = 5.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
            self._rearm.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rearm.wait(), delay)
            self.core.handle_timer(time.monotonic())
            self._pump()
