"""The join handshake wire: messages a joiner and a host exchange through signaling.

They travel as the opaque ``data`` of signaling ``send``/``relay`` messages, so the
server relays them without understanding them. ``hello`` and ``pake`` carry SPAKE2
messages, which reveal nothing about the code; ``confirm`` and ``accept`` carry a
key-confirmation MAC and a ``sealed`` AEAD box holding the sender's ``Intro`` (name,
Ed25519 identity, signature, SDP). ``reject`` is the only unauthenticated answer,
and it can only make a join fail, never succeed.

    joiner                         host
      hello(role, pake_B)   ->
                            <-    pake(pake_A)
      confirm(mac_J, sealed) ->
                            <-    accept(mac_H, sealed)   or   reject(reason)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire

VERSION = 1
MAX_HANDSHAKE_BYTES = 47 * 1024
MAX_SEALED_BYTES = 32 * 1024
MAX_SDP_CHARS = 24 * 1024
MAX_NAME_CHARS = 64

ROLES = ("customer", "csr")
ROLE_RE = re.compile(r"customer|csr")
REJECT_REASONS = (
    "not_on_team",
    "wrong_code",
    "burned",
    "expired",
    "refused",
    "busy",
    "role",
    "protocol",
    "tampered",
)
REASON_RE = re.compile("|".join(REJECT_REASONS))
PEER_ID_RE = re.compile(r"[a-z2-7]{10}")


def peer_id(public_key: bytes) -> str:
    """The short, stable id of an agent: 10 base32 characters of its key's SHA-256."""
    import base64

    digest = hashlib.sha256(b"peerdesk/1 peer-id" + public_key).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:10]


@dataclass(frozen=True)
class Hello:
    """Joiner opens a join: its role and its SPAKE2 message."""

    type: ClassVar[str] = "hello"
    role: str
    "``customer`` or ``csr``; the PAKE is bound to it."
    pake: bytes
    "SPAKE2 message, 33 bytes."
    v: int = VERSION


@dataclass(frozen=True)
class TeamHello:
    """A CSR on the team roster opens a join with no code: an ephemeral X25519 key and
    its Ed25519 identity, which the host looks up on its roster."""

    type: ClassVar[str] = "team_hello"
    eph: bytes
    "X25519 public key, 32 bytes, fresh for this join."
    key: bytes
    "Ed25519 public key, 32 bytes."


@dataclass(frozen=True)
class TeamKey:
    """The host answers a ``team_hello``: its ephemeral key, identity, and a signature
    over the transcript that the joiner checks against its own team roster."""

    type: ClassVar[str] = "team_key"
    eph: bytes
    key: bytes
    sig: bytes


@dataclass(frozen=True)
class Pake:
    """Host answers with its SPAKE2 message."""

    type: ClassVar[str] = "pake"
    pake: bytes


@dataclass(frozen=True)
class Confirm:
    """Joiner proves it holds the key, and sends its sealed ``Intro`` (with the SDP offer)."""

    type: ClassVar[str] = "confirm"
    mac: bytes
    "HMAC-SHA256 over the transcript, 32 bytes."
    sealed: bytes


@dataclass(frozen=True)
class Accept:
    """Host proves it holds the key, and sends its sealed ``Intro`` (with the SDP answer)."""

    type: ClassVar[str] = "accept"
    mac: bytes
    sealed: bytes


@dataclass(frozen=True)
class Reject:
    """Host refuses the join. Unauthenticated: it can end a join, never admit one."""

    type: ClassVar[str] = "reject"
    reason: str
    "One of REJECT_REASONS."
    remaining: int = -1
    "Attempts left before the code burns, or -1 when it does not apply."


Message: TypeAlias = Hello | TeamHello | TeamKey | Pake | Confirm | Accept | Reject


@dataclass(frozen=True)
class Intro:
    """What each side reveals only to the other, inside the sealed box."""

    name: str
    "Display name, at most MAX_NAME_CHARS characters."
    key: bytes
    "Ed25519 public key, 32 bytes."
    sig: bytes
    "Ed25519 signature binding the key to this handshake's transcript and SDP."
    sdp: str
    "The SDP offer (from the joiner) or answer (from the host)."


def encode(msg: Message) -> str:
    """JSON text for one handshake message."""
    body: dict[str, Any] = {"type": msg.type}
    for key, value in vars(msg).items():
        body[key] = wire.b64(value) if isinstance(value, bytes) else value
    return wire.dump(body)


_TABLE: dict[str, Any] = {
    "hello": lambda o: Hello(
        role=wire.get_str(o, "role", pattern=ROLE_RE),
        pake=wire.get_bytes(o, "pake", min_len=33, max_len=33),
        v=wire.get_int(o, "v", lo=1, hi=1),
    ),
    "pake": lambda o: Pake(pake=wire.get_bytes(o, "pake", min_len=33, max_len=33)),
    "team_hello": lambda o: TeamHello(
        eph=wire.get_bytes(o, "eph", min_len=32, max_len=32),
        key=wire.get_bytes(o, "key", min_len=32, max_len=32),
    ),
    "team_key": lambda o: TeamKey(
        eph=wire.get_bytes(o, "eph", min_len=32, max_len=32),
        key=wire.get_bytes(o, "key", min_len=32, max_len=32),
        sig=wire.get_bytes(o, "sig", min_len=64, max_len=64),
    ),
    "confirm": lambda o: Confirm(
        mac=wire.get_bytes(o, "mac", min_len=32, max_len=32),
        sealed=wire.get_bytes(o, "sealed", min_len=17, max_len=MAX_SEALED_BYTES),
    ),
    "accept": lambda o: Accept(
        mac=wire.get_bytes(o, "mac", min_len=32, max_len=32),
        sealed=wire.get_bytes(o, "sealed", min_len=17, max_len=MAX_SEALED_BYTES),
    ),
    "reject": lambda o: Reject(
        reason=wire.get_str(o, "reason", pattern=REASON_RE),
        remaining=wire.get_int(o, "remaining", lo=-1, hi=100, optional=True)
        if o.get("remaining") is not None
        else -1,
    ),
}


def decode(data: str | bytes) -> Message:
    """Parse one handshake message; raises ``DecodeError``."""
    obj = wire.parse_object(data, max_bytes=MAX_HANDSHAKE_BYTES, what="handshake message")
    kind = wire.get_type(obj)
    parser = _TABLE.get(kind)
    if parser is None:
        raise UnknownMessage(f'unknown handshake message type "{kind[:32]}"')
    try:
        msg: Message = parser(obj)
    except DecodeError as exc:
        raise DecodeError(f"{kind}: {exc.message}", code=exc.code) from None
    return msg


def encode_intro(intro: Intro) -> bytes:
    """The plaintext of a sealed box."""
    return wire.dump(
        {
            "name": intro.name,
            "key": wire.b64(intro.key),
            "sig": wire.b64(intro.sig),
            "sdp": intro.sdp,
        }
    ).encode("utf-8")


def decode_intro(data: bytes) -> Intro:
    """Parse an opened sealed box; raises ``DecodeError``."""
    obj = wire.parse_object(data, max_bytes=MAX_SEALED_BYTES, what="sealed introduction")
    name = wire.get_str(obj, "name", max_len=MAX_NAME_CHARS)
    if any(ord(c) < 32 for c in name):
        raise DecodeError("name contains control characters")
    return Intro(
        name=name,
        key=wire.get_bytes(obj, "key", min_len=32, max_len=32),
        sig=wire.get_bytes(obj, "sig", min_len=64, max_len=64),
        sdp=wire.get_str(obj, "sdp", max_len=MAX_SDP_CHARS, allow_empty=False),
    )
