"""Headless commands: one JSON object per line on the agent's stdin.

They come from scripts and integrations, so they are parsed as strictly as any wire:
a bad line gets an ``error`` event naming the problem and changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire
from agent.protocol.channel import MAX_CHAT_CHARS, MAX_RECIPIENTS, SCREEN_MODES
from agent.protocol.handshake import PEER_ID_RE
from agent.protocol.log import MAX_NOTE_CHARS

MAX_COMMAND_BYTES = 64 * 1024


@dataclass(frozen=True)
class ChatCommand:
    """``{"cmd":"chat","text":...,"to":[IDs]}``; without ``to`` the line goes to everyone."""

    cmd: ClassVar[str] = "chat"
    text: str
    to: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NoteCommand:
    """``{"cmd":"note","text":...}`` (CSR): a note in the session log, sealed for the CSRs."""

    cmd: ClassVar[str] = "note"
    text: str


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


@dataclass(frozen=True)
class ReleaseCommand:
    """``{"cmd":"release","cap":CAP,"to":ID}`` (CSR): stop using a granted capability."""

    cmd: ClassVar[str] = "release"
    cap: str
    to: str | None = None


@dataclass(frozen=True)
class RequestCommand:
    """``{"cmd":"request","cap":CAP,"to":ID}`` (CSR): ask a customer for a capability."""

    cmd: ClassVar[str] = "request"
    cap: str
    to: str | None = None


@dataclass(frozen=True)
class AnswerCommand:
    """``{"cmd":"grant"|"deny","id":ID}`` (customer): answer a request."""

    cmd: ClassVar[str] = "answer"
    id: str
    grant: bool
    dir: str | None = None
    "For ``files_advanced``: the directory the CSR may browse (default: the download dir)."


@dataclass(frozen=True)
class RevokeCommand:
    """``{"cmd":"revoke","cap":CAP|"all"}`` (customer): take a capability back at once."""

    cmd: ClassVar[str] = "revoke"
    cap: str


@dataclass(frozen=True)
class SnapshotCommand:
    """``{"cmd":"snapshot","path":P}`` (CSR): save the latest received frame as PNG."""

    cmd: ClassVar[str] = "snapshot"
    path: str
    to: str | None = None


@dataclass(frozen=True)
class InputCommand:
    """Pointer and keyboard commands (CSR): ``click``, ``move``, ``down``, ``up``,
    ``scroll``, ``key``, ``type``. Coordinates are normalised to the shared monitor."""

    cmd: ClassVar[str] = "input"
    kind: str
    x: float = 0.0
    y: float = 0.0
    button: str = "left"
    dx: int = 0
    dy: int = 0
    key: str = ""
    action: str = "press"
    text: str = ""
    to: str | None = None


@dataclass(frozen=True)
class SimpleCommand:
    """``monitors``, ``keyframe``, ``sysinfo``, ``status``: no arguments but ``to``."""

    cmd: ClassVar[str] = "simple"
    name: str
    to: str | None = None


@dataclass(frozen=True)
class MonitorCommand:
    """``{"cmd":"monitor","index":N}``: share monitor N (customer) or ask for it (CSR)."""

    cmd: ClassVar[str] = "monitor"
    index: int
    to: str | None = None


@dataclass(frozen=True)
class ScreenModeCommand:
    """``{"cmd":"screen_mode","mode":"sharp"|"smooth"}``: how the customer's screen spends
    a slow link: sharp (the default: text first, the frame rate goes down) or smooth
    (motion first, a coarser picture). CSR: asks the customer's agent; customer: sets it."""

    cmd: ClassVar[str] = "screen_mode"
    mode: str
    to: str | None = None


@dataclass(frozen=True)
class FileCommand:
    """File commands: ``send_file`` (CSR publishes a local file and offers it),
    ``browse`` and ``fetch`` (CSR, ``files_advanced``: list and pull from the customer's
    shared directory), ``accept_file`` / ``reject_file`` (answer an offered or requested
    transfer)."""

    cmd: ClassVar[str] = "file"
    kind: str
    path: str = ""
    id: str = ""
    dest: str | None = None
    to: str | None = None


@dataclass(frozen=True)
class AdmitCommand:
    """``{"cmd":"admit"|"refuse","peer":ID}`` (primary CSR): answer an assistant's request."""

    cmd: ClassVar[str] = "admit"
    peer: str
    admit: bool


@dataclass(frozen=True)
class TransferCommand:
    """``{"cmd":"transfer_control","to":ID}``: pass control to another CSR (or back)."""

    cmd: ClassVar[str] = "transfer_control"
    to: str


Command: TypeAlias = (
    ChatCommand
    | NoteCommand
    | LeaveCommand
    | EndCommand
    | MakePrimaryCommand
    | RequestCommand
    | ReleaseCommand
    | AnswerCommand
    | RevokeCommand
    | SnapshotCommand
    | InputCommand
    | SimpleCommand
    | MonitorCommand
    | ScreenModeCommand
    | FileCommand
    | AdmitCommand
    | TransferCommand
)

_CAP_RE = re.compile(r"[a-z_]{1,24}")
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BUTTON_RE = re.compile(r"left|middle|right")
_KEY_ACTION_RE = re.compile(r"down|up|press")


def _to(o: dict[str, Any]) -> str | None:
    value: str | None = wire.get_str(o, "to", pattern=PEER_ID_RE, optional=True)
    return value


def _coord(o: dict[str, Any], name: str) -> float:
    value = o.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f'field "{name}" must be a number between 0 and 1')
    if not 0.0 <= float(value) <= 1.0:  # also refuses NaN
        raise DecodeError(f'field "{name}" must be between 0 and 1')
    return float(value)


def _path(o: dict[str, Any], name: str = "path") -> str:
    value: str = wire.get_str(o, name, max_len=4096, allow_empty=False)
    return value


def _input(kind: str) -> Any:
    def parse(o: dict[str, Any]) -> InputCommand:
        if kind in ("click", "move", "down", "up", "scroll"):
            return InputCommand(
                kind=kind,
                x=_coord(o, "x"),
                y=_coord(o, "y"),
                button=wire.get_str(o, "button", pattern=_BUTTON_RE, optional=True) or "left",
                dx=wire.get_int(o, "dx", lo=-20, hi=20, optional=True) or 0,
                dy=wire.get_int(o, "dy", lo=-20, hi=20, optional=True) or 0,
                to=_to(o),
            )
        if kind == "key":
            return InputCommand(
                kind=kind,
                key=wire.get_str(o, "key", max_len=16, allow_empty=False),
                action=wire.get_str(o, "action", pattern=_KEY_ACTION_RE, optional=True) or "press",
                to=_to(o),
            )
        return InputCommand(
            kind="type", text=wire.get_str(o, "text", max_len=1000, allow_empty=False), to=_to(o)
        )

    return parse


_TABLE: dict[str, Any] = {
    "chat": lambda o: ChatCommand(
        text=wire.get_str(o, "text", max_len=MAX_CHAT_CHARS, allow_empty=False),
        to=wire.get_str_list(o, "to", max_items=MAX_RECIPIENTS, pattern=PEER_ID_RE, optional=True),
    ),
    "note": lambda o: NoteCommand(
        text=wire.get_str(o, "text", max_len=MAX_NOTE_CHARS, allow_empty=False)
    ),
    "leave": lambda o: LeaveCommand(),
    "end": lambda o: EndCommand(),
    "make_primary": lambda o: MakePrimaryCommand(peer=wire.get_str(o, "peer", pattern=PEER_ID_RE)),
    "transfer_control": lambda o: TransferCommand(to=wire.get_str(o, "to", pattern=PEER_ID_RE)),
    "admit": lambda o: AdmitCommand(peer=wire.get_str(o, "peer", pattern=PEER_ID_RE), admit=True),
    "refuse": lambda o: AdmitCommand(peer=wire.get_str(o, "peer", pattern=PEER_ID_RE), admit=False),
    "request": lambda o: RequestCommand(cap=wire.get_str(o, "cap", pattern=_CAP_RE), to=_to(o)),
    "release": lambda o: ReleaseCommand(cap=wire.get_str(o, "cap", pattern=_CAP_RE), to=_to(o)),
    "grant": lambda o: AnswerCommand(
        id=wire.get_str(o, "id", pattern=_ID_RE),
        grant=True,
        dir=wire.get_str(o, "dir", max_len=4096, optional=True),
    ),
    "deny": lambda o: AnswerCommand(id=wire.get_str(o, "id", pattern=_ID_RE), grant=False),
    "revoke": lambda o: RevokeCommand(cap=wire.get_str(o, "cap", pattern=_CAP_RE)),
    "snapshot": lambda o: SnapshotCommand(path=_path(o), to=_to(o)),
    **{k: _input(k) for k in ("click", "move", "down", "up", "scroll", "key", "type")},
    **{
        k: (lambda name: lambda o: SimpleCommand(name=name, to=_to(o)))(k)
        for k in ("monitors", "keyframe", "sysinfo")
    },
    "send_file": lambda o: FileCommand(kind="send_file", path=_path(o), to=_to(o)),
    "browse": lambda o: FileCommand(
        kind="browse", path=wire.get_str(o, "path", max_len=4096, optional=True) or "", to=_to(o)
    ),
    "fetch": lambda o: FileCommand(
        kind="fetch",
        path=_path(o),
        dest=wire.get_str(o, "dest", max_len=4096, optional=True),
        to=_to(o),
    ),
    "accept_file": lambda o: FileCommand(
        kind="accept_file", id=wire.get_str(o, "id", pattern=_ID_RE)
    ),
    "reject_file": lambda o: FileCommand(
        kind="reject_file", id=wire.get_str(o, "id", pattern=_ID_RE)
    ),
    "monitor": lambda o: MonitorCommand(index=wire.get_int(o, "index", lo=1, hi=16), to=_to(o)),
    "screen_mode": lambda o: ScreenModeCommand(
        mode=wire.get_choice(o, "mode", SCREEN_MODES), to=_to(o)
    ),
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
