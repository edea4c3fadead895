"""The CSR's sessions, for the tray and the dashboard: start them, command them, listen.

The hub owns the ``CsrSession`` objects of one agent (several at once: multisession
mode). Front ends talk to it in two ways only: ``command(sid, cmd)`` with the same
parsed commands as headless mode, and a listener that receives ``(sid, status)``
pairs — frozen status values, never the sessions themselves.

    hub = Hub(identity.load(), signal_url=None)     # None: an embedded signaling server
    hub.listen(lambda sid, event: print(sid, event.to_json()))
    sid = await hub.start_session()
    await hub.command(sid, ChatCommand(text="hello"))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import status
from agent.errors import LocalProtocolError, PeerDeskError
from agent.identity import Identity
from agent.protocol import commands as cmds

log = logging.getLogger(__name__)

Listener = Callable[[str, status.Status], None]
MAX_SESSIONS = 8
"Sessions one agent hosts at once."
MAX_HISTORY = 2000
"Status values kept per session, replayed to a dashboard page that (re)connects."


@dataclass
class Entry:
    """One session the hub started."""

    sid: str
    session: Any
    "The ``CsrSession`` (typed loosely: the runtime is imported lazily)."
    history: list[tuple[float, status.Status]] = field(default_factory=list)
    """(when, what): status values with the wall-clock time they happened, for a page
    that (re)connects."""
    notes: list[str] = field(default_factory=list)
    role: str = "primary"
    "``primary`` (this agent hosts the session) or ``assistant`` (joined with a CSR code)."
    ended: bool = False
    waiter: asyncio.Task[int] | None = None


class Hub:
    """The sessions of this agent and the listeners that watch them."""

    def __init__(
        self,
        me: Identity,
        signal_url: str | None,
        *,
        download_dir: Path | None = None,
        port: int = 0,
    ) -> None:
        from agent.runtime.hosting import Hosting, HostOptions

        self.me = me
        self.download_dir = download_dir
        self.hosting = Hosting(HostOptions(signal=signal_url, port=port, download_dir=download_dir))
        "Where sessions are hosted: the same way as ``peerdesk start`` (LAN announcement too)."
        self.entries: dict[str, Entry] = {}
        self._listeners: list[Listener] = []
        self._ids = itertools.count(1)
        self._uploads = tempfile.TemporaryDirectory(prefix="peerdesk-uploads-")
        self._lock = asyncio.Lock()

    @property
    def upload_dir(self) -> Path:
        """Where files the dashboard uploads wait before they are offered."""
        return Path(self._uploads.name)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(sid, status)`` for every status value; returns an unsubscribe."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def _emit(self, sid: str, event: status.Status) -> None:
        entry = self.entries.get(sid)
        if entry is not None:
            if isinstance(event, status.Link):  # every 2 s: only the newest is worth replaying
                entry.history[:] = [
                    (at, e)
                    for at, e in entry.history
                    if not (isinstance(e, status.Link) and e.peer == event.peer)
                ]
            entry.history.append((time.time(), event))
            del entry.history[:-MAX_HISTORY]
        for listener in list(self._listeners):
            try:
                listener(sid, event)
            except Exception:  # a broken front end must not break the session
                log.exception("status listener failed")

    @property
    def signal_url(self) -> str | None:
        """The signaling URL sessions use (None until the embedded one started)."""
        return self.hosting.signal_url

    async def start_session(self) -> str:
        """Start a CSR session; returns its id here (``s1``, ``s2``, ...)."""
        async with self._lock:
            live = sum(1 for e in self.entries.values() if not e.ended)
            if live >= MAX_SESSIONS:
                raise LocalProtocolError(
                    f"{MAX_SESSIONS} sessions are open already: end one first", code="too_many"
                )
            sid = f"s{next(self._ids)}"

            def emit(event: status.Status, sid: str = sid) -> None:
                self._emit(sid, event)

            entry = Entry(sid, None)
            self.entries[sid] = entry
            try:
                entry.session = await self.hosting.start_session(self.me, emit)
            except PeerDeskError as exc:
                entry.ended = True
                self._emit(sid, status.Error(reason=exc.message, code=exc.code))
                self._emit(sid, status.Ended(reason="failed"))
                return sid
            entry.waiter = asyncio.ensure_future(self._watch(entry))
            return sid

    async def join_as_assistant(self, code: str) -> str:
        """Join another CSR's session with its CSR code (or link) as an assistant; returns
        its id here at once: the join (and the primary's answer) goes on in the background."""
        from agent.cli import DEFAULT_PORT
        from agent.protocol.code import parse_code_or_link
        from agent.runtime import CustomerSession
        from agent.session import handshake as hsk

        link = parse_code_or_link(code)
        url = link.signal or self.signal_url or f"ws://127.0.0.1:{DEFAULT_PORT}"
        async with self._lock:
            sid = f"s{next(self._ids)}"

            def emit(event: status.Status, sid: str = sid) -> None:
                self._emit(sid, event)

            session = CustomerSession(
                self.me, link, url, emit, role="csr", timeout=hsk.DECISION_TTL
            )
            entry = Entry(sid, session, role="assistant")
            self.entries[sid] = entry
        entry.waiter = asyncio.ensure_future(self._join(entry))
        return sid

    async def _join(self, entry: Entry) -> int:
        try:
            await entry.session.join()
        except PeerDeskError as exc:
            entry.ended = True
            self._emit(entry.sid, status.Error(reason=exc.message, code=exc.code))
            self._emit(entry.sid, status.Ended(reason="failed"))
            return 1
        return await self._watch(entry)

    async def _watch(self, entry: Entry) -> int:
        try:
            return int(await entry.session.wait())
        finally:
            entry.ended = True

    def entry(self, sid: str) -> Entry:
        entry = self.entries.get(sid)
        if entry is None:
            raise LocalProtocolError(f"no session {sid!r} in this agent", code="no_session")
        return entry

    async def command(self, sid: str, command: cmds.Command) -> None:
        """Carry out one command in session ``sid`` (errors come back as status values)."""
        entry = self.entry(sid)
        if entry.ended:
            raise LocalProtocolError("this session has ended", code="ended")
        await entry.session.command(command)
        if isinstance(command, cmds.ChatCommand):  # our own line, for every page and reload
            me = self.me.peer_id
            self._emit(sid, status.ChatReceived(me, self.me.name, command.text, command.to))

    def note(self, sid: str, text: str) -> None:
        """Keep a CSR note and write it into the session's signed log."""
        from agent.protocol.log import MAX_NOTE_CHARS

        text = text.strip()
        if not text or len(text) > MAX_NOTE_CHARS:
            raise LocalProtocolError(f"a note has 1 to {MAX_NOTE_CHARS} characters")
        entry = self.entry(sid)
        entry.notes.append(text)
        record = getattr(entry.session, "record", None)
        if record is not None:
            record.note(text)  # sealed in the log: the customer's copy cannot read it

    def viewer(self, sid: str, peer: str | None) -> Any:
        """The screen viewer for customer ``peer`` (None: the primary), or None yet."""
        entry = self.entry(sid)
        if entry.ended:
            raise LocalProtocolError("this session has ended", code="ended")
        try:
            return entry.session.services_for(peer).viewer
        except LocalProtocolError:
            return None

    def screen_source(self, sid: str, peer: str | None) -> tuple[Any, Any] | None:
        """(viewer, link) of customer ``peer``'s screen once its track arrived, or None."""
        entry = self.entry(sid)
        if entry.ended:
            raise LocalProtocolError("this session has ended", code="ended")
        try:
            services = entry.session.services_for(peer)
        except LocalProtocolError:
            return None
        if services.viewer is None:
            return None
        return services.viewer, services.link

    async def close(self) -> None:
        """End every live session and stop the embedded server."""
        for entry in list(self.entries.values()):
            if entry.ended:
                continue
            with contextlib.suppress(PeerDeskError):
                if entry.role == "assistant":
                    await entry.session.leave()
                else:
                    await entry.session.end("stopped", force=True)
        await self.hosting.close()
        self._uploads.cleanup()
