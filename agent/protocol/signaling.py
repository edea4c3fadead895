"""The signaling wire: what agents and the signaling server say to each other.

One WebSocket text frame holds one JSON object with a ``type`` tag. The server
allocates rooms and relays opaque ``data`` strings between a room's host and its
joiners; it never sees a code's secret, a key, or SDP in clear (``data`` is a
sealed handshake message, see ``agent.protocol.handshake``).

Client to server: ``create``, ``join``, ``send``, ``close``, ``resume``.
Server to client: ``created``, ``joined``, ``peer``, ``relay``, ``gone``, ``closed``,
``error``, ``resumed``.

Resuming a room: ``created`` hands the host a resume secret (64 hex digits). A host
that lost its connection (or its server node) sends ``resume`` with the room and that
secret on a new connection, to any node, and hosts the room again (``resumed``, with a
new secret: each secret works once). The server keeps only a hash of the secret.

Queues (the "get help" line of a support team): a customer sends ``wait`` and hears
``waiting`` (its position, again whenever it changes) and ``assigned`` (the room of
the CSR who took it); a CSR sends ``serve`` (its name and queues), then ``list``
(answered by ``queue``, also pushed on every change), ``take`` (answered by ``taken``)
and ``transfer`` with a message of at most 345 characters (answered by
``transferred``).

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
#: A queue: ``support``, ``billing-de``; ``@name`` is the personal queue of CSR ``name``.
QUEUE_RE = re.compile(r"@?[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
#: A CSR's name as queues route by it.
CSR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
TICKET_RE = re.compile(r"[0-9a-f]{12}")
#: A room's resume secret: 256 random bits, made by the server, known to the host only.
RESUME_RE = re.compile(r"[0-9a-f]{64}")
#: The most characters a transfer message holds (the seeds' WebACD rule).
MAX_TRANSFER_MESSAGE = 345
MAX_NAME_CHARS = 64
MAX_QUEUES_SERVED = 16
MAX_LISTED = 200

HOST = "host"


JOINER_ERRORS = frozenset(
    {
        "room_full",
        "rate_limited",
        "room_rate_limited",
        "host_away",
        "draining",
        "server_full",
        "unavailable",
        "already_joined",
    }
)
"""Server error codes a joiner passes on as its own ``error`` code (documented in the
README); any other code from a server becomes ``signal_error``: the server is not
trusted to speak in our codes (it could say ``wrong_code``)."""
OTHER_SERVER_ERROR = "signal_error"
"The joiner's ``error`` code for any other error a signaling server answers with."


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
class Resume:
    """The host of ``room``, on a new connection after losing its old one (or its server
    node), hosts the room again. Answered by ``resumed``, or ``error`` (``bad_secret``,
    ``room_not_found``, ``host_connected``, ``owner_alive``, ``unavailable``)."""

    type: ClassVar[str] = "resume"
    room: str
    "Six-digit public room id."
    secret: str
    "The resume secret of the last ``created`` or ``resumed`` for ``room`` (64 hex digits)."


@dataclass(frozen=True)
class Created:
    """A room was allocated for the sender."""

    type: ClassVar[str] = "created"
    room: str
    expires_in: int
    "Seconds the room lives without a join."
    resume: str = ""
    """The secret that lets the host ``resume`` this room after losing its connection
    (64 hex digits; keep it out of logs); empty when the server does not offer resuming."""


@dataclass(frozen=True)
class Resumed:
    """The sender hosts ``room`` again (after ``resume``); joiners can join it again."""

    type: ClassVar[str] = "resumed"
    room: str
    resume: str
    "The room's new resume secret (64 hex digits); the one just used no longer works."


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


@dataclass(frozen=True)
class Wait:
    """A customer asks for help in ``queue`` and waits there."""

    type: ClassVar[str] = "wait"
    queue: str
    name: str
    "How the customer is shown to CSRs, at most 64 characters."
    ticket: str = ""
    """The ticket of an earlier wait in ``queue`` that this customer lost with its server:
    with several nodes, it gets its place back (for 15 minutes). Empty: a new wait."""


@dataclass(frozen=True)
class Serve:
    """A CSR named ``name`` serves ``queues`` (and its personal queue ``@name``)."""

    type: ClassVar[str] = "serve"
    name: str
    queues: tuple[str, ...]
    "At most 16 queue names."
    token: str = ""
    "The team's CSR token when the server requires one (``--csr-token``)."


@dataclass(frozen=True)
class ListQueue:
    """A CSR asks who waits in ``queue``."""

    type: ClassVar[str] = "list"
    queue: str


@dataclass(frozen=True)
class Take:
    """A CSR takes ``ticket`` (or, empty, the longest waiting) from ``queue`` into ``room``."""

    type: ClassVar[str] = "take"
    queue: str
    room: str
    "The public room id of the CSR's session, handed to the customer."
    ticket: str = ""


@dataclass(frozen=True)
class Transfer:
    """The CSR holding ``ticket`` hands it to ``queue`` or to CSR ``csr`` (exactly one),
    with ``message`` for whoever takes it next, and lets go of it."""

    type: ClassVar[str] = "transfer"
    ticket: str
    message: str
    "At most MAX_TRANSFER_MESSAGE (345) characters."
    queue: str = ""
    csr: str = ""


@dataclass(frozen=True)
class Waiting:
    """To a customer: ``ticket`` waits in ``queue`` at ``position`` (1 is next)."""

    type: ClassVar[str] = "waiting"
    queue: str
    ticket: str
    position: int


@dataclass(frozen=True)
class Assigned:
    """To a customer: CSR ``csr`` took ``ticket``; its session is room ``room``."""

    type: ClassVar[str] = "assigned"
    ticket: str
    room: str
    csr: str


@dataclass(frozen=True)
class QueuedTicket:
    """One waiting customer, as CSRs see it (part of ``queue``)."""

    ticket: str
    name: str
    waited: int
    "Seconds since the customer first asked (kept across transfers)."
    note: str
    "The last transfer message, empty if none."


@dataclass(frozen=True)
class QueueState:
    """To a CSR: who waits in ``queue``, longest first (at most 200 shown)."""

    type: ClassVar[str] = "queue"
    queue: str
    waiting: tuple[QueuedTicket, ...]
    total: int


@dataclass(frozen=True)
class Taken:
    """To a CSR: it now holds ``ticket`` of customer ``name``; ``note`` from a transfer."""

    type: ClassVar[str] = "taken"
    ticket: str
    queue: str
    name: str
    note: str


@dataclass(frozen=True)
class Transferred:
    """To a CSR: ``ticket`` now waits in ``queue``; the CSR no longer holds it."""

    type: ClassVar[str] = "transferred"
    ticket: str
    queue: str


ClientMessage: TypeAlias = (
    Create | Join | Send | Close | Resume | Wait | Serve | ListQueue | Take | Transfer
)
ServerMessage: TypeAlias = (
    Created
    | Resumed
    | Joined
    | Peer
    | Relay
    | Gone
    | Closed
    | Error
    | Waiting
    | Assigned
    | QueueState
    | Taken
    | Transferred
)
Message: TypeAlias = ClientMessage | ServerMessage


def encode(msg: Message) -> str:
    """JSON text for one signaling message."""
    body: dict[str, Any] = {"type": msg.type}
    if isinstance(msg, Relay):
        body.update(room=msg.room, **{"from": msg.sender}, data=msg.data)
    elif isinstance(msg, QueueState):
        body.update(queue=msg.queue, waiting=[vars(t) for t in msg.waiting], total=msg.total)
    elif isinstance(msg, Serve):
        body.update(name=msg.name, queues=list(msg.queues), token=msg.token)
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


def _queue(obj: dict[str, Any], name: str = "queue") -> str:
    queue: str = wire.get_str(obj, name, pattern=QUEUE_RE)
    return queue


def _display(obj: dict[str, Any]) -> str:
    name: str = wire.get_str(obj, "name", max_len=MAX_NAME_CHARS, allow_empty=False)
    return name


def _message(obj: dict[str, Any], key: str = "message") -> str:
    text = obj.get(key)
    if isinstance(text, str) and len(text) > MAX_TRANSFER_MESSAGE:
        raise DecodeError(
            f"the transfer message has {len(text)} characters; "
            f"at most {MAX_TRANSFER_MESSAGE} are allowed",
            code="too_long",
        )
    message: str = wire.get_str(obj, key, max_len=MAX_TRANSFER_MESSAGE)
    return message


def _transfer(obj: dict[str, Any]) -> Transfer:
    queue = _queue(obj) if obj.get("queue") else ""
    csr: str = wire.get_str(obj, "csr", pattern=CSR_RE) if obj.get("csr") else ""
    if bool(queue) == bool(csr):
        raise DecodeError('give exactly one of "queue" and "csr"')
    ticket: str = wire.get_str(obj, "ticket", pattern=TICKET_RE)
    return Transfer(ticket=ticket, message=_message(obj), queue=queue, csr=csr)


def _take(obj: dict[str, Any]) -> Take:
    ticket: str = wire.get_str(obj, "ticket", pattern=TICKET_RE) if obj.get("ticket") else ""
    return Take(queue=_queue(obj), room=_room(obj), ticket=ticket)


def _serve(obj: dict[str, Any]) -> Serve:
    name: str = wire.get_str(obj, "name", pattern=CSR_RE)
    queues = wire.get_str_list(obj, "queues", max_items=MAX_QUEUES_SERVED, pattern=QUEUE_RE)
    token: str = wire.get_str(obj, "token", max_len=128, optional=True) or ""
    return Serve(name=name, queues=tuple(queues or ()), token=token)


def _queued(item: Any) -> QueuedTicket:
    if not isinstance(item, dict):
        raise DecodeError("each waiting ticket must be an object")
    ticket: str = wire.get_str(item, "ticket", pattern=TICKET_RE)
    return QueuedTicket(
        ticket=ticket,
        name=wire.get_str(item, "name", max_len=MAX_NAME_CHARS),
        waited=wire.get_int(item, "waited", lo=0, hi=10**9),
        note=_message(item, "note"),
    )


def _queue_state(obj: dict[str, Any]) -> QueueState:
    items = obj.get("waiting")
    if not isinstance(items, list) or len(items) > MAX_LISTED:
        raise DecodeError(f'field "waiting" must be a list of at most {MAX_LISTED}')
    return QueueState(
        queue=_queue(obj),
        waiting=tuple(_queued(i) for i in items),
        total=wire.get_int(obj, "total", lo=0, hi=10**9),
    )


_CLIENT = {
    "create": lambda o: Create(),
    "join": lambda o: Join(room=_room(o)),
    "send": lambda o: Send(to=_peer(o, "to"), data=_data(o)),
    "close": lambda o: Close(room=_room(o), reason=_reason(o) if "reason" in o else "closed"),
    "resume": lambda o: Resume(room=_room(o), secret=wire.get_str(o, "secret", pattern=RESUME_RE)),
    "wait": lambda o: Wait(
        queue=_queue(o),
        name=_display(o),
        ticket=wire.get_str(o, "ticket", pattern=TICKET_RE) if o.get("ticket") else "",
    ),
    "serve": _serve,
    "list": lambda o: ListQueue(queue=_queue(o)),
    "take": _take,
    "transfer": _transfer,
}

_SERVER = {
    "created": lambda o: Created(
        room=_room(o),
        expires_in=wire.get_int(o, "expires_in", lo=0, hi=86400),
        resume=wire.get_str(o, "resume", pattern=RESUME_RE) if o.get("resume") else "",
    ),
    "resumed": lambda o: Resumed(
        room=_room(o), resume=wire.get_str(o, "resume", pattern=RESUME_RE)
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
    "waiting": lambda o: Waiting(
        queue=_queue(o),
        ticket=wire.get_str(o, "ticket", pattern=TICKET_RE),
        position=wire.get_int(o, "position", lo=1, hi=10**9),
    ),
    "assigned": lambda o: Assigned(
        ticket=wire.get_str(o, "ticket", pattern=TICKET_RE),
        room=_room(o),
        csr=wire.get_str(o, "csr", pattern=CSR_RE),
    ),
    "queue": _queue_state,
    "taken": lambda o: Taken(
        ticket=wire.get_str(o, "ticket", pattern=TICKET_RE),
        queue=_queue(o),
        name=wire.get_str(o, "name", max_len=MAX_NAME_CHARS),
        note=_message(o, "note"),
    ),
    "transferred": lambda o: Transferred(
        ticket=wire.get_str(o, "ticket", pattern=TICKET_RE), queue=_queue(o)
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
