"""Status values: what the agent tells its front ends (headless JSON, console, tray).

Front ends receive these frozen values through one callback and never reach into
agent internals. ``to_json()`` gives the headless wire form documented in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Status:
    event: ClassVar[str] = "status"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"event": self.event}
        for key, value in vars(self).items():
            body[key.rstrip("_")] = list(value) if isinstance(value, tuple) else value
        return body


@dataclass(frozen=True)
class SessionStarted(Status):
    """The CSR's session exists; ``code`` and ``link`` can be given to a customer."""

    event: ClassVar[str] = "session"
    code: str
    link: str
    room: str
    signal: str
    me: str
    "The CSR's own peer id."
    csr_code: str = ""
    "The code an assistant CSR joins with (same room, its own secret); for CSRs' eyes only."
    web: str = ""
    """The signaling server's web page for the code (``http(s)://HOST/j/ROOM#SECRET``):
    for customers who may not have PeerDesk yet."""


@dataclass(frozen=True)
class Joined(Status):
    """A participant is in the session (``sas`` is set for a direct, PAKE-verified link)."""

    event: ClassVar[str] = "joined"
    peer: str
    role: str
    name: str
    sas: str | None
    me: str
    "Our own peer id."
    primary: bool = False


@dataclass(frozen=True)
class ChatReceived(Status):
    event: ClassVar[str] = "chat"
    from_: str
    name: str
    text: str
    to: tuple[str, ...] | None
    history: bool = False
    "True for earlier lines replayed to an assistant who just joined."


@dataclass(frozen=True)
class Notice(Status):
    """Text for the person at this agent's console (``/help``); not sent anywhere."""

    event: ClassVar[str] = "notice"
    text: str


@dataclass(frozen=True)
class Rejoined(Status):
    """CSR: a participant already in the session joined again from another agent (the
    same key): the new agent takes the seat, the old one is told and leaves. ``sas``
    is the new join's check code."""

    event: ClassVar[str] = "rejoined"
    peer: str
    role: str
    name: str
    sas: str


@dataclass(frozen=True)
class Left(Status):
    event: ClassVar[str] = "left"
    peer: str
    reason: str = "left"


@dataclass(frozen=True)
class Ended(Status):
    event: ClassVar[str] = "ended"
    reason: str = "ended"


@dataclass(frozen=True)
class AttemptFailed(Status):
    """Host: someone tried to join with a wrong code (or a tampered handshake)."""

    event: ClassVar[str] = "join_failed"
    reason: str
    message: str
    failures: int
    remaining: int


@dataclass(frozen=True)
class CodeClosed(Status):
    """Host: the code admits nobody any more (``burned`` or ``expired``)."""

    event: ClassVar[str] = "code_closed"
    reason: str


@dataclass(frozen=True)
class Error(Status):
    """Something went wrong; ``reason`` is for people, ``code`` for programs."""

    event: ClassVar[str] = "error"
    reason: str
    code: str = "error"


@dataclass(frozen=True)
class SignalResumed(Status):
    """CSR: the signaling connection dropped and the agent reconnected and hosts its room
    again (on whichever node ``signal`` reached): the session code keeps working."""

    event: ClassVar[str] = "signal_resumed"
    room: str
    signal: str
    after_ms: int
    "From losing the signaling connection to hosting the room again."


@dataclass(frozen=True)
class RosterChanged(Status):
    """Who is in the session now: ``[{"id","name","role","primary"}]`` in join order."""

    event: ClassVar[str] = "roster"
    participants: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ConsentRequest(Status):
    """Customer: a CSR asks for a capability. Answer with ``grant`` or ``deny``."""

    event: ClassVar[str] = "request"
    id: str
    cap: str
    from_: str
    name: str


@dataclass(frozen=True)
class ConsentChanged(Status):
    """Both sides: a request is ``pending``, ``granted``, ``denied`` or ``revoked``."""

    event: ClassVar[str] = "consent"
    id: str
    cap: str
    state: str
    peer: str
    "The other side: the CSR (on the customer) or the customer (on the CSR)."
    reason: str = ""


@dataclass(frozen=True)
class ControlChanged(Status):
    """Who may control the customer's machine now (``holder`` None: nobody)."""

    event: ClassVar[str] = "control"
    holder: str | None
    token: tuple[int, int]


@dataclass(frozen=True)
class SysInfoReceived(Status):
    event: ClassVar[str] = "sysinfo"
    peer: str
    data: dict[str, Any]


@dataclass(frozen=True)
class MonitorsListed(Status):
    event: ClassVar[str] = "monitors"
    peer: str
    items: tuple[dict[str, Any], ...]
    current: int


@dataclass(frozen=True)
class Link(Status):
    """Every 2 s while a customer's screen is viewed: how the link to it is doing."""

    event: ClassVar[str] = "link"
    peer: str
    kbps: int
    "Screen data received over the last half second, kbit/s."
    target_kbps: int
    "What the customer's agent estimates the link allows the screen, kbit/s."
    rtt_ms: int | None
    loss: float
    "Fraction of screen packets lost over the last second."
    queue_ms: int
    "Queueing delay at the bottleneck, ms (latency added by a full link)."
    fps: float
    "Frames shown here over the last 2 s, per second."


@dataclass(frozen=True)
class ScreenModeChanged(Status):
    """The mode a customer's screen spends a slow link in (``sharp`` or ``smooth``)."""

    event: ClassVar[str] = "screen_mode"
    peer: str
    "The customer whose screen it is."
    mode: str


@dataclass(frozen=True)
class SnapshotSaved(Status):
    event: ClassVar[str] = "snapshot"
    peer: str
    path: str
    width: int
    height: int


@dataclass(frozen=True)
class FileProgress(Status):
    """A file transfer's progress; ``state`` ends as ``done`` (with ``sha256``) or ``failed``."""

    event: ClassVar[str] = "file"
    id: str
    name: str
    direction: str
    "``send`` or ``receive``."
    peer: str
    state: str
    "``offered``, ``active``, ``done``, ``failed``, ``rejected``."
    bytes: int
    size: int
    rate: float
    "Bytes per second, smoothed."
    eta: float | None
    "Seconds left, or None when unknown."
    sha256: str | None = None
    path: str | None = None
    reason: str = ""
    transport: str = ""
    "``fastpath`` (direct TCP, AES-GCM) or ``datachannel``."


@dataclass(frozen=True)
class FileListing(Status):
    """A directory listing from the peer (``files_advanced``) or its published files."""

    event: ClassVar[str] = "listing"
    peer: str
    path: str
    entries: tuple[dict[str, Any], ...]
    truncated: bool


@dataclass(frozen=True)
class AssistantRequest(Status):
    """Primary CSR: a CSR proved the CSR code and asks to join; ``admit`` or ``refuse``."""

    event: ClassVar[str] = "assistant_request"
    peer: str
    name: str
    sas: str
    "Read it aloud with them: both sides show the same six digits."


@dataclass(frozen=True)
class ReportWritten(Status):
    """CSR, at the end: the signed session log and its activity report (JSON and HTML)."""

    event: ClassVar[str] = "report"
    id: str
    log: str
    json: str
    html: str


@dataclass(frozen=True)
class DirectLink(Status):
    """An assistant CSR and the customer now have their own link (introduced by the
    primary CSR): the assistant's input goes straight to the customer."""

    event: ClassVar[str] = "direct"
    peer: str


@dataclass(frozen=True)
class Failover(Status):
    """The primary CSR was lost; ``primary`` leads the session now (with the customer's
    vote). Control is released until the customer grants it again."""

    event: ClassVar[str] = "failover"
    primary: str
    lost: str
    after_ms: int
    "From losing the old primary to the new one leading."
