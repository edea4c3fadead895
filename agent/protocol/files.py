"""The files wire: one dedicated, ordered, reliable data channel between two agents.

Two kinds of message share the channel:

* **Control messages** are text: one JSON object with a ``type`` tag, at most
  ``MAX_FRAME_BYTES`` bytes (``offer``, ``accept``, ``reject``, ``done``, ``abort``,
  ``get``, ``list``, ``listing``, ``fastpath``).
* **Chunks** are binary, with a fixed 17-byte header (all integers big-endian)::

      offset  size  field
      0       1     kind, 0x01 (CHUNK_KIND)
      1       8     transfer id, the 16 hex digits of ``id`` as 8 raw bytes
      9       8     offset of the first data byte in the file (unsigned)
      17      1..   data, at most MAX_CHUNK_DATA bytes (the whole frame <= 256 KiB)

A transfer is named by a 64-bit id (16 lowercase hex digits) chosen by whoever starts
it: the sender for a ``push``, the requester (in ``get``) for a ``pull``. Sizes and
offsets are bytes; JSON integers stay below 2**53. File names travel as sent and are
judged by the receiver (``agent.files.names.sanitize_name``), so that a hostile name
gets a precise ``reject`` rather than a generic decode error.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, UnknownMessage
from agent.protocol import wire

MAX_FRAME_BYTES = 256 * 1024
"Largest message of either kind on the files channel."
CHUNK_KIND = 0x01
CHUNK_HEADER = struct.Struct(">B8sQ")
"kind, transfer id (8 raw bytes), offset."
MAX_CHUNK_DATA = MAX_FRAME_BYTES - CHUNK_HEADER.size
DEFAULT_CHUNK_DATA = 64 * 1024 - CHUNK_HEADER.size
"Data per chunk that fits the 64 KiB message size every WebRTC stack accepts."
MAX_FILE_SIZE = 2**53 - 1
MAX_WIRE_NAME_CHARS = 1024
"A name longer than this is not even parsed (sanitize_name allows 255 bytes)."
MAX_ENTRY_NAME_BYTES = 255
MAX_PATH_CHARS = 4096
MAX_LIST_ENTRIES = 400
"Entries per ``listing``; a longer directory is paged with ``list.start``."
MAX_MESSAGE_CHARS = 500
MAX_HOSTS = 8
MAX_MTIME = 2**40
NONCE_BYTES = 16

TRANSFER_ID_RE = re.compile(r"[0-9a-f]{16}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_REASON_RE = re.compile(r"[a-z_]{1,32}")
_DIRECTION_RE = re.compile(r"push|pull")
_SCOPE_RE = re.compile(r"published|browse")


def new_transfer_id() -> str:
    """A fresh random transfer id."""
    return secrets.token_hex(8)


# --- control messages --------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """The sender has a file for the receiver."""

    type: ClassVar[str] = "offer"
    id: str
    name: str
    "As the sender calls it; the receiver sanitizes it and may refuse."
    size: int
    "Bytes, 0..MAX_FILE_SIZE."
    sha256: str
    "Lowercase hex SHA-256 of the whole file."
    direction: str
    '"push": sent unasked (the receiver decides); "pull": answers our ``get`` with this id.'


@dataclass(frozen=True)
class Accept:
    """The receiver takes the file; send from ``offset`` (> 0 resumes a partial file).

    Sent again during a transfer it means "continue from ``offset``" (after a drop or
    when the fast path failed).
    """

    type: ClassVar[str] = "accept"
    id: str
    offset: int


@dataclass(frozen=True)
class Reject:
    """The receiver will not take an offer, or the sender will not serve a ``get``."""

    type: ClassVar[str] = "reject"
    id: str
    reason: str
    "Machine-readable: declined, unsafe_name, no_space, not_found, not_allowed, ..."
    message: str = ""
    "For a person, at most MAX_MESSAGE_CHARS."


@dataclass(frozen=True)
class Done:
    """The receiver verified and stored the whole file."""

    type: ClassVar[str] = "done"
    id: str
    sha256: str


@dataclass(frozen=True)
class Abort:
    """Either side ends a transfer; ``reason`` is machine-readable, ``message`` for people."""

    type: ClassVar[str] = "abort"
    id: str
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Get:
    """Ask the peer to send a file: a published one (``path`` is its name) or one
    under the granted directory (``path`` is ``/``-separated and relative). Answered
    by an ``offer`` with this ``id`` and direction ``pull``, or by a ``reject``."""

    type: ClassVar[str] = "get"
    id: str
    scope: str
    '"published" or "browse".'
    path: str


@dataclass(frozen=True)
class ListFiles:
    """Ask for the published catalogue or a directory under the granted one."""

    type: ClassVar[str] = "list"
    id: str
    "Request id (same format as a transfer id), echoed in the ``listing``."
    scope: str
    path: str = ""
    "For ``browse``: ``/``-separated, relative;  is the granted directory itself."
    start: int = 0
    "Index of the first entry wanted (paging)."


@dataclass(frozen=True)
class Entry:
    name: str
    "One path component: no ``/``, ``\\``, NUL or control characters, <= 255 UTF-8 bytes."
    size: int
    "Bytes (0 for directories)."
    is_dir: bool
    mtime: int
    "Last modification, whole seconds since the Unix epoch."


@dataclass(frozen=True)
class Listing:
    """Answer to ``list``: at most MAX_LIST_ENTRIES entries from ``start``."""

    type: ClassVar[str] = "listing"
    id: str
    scope: str
    path: str
    entries: tuple[Entry, ...]
    start: int = 0
    truncated: bool = False
    "More entries follow: ask again with ``start + len(entries)``."


@dataclass(frozen=True)
class FastPath:
    """The sender listens for a direct TCP connection for this transfer's bytes.

    The receiver connects to ``port`` on one of ``hosts`` (or on the address the peer
    connection uses) and proves it holds the session key (see ``net/fastpath.py``).
    One ticket serves one connection; a new attempt gets a new ``fastpath``.
    """

    type: ClassVar[str] = "fastpath"
    id: str
    port: int
    nonce: bytes
    "NONCE_BYTES random bytes, mixed into the fast path's keys."
    hosts: tuple[str, ...] = ()
    "IP literals the sender listens on; empty means the peer connection's address."


@dataclass(frozen=True)
class Chunk:
    """File bytes ``data`` at ``offset`` of transfer ``id`` (binary frame)."""

    type: ClassVar[str] = "chunk"
    id: str
    offset: int
    data: bytes


Control: TypeAlias = Offer | Accept | Reject | Done | Abort | Get | ListFiles | Listing | FastPath
Message: TypeAlias = Control | Chunk


# --- encoding ------------------------------------------------------------------------


def listing_name_ok(name: str) -> bool:
    """Whether a directory entry's name can travel in a ``listing``."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        return False
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in name):
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_ENTRY_NAME_BYTES
    except UnicodeEncodeError:
        return False


def encode(msg: Control) -> str:
    """JSON text for one control message."""
    body: dict[str, Any] = {"type": msg.type, "id": msg.id}
    if isinstance(msg, Offer):
        body.update(name=msg.name, size=msg.size, sha256=msg.sha256, direction=msg.direction)
    elif isinstance(msg, Accept):
        body["offset"] = msg.offset
    elif isinstance(msg, Reject | Abort):
        body.update(reason=msg.reason, message=msg.message)
    elif isinstance(msg, Done):
        body["sha256"] = msg.sha256
    elif isinstance(msg, Get):
        body.update(scope=msg.scope, path=msg.path)
    elif isinstance(msg, ListFiles):
        body.update(scope=msg.scope, path=msg.path, start=msg.start)
    elif isinstance(msg, Listing):
        body.update(
            scope=msg.scope,
            path=msg.path,
            start=msg.start,
            truncated=msg.truncated,
            entries=[
                {"name": e.name, "size": e.size, "is_dir": e.is_dir, "mtime": e.mtime}
                for e in msg.entries
            ],
        )
    elif isinstance(msg, FastPath):
        body.update(port=msg.port, nonce=wire.b64(msg.nonce), hosts=list(msg.hosts))
    return wire.dump(body)


def encode_chunk(transfer_id: str, offset: int, data: bytes | memoryview) -> bytes:
    """The binary frame for ``data`` at ``offset`` (``1 <= len(data) <= MAX_CHUNK_DATA``)."""
    if not 1 <= len(data) <= MAX_CHUNK_DATA:
        raise ValueError(f"chunk data must be 1..{MAX_CHUNK_DATA} bytes, not {len(data)}")
    return CHUNK_HEADER.pack(CHUNK_KIND, bytes.fromhex(transfer_id), offset) + data


# --- decoding ------------------------------------------------------------------------


def _get_bool(obj: dict[str, Any], name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise DecodeError(f'field "{name}" must be true or false')
    return value


def _get_name(obj: dict[str, Any], name: str) -> str:
    """Any Unicode text (NUL included: the receiver refuses it with a precise reason)."""
    value = obj.get(name)
    if not isinstance(value, str):
        raise DecodeError(f'field "{name}" must be a string')
    if len(value) > MAX_WIRE_NAME_CHARS:
        raise DecodeError(f'field "{name}" is longer than {MAX_WIRE_NAME_CHARS} characters')
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(f'field "{name}" is not valid Unicode text') from None
    return value


def _id(obj: dict[str, Any]) -> str:
    value: str = wire.get_str(obj, "id", pattern=TRANSFER_ID_RE)
    return value


def _entry(item: Any) -> Entry:
    if not isinstance(item, dict):
        raise DecodeError("a listing entry must be an object")
    name = wire.get_str(item, "name", max_len=MAX_ENTRY_NAME_BYTES, allow_empty=False)
    if not listing_name_ok(name):
        raise DecodeError(f"listing entry name {name[:40]!r} is not a single safe component")
    return Entry(
        name=name,
        size=wire.get_int(item, "size", lo=0, hi=MAX_FILE_SIZE),
        is_dir=_get_bool(item, "is_dir"),
        mtime=wire.get_int(item, "mtime", lo=0, hi=MAX_MTIME),
    )


def _listing(obj: dict[str, Any]) -> Listing:
    items = obj.get("entries")
    if not isinstance(items, list) or len(items) > MAX_LIST_ENTRIES:
        raise DecodeError(f'field "entries" must be a list of at most {MAX_LIST_ENTRIES}')
    return Listing(
        id=_id(obj),
        scope=wire.get_str(obj, "scope", pattern=_SCOPE_RE),
        path=wire.get_str(obj, "path", max_len=MAX_PATH_CHARS),
        entries=tuple(_entry(item) for item in items),
        start=wire.get_int(obj, "start", lo=0, hi=MAX_FILE_SIZE),
        truncated=_get_bool(obj, "truncated"),
    )


def _hosts(obj: dict[str, Any]) -> tuple[str, ...]:
    value = obj.get("hosts", [])
    if not isinstance(value, list) or len(value) > MAX_HOSTS:
        raise DecodeError(f'field "hosts" must be a list of at most {MAX_HOSTS} addresses')
    out = []
    for item in value:
        if not isinstance(item, str) or len(item) > 64:
            raise DecodeError('field "hosts" must hold IP addresses')
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise DecodeError(f'field "hosts" holds {item[:64]!r}, not an IP address') from None
    return tuple(out)


def _reason(obj: dict[str, Any]) -> str:
    value: str = wire.get_str(obj, "reason", pattern=_REASON_RE)
    return value


def _message(obj: dict[str, Any]) -> str:
    value: str | None = wire.get_str(obj, "message", max_len=MAX_MESSAGE_CHARS, optional=True)
    return value or ""


_TABLE: dict[str, Any] = {
    "offer": lambda o: Offer(
        id=_id(o),
        name=_get_name(o, "name"),
        size=wire.get_int(o, "size", lo=0, hi=MAX_FILE_SIZE),
        sha256=wire.get_str(o, "sha256", pattern=SHA256_RE),
        direction=wire.get_str(o, "direction", pattern=_DIRECTION_RE),
    ),
    "accept": lambda o: Accept(id=_id(o), offset=wire.get_int(o, "offset", lo=0, hi=MAX_FILE_SIZE)),
    "reject": lambda o: Reject(id=_id(o), reason=_reason(o), message=_message(o)),
    "done": lambda o: Done(id=_id(o), sha256=wire.get_str(o, "sha256", pattern=SHA256_RE)),
    "abort": lambda o: Abort(id=_id(o), reason=_reason(o), message=_message(o)),
    "get": lambda o: Get(
        id=_id(o),
        scope=wire.get_str(o, "scope", pattern=_SCOPE_RE),
        path=wire.get_str(o, "path", max_len=MAX_PATH_CHARS),
    ),
    "list": lambda o: ListFiles(
        id=_id(o),
        scope=wire.get_str(o, "scope", pattern=_SCOPE_RE),
        path=wire.get_str(o, "path", max_len=MAX_PATH_CHARS),
        start=wire.get_int(o, "start", lo=0, hi=MAX_FILE_SIZE),
    ),
    "listing": _listing,
    "fastpath": lambda o: FastPath(
        id=_id(o),
        port=wire.get_int(o, "port", lo=1, hi=65535),
        nonce=wire.get_bytes(o, "nonce", min_len=NONCE_BYTES, max_len=NONCE_BYTES),
        hosts=_hosts(o),
    ),
}


def decode_chunk(data: bytes | bytearray | memoryview) -> Chunk:
    """Parse one binary chunk frame; raises ``DecodeError``."""
    size = len(data)
    if size > MAX_FRAME_BYTES:
        raise DecodeError(
            f"chunk frame is {size} bytes; the limit is {MAX_FRAME_BYTES}", code="too_large"
        )
    if size <= CHUNK_HEADER.size:
        raise DecodeError(f"chunk frame is {size} bytes; a header and some data need more")
    kind, raw_id, offset = CHUNK_HEADER.unpack_from(data)
    if kind != CHUNK_KIND:
        raise DecodeError(f"binary frame of unknown kind 0x{kind:02x}")
    if offset > MAX_FILE_SIZE:
        raise DecodeError(f"chunk offset {offset} is beyond the largest file size")
    return Chunk(id=raw_id.hex(), offset=offset, data=bytes(data[CHUNK_HEADER.size :]))


def decode_control(data: str | bytes) -> Control:
    """Parse one JSON control message; raises ``DecodeError`` (``UnknownMessage`` for a
    well-formed message of a type we do not know)."""
    obj = wire.parse_object(data, max_bytes=MAX_FRAME_BYTES, what="files message")
    kind = wire.get_type(obj)
    parser = _TABLE.get(kind)
    if parser is None:
        raise UnknownMessage(f'unknown files message type "{kind[:32]}"')
    try:
        msg: Control = parser(obj)
    except DecodeError as exc:
        raise DecodeError(f"{kind}: {exc.message}", code=exc.code) from None
    return msg


def decode(data: str | bytes | bytearray | memoryview) -> Message:
    """Parse one files-channel message: text is a control message, binary a chunk."""
    if isinstance(data, str):
        return decode_control(data)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"a files message must be text or bytes, not {type(data).__name__}")
    return decode_chunk(data)


def transfer_id_of(data: str | bytes | bytearray | memoryview) -> str | None:
    """The transfer id of a message that failed to decode, when one can be read at all.

    Lets the receiver answer a malformed message with an ``abort`` for that transfer.
    """
    if isinstance(data, str):
        if len(data) > MAX_FRAME_BYTES:
            return None
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return None
        value = obj.get("id") if isinstance(obj, dict) else None
        return value if isinstance(value, str) and TRANSFER_ID_RE.fullmatch(value) else None
    if len(data) >= CHUNK_HEADER.size and data[0] == CHUNK_KIND:
        return bytes(data[1:9]).hex()
    return None
