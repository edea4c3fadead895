"""Front ends without a tray: JSON lines (``--json``) or a plain console.

JSON mode writes one event object per line on stdout and reads one command object
per line on stdin (the contract is in the README). Console mode prints readable
lines and takes typed lines as chat (``/leave``, ``/end``, ``/to ID text``). Logs
always go to stderr, never into the JSON stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Protocol, TextIO

from agent import status
from agent.errors import DecodeError, PeerDeskError
from agent.protocol import commands as cmds
from agent.protocol.code import landing_url, parse_code


class Controllable(Protocol):
    """What a front end may ask of a session (the same API the tray and dashboard use)."""

    async def command(self, command: cmds.Command) -> None: ...


def _line_emitter(
    render: Callable[[status.Status], str], out: TextIO | None
) -> Callable[[status.Status], None]:
    def emit(event: status.Status) -> None:
        stream = out or sys.stdout
        try:
            stream.write(render(event) + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError):  # nobody reads us any more (a closed terminal)
            if out is None:
                _silence_stdout()

    return emit


def _silence_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone, so that neither later events
    nor the interpreter's last flush raise ("Exception ignored ... BrokenPipeError")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def json_emitter(out: TextIO | None = None) -> Callable[[status.Status], None]:
    """An ``emit`` callback that writes JSON lines."""
    return _line_emitter(lambda e: json.dumps(e.to_json(), ensure_ascii=False), out)


def console_emitter(out: TextIO | None = None) -> Callable[[status.Status], None]:
    """An ``emit`` callback that writes lines for a person."""
    return _line_emitter(_describe, out)


def _describe(event: status.Status) -> str:
    if isinstance(event, status.SessionStarted):
        return (
            f"Session code: {event.code}\n"
            f"Link:         {event.link}\n"
            f"Web page:     {landing_url(parse_code(event.code), event.signal)}\n"
            "Give the customer the code (or the link). Type to chat; /end ends the session."
        )
    if isinstance(event, status.Joined):
        sas = f"  (check code {event.sas[:3]} {event.sas[3:]} with them)" if event.sas else ""
        return f"* {event.name} [{event.peer}] joined as {event.role}{sas}"
    if isinstance(event, status.Rejoined):
        return (
            f"* {event.name} [{event.peer}] joined again from another agent, which takes "
            f"their place (new check code {event.sas[:3]} {event.sas[3:]})"
        )
    if isinstance(event, status.Ended) and event.reason == "replaced":
        return "* you joined this session again from another agent: this one has left it"
    if isinstance(event, status.ChatReceived):
        private = " (to you)" if event.to else ""
        return f"<{event.name}>{private} {event.text}"
    if isinstance(event, status.Left):
        return f"* {event.peer} {'left' if event.reason == 'left' else 'was lost'}"
    if isinstance(event, status.Ended):
        return f"* session ended ({event.reason})"
    if isinstance(event, status.AttemptFailed):
        return f"! failed join: {event.message} ({event.remaining} attempts left)"
    if isinstance(event, status.CodeClosed):
        return f"! the code is {event.reason}: nobody else can join with it"
    if isinstance(event, status.SignalResumed):
        return f"* back on the signaling server after {event.after_ms} ms: the code still works"
    if isinstance(event, status.Error):
        return f"! {event.reason}"
    if isinstance(event, status.ConsentRequest):
        return (
            f"? {event.name} asks for {event.cap.replace('_', ' ')}: "
            f"/grant {event.id} or /deny {event.id}"
        )
    if isinstance(event, status.ConsentChanged):
        why = f" ({event.reason})" if event.reason else ""
        return f"* {event.cap.replace('_', ' ')}: {event.state}{why}"
    if isinstance(event, status.ControlChanged):
        return f"* control: {event.holder or 'nobody'}"
    if isinstance(event, status.AssistantRequest):
        return (
            f"? {event.name} [{event.peer}] asks to join as assistant (check code "
            f"{event.sas[:3]} {event.sas[3:]}): /admit {event.peer} or /refuse {event.peer}"
        )
    if isinstance(event, status.FileProgress) and event.state in ("offered", "requested"):
        return f"? file {event.name} ({event.size} bytes): /accept {event.id} or /reject {event.id}"
    if isinstance(event, status.FileProgress) and event.state in ("done", "failed"):
        return f"* file {event.name}: {event.state} {event.path or event.reason}"
    if isinstance(event, status.Failover):
        return (
            f"! the primary CSR {event.lost} was lost; {event.primary} leads the session now "
            f"({event.after_ms} ms). Control was released: request it again."
        )
    if isinstance(event, status.DirectLink):
        return f"* direct link with {event.peer}"
    if isinstance(event, status.ReportWritten):
        return f"* session record: {event.html}"
    if isinstance(event, status.RosterChanged):
        names = ", ".join(
            f"{p['name']}{' (primary)' if p['primary'] else ''}" for p in event.participants
        )
        return f"* in the session: {names}"
    return json.dumps(event.to_json())


def _parse_console(line: str) -> cmds.Command:
    text = line.strip()
    if text == "/leave":
        return cmds.LeaveCommand()
    if text == "/end":
        return cmds.EndCommand()
    if text.startswith("{"):
        return cmds.parse_command(text)
    verb, _, arg = text.partition(" ")
    shortcuts = {
        "/grant": ("grant", "id"),
        "/deny": ("deny", "id"),
        "/revoke": ("revoke", "cap"),
        "/admit": ("admit", "peer"),
        "/refuse": ("refuse", "peer"),
        "/request": ("request", "cap"),
        "/accept": ("accept_file", "id"),
        "/reject": ("reject_file", "id"),
        "/transfer": ("transfer_control", "to"),
    }
    if verb in shortcuts and arg.strip():
        name, field = shortcuts[verb]
        return cmds.parse_command(json.dumps({"cmd": name, field: arg.strip()}))
    if text.startswith("/to "):
        _, pid, rest = [*text.split(" ", 2), "", ""][:3]
        return cmds.parse_command(json.dumps({"cmd": "chat", "text": rest, "to": [pid]}))
    if text.startswith("/"):
        raise DecodeError(
            "commands: /leave, /end, /to ID text, /request CAP, /grant ID, /deny ID, "
            "/revoke CAP|all, /admit ID, /refuse ID, /transfer ID, /accept ID, /reject ID, "
            "or a JSON command; anything else is chat"
        )
    return cmds.ChatCommand(text=text)


async def dispatch(session: Controllable, command: cmds.Command) -> None:
    """Carry out one parsed command."""
    await session.command(command)


class _StdinLines:
    """Lines of a file descriptor read in a daemon thread, handed to the event loop.

    A thread, not ``connect_read_pipe``: stdin may be a pipe, a terminal, a regular
    file or ``/dev/null`` (cron, nohup and service managers give that), and epoll
    refuses the last two. The thread reads the descriptor with ``os.read`` (no
    buffered object whose lock it could hold at interpreter exit), never blocks the
    loop and never keeps the process alive. ``b""`` means end of input; ``None`` a
    line that was too long (the rest of it is skipped).
    """

    def __init__(self, fd: int, limit: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._fd = fd
        self._limit = limit
        threading.Thread(target=self._run, name="peerdesk-stdin", daemon=True).start()

    def _put(self, item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self) -> None:
        pending = b""
        skipping = False  # inside a line that was too long
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""  # stdin closed under us: end of input
            if not chunk:
                break
            pending += chunk
            while (newline := pending.find(b"\n")) >= 0:
                line, pending = pending[: newline + 1], pending[newline + 1 :]
                if skipping:
                    skipping = False
                elif len(line) > self._limit:
                    self._put(None)
                else:
                    self._put(line)
            if len(pending) > self._limit:
                if not skipping:
                    self._put(None)
                skipping, pending = True, b""
        if pending and not skipping:
            self._put(pending)
        self._put(b"")

    async def next(self) -> bytes | None:
        return await self._queue.get()


async def read_commands(
    session: Controllable,
    emit: Callable[[status.Status], None],
    *,
    json_mode: bool,
    fd: int | None = None,
) -> None:
    """Read commands from ``fd`` (default stdin) until end of input, then return; a bad
    line gets an error event, nothing else. What end of input means is the caller's."""
    if fd is None:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # no stdin at all (pythonw, closed)
            return
    lines = _StdinLines(fd, cmds.MAX_COMMAND_BYTES)
    while True:
        raw = await lines.next()
        if raw is None:
            emit(
                status.Error(
                    reason=f"command line too long (at most {cmds.MAX_COMMAND_BYTES} bytes)",
                    code="too_large",
                )
            )
            continue
        if not raw:
            return
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            continue
        try:
            command = cmds.parse_command(line) if json_mode else _parse_console(line)
            await dispatch(session, command)
        except PeerDeskError as exc:
            emit(status.Error(reason=exc.message, code=exc.code))
