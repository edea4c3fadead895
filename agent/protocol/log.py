"""The session log's wire: entries, their canonical encoding and signatures, and the
replication messages CSRs' and the customer's agents exchange on the log channel.

An **entry** is one JSON object::

    {"v":1, "epoch":E, "seq":S, "prev":HEX64, "author":PEER_ID, "key":B64,
     "ts":FLOAT, "kind":KIND, "body":{...}, "sig":B64}

plus, only on entries that someone other than the epoch's sequencer wrote (see
*Signatures*), two more fields: ``"session":HEX64`` and ``"seqsig":B64``.

* ``seq`` counts from 0 across the whole log, not per epoch; ``epoch`` never
  decreases along the log and only rises at an ``epoch`` entry.
* ``prev`` is the SHA-256 (lowercase hex) of the previous entry's canonical
  encoding, signatures included; 64 zeros for the first entry.
* ``author`` is ``peer_id(key)``; ``key`` is the author's raw Ed25519 public key.
* Bytes (``key``, ``sig``, ``seqsig``, a sealed note) are unpadded base64url, as on
  every PeerDesk wire, and must be the one canonical spelling of those bytes.
* ``ts`` is Unix time in seconds as a JSON float (e.g. ``1712345678.25``), in
  ``[0, 1e11]``. It is the author's clock: informative, never used to order.

**Canonical encoding: canonical JSON, not CBOR.** The entry's canonical encoding is
its JSON text with object keys sorted by Unicode code point, no whitespace
(``,`` and ``:`` separators), UTF-8 without a BOM; strings written with only the
mandatory escapes (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other controls as
``\\u00xx`` in lowercase hex) and every other character as itself; integers as
decimal digits (all integers here are within +-2**53); floats, which may appear
only as ``ts`` and inside ``sysinfo`` data, as the shortest decimal that reads back
as the same IEEE-754 double, spelled as Python's ``repr`` does (``"1.5"``,
``"1712345678.0"``, ``"1e-05"``, ``"1.5e+16"``); no NaN or infinity; ``true``,
``false``, ``null``. That is exactly ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`` over the values the decoders admit,
and within those values it coincides with RFC 8785 (JCS) except for the spelling of
integral and exponent-form floats. Decoders reject strings with NUL or lone
surrogates, non-finite floats and an entry file line that is not already canonical,
so every entry has exactly one encoding. Why JSON: the log already travels as JSON
on a JSON data-channel wire, the stored bytes *are* the activity-report lines (a
person can read them with ``sqlite3`` or ``jq``), and it needs no new dependency;
deterministic CBOR (RFC 8949 section 4.2.1, e.g. ``cbor2`` with ``canonical=True``)
would add one and a second representation to convert to and from on every hop,
for a size saving we do not need.

**Signatures.** Every entry is Ed25519-signed by its author, and its position is
signed by the epoch's sequencer:

* An entry written by the sequencer of its epoch (always the case for
  ``session_start`` and ``epoch`` entries) carries ``sig`` only:
  ``sig = Ed25519(key, "peerdesk/1 log entry\\n" || canonical(entry without sig))``.
  That is the entry shape the activity report reads, unchanged.
* Anyone else first signs a **proposal**, which does not know its position:
  ``sig = Ed25519(key, "peerdesk/1 log proposal\\n" || canonical({v, author, key,
  ts, kind, body, session}))``, where ``session`` is the hash of the log's entry 0,
  so a proposal cannot be replayed into another session. The sequencer assigns
  ``epoch``, ``seq`` and ``prev`` and adds
  ``seqsig = Ed25519(sequencer key, "peerdesk/1 log sequenced\\n" ||
  canonical(entry without seqsig))``. The sequencer's key is the key of the entry
  that opened the epoch (``session_start`` or ``epoch``), so nothing else is needed
  to check it. A proposal's ``sig`` may appear in a log only once: a proposal sent
  twice (a retry, a replay) is never sequenced twice.

This keeps "every entry is signed by its author" true without a second round trip
for the author to sign its final position, and one signature per entry is checked
for the sequencer's own entries (most of a session).

**Messages** (one JSON object with a ``type`` tag per data-channel message, entries
nested as objects)::

    propose       author -> sequencer      {proposal}
    reject        sequencer -> author      {sig, reason, detail}
    append        sequencer -> everyone    {epoch, commit, entries}
    ack           follower -> sequencer    {epoch, seq, hash}     persisted up to seq
    commit        sequencer -> everyone    {epoch, seq, last, hash} also the heartbeat
    sync_request  anyone -> sequencer      {epoch, seq, hash, marks}
    sync          sequencer -> requester   {epoch, commit, truncate_from, entries}
    vote_request  candidate -> voters      {epoch, candidate, last, transfer, pre}
    vote          voter -> candidate       {epoch, candidate, granted, pre}
    new_epoch     new sequencer -> all     {epoch, sequencer, votes}
    hand_over     sequencer -> a CSR       {epoch, to}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, TypeAlias

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire
from agent.protocol.handshake import MAX_NAME_CHARS, PEER_ID_RE, peer_id

VERSION = 1
ZERO_HASH = "0" * 64
"``prev`` of the first entry."
MAX_INT = 2**53 - 1
"Largest epoch, seq or size: every integer stays exact in any JSON reader."
MAX_TS = 1e11
MAX_CHAT_CHARS = 4000
MAX_NOTE_CHARS = 20000
MAX_REASON_CHARS = 200
"A consent entry's optional ``reason`` (why a grant could not be honoured), in characters."
MAX_SEALED_NOTE_BYTES = 4 * MAX_NOTE_CHARS + 12 + 16
"UTF-8 of the longest note, a 12-byte nonce and a 16-byte tag."
MAX_FILE_NAME_CHARS = 255
MAX_REASON_CHARS = 300
MAX_SYSINFO_BYTES = 128 * 1024
MAX_JSON_DEPTH = 16
MAX_RECIPIENTS = 32
MAX_VOTES = 64
MAX_MARKS = 64
MAX_ENTRY_BYTES = 160 * 1024
"Canonical size limit of one entry (a full sysinfo report fits)."
MAX_LOG_MESSAGE_BYTES = 256 * 1024
"Limit of one log-channel message: aiortc's SCTP message limit."
MAX_BATCH_BYTES = 192 * 1024
"Senders pack entries into one ``append``/``sync`` up to this many bytes."
MAX_BATCH_ENTRIES = 2048

KINDS = (
    "session_start",
    "participant",
    "request",
    "consent",
    "control",
    "chat",
    "note",
    "file",
    "sysinfo",
    "epoch",
    "session_end",
)
ROLES = ("csr", "assistant", "customer")
ACTIONS = ("joined", "left", "lost", "promoted")
CONSENT_STATES = ("pending", "granted", "denied", "revoked")
DIRECTIONS = ("to_customer", "from_customer")

DOMAIN_ENTRY = b"peerdesk/1 log entry\n"
DOMAIN_PROPOSAL = b"peerdesk/1 log proposal\n"
DOMAIN_SEQUENCED = b"peerdesk/1 log sequenced\n"
_NOTE_AAD = b"peerdesk/1 log note"

HASH_RE = re.compile(r"[0-9a-f]{64}")
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
REF_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CAP_RE = re.compile(r"[a-z_]{1,24}")
STATE_RE = re.compile(r"[a-z_]{1,24}")
CODE_RE = re.compile(r"[a-z_]{1,32}")
_ROLE_RE = re.compile("|".join(ROLES))
_ACTION_RE = re.compile("|".join(ACTIONS))
_CONSENT_RE = re.compile("|".join(CONSENT_STATES))
_DIRECTION_RE = re.compile("|".join(DIRECTIONS))


# --- canonical JSON -------------------------------------------------------------


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The canonical encoding of a JSON object (see the module docstring)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _b64_strict(obj: Mapping[str, Any], name: str, *, min_len: int, max_len: int) -> bytes:
    raw = wire.get_bytes(obj, name, min_len=min_len, max_len=max_len)
    if wire.b64(raw) != obj[name]:
        raise DecodeError(f'field "{name}" is not canonical base64url')
    return raw


def _json_value(value: Any, depth: int, where: str) -> None:
    """Check free-form JSON (sysinfo data): only values with one canonical spelling."""
    if depth > MAX_JSON_DEPTH:
        raise DecodeError(f"{where} is nested deeper than {MAX_JSON_DEPTH}")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:
            raise DecodeError(f"{where} holds an integer beyond 2**53")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError(f"{where} holds a number that is not finite")
    elif isinstance(value, str):
        _clean_text(value, where)
    elif isinstance(value, list):
        for item in value:
            _json_value(item, depth + 1, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _clean_text(key, where)
            _json_value(item, depth + 1, where)
    else:  # pragma: no cover - json.loads makes nothing else
        raise DecodeError(f"{where} holds a {type(value).__name__}")


def _clean_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise DecodeError(f"{where} contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DecodeError(f"{where} is not valid Unicode text") from None


# --- bodies -----------------------------------------------------------------------


def _exact(body: Mapping[str, Any], *names: str) -> None:
    keys = set(body)
    missing = [n for n in names if n not in keys]
    if missing:
        raise DecodeError(f'body field "{missing[0]}" is missing')
    extra = sorted(keys - set(names))
    if extra:
        raise DecodeError(f'body field "{extra[0][:32]}" is not allowed here')


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise DecodeError(f'body field "{name}" must be true or false')
    return value


def _peer(body: Mapping[str, Any], name: str) -> str:
    value: str = wire.get_str(body, name, pattern=PEER_ID_RE)
    return value


def _name(body: Mapping[str, Any], name: str = "name") -> str:
    value: str = wire.get_str(body, name, max_len=MAX_NAME_CHARS, allow_empty=False)
    return value


def _peer_list(body: Mapping[str, Any], name: str, max_items: int) -> list[str]:
    items = wire.get_str_list(body, name, max_items=max_items, pattern=PEER_ID_RE)
    assert items is not None
    if len(set(items)) != len(items):
        raise DecodeError(f'body field "{name}" lists a peer twice')
    return list(items)


def _pair(body: Mapping[str, Any], name: str) -> list[int]:
    value = body.get(name)
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or not all(0 <= v <= MAX_INT for v in value)
    ):
        raise DecodeError(f'body field "{name}" must be [epoch, seq]')
    return [value[0], value[1]]


def _b_session_start(b: Mapping[str, Any]) -> None:
    _exact(b, "room", "primary", "name")
    wire.get_str(b, "room", pattern=ROOM_RE)
    _peer(b, "primary")
    _name(b)


def _b_participant(b: Mapping[str, Any]) -> None:
    _exact(b, "peer", "name", "role", "primary", "action")
    _peer(b, "peer")
    _name(b)
    wire.get_str(b, "role", pattern=_ROLE_RE)
    _bool(b, "primary")
    wire.get_str(b, "action", pattern=_ACTION_RE)


def _b_request(b: Mapping[str, Any]) -> None:
    _exact(b, "id", "cap", "csr", "customer")
    wire.get_str(b, "id", pattern=REF_RE)
    wire.get_str(b, "cap", pattern=CAP_RE)
    _peer(b, "csr")
    _peer(b, "customer")


def _b_consent(b: Mapping[str, Any]) -> None:
    if "reason" in b:  # optional: why the agent could not honour a grant
        _exact(b, "id", "cap", "state", "csr", "customer", "reason")
        wire.get_str(b, "reason", max_len=MAX_REASON_CHARS, allow_empty=False)
    else:
        _exact(b, "id", "cap", "state", "csr", "customer")
    wire.get_str(b, "id", pattern=REF_RE)
    wire.get_str(b, "cap", pattern=CAP_RE)
    wire.get_str(b, "state", pattern=_CONSENT_RE)
    _peer(b, "csr")
    _peer(b, "customer")


def _b_control(b: Mapping[str, Any]) -> None:
    _exact(b, "holder", "token", "by")
    if b["holder"] is not None:
        _peer(b, "holder")
    _pair(b, "token")
    _peer(b, "by")


def _b_chat(b: Mapping[str, Any]) -> None:
    _exact(b, "from", "name", "text", "to")
    _peer(b, "from")
    _name(b)
    wire.get_str(b, "text", max_len=MAX_CHAT_CHARS, allow_empty=False)
    if b["to"] is not None:
        _peer_list(b, "to", MAX_RECIPIENTS)


def _b_note(b: Mapping[str, Any]) -> None:
    if "sealed" in b:
        _exact(b, "sealed", "by")
        _b64_strict(b, "sealed", min_len=12 + 16, max_len=MAX_SEALED_NOTE_BYTES)
    else:
        _exact(b, "text", "by")
        wire.get_str(b, "text", max_len=MAX_NOTE_CHARS, allow_empty=False)
    _peer(b, "by")


def _b_file(b: Mapping[str, Any]) -> None:
    _exact(b, "id", "name", "size", "sha256", "direction", "by", "state")
    wire.get_str(b, "id", pattern=REF_RE)
    wire.get_str(b, "name", max_len=MAX_FILE_NAME_CHARS, allow_empty=False)
    wire.get_int(b, "size", lo=0, hi=MAX_INT)
    if b["sha256"] is not None:
        wire.get_str(b, "sha256", pattern=HASH_RE)
    wire.get_str(b, "direction", pattern=_DIRECTION_RE)
    _peer(b, "by")
    wire.get_str(b, "state", pattern=STATE_RE)


def _b_sysinfo(b: Mapping[str, Any]) -> None:
    _exact(b, "customer", "data")
    _peer(b, "customer")
    if not isinstance(b["data"], dict):
        raise DecodeError('body field "data" must be an object')
    _json_value(b["data"], 0, 'body field "data"')
    if len(canonical(b["data"])) > MAX_SYSINFO_BYTES:
        raise DecodeError("system information is too large", code="too_large")


def _b_epoch(b: Mapping[str, Any]) -> None:
    _exact(b, "epoch", "sequencer", "votes")
    wire.get_int(b, "epoch", lo=0, hi=MAX_INT)
    _peer(b, "sequencer")
    _peer_list(b, "votes", MAX_VOTES)


def _b_session_end(b: Mapping[str, Any]) -> None:
    _exact(b, "by", "reason")
    _peer(b, "by")
    wire.get_str(b, "reason", max_len=MAX_REASON_CHARS)


_BODIES: dict[str, Any] = {
    "session_start": _b_session_start,
    "participant": _b_participant,
    "request": _b_request,
    "consent": _b_consent,
    "control": _b_control,
    "chat": _b_chat,
    "note": _b_note,
    "file": _b_file,
    "sysinfo": _b_sysinfo,
    "epoch": _b_epoch,
    "session_end": _b_session_end,
}


def check_body(kind: str, body: Any) -> dict[str, Any]:
    """Validate ``body`` for ``kind`` strictly; returns it as plain JSON values.

    Raises ``DecodeError`` naming the field that is wrong.
    """
    check = _BODIES.get(kind)
    if check is None:
        raise DecodeError(f'unknown entry kind "{str(kind)[:32]}"')
    if not isinstance(body, dict):
        raise DecodeError("an entry body must be an object")
    try:
        check(body)
    except DecodeError as exc:
        raise DecodeError(f"{kind} entry: {exc.message}", code=exc.code) from None
    return body


def normalize_body(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A body built by our own code, as plain JSON values (tuples become lists), checked."""
    try:
        plain = json.loads(canonical(body))
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"{kind} entry: the body is not JSON ({exc})") from None
    return check_body(kind, plain)


# --- entries ----------------------------------------------------------------------


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public half of ``key``."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


_PUBLIC_KEYS: dict[bytes, Ed25519PublicKey] = {}
_KEY_IDS: dict[bytes, str] = {}
_KEY_TEXTS: dict[bytes, str] = {}
_KEY_BYTES: dict[str, bytes] = {}


def key_id(raw: bytes) -> str:
    """``peer_id(raw)``, remembered: a session has a handful of keys and many entries."""
    found = _KEY_IDS.get(raw)
    if found is None:
        if len(_KEY_IDS) > 4096:
            _KEY_IDS.clear()
        found = _KEY_IDS[raw] = peer_id(raw)
    return found


def _b64_key(raw: bytes) -> str:
    found = _KEY_TEXTS.get(raw)
    if found is None:
        if len(_KEY_TEXTS) > 4096:
            _KEY_TEXTS.clear()
        found = _KEY_TEXTS[raw] = wire.b64(raw)
    return found


def _public(raw: bytes) -> Ed25519PublicKey:
    key = _PUBLIC_KEYS.get(raw)
    if key is None:
        if len(_PUBLIC_KEYS) > 4096:
            _PUBLIC_KEYS.clear()
        key = _PUBLIC_KEYS[raw] = Ed25519PublicKey.from_public_bytes(raw)
    return key


def _verify(raw_key: bytes, sig: bytes, data: bytes) -> bool:
    try:
        _public(raw_key).verify(sig, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, eq=False)
class Proposal:
    """An entry before the sequencer placed it: content signed by its author."""

    author: str
    "Peer id of ``key``."
    key: bytes
    "The author's raw Ed25519 public key (32 bytes)."
    ts: float
    "Author's Unix time, seconds."
    kind: str
    body: dict[str, Any]
    "Checked per ``kind``; treat as read-only."
    session: str
    "SHA-256 hex of the log's entry 0: binds the proposal to one session."
    sig: bytes
    "Author's signature over the content (``DOMAIN_PROPOSAL``)."
    v: int = VERSION

    def content(self) -> dict[str, Any]:
        return _content(self.v, self.author, self.key, self.ts, self.kind, self.body, self.session)

    def to_obj(self) -> dict[str, Any]:
        obj = self.content()
        obj["sig"] = wire.b64(self.sig)
        return obj

    def signature_ok(self) -> bool:
        """The author's signature verifies and the author id matches the key."""
        return self.author == key_id(self.key) and _verify(
            self.key, self.sig, DOMAIN_PROPOSAL + canonical(self.content())
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Proposal) and canonical(self.to_obj()) == canonical(other.to_obj())

    def __hash__(self) -> int:
        return hash(self.sig)


def _content(
    v: int, author: str, key: bytes, ts: float, kind: str, body: Any, session: str | None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "v": v,
        "author": author,
        "key": wire.b64(key),
        "ts": ts,
        "kind": kind,
        "body": body,
    }
    if session is not None:
        obj["session"] = session
    return obj


@dataclass(frozen=True, eq=False)
class Entry:
    """One log entry. Equal entries have equal canonical bytes (``raw``)."""

    epoch: int
    "Epoch it was sequenced in; 0..2**53-1."
    seq: int
    "Position in the log, from 0, across all epochs."
    prev: str
    "SHA-256 hex of the previous entry's canonical bytes; ``ZERO_HASH`` at seq 0."
    author: str
    "Peer id of ``key``."
    key: bytes
    "The author's raw Ed25519 public key (32 bytes)."
    ts: float
    "Author's Unix time, seconds."
    kind: str
    body: dict[str, Any]
    "Checked per ``kind``; treat as read-only."
    sig: bytes
    "Author's signature: over the whole entry, or over the proposal when ``seqsig`` is set."
    session: str | None = None
    "Only on sequenced proposals: SHA-256 hex of entry 0."
    seqsig: bytes | None = None
    "Only on sequenced proposals: the epoch sequencer's signature over the entry."
    v: int = VERSION

    def to_obj(self) -> dict[str, Any]:
        obj = _content(self.v, self.author, self.key, self.ts, self.kind, self.body, self.session)
        obj["epoch"] = self.epoch
        obj["seq"] = self.seq
        obj["prev"] = self.prev
        obj["sig"] = wire.b64(self.sig)
        if self.seqsig is not None:
            obj["seqsig"] = wire.b64(self.seqsig)
        return obj

    @cached_property
    def raw(self) -> bytes:
        """The canonical encoding: what is hashed, stored, exported."""
        return self._encode()

    @cached_property
    def _fast(self) -> bool:
        return (
            type(self.ts) is float
            and type(self.epoch) is int
            and type(self.seq) is int
            and type(self.v) is int
            and self.kind in _BODIES
            and PEER_ID_RE.fullmatch(self.author) is not None
            and HASH_RE.fullmatch(self.prev) is not None
            and (self.session is None or HASH_RE.fullmatch(self.session) is not None)
        )

    @cached_property
    def _sig_text(self) -> str:
        return wire.b64(self.sig)

    @cached_property
    def _seqsig_text(self) -> str:
        return wire.b64(self.seqsig or b"")

    @cached_property
    def _body_text(self) -> str:
        return json.dumps(
            self.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )

    def _encode(self, *, position: bool = True, sig: bool = True, seqsig: bool = True) -> bytes:
        """``canonical`` of the entry, or of it without some fields, assembled directly.

        Every top-level field but ``body`` is a number or escape-free text (a peer id, a
        kind, hex, base64url), so only the body goes through ``json``; the keys are
        written in sorted order. Identical to ``canonical(...)`` of the same object
        (``tests/test_log_wire.py`` checks it); anything unusual takes the slow path.
        """
        if not self._fast:
            obj = self.to_obj()
            if not position:
                del obj["epoch"], obj["seq"], obj["prev"]
            if not sig:
                del obj["sig"]
            if not seqsig or not position:
                obj.pop("seqsig", None)
            return canonical(obj)
        out = [f'{{"author":"{self.author}","body":{self._body_text}']
        if position:
            out.append(f',"epoch":{self.epoch}')
        out.append(f',"key":"{_b64_key(self.key)}","kind":"{self.kind}"')
        if position:
            out.append(f',"prev":"{self.prev}","seq":{self.seq}')
            if seqsig and self.seqsig is not None:
                out.append(f',"seqsig":"{self._seqsig_text}"')
        if self.session is not None:
            out.append(f',"session":"{self.session}"')
        if sig:
            out.append(f',"sig":"{self._sig_text}"')
        out.append(f',"ts":{float.__repr__(self.ts)},"v":{self.v}}}')
        return "".join(out).encode("utf-8")

    @cached_property
    def digest(self) -> str:
        """SHA-256 hex of ``raw``: the next entry's ``prev``."""
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, seq): the token of a ``control`` entry."""
        return (self.epoch, self.seq)

    @property
    def sequenced(self) -> bool:
        """True when someone other than the author (the sequencer) signed the position."""
        return self.seqsig is not None

    def proposal(self) -> Proposal:
        """The author's proposal inside a sequenced entry."""
        if self.session is None:
            raise ValueError("this entry was written by its sequencer, not proposed")
        return Proposal(
            self.author, self.key, self.ts, self.kind, self.body, self.session, self.sig, self.v
        )

    def author_signature_ok(self) -> bool:
        """The author's signature (over the entry, or over the proposal) verifies.

        Remembered: an entry is immutable, so the answer never changes.
        """
        known: bool | None = self.__dict__.get("_author_ok")
        if known is None:
            if self.seqsig is None:
                known = _verify(self.key, self.sig, DOMAIN_ENTRY + self._encode(sig=False))
            elif self.session is None:
                known = False
            else:
                content = self._encode(position=False, sig=False)
                known = _verify(self.key, self.sig, DOMAIN_PROPOSAL + content)
            self.__dict__["_author_ok"] = known
        return known

    def sequencer_signature_ok(self, sequencer_key: bytes) -> bool:
        """``seqsig`` verifies under the epoch sequencer's key (remembered per key)."""
        if self.seqsig is None:
            return False
        memo: dict[bytes, bool] = self.__dict__.setdefault("_seq_ok", {})
        known = memo.get(sequencer_key)
        if known is None:
            payload = DOMAIN_SEQUENCED + self._encode(seqsig=False)
            known = memo[sequencer_key] = _verify(sequencer_key, self.seqsig, payload)
        return known

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Entry(epoch={self.epoch}, seq={self.seq}, kind={self.kind}, author={self.author})"


def make_entry(
    key: Ed25519PrivateKey,
    *,
    epoch: int,
    seq: int,
    prev: str,
    ts: float,
    kind: str,
    body: Mapping[str, Any],
) -> Entry:
    """An entry written and signed by the sequencer of ``epoch`` itself."""
    pub = public_bytes(key)
    plain = normalize_body(kind, body)
    if not HASH_RE.fullmatch(prev):
        raise ValueError("prev must be 64 lowercase hex digits")
    unsigned = Entry(epoch, seq, prev, key_id(pub), pub, float(ts), kind, plain, b"")
    sig = key.sign(DOMAIN_ENTRY + unsigned._encode(sig=False))
    return Entry(epoch, seq, prev, unsigned.author, pub, unsigned.ts, kind, plain, sig)


def make_proposal(
    key: Ed25519PrivateKey, *, session: str, ts: float, kind: str, body: Mapping[str, Any]
) -> Proposal:
    """A proposal for the sequencer, signed by its author."""
    pub = public_bytes(key)
    plain = normalize_body(kind, body)
    author = peer_id(pub)
    content = _content(VERSION, author, pub, float(ts), kind, plain, session)
    sig = key.sign(DOMAIN_PROPOSAL + canonical(content))
    return Proposal(author, pub, float(ts), kind, plain, session, sig)


def sequence(
    proposal: Proposal, key: Ed25519PrivateKey, *, epoch: int, seq: int, prev: str
) -> Entry:
    """The sequencer places ``proposal`` at ``seq`` and signs the position."""
    p = proposal
    if not HASH_RE.fullmatch(prev):
        raise ValueError("prev must be 64 lowercase hex digits")
    unsigned = Entry(
        epoch, seq, prev, p.author, p.key, p.ts, p.kind, p.body, p.sig, p.session, None, p.v
    )
    seqsig = key.sign(DOMAIN_SEQUENCED + unsigned._encode())
    return Entry(
        epoch, seq, prev, p.author, p.key, p.ts, p.kind, p.body, p.sig, p.session, seqsig, p.v
    )


_ENTRY_KEYS = frozenset({"v", "epoch", "seq", "prev", "author", "key", "ts", "kind", "body", "sig"})
_SEQUENCED_KEYS = _ENTRY_KEYS | {"session", "seqsig"}
_PROPOSAL_KEYS = frozenset({"v", "author", "key", "ts", "kind", "body", "session", "sig"})


def _fields(obj: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    keys = set(obj)
    if keys - allowed:
        raise DecodeError(f'{what} field "{sorted(keys - allowed)[0][:32]}" is not allowed')
    missing = sorted(allowed - keys)
    if missing:
        raise DecodeError(f'{what} field "{missing[0]}" is missing')


def _ts(obj: Mapping[str, Any]) -> float:
    ts = obj.get("ts")
    if not isinstance(ts, float) or not math.isfinite(ts) or not 0.0 <= ts <= MAX_TS:
        raise DecodeError('field "ts" must be a float of Unix seconds (e.g. 1712345678.0)')
    return ts


def _common(obj: Mapping[str, Any]) -> tuple[str, bytes, float, str, dict[str, Any]]:
    if type(obj.get("v")) is not int or obj["v"] != VERSION:
        raise DecodeError(f"unsupported log entry version (this agent reads v{VERSION})")
    author: str = wire.get_str(obj, "author", pattern=PEER_ID_RE)
    text = obj.get("key")
    known = _KEY_BYTES.get(text) if isinstance(text, str) else None
    if known is None:
        key = _b64_strict(obj, "key", min_len=32, max_len=32)
        if len(_KEY_BYTES) > 4096:
            _KEY_BYTES.clear()
        _KEY_BYTES[str(text)] = key
    else:
        key = known
    ts = _ts(obj)
    kind: str = wire.get_str(obj, "kind", max_len=32)
    body = check_body(kind, obj.get("body"))
    return author, key, ts, kind, body


def entry_from_obj(obj: Any) -> Entry:
    """Check one entry given as a parsed JSON object; raises ``DecodeError``."""
    if not isinstance(obj, dict):
        raise DecodeError("an entry must be a JSON object")
    _fields(obj, _SEQUENCED_KEYS if "seqsig" in obj or "session" in obj else _ENTRY_KEYS, "entry")
    author, key, ts, kind, body = _common(obj)
    epoch: int = wire.get_int(obj, "epoch", lo=0, hi=MAX_INT)
    seq: int = wire.get_int(obj, "seq", lo=0, hi=MAX_INT)
    prev: str = wire.get_str(obj, "prev", pattern=HASH_RE)
    sig = _b64_strict(obj, "sig", min_len=64, max_len=64)
    session: str | None = None
    seqsig: bytes | None = None
    if "seqsig" in obj:
        session = wire.get_str(obj, "session", pattern=HASH_RE)
        seqsig = _b64_strict(obj, "seqsig", min_len=64, max_len=64)
    entry = Entry(epoch, seq, prev, author, key, ts, kind, body, sig, session, seqsig)
    entry.__dict__["_sig_text"] = obj["sig"]  # checked canonical above: no need to re-encode
    if seqsig is not None:
        entry.__dict__["_seqsig_text"] = obj["seqsig"]
    if len(entry.raw) > MAX_ENTRY_BYTES:
        raise DecodeError(f"an entry is larger than {MAX_ENTRY_BYTES} bytes", code="too_large")
    return entry


def proposal_from_obj(obj: Any) -> Proposal:
    """Check one proposal given as a parsed JSON object; raises ``DecodeError``."""
    if not isinstance(obj, dict):
        raise DecodeError("a proposal must be a JSON object")
    _fields(obj, _PROPOSAL_KEYS, "proposal")
    author, key, ts, kind, body = _common(obj)
    session: str = wire.get_str(obj, "session", pattern=HASH_RE)
    sig = _b64_strict(obj, "sig", min_len=64, max_len=64)
    proposal = Proposal(author, key, ts, kind, body, session, sig)
    if len(canonical(proposal.to_obj())) > MAX_ENTRY_BYTES:
        raise DecodeError(f"a proposal is larger than {MAX_ENTRY_BYTES} bytes", code="too_large")
    return proposal


def encode_entry(entry: Entry) -> bytes:
    """The canonical bytes of ``entry`` (one line of a JSON-lines export, one DB row)."""
    return entry.raw


def decode_entry(data: bytes | str) -> Entry:
    """Parse canonical entry bytes (a DB row, an export line); raises ``DecodeError``.

    The input must already be canonical: the same entry spelled another way is refused,
    so what was hashed and signed is exactly what is read.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    obj = wire.parse_object(raw, max_bytes=MAX_ENTRY_BYTES, what="log entry")
    entry = entry_from_obj(obj)
    if entry.raw != raw:
        raise DecodeError("log entry is not in canonical form (keys, spacing or numbers)")
    return entry


def prefetch_signatures(
    entries: Sequence[Entry],
    sequencer_key: bytes | None,
    mapper: Callable[
        [Callable[[Sequence[Entry]], bool], Iterable[Sequence[Entry]]], Iterable[bool]
    ] = map,
    *,
    chunk: int = 128,
) -> bool:
    """Check the signatures of a batch ahead of the core, e.g. on a thread pool.

    ``cryptography`` releases the GIL while it verifies, so
    ``prefetch_signatures(msg.entries, log.state.sequencer_key, pool.map)``, run off
    the event loop before ``SessionLog.receive(sender, msg, now)``, spreads a large
    catch-up over the cores (``chunk`` entries per task); the core then finds every
    answer remembered on the entries. ``sequencer_key`` is the key sequencing the
    epoch the batch starts in (``session_start``/``epoch`` entries in the batch switch
    it). Purely an optimisation: a wrong guess only means the core checks again.
    Returns whether every signature verified.
    """
    keys: list[bytes | None] = []
    current = sequencer_key
    for entry in entries:
        if entry.kind in ("session_start", "epoch"):
            current = entry.key
        keys.append(current)
    index = {id(entry): i for i, entry in enumerate(entries)}

    def check(group: Sequence[Entry]) -> bool:
        ok = True
        for entry in group:
            ok = entry.author_signature_ok() and ok
            key = keys[index[id(entry)]]
            if entry.seqsig is not None and key is not None:
                ok = entry.sequencer_signature_ok(key) and ok
        return ok

    groups = [entries[i : i + chunk] for i in range(0, len(entries), chunk)]
    return all(list(mapper(check, groups)))


def entry_hash(entry: Entry) -> str:
    """SHA-256 hex of ``entry``'s canonical bytes."""
    return entry.digest


# --- sealed notes -------------------------------------------------------------------


def seal_note(key: bytes, text: str) -> str:
    """Encrypt a note for the CSRs with a 32-byte ChaCha20-Poly1305 ``key``.

    Returns the value of a note body's ``sealed`` field: base64url of nonce || box.
    """
    if len(key) != 32:
        raise ValueError("a note key is 32 bytes")
    if not text or len(text) > MAX_NOTE_CHARS:
        raise ValueError(f"a note has 1..{MAX_NOTE_CHARS} characters")
    nonce = os.urandom(12)
    return wire.b64(nonce + ChaCha20Poly1305(key).encrypt(nonce, text.encode(), _NOTE_AAD))


def open_note(key: bytes, sealed: str) -> str:
    """Decrypt a sealed note; raises ``DecodeError`` for a wrong key or altered box."""
    try:
        raw = _b64d(sealed)
        plain = ChaCha20Poly1305(key).decrypt(raw[:12], raw[12:], _NOTE_AAD)
        return plain.decode("utf-8")
    except (InvalidTag, ValueError, binascii.Error, UnicodeDecodeError):
        raise DecodeError(
            "the sealed note did not open: wrong key, or it was altered", code="sealed"
        ) from None


# --- replication messages ---------------------------------------------------------


@dataclass(frozen=True)
class Propose:
    """A participant asks the sequencer to append its signed proposal."""

    type: ClassVar[str] = "propose"
    proposal: Proposal


@dataclass(frozen=True)
class Reject:
    """The sequencer refuses a proposal (identified by its ``sig``)."""

    type: ClassVar[str] = "reject"
    sig: bytes
    reason: str
    "A refusal reason code, e.g. ``not_allowed``."
    detail: str = ""


@dataclass(frozen=True)
class Append:
    """New entries from the sequencer, consecutive; ``commit`` piggybacks its commit seq."""

    type: ClassVar[str] = "append"
    epoch: int
    commit: int
    "Highest committed seq the sequencer knows, or -1."
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Ack:
    """The sender persisted its log up to ``seq``, whose entry hashes to ``hash``."""

    type: ClassVar[str] = "ack"
    epoch: int
    "The sender's current epoch (a higher one deposes a stale sequencer)."
    seq: int
    "-1 when the sender has nothing yet."
    hash: str


@dataclass(frozen=True)
class Commit:
    """Heartbeat: entries up to ``seq`` are committed; the log ends at ``last``/``hash``."""

    type: ClassVar[str] = "commit"
    epoch: int
    seq: int
    last: int
    hash: str


@dataclass(frozen=True)
class SyncRequest:
    """I have up to (``epoch``, ``seq``, ``hash``); ``marks`` are earlier (seq, hash) points.

    ``marks`` hold the last entry of each older epoch in the sender's log and its commit
    point, so the sequencer can find where a diverged tail starts in one round trip.
    """

    type: ClassVar[str] = "sync_request"
    epoch: int
    seq: int
    "-1 for an empty log."
    hash: str
    marks: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Sync:
    """The sequencer's answer: drop entries from ``truncate_from`` (if set), add ``entries``."""

    type: ClassVar[str] = "sync"
    epoch: int
    commit: int
    truncate_from: int | None
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class VoteRequest:
    """A CSR asks to become sequencer of ``epoch``; ``last`` is its log's last entry."""

    type: ClassVar[str] = "vote_request"
    epoch: int
    candidate: str
    last: tuple[int, int, str]
    "(epoch, seq, hash) of the candidate's last entry; (0, -1, ZERO_HASH) if none."
    transfer: bool = False
    "The current sequencer asked for this election (``hand_over``)."
    pre: bool = False
    "A pre-vote: would you vote for me? Nobody's epoch or vote changes."


@dataclass(frozen=True)
class Vote:
    """A voter's answer to a ``vote_request``."""

    type: ClassVar[str] = "vote"
    epoch: int
    candidate: str
    granted: bool
    pre: bool = False
    "The answer to a pre-vote."


@dataclass(frozen=True)
class NewEpoch:
    """The winner of an election announces itself as sequencer of ``epoch``."""

    type: ClassVar[str] = "new_epoch"
    epoch: int
    sequencer: str
    votes: tuple[str, ...]


@dataclass(frozen=True)
class HandOver:
    """The sequencer asks CSR ``to`` to take over now (deliberate primary transfer)."""

    type: ClassVar[str] = "hand_over"
    epoch: int
    to: str


LogMessage: TypeAlias = (
    Propose
    | Reject
    | Append
    | Ack
    | Commit
    | SyncRequest
    | Sync
    | VoteRequest
    | Vote
    | NewEpoch
    | HandOver
)


def _entries_text(entries: Iterable[Entry]) -> str:
    return ",".join(e.raw.decode("utf-8") for e in entries)


def encode(msg: LogMessage) -> str:
    """JSON text of one log-channel message (entries spliced in as their canonical bytes)."""
    if isinstance(msg, Append):
        return (
            f'{{"commit":{msg.commit},"entries":[{_entries_text(msg.entries)}],'
            f'"epoch":{msg.epoch},"type":"append"}}'
        )
    if isinstance(msg, Sync):
        trunc = "null" if msg.truncate_from is None else str(msg.truncate_from)
        return (
            f'{{"commit":{msg.commit},"entries":[{_entries_text(msg.entries)}],'
            f'"epoch":{msg.epoch},"truncate_from":{trunc},"type":"sync"}}'
        )
    body: dict[str, Any] = {"type": msg.type}
    if isinstance(msg, Propose):
        body["proposal"] = msg.proposal.to_obj()
    elif isinstance(msg, Reject):
        body.update(sig=wire.b64(msg.sig), reason=msg.reason, detail=msg.detail)
    elif isinstance(msg, SyncRequest):
        body.update(epoch=msg.epoch, seq=msg.seq, hash=msg.hash, marks=[list(m) for m in msg.marks])
    elif isinstance(msg, VoteRequest):
        body.update(
            epoch=msg.epoch,
            candidate=msg.candidate,
            last=list(msg.last),
            transfer=msg.transfer,
            pre=msg.pre,
        )
    elif isinstance(msg, NewEpoch):
        body.update(epoch=msg.epoch, sequencer=msg.sequencer, votes=list(msg.votes))
    else:
        body.update(vars(msg))
    return wire.dump(body)


def _seq(obj: Mapping[str, Any], name: str) -> int:
    value: int = wire.get_int(obj, name, lo=-1, hi=MAX_INT)
    return value


def _epoch(obj: Mapping[str, Any]) -> int:
    value: int = wire.get_int(obj, "epoch", lo=0, hi=MAX_INT)
    return value


def _entries(obj: Mapping[str, Any], *, min_items: int) -> tuple[Entry, ...]:
    items = obj.get("entries")
    if not isinstance(items, list) or not min_items <= len(items) <= MAX_BATCH_ENTRIES:
        raise DecodeError(f'field "entries" must be a list of {min_items}..{MAX_BATCH_ENTRIES}')
    out = tuple(entry_from_obj(item) for item in items)
    for a, b in itertools.pairwise(out):
        if b.seq != a.seq + 1:
            raise DecodeError('field "entries" must hold consecutive entries')
    return out


def _flag(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise DecodeError(f'field "{name}" must be true or false')
    return value


def _only(obj: Mapping[str, Any], *names: str) -> None:
    extra = set(obj) - {"type", *names}
    if extra:
        raise DecodeError(f'field "{sorted(extra)[0][:32]}" is not allowed')


def _d_propose(o: dict[str, Any]) -> Propose:
    _only(o, "proposal")
    return Propose(proposal_from_obj(o.get("proposal")))


def _d_reject(o: dict[str, Any]) -> Reject:
    _only(o, "sig", "reason", "detail")
    return Reject(
        sig=_b64_strict(o, "sig", min_len=64, max_len=64),
        reason=wire.get_str(o, "reason", pattern=CODE_RE),
        detail=wire.get_str(o, "detail", max_len=MAX_REASON_CHARS, optional=True) or "",
    )


def _d_append(o: dict[str, Any]) -> Append:
    _only(o, "epoch", "commit", "entries")
    return Append(epoch=_epoch(o), commit=_seq(o, "commit"), entries=_entries(o, min_items=1))


def _d_ack(o: dict[str, Any]) -> Ack:
    _only(o, "epoch", "seq", "hash")
    return Ack(epoch=_epoch(o), seq=_seq(o, "seq"), hash=wire.get_str(o, "hash", pattern=HASH_RE))


def _d_commit(o: dict[str, Any]) -> Commit:
    _only(o, "epoch", "seq", "last", "hash")
    return Commit(
        epoch=_epoch(o),
        seq=_seq(o, "seq"),
        last=_seq(o, "last"),
        hash=wire.get_str(o, "hash", pattern=HASH_RE),
    )


def _marks(o: Mapping[str, Any]) -> tuple[tuple[int, str], ...]:
    items = o.get("marks", [])
    if not isinstance(items, list) or len(items) > MAX_MARKS:
        raise DecodeError(f'field "marks" must be a list of at most {MAX_MARKS}')
    out = []
    for item in items:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or isinstance(item[0], bool)
            or not isinstance(item[0], int)
            or not 0 <= item[0] <= MAX_INT
            or not isinstance(item[1], str)
            or not HASH_RE.fullmatch(item[1])
        ):
            raise DecodeError('field "marks" must hold [seq, hash] pairs')
        out.append((item[0], item[1]))
    return tuple(out)


def _d_sync_request(o: dict[str, Any]) -> SyncRequest:
    _only(o, "epoch", "seq", "hash", "marks")
    return SyncRequest(
        epoch=_epoch(o),
        seq=_seq(o, "seq"),
        hash=wire.get_str(o, "hash", pattern=HASH_RE),
        marks=_marks(o),
    )


def _d_sync(o: dict[str, Any]) -> Sync:
    _only(o, "epoch", "commit", "truncate_from", "entries")
    truncate: int | None = wire.get_int(o, "truncate_from", lo=0, hi=MAX_INT, optional=True)
    entries = _entries(o, min_items=0)
    if truncate is not None and entries and entries[0].seq != truncate:
        raise DecodeError('the first entry of a sync must sit at "truncate_from"')
    return Sync(epoch=_epoch(o), commit=_seq(o, "commit"), truncate_from=truncate, entries=entries)


def _d_vote_request(o: dict[str, Any]) -> VoteRequest:
    _only(o, "epoch", "candidate", "last", "transfer", "pre")
    last = o.get("last")
    if (
        not isinstance(last, list)
        or len(last) != 3
        or isinstance(last[0], bool)
        or not isinstance(last[0], int)
        or not 0 <= last[0] <= MAX_INT
        or isinstance(last[1], bool)
        or not isinstance(last[1], int)
        or not -1 <= last[1] <= MAX_INT
        or not isinstance(last[2], str)
        or not HASH_RE.fullmatch(last[2])
    ):
        raise DecodeError('field "last" must be [epoch, seq, hash]')
    return VoteRequest(
        epoch=_epoch(o),
        candidate=wire.get_str(o, "candidate", pattern=PEER_ID_RE),
        last=(last[0], last[1], last[2]),
        transfer=_flag(o, "transfer"),
        pre=_flag(o, "pre"),
    )


def _d_vote(o: dict[str, Any]) -> Vote:
    _only(o, "epoch", "candidate", "granted", "pre")
    granted = o.get("granted")
    if not isinstance(granted, bool):
        raise DecodeError('field "granted" must be true or false')
    return Vote(
        epoch=_epoch(o),
        candidate=wire.get_str(o, "candidate", pattern=PEER_ID_RE),
        granted=granted,
        pre=_flag(o, "pre"),
    )


def _d_new_epoch(o: dict[str, Any]) -> NewEpoch:
    _only(o, "epoch", "sequencer", "votes")
    votes = wire.get_str_list(o, "votes", max_items=MAX_VOTES, pattern=PEER_ID_RE)
    assert votes is not None
    return NewEpoch(
        epoch=_epoch(o), sequencer=wire.get_str(o, "sequencer", pattern=PEER_ID_RE), votes=votes
    )


def _d_hand_over(o: dict[str, Any]) -> HandOver:
    _only(o, "epoch", "to")
    return HandOver(epoch=_epoch(o), to=wire.get_str(o, "to", pattern=PEER_ID_RE))


_TABLE: dict[str, Any] = {
    "propose": _d_propose,
    "reject": _d_reject,
    "append": _d_append,
    "ack": _d_ack,
    "commit": _d_commit,
    "sync_request": _d_sync_request,
    "sync": _d_sync,
    "vote_request": _d_vote_request,
    "vote": _d_vote,
    "new_epoch": _d_new_epoch,
    "hand_over": _d_hand_over,
}


def decode(data: str | bytes) -> LogMessage:
    """Parse one log-channel message; raises ``DecodeError`` (``UnknownMessage`` for new types)."""
    obj = wire.parse_object(data, max_bytes=MAX_LOG_MESSAGE_BYTES, what="log message")
    kind = wire.get_type(obj)
    parser = _TABLE.get(kind)
    if parser is None:
        raise UnknownMessage(f'unknown log message type "{kind[:32]}"')
    try:
        msg: LogMessage = parser(obj)
    except DecodeError as exc:
        raise DecodeError(f"{kind}: {exc.message}", code=exc.code) from None
    return msg


def batches(entries: Iterable[Entry]) -> list[tuple[Entry, ...]]:
    """Split consecutive entries into groups that fit one ``append``/``sync`` message."""
    out: list[tuple[Entry, ...]] = []
    group: list[Entry] = []
    size = 0
    for entry in entries:
        n = len(entry.raw) + 1
        if group and (size + n > MAX_BATCH_BYTES or len(group) >= MAX_BATCH_ENTRIES):
            out.append(tuple(group))
            group, size = [], 0
        group.append(entry)
        size += n
    if group:
        out.append(tuple(group))
    return out
