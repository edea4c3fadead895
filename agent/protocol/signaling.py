"""The signaling wire: what agents and the signaling server say to each other.

One WebSocket text frame holds one JSON object with a ``type`` tag. The server
allocates rooms and relays opaque ``data`` strings between a room's host and its
joiners; it never sees a code's secret, a key, or SDP in clear (``data`` is a
sealed handshake message, see ``agent.protocol.handshake``).

Client to server: ``create``, ``join``, ``send``, ``close``.
Server to client: ``created``, ``joined``, ``peer``, ``relay``, ``gone``, ``closed``,
``error``.

The server and the agent import these same definitions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire

PROTOCOL_VERSION = 1

#: Largest signaling frame either side accepts, in bytes.
MAX_MESSAGE_BYTES = 64 * 1024
#: Largest opaque ``data`` payload relayed, in characters.
MAX_DATA_CHARS = 48 * 1024

ROOM_RE = re.compile(r"[0-9]{6}")
#: Connection ids are made by the server; ``host`` addresses a room's host.
PEER_RE = re.compile(r"host|[0-9a-f]{12}")
REASON_RE = re.compile(r"[a-z_]{1,32}")

HOST = "host"


@dataclass(frozen=True)
class Create:
    """Ask the server for a new room; the sender becomes its host."""

    type: ClassVar[str] = "create"


@dataclass(frozen=True)
class Join:
    """Enter ``room`` as a joiner."""

    type: ClassVar[str] = "join"
    room: str
    "Six-digit public room id."


@dataclass(frozen=True)
class Send:
    """Relay ``data`` to ``to`` in the sender's room."""

    type: ClassVar[str] = "send"
    to: str
    "``host`` from a joiner; a joiner's connection id from the host."
    data: str
    "Opaque to the server, at most MAX_DATA_CHARS characters."


@dataclass(frozen=True)
class Close:
    """The host closes its room: nobody else can join it."""

    type: ClassVar[str] = "close"
    room: str
    reason: str = "closed"
    "Why, for the joiners still waiting: ``closed``, ``burned``, ``expired``, ``ended``."


@dataclass(frozen=True)
class Created:
    """A room was allocated for the sender."""

    type: ClassVar[str] = "created"
    room: str
    expires_in: int
    "Seconds the room lives without a join."


@dataclass(frozen=True)
class Joined:
    """The sender is now in ``room``; ``peer`` is its connection id there."""

    type: ClassVar[str] = "joined"
    room: str
    peer: str


@dataclass(frozen=True)
class Peer:
    """To the host: a joiner entered the room."""

    type: ClassVar[str] = "peer"
    room: str
    peer: str


@dataclass(frozen=True)
class Relay:
    """Opaque ``data`` from ``sender`` (``host`` or a joiner id)."""

    type: ClassVar[str] = "relay"
    room: str
    sender: str
    data: str


@dataclass(frozen=True)
class Gone:
    """``peer`` left ``room`` (disconnected, or the host went away)."""

    type: ClassVar[str] = "gone"
    room: str
    peer: str


@dataclass(frozen=True)
class Closed:
    """``room`` is closed; ``reason`` says why."""

    type: ClassVar[str] = "closed"
    room: str
    reason: str


@dataclass(frozen=True)
class Error:
    """The server refused the last message. ``code`` is stable, ``message`` is for people."""

    type: ClassVar[str] = "error"
    code: str
    message: str


ClientMessage: TypeAlias = Create | Join | Send | Close
ServerMessage: TypeAlias = Created | Joined | Peer | Relay | Gone | Closed | Error
Message: TypeAlias = ClientMessage | ServerMessage


def encode(msg: Message) -> str:
    """JSON text for one signaling message."""
    body: dict[str, Any] = {"type": msg.type}
    if isinstance(msg, Relay):
        body.update(room=msg.room, **{"from": msg.sender}, data=msg.data)
    else:
        body.update(vars(msg))
    return wire.dump(body)


def _room(obj: dict[str, Any]) -> str:
    room: str = wire.get_str(obj, "room", pattern=ROOM_RE)
    return room


def _peer(obj: dict[str, Any], name: str = "peer") -> str:
    peer: str = wire.get_str(obj, name, pattern=PEER_RE)
    return peer


def _data(obj: dict[str, Any]) -> str:
    data: str = wire.get_str(obj, "data", max_len=MAX_DATA_CHARS, allow_empty=False)
    return data


def _reason(obj: dict[str, Any]) -> str:
    reason: str = wire.get_str(obj, "reason", pattern=REASON_RE)
    return reason


_CLIENT = {
    "create": lambda o: Create(),
    "join": lambda o: Join(room=_room(o)),
    "send": lambda o: Send(to=_peer(o, "to"), data=_data(o)),
    "close": lambda o: Close(room=_room(o), reason=_reason(o) if "reason" in o else "closed"),
}

_SERVER = {
    "created": lambda o: Created(
        room=_room(o), expires_in=wire.get_int(o, "expires_in", lo=0, hi=86400)
    ),
    "joined": lambda o: Joined(room=_room(o), peer=_peer(o)),
    "peer": lambda o: Peer(room=_room(o), peer=_peer(o)),
    "relay": lambda o: Relay(room=_room(o), sender=_peer(o, "from"), data=_data(o)),
    "gone": lambda o: Gone(room=_room(o), peer=_peer(o)),
    "closed": lambda o: Closed(room=_room(o), reason=_reason(o)),
    "error": lambda o: Error(
        code=wire.get_str(o, "code", pattern=REASON_RE),
        message=wire.get_str(o, "message", max_len=500),
    ),
}


def _decode(data: str | bytes, table: dict[str, Any], what: str) -> Any:
    obj = wire.parse_object(data, max_bytes=MAX_MESSAGE_BYTES, what=what)
    kind = wire.get_type(obj)
    parser = table.get(kind)
    if parser is None:
        raise UnknownMessage(f'unknown {what} type "{kind[:32]}"')
    try:
        return parser(obj)
    except DecodeError as exc:
        raise DecodeError(f"{kind}: {exc.message}", code=exc.code) from None


def decode_client(data: str | bytes) -> ClientMessage:
    """Parse a message a client sent to the server; raises ``DecodeError``."""
    msg: ClientMessage = _decode(data, _CLIENT, "signaling message")
    return msg


def decode_server(data: str | bytes) -> ServerMessage:
    """Parse a message the server sent to a client; raises ``DecodeError``."""
    msg: ServerMessage = _decode(data, _SERVER, "signaling message")
    return msg


# --------------------------------------------------------------------------- ICE servers

#: ``GET /ice`` on a signaling server answers ``{"iceServers": [...]}``, the TURN (and
#: STUN) servers agents may use, with time-limited credentials minted by the server.
MAX_ICE_BYTES = 16 * 1024
MAX_ICE_SERVERS = 4
ICE_URL_RE = re.compile(
    r"(turns?|stun):[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?(\?transport=(udp|tcp))?"
)


@dataclass(frozen=True)
class IceServer:
    """One TURN or STUN server an agent may gather candidates from."""

    urls: tuple[str, ...]
    "``turn:host:port`` (``?transport=udp|tcp``), ``turns:`` or ``stun:`` URLs, 1 to 4."
    username: str | None
    "For TURN: ``<unix expiry>:<label>`` (coturn's REST scheme), at most 256 characters."
    credential: str | None
    "For TURN: the password minted for ``username``, at most 256 characters."


def decode_ice(data: str | bytes) -> tuple[IceServer, ...]:
    """Parse a ``/ice`` answer; raises ``DecodeError``. An empty list means none."""
    obj = wire.parse_object(data, max_bytes=MAX_ICE_BYTES, what="ICE server list")
    entries = obj.get("iceServers")
    if not isinstance(entries, list):
        raise DecodeError('field "iceServers" must be a list')
    if len(entries) > MAX_ICE_SERVERS:
        raise DecodeError(f"at most {MAX_ICE_SERVERS} ICE servers")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DecodeError("each ICE server must be an object")
        urls = wire.get_str_list(entry, "urls", max_items=4, pattern=ICE_URL_RE)
        if not urls:
            raise DecodeError("an ICE server needs at least one URL")
        username = wire.get_str(entry, "username", max_len=256, optional=True)
        cred = wire.get_str(entry, "credential", max_len=256, optional=True)
        if any(u.startswith("turn") for u in urls) and (not username or not cred):
            raise DecodeError("a TURN server needs a username and a credential")
        out.append(IceServer(tuple(urls), username, cred))
    return tuple(out)
