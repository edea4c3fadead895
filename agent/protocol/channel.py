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


Message: TypeAlias = Chat | Roster | Bye | End | Ping | Refused


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
    elif isinstance(msg, Roster):
        body["participants"] = [vars(p) for p in msg.participants]
    elif isinstance(msg, Refused):
        body.update(code=msg.code, message=msg.message)
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


_TABLE: dict[str, Any] = {
    "chat": lambda o: Chat(
        text=wire.get_str(o, "text", max_len=MAX_CHAT_CHARS, allow_empty=False),
        to=wire.get_str_list(o, "to", max_items=MAX_RECIPIENTS, pattern=PEER_ID_RE, optional=True),
        sender=wire.get_str(o, "from", pattern=PEER_ID_RE, optional=True),
        name=wire.get_str(o, "name", max_len=MAX_NAME_CHARS, optional=True),
    ),
    "roster": _roster,
    "bye": lambda o: Bye(),
    "end": lambda o: End(),
    "ping": lambda o: Ping(),
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
