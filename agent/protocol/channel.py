"""The data-channel wire between two agents of one session (after the join).

One SCTP message holds one JSON object with a ``type`` tag. The channel is
DTLS-protected and bound to the identities proven in the join handshake, so
everything here is authenticated; it is still parsed strictly, because a peer can
be buggy or hostile.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire
from agent.protocol.handshake import MAX_NAME_CHARS, PEER_ID_RE

MAX_CHANNEL_BYTES = 256 * 1024
MAX_CHAT_CHARS = 4000
MAX_RECIPIENTS = 32
MAX_PARTICIPANTS = 64
_ROLE_RE = re.compile(r"csr|customer")
_CODE_RE = re.compile(r"[a-z_]{1,32}")


@dataclass(frozen=True)
class Chat:
    """A chat line. ``sender`` is filled in by the CSR's agent when it relays."""

    type: ClassVar[str] = "chat"
    text: str
    "At most MAX_CHAT_CHARS characters."
    to: tuple[str, ...] | None = None
    "Peer ids it is for; None means everyone."
    sender: str | None = None
    "Peer id of the author (set on relayed lines)."
    name: str | None = None
    "Display name of the author (set on relayed lines)."
    history: bool = False
    "A line from before the receiver joined (replayed to an assistant)."


@dataclass(frozen=True)
class Participant:
    id: str
    name: str
    role: str
    primary: bool


@dataclass(frozen=True)
class Roster:
    """The CSR's agent tells everyone who is in the session."""

    type: ClassVar[str] = "roster"
    participants: tuple[Participant, ...]


@dataclass(frozen=True)
class Bye:
    """The sender leaves the session."""

    type: ClassVar[str] = "bye"


@dataclass(frozen=True)
class End:
    """The CSR ended the session for everyone."""

    type: ClassVar[str] = "end"


@dataclass(frozen=True)
class Ping:
    """Keepalive; a peer silent for several seconds is considered lost."""

    type: ClassVar[str] = "ping"


@dataclass(frozen=True)
class Refused:
    """The receiver refused a message the sender sent; ``message`` says why."""

    type: ClassVar[str] = "refused"
    code: str
    message: str


CAP_RE = re.compile(r"[a-z_]{1,24}")
REF_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
STATE_RE = re.compile(r"pending|granted|denied|revoked")
MAX_SYSINFO_BYTES = 128 * 1024
MAX_MONITORS = 16


@dataclass(frozen=True)
class Request:
    """CSR to customer: please grant ``cap``."""

    type: ClassVar[str] = "request"
    cap: str
    ref: str | None = None
    "The CSR's own reference, echoed in every ``consent`` answer."


@dataclass(frozen=True)
class ConsentState:
    """Customer to CSR: a request changed state (pending, granted, denied, revoked)."""

    type: ClassVar[str] = "consent"
    id: str
    cap: str
    state: str
    ref: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class SysInfo:
    """Customer to CSR, while ``sysinfo`` is granted: structured system information."""

    type: ClassVar[str] = "sysinfo"
    data: dict[str, Any]


@dataclass(frozen=True)
class ControlState:
    """Customer to CSRs: who may control now. ``holder`` None means nobody."""

    type: ClassVar[str] = "control"
    holder: str | None
    token: tuple[int, int]


@dataclass(frozen=True)
class Monitor:
    index: int
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Monitors:
    """Customer to CSR, while ``view`` is granted: the monitors and which is shared."""

    type: ClassVar[str] = "monitors"
    items: tuple[Monitor, ...]
    current: int


@dataclass(frozen=True)
class SelectMonitor:
    """CSR to customer: share monitor ``index`` (1-based, as ``monitors`` lists them)."""

    type: ClassVar[str] = "select_monitor"
    index: int


@dataclass(frozen=True)
class Transfer:
    """Give control to CSR ``to`` (primary CSR to customer; an assistant asks the primary)."""

    type: ClassVar[str] = "transfer"
    to: str


@dataclass(frozen=True)
class Sdp:
    """An SDP for a direct link between an assistant CSR and the customer, relayed by
    the primary CSR's agent, which both verified at their joins: it names ``peer``
    (the other end) truthfully, so each side knows whose DTLS fingerprint it takes."""

    type: ClassVar[str] = "sdp"
    peer: str
    kind: str
    "``offer`` or ``answer``."
    sdp: str


@dataclass(frozen=True)
class NoteKey:
    """Primary CSR to an admitted assistant (never to a customer): the key that seals
    the session's notes in the log, which the customer's agent holds a copy of."""

    type: ClassVar[str] = "note_key"
    key: str
    "32 bytes, unpadded base64url."


@dataclass(frozen=True)
class DirectKey:
    """Customer to an assistant CSR, on their direct link once it is open: the key for
    file transfers' fast path between them (the primary never sees it)."""

    type: ClassVar[str] = "direct_key"
    key: str
    "32 bytes, unpadded base64url."


@dataclass(frozen=True)
class Release:
    """CSR to customer: the CSR stops using a capability it was granted (Stop beside a
    granted request). The customer's agent revokes that grant; only it changes consent."""

    type: ClassVar[str] = "release"
    cap: str


@dataclass(frozen=True)
class Keyframe:
    """CSR to customer: send a full frame next (after loss, or for a new viewer)."""

    type: ClassVar[str] = "keyframe"


SCREEN_MODES = ("sharp", "smooth")
"``ScreenMode`` values: sharp (Standard: text first), smooth (Screen Sampling: motion)."


@dataclass(frozen=True)
class ScreenModeMsg:
    """CSR to customer, while ``view`` is granted: spend a slow link on text or motion;
    customer to every viewer: the mode the screen now uses (so every CSR shows it)."""

    type: ClassVar[str] = "screen_mode"
    mode: str
    "One of ``SCREEN_MODES``."


MAX_FEEDBACK_PACKETS = 1024
"Most screen packets one ``ScreenFeedback`` may cover (about 1.2 MB of screen)."


@dataclass(frozen=True)
class ScreenFeedback:
    """Viewer to sharer, every 100 ms while a screen is viewed: when each of a run of
    the screen's RTP packets arrived (``agent.session.link`` estimates the link from it).

    Sent as RTCP beside the screen (``agent.protocol.feedback``); on this channel only
    until the first packet has named the screen's SSRC, and still accepted here."""

    type: ClassVar[str] = "feedback"
    base: int
    "RTP sequence number (0-65535) of the first packet covered."
    t0_us: int
    "The viewer's clock (microseconds, any origin) that ``at`` counts from."
    at: tuple[int | None, ...]
    "Arrival of ``base + i`` in microseconds after ``t0_us`` (0 to 2**31), None: missing."
    hold_us: int = 0
    "Microseconds from the last arrival listed to this report leaving (0 to 10**7)."


@dataclass(frozen=True)
class LinkReport:
    """Sharer to viewer, every 2 s while viewed: the link as the sharer estimates it."""

    type: ClassVar[str] = "link"
    kbps: int
    "What the viewer received over the last half second (kbit/s, 0 to 10**7)."
    target_kbps: int
    "What the estimate allows the screen (kbit/s, 0 to 10**7)."
    rtt_ms: int | None
    "Round-trip time (ms, 0 to 60000), None before it was measured."
    loss: float
    "Fraction of screen packets lost over the last second (0 to 1)."
    queue_ms: int
    "Queueing delay at the bottleneck (ms, 0 to 60000)."


Message: TypeAlias = (
    Chat
    | Roster
    | Bye
    | End
    | Ping
    | Refused
    | Request
    | ConsentState
    | SysInfo
    | ControlState
    | Monitors
    | SelectMonitor
    | Keyframe
    | ScreenModeMsg
    | ScreenFeedback
    | LinkReport
    | Release
    | Transfer
    | Sdp
    | NoteKey
    | DirectKey
)


def encode(msg: Message) -> str:
    """JSON text for one channel message."""
    body: dict[str, Any] = {"type": msg.type}
    if isinstance(msg, Chat):
        body["text"] = msg.text
        if msg.to is not None:
            body["to"] = list(msg.to)
        if msg.sender is not None:
            body["from"] = msg.sender
        if msg.name is not None:
            body["name"] = msg.name
        if msg.history:
            body["history"] = True
    elif isinstance(msg, Roster):
        body["participants"] = [vars(p) for p in msg.participants]
    elif isinstance(msg, Monitors):
        body.update(items=[vars(m) for m in msg.items], current=msg.current)
    elif isinstance(msg, ControlState):
        body.update(holder=msg.holder, token=list(msg.token))
    elif isinstance(msg, ScreenFeedback):
        body.update(base=msg.base, t0_us=msg.t0_us, at=list(msg.at), hold_us=msg.hold_us)
    else:
        body.update({k: v for k, v in vars(msg).items() if v is not None})
    return wire.dump(body)


def _participant(item: Any) -> Participant:
    if not isinstance(item, dict):
        raise DecodeError("a participant must be an object")
    primary = item.get("primary")
    if not isinstance(primary, bool):
        raise DecodeError('participant field "primary" must be true or false')
    return Participant(
        id=wire.get_str(item, "id", pattern=PEER_ID_RE),
        name=wire.get_str(item, "name", max_len=MAX_NAME_CHARS),
        role=wire.get_str(item, "role", pattern=_ROLE_RE),
        primary=primary,
    )


def _roster(obj: dict[str, Any]) -> Roster:
    items = obj.get("participants")
    if not isinstance(items, list) or len(items) > MAX_PARTICIPANTS:
        raise DecodeError(f'field "participants" must be a list of at most {MAX_PARTICIPANTS}')
    return Roster(participants=tuple(_participant(item) for item in items))


def _sysinfo(obj: dict[str, Any]) -> SysInfo:
    data = obj.get("data")
    if not isinstance(data, dict):
        raise DecodeError('field "data" must be an object')
    if len(wire.dump(data)) > MAX_SYSINFO_BYTES:
        raise DecodeError("system information is too large", code="too_large")
    return SysInfo(data=data)


def _token(obj: dict[str, Any]) -> tuple[int, int]:
    token = obj.get("token")
    if (
        not isinstance(token, list)
        or len(token) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in token)
        or not all(0 <= t < 2**53 for t in token)
    ):
        raise DecodeError('field "token" must be [epoch, seq], two non-negative integers')
    return (token[0], token[1])


def _monitors(obj: dict[str, Any]) -> Monitors:
    items = obj.get("items")
    if not isinstance(items, list) or len(items) > MAX_MONITORS:
        raise DecodeError(f'field "items" must be a list of at most {MAX_MONITORS}')
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise DecodeError("a monitor must be an object")
        out.append(
            Monitor(
                index=wire.get_int(item, "index", lo=1, hi=MAX_MONITORS),
                x=wire.get_int(item, "x", lo=-(2**20), hi=2**20),
                y=wire.get_int(item, "y", lo=-(2**20), hi=2**20),
                width=wire.get_int(item, "width", lo=1, hi=2**16),
                height=wire.get_int(item, "height", lo=1, hi=2**16),
            )
        )
    return Monitors(items=tuple(out), current=wire.get_int(obj, "current", lo=0, hi=MAX_MONITORS))


def _fraction(obj: dict[str, Any], name: str) -> float:
    value = obj.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DecodeError(f'field "{name}" must be a number from 0 to 1')
    return float(value)


def _feedback(obj: dict[str, Any]) -> ScreenFeedback:
    at = obj.get("at")
    if (
        not isinstance(at, list)
        or not 0 < len(at) <= MAX_FEEDBACK_PACKETS
        or not all(
            a is None or (isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 2**31)
            for a in at
        )
    ):
        raise DecodeError(
            f'field "at" must be a list of 1 to {MAX_FEEDBACK_PACKETS} arrival times '
            "(microseconds, 0 to 2**31) or nulls"
        )
    return ScreenFeedback(
        base=wire.get_int(obj, "base", lo=0, hi=65535),
        t0_us=wire.get_int(obj, "t0_us", lo=0, hi=2**53),
        at=tuple(at),
        hold_us=wire.get_int(obj, "hold_us", lo=0, hi=10**7),
    )


_TABLE: dict[str, Any] = {
    "chat": lambda o: Chat(
        text=wire.get_str(o, "text", max_len=MAX_CHAT_CHARS, allow_empty=False),
        to=wire.get_str_list(o, "to", max_items=MAX_RECIPIENTS, pattern=PEER_ID_RE, optional=True),
        sender=wire.get_str(o, "from", pattern=PEER_ID_RE, optional=True),
        name=wire.get_str(o, "name", max_len=MAX_NAME_CHARS, optional=True),
        history=o.get("history") is True,
    ),
    "roster": _roster,
    "bye": lambda o: Bye(),
    "end": lambda o: End(),
    "ping": lambda o: Ping(),
    "release": lambda o: Release(cap=wire.get_str(o, "cap", pattern=CAP_RE)),
    "request": lambda o: Request(
        cap=wire.get_str(o, "cap", pattern=CAP_RE),
        ref=wire.get_str(o, "ref", pattern=REF_RE, optional=True),
    ),
    "consent": lambda o: ConsentState(
        id=wire.get_str(o, "id", pattern=REF_RE),
        cap=wire.get_str(o, "cap", pattern=CAP_RE),
        state=wire.get_str(o, "state", pattern=STATE_RE),
        ref=wire.get_str(o, "ref", pattern=REF_RE, optional=True),
        reason=wire.get_str(o, "reason", max_len=200, optional=True) or "",
    ),
    "sysinfo": _sysinfo,
    "control": lambda o: ControlState(
        holder=wire.get_str(o, "holder", pattern=PEER_ID_RE, optional=True), token=_token(o)
    ),
    "monitors": _monitors,
    "select_monitor": lambda o: SelectMonitor(
        index=wire.get_int(o, "index", lo=1, hi=MAX_MONITORS)
    ),
    "keyframe": lambda o: Keyframe(),
    "screen_mode": lambda o: ScreenModeMsg(mode=wire.get_choice(o, "mode", SCREEN_MODES)),
    "feedback": _feedback,
    "link": lambda o: LinkReport(
        kbps=wire.get_int(o, "kbps", lo=0, hi=10**7),
        target_kbps=wire.get_int(o, "target_kbps", lo=0, hi=10**7),
        rtt_ms=wire.get_int(o, "rtt_ms", lo=0, hi=60000, optional=True),
        loss=_fraction(o, "loss"),
        queue_ms=wire.get_int(o, "queue_ms", lo=0, hi=60000),
    ),
    "direct_key": lambda o: DirectKey(
        key=wire.b64(wire.get_bytes(o, "key", min_len=32, max_len=32))
    ),
    "note_key": lambda o: NoteKey(key=wire.b64(wire.get_bytes(o, "key", min_len=32, max_len=32))),
    "sdp": lambda o: Sdp(
        peer=wire.get_str(o, "peer", pattern=PEER_ID_RE),
        kind=wire.get_str(o, "kind", pattern=re.compile(r"offer|answer")),
        sdp=wire.get_str(o, "sdp", max_len=24 * 1024, allow_empty=False),
    ),
    "transfer": lambda o: Transfer(to=wire.get_str(o, "to", pattern=PEER_ID_RE)),
    "refused": lambda o: Refused(
        code=wire.get_str(o, "code", pattern=_CODE_RE),
        message=wire.get_str(o, "message", max_len=500),
    ),
}


def decode(data: str | bytes) -> Message:
    """Parse one channel message; raises ``DecodeError``."""
    obj = wire.parse_object(data, max_bytes=MAX_CHANNEL_BYTES, what="channel message")
    kind = wire.get_type(obj)
    parser = _TABLE.get(kind)
    if parser is None:
        raise UnknownMessage(f'unknown channel message type "{kind[:32]}"')
    try:
        msg: Message = parser(obj)
    except DecodeError as exc:
        raise DecodeError(f"{kind}: {exc.message}", code=exc.code) from None
    return msg
