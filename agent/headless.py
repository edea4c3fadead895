"""Front ends without a tray: JSON lines (``--json``) or a plain console.

JSON mode writes one event object per line on stdout and reads one command object
per line on stdin (the contract is in the README). Console mode prints readable
lines and takes typed lines as chat (``/leave``, ``/end``, ``/to ID text``). Logs
always go to stderr, never into the JSON stream.
"""

from __future__ import annotations

import asyncio
import json
import sys
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
        stream.write(render(event) + "\n")
        stream.flush()

    return emit


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
        return f"* {event.cap.replace('_', ' ')}: {event.state}"
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


async def read_commands(
    session: Controllable,
    emit: Callable[[status.Status], None],
    *,
    json_mode: bool,
    stream: TextIO | None = None,
) -> None:
    """Read commands from stdin until EOF; a bad line gets an error event, nothing else."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=cmds.MAX_COMMAND_BYTES * 2)
    try:
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), stream or sys.stdin
        )
    except (ValueError, OSError):
        return  # stdin is closed or not a pipe/tty: no commands
    while True:
        try:
            raw = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            emit(status.Error(reason="command line too long", code="too_large"))
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
