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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from agent import status
from agent.errors import DecodeError, PeerDeskError
from agent.protocol import commands as cmds
from agent.protocol.code import landing_url, parse_code
from agent.session.consent import AVAILABLE


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


def console_emitter(
    out: TextIO | None = None, role: str = "csr"
) -> Callable[[status.Status], None]:
    """An ``emit`` callback that writes lines for a person (``role``: ``csr``,
    ``assistant`` or ``customer``: prompts show only on the side that answers them)."""
    return _line_emitter(lambda e: _describe(e, role), out)


def human_size(n: int | None) -> str:
    """``4.8 MB`` for 5,000,000 bytes: the same units as the dashboard and the page."""
    if n is None or n < 0:
        return "?"
    value, units = float(n), ("B", "KB", "MB", "GB", "TB")
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {units[unit]}" if unit else f"{n} B"


_ENDED = {
    "ended": "the session has ended",
    "stopped": "stopped: the session has ended",
    "replaced": "you joined this session again from another agent: this one has left it",
    "failed": "the session could not start",
}


def _describe_file(event: status.FileProgress, role: str) -> str:
    size = human_size(event.size)
    if event.state in ("offered", "requested"):
        if role == "customer":
            what = "offers you" if event.state == "offered" else "asks for"
            return (
                f"? the CSR {what} the file {event.name} ({size}): "
                f"/accept {event.id} or /reject {event.id}"
            )
        return f"* file {event.name} ({size}): waiting for the customer to accept"
    if event.state == "active":
        done = event.bytes * 100 // event.size if event.size else 0
        return f"* file {event.name}: {done}% of {size} at {human_size(int(event.rate))}/s"
    if event.state == "done":
        where = f", saved as {event.path}" if event.path and event.direction == "receive" else ""
        digest = f" (SHA-256 {event.sha256[:16]}…)" if event.sha256 else ""
        verb = "sent" if event.direction == "send" else "received"
        return f"* file {event.name} ({size}) {verb}{where}{digest}"
    why = f": {event.reason}" if event.reason else ""
    return f"! file {event.name}: {event.state}{why}"


def _describe(event: status.Status, role: str = "csr") -> str:
    if isinstance(event, status.SessionStarted):
        return (
            f"Session code: {event.code}\n"
            f"Link:         {event.link}\n"
            f"Web page:     {event.web or landing_url(parse_code(event.code), event.signal)}\n"
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
        return f"* {_ENDED.get(event.reason, event.reason)}"
    if isinstance(event, status.Notice):
        return event.text
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
    if isinstance(event, status.FileProgress):
        return _describe_file(event, role)
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
        people = event.participants  # in join order: the host CSR first
        host = next((p["id"] for p in people if p["role"] == "csr"), None)
        return f"* in the session: {', '.join(_person(p, host) for p in people)}"
    fields = {k: v for k, v in event.to_json().items() if k != "event" and v not in (None, "")}
    return f"* {event.event}: " + ", ".join(f"{k} {v}" for k, v in fields.items())


def _person(p: dict[str, Any], host: str | None) -> str:
    """``Carol (CSR)``, ``Dan (assistant CSR)``, ``Alice (customer, primary)``."""
    if p["role"] == "csr":
        role = "CSR" if p["id"] == host else "assistant CSR"
    else:
        role = "customer, primary" if p["primary"] else "customer"
    return f"{p['name']} [{p['id']}] ({role})"


@dataclass(frozen=True)
class _Verb:
    """One console command: ``/name ARG`` becomes ``{"cmd": cmd, field: ARG}``."""

    cmd: str
    field: str | None
    usage: str
    roles: frozenset[str]
    help: str


_CSR = frozenset({"csr", "assistant"})
_ALL = frozenset({"csr", "assistant", "customer"})
_VERBS = {
    "/help": _Verb("", None, "/help", _ALL, "this list"),
    "/to": _Verb("chat", None, "/to ID text", _ALL, "a chat line to one person"),
    "/leave": _Verb("leave", None, "/leave", frozenset({"customer", "assistant"}), "leave"),
    "/end": _Verb("end", None, "/end", frozenset({"csr"}), "end the session for everyone"),
    "/request": _Verb(
        "request", "cap", "/request CAP", _CSR, "ask for view, control, files, sysinfo"
    ),
    "/stop": _Verb("release", "cap", "/stop CAP", _CSR, "stop using a granted capability"),
    "/send": _Verb("send_file", "path", "/send FILE", _CSR, "offer a file to the customer"),
    "/note": _Verb("note", "text", "/note TEXT", _CSR, "a note only CSRs can read"),
    "/transfer": _Verb("transfer_control", "to", "/transfer ID", _CSR, "pass control"),
    "/admit": _Verb("admit", "peer", "/admit ID", frozenset({"csr"}), "let an assistant in"),
    "/refuse": _Verb("refuse", "peer", "/refuse ID", frozenset({"csr"}), "turn one away"),
    "/grant": _Verb("grant", "id", "/grant ID", frozenset({"customer"}), "allow a request"),
    "/deny": _Verb("deny", "id", "/deny ID", frozenset({"customer"}), "refuse a request"),
    "/revoke": _Verb(
        "revoke",
        "cap",
        "/revoke CAP|all",
        frozenset({"customer"}),
        "stop sharing it (all: everything)",
    ),
    "/accept": _Verb("accept_file", "id", "/accept ID", frozenset({"customer"}), "take a file"),
    "/reject": _Verb("reject_file", "id", "/reject ID", frozenset({"customer"}), "refuse a file"),
}


def console_help(role: str) -> str:
    """The console commands ``role`` (``csr``, ``assistant`` or ``customer``) can use."""
    lines = [f"  {v.usage:<18} {v.help}" for v in _VERBS.values() if role in v.roles]
    return "Commands:\n" + "\n".join(lines) + "\nAnything else is a chat line to everyone."


def _parse_console(line: str, role: str = "csr") -> cmds.Command | str:
    """A typed line: a command, a chat line, or (``str``) text to show, such as /help."""
    text = line.strip()
    if text.startswith("{"):
        return cmds.parse_command(text)
    if not text.startswith("/"):
        return cmds.ChatCommand(text=text)
    verb_text, _, arg = text.partition(" ")
    arg = arg.strip()
    verb = _VERBS.get(verb_text.lower())
    if verb is None or role not in verb.roles:
        mine = ", ".join(v for v, x in _VERBS.items() if role in x.roles)
        raise DecodeError(f"{verb_text} is not a command here; yours: {mine}", code="unknown_type")
    if verb_text.lower() == "/help":
        return console_help(role)
    if verb_text.lower() == "/to":
        pid, _, rest = arg.partition(" ")
        if not pid or not rest.strip():
            raise DecodeError("usage: /to ID text (the ids are in the session list)")
        return cmds.ChatCommand(text=rest.strip(), to=(pid,))
    if verb.field is None:
        return cmds.parse_command(json.dumps({"cmd": verb.cmd}))
    if not arg:
        raise DecodeError(f"usage: {verb.usage}")
    if verb.field == "cap":
        arg = arg.lower()
        known = (*AVAILABLE, "all") if verb.cmd == "revoke" else AVAILABLE
        if arg not in known:
            raise DecodeError(
                f"{arg} is not a capability; choose {', '.join(known)}", code="unknown_cap"
            )
    if verb.field == "path":
        path = Path(arg).expanduser()
        if not path.is_file():
            raise DecodeError(f"{arg}: no such file", code="not_found")
        arg = str(path.resolve())
    return cmds.parse_command(json.dumps({"cmd": verb.cmd, verb.field: arg}))


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
    role: str = "csr",
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
            command = cmds.parse_command(line) if json_mode else _parse_console(line, role)
            if isinstance(command, str):
                emit(status.Notice(text=command))
                continue
            await dispatch(session, command)
        except PeerDeskError as exc:
            emit(status.Error(reason=exc.message, code=exc.code))
