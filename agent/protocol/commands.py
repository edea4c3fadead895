"""Headless commands: one JSON object per line on the agent's stdin.

They come from scripts and integrations, so they are parsed as strictly as any wire:
a bad line gets an ``error`` event naming the problem and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire
from agent.protocol.channel import MAX_CHAT_CHARS, MAX_RECIPIENTS
from agent.protocol.handshake import PEER_ID_RE

MAX_COMMAND_BYTES = 64 * 1024


@dataclass(frozen=True)
class ChatCommand:
    """``{"cmd":"chat","text":...,"to":[IDs]}``; without ``to`` the line goes to everyone."""

    cmd: ClassVar[str] = "chat"
    text: str
    to: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LeaveCommand:
    """``{"cmd":"leave"}``: leave the session (it goes on for the others)."""

    cmd: ClassVar[str] = "leave"


@dataclass(frozen=True)
class EndCommand:
    """``{"cmd":"end"}``: end the session for everyone (CSR only)."""

    cmd: ClassVar[str] = "end"


@dataclass(frozen=True)
class MakePrimaryCommand:
    """``{"cmd":"make_primary","peer":ID}``: the CSR makes a secondary customer primary."""

    cmd: ClassVar[str] = "make_primary"
    peer: str


Command: TypeAlias = ChatCommand | LeaveCommand | EndCommand | MakePrimaryCommand

_TABLE: dict[str, Any] = {
    "chat": lambda o: ChatCommand(
        text=wire.get_str(o, "text", max_len=MAX_CHAT_CHARS, allow_empty=False),
        to=wire.get_str_list(o, "to", max_items=MAX_RECIPIENTS, pattern=PEER_ID_RE, optional=True),
    ),
    "leave": lambda o: LeaveCommand(),
    "end": lambda o: EndCommand(),
    "make_primary": lambda o: MakePrimaryCommand(peer=wire.get_str(o, "peer", pattern=PEER_ID_RE)),
}


def parse_command(line: str | bytes) -> Command:
    """Parse one command line; raises ``DecodeError`` saying what is wrong."""
    obj = wire.parse_object(line, max_bytes=MAX_COMMAND_BYTES, what="command")
    kind = wire.get_type(obj, key="cmd")
    parser = _TABLE.get(kind)
    if parser is None:
        known = ", ".join(sorted(_TABLE))
        raise UnknownMessage(f'unknown command "{kind[:32]}" (known: {known})')
    try:
        cmd: Command = parser(obj)
    except DecodeError as exc:
        raise DecodeError(f"{kind}: {exc.message}", code=exc.code) from None
    return cmd
