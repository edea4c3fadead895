"""What a PeerDesk session says about itself on the LAN (zeroconf), and how it is read.

A CSR's agent that hosts its own signaling endpoint advertises it as a DNS-SD
service of type ``_peerdesk._tcp.local.``. The TXT record carries:

- ``v``: the record format, ``1``;
- ``room``: the session's public six-digit room id (never the secret half of the code);
- ``name``: the CSR's display name, for ``peerdesk discover`` (at most 64 characters);
- ``path``: the WebSocket path of the endpoint, ``/ws``.

Everything here is data in, data out; no sockets (the zeroconf glue is ``lan.py``
in the net package). Anything on the LAN may answer a query, so records are parsed
as hostile input: a malformed record is a ``DecodeError`` and is skipped, never
half-used. Discovery decides only *where* to knock; the SPAKE2 join that follows
decides whether the other side knows the code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.errors import DecodeError

SERVICE_TYPE = "_peerdesk._tcp.local."
"The DNS-SD service type every PeerDesk signaling endpoint on a LAN announces."

TXT_VERSION = "1"
MAX_NAME = 64
"Longest display name carried in the TXT record, in characters."
MAX_TXT_BYTES = 1300
"A TXT record larger than this (total bytes of keys and values) is refused."

_ROOM_RE = re.compile(r"[0-9]{6}")
_PATH_RE = re.compile(r"/[A-Za-z0-9/_.-]{0,63}")


@dataclass(frozen=True)
class LanRecord:
    """The TXT half of an advertisement."""

    room: str
    "Six digits: the public room id."
    name: str = ""
    "The advertiser's display name; untrusted, for listing only."
    path: str = "/ws"
    "The signaling endpoint's WebSocket path."


@dataclass(frozen=True)
class LanSession:
    """A session found on the LAN: its record and the signaling URLs to try, in order."""

    room: str
    name: str
    urls: tuple[str, ...]
    "``ws://ADDR:PORT/ws``, IPv4 before IPv6."
    instance: str
    "The DNS-SD instance name that announced it."

    def to_json(self) -> dict[str, object]:
        """A JSON-ready view (``peerdesk discover --json``)."""
        return {
            "event": "lan_session",
            "room": self.room,
            "name": self.name,
            "urls": list(self.urls),
            "instance": self.instance,
        }


def clean_name(name: str) -> str:
    """``name`` reduced to printable characters and cut to ``MAX_NAME``."""
    kept = "".join(ch for ch in name if ch.isprintable())
    return kept.strip()[:MAX_NAME]


def encode_txt(record: LanRecord) -> dict[str, str]:
    """The TXT properties for ``record``."""
    if not _ROOM_RE.fullmatch(record.room):
        raise ValueError(f"room id must be 6 digits, got {record.room!r}")
    return {
        "v": TXT_VERSION,
        "room": record.room,
        "name": clean_name(record.name),
        "path": record.path,
    }


def decode_txt(properties: Mapping[bytes, bytes | None]) -> LanRecord:
    """Parse TXT properties as zeroconf hands them over; ``DecodeError`` if malformed."""
    total = sum(len(k) + len(v or b"") for k, v in properties.items())
    if total > MAX_TXT_BYTES:
        raise DecodeError(f"TXT record of {total} bytes is too large")

    def text(key: bytes) -> str | None:
        raw = properties.get(key)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"TXT field {key.decode('ascii')} is not UTF-8") from None

    version = text(b"v")
    if version != TXT_VERSION:
        raise DecodeError(f"unsupported record version {version!r}")
    room = text(b"room")
    if room is None or not _ROOM_RE.fullmatch(room):
        raise DecodeError(f"TXT room must be 6 digits, got {room!r}")
    path = text(b"path") or "/ws"
    if not _PATH_RE.fullmatch(path) or ".." in path:
        raise DecodeError(f"TXT path {path!r} is not a plain absolute path")
    name = clean_name(text(b"name") or "")
    return LanRecord(room=room, name=name, path=path)


def signal_urls(addresses: Iterable[str], port: int, path: str = "/ws") -> tuple[str, ...]:
    """WebSocket URLs for an advertised endpoint; unusable addresses are dropped.

    Unspecified, multicast and link-local addresses are skipped (a link-local IPv6
    address needs a zone the advertiser cannot give us); IPv4 comes first.
    """
    if not 1 <= port <= 65535:
        return ()
    v4: list[str] = []
    v6: list[str] = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if addr.is_unspecified or addr.is_multicast or addr.is_link_local:
            continue
        if isinstance(addr, ipaddress.IPv4Address):
            url = f"ws://{addr}:{port}{path}"
            if url not in v4:
                v4.append(url)
        else:
            url = f"ws://[{addr}]:{port}{path}"
            if url not in v6:
                v6.append(url)
    return (*v4, *v6)
