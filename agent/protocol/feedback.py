"""The viewer's screen reports as RTCP application feedback (RFC 4585 PSFB, FMT 15).

A ``ScreenFeedback`` rides next to the screen's own RTCP (NACK, PLI, receiver
reports), not on the session's data channel: SCTP is reliable and ordered, and
through a full 2 Mbit/s bottleneck one lost chunk, or a lost acknowledgement of one,
held the reports behind it for SCTP's retransmission timeout, doubling; reports
sent 12 s apart arrived together, the sender heard nothing, halved its estimate to
the floor, and never found its way back. RTCP is unreliable and unordered like the
media: a lost report is simply not there, and the next one 0.1 s later is.

The FCI (after the RTCP header and the two SSRCs; all integers big-endian)::

    "PDFB"  version 1 (1 byte)  0 (1 byte)  base (2)  count (2)  0 (2)
    t0_us (8)  hold_us (4)  count x at (4 each; 0xFFFFFFFF: not received)

One report too long for a packet (``MAX_PER_PACKET`` arrivals) goes as several, each
a report of its own run. aiortc's sender takes any FMT 15 packet that is not REMB
for nothing and drops it, so a peer that does not know this wire loses nothing.
"""

from __future__ import annotations

import struct

from agent.errors import DecodeError
from agent.protocol.channel import MAX_FEEDBACK_PACKETS, ScreenFeedback

NAME = b"PDFB"
"The FCI's first four bytes (REMB's are ``REMB``)."
VERSION = 1
MAX_PER_PACKET = 250
"Arrivals in one RTCP packet: 24 + 1000 bytes of FCI, inside a 1200-byte datagram."
MISSING = 0xFFFFFFFF
_HEAD = struct.Struct("!4sBBHHHQI")
_MAX_AT = 2**31
_MAX_HOLD = 10**7


def encode(msg: ScreenFeedback) -> list[bytes]:
    """The FCIs that carry ``msg`` (one per ``MAX_PER_PACKET`` arrivals), in order."""
    out: list[bytes] = []
    at = msg.at
    for start in range(0, len(at), MAX_PER_PACKET):
        part = at[start : start + MAX_PER_PACKET]
        rest = [a for a in at[start + len(part) :] if a is not None]
        own = [a for a in part if a is not None]
        hold = msg.hold_us
        if rest and own:  # this part's last arrival came before the report's last
            hold = min(hold + max(rest) - max(own), _MAX_HOLD)
        head = _HEAD.pack(
            NAME, VERSION, 0, (msg.base + start) % 65536, len(part), 0, msg.t0_us, hold
        )
        body = struct.pack(f"!{len(part)}I", *(MISSING if a is None else a for a in part))
        out.append(head + body)
    return out


def is_feedback(fci: bytes) -> bool:
    """Whether an FMT 15 FCI is one of ours (and not, say, REMB)."""
    return fci[:4] == NAME


def decode(fci: bytes) -> ScreenFeedback:
    """The report in one FCI; ``DecodeError`` says what is wrong with a bad one."""
    if len(fci) < _HEAD.size:
        raise DecodeError(f"screen report: {len(fci)} bytes, the header alone is {_HEAD.size}")
    name, version, zero1, base, count, zero2, t0_us, hold_us = _HEAD.unpack_from(fci)
    if name != NAME:
        raise DecodeError(f"screen report: starts with {name!r}, not {NAME!r}")
    if version != VERSION:
        raise DecodeError(f"screen report: version {version}, this agent reads {VERSION}")
    if zero1 or zero2:
        raise DecodeError("screen report: the reserved header bytes must be 0")
    if not 1 <= count <= min(MAX_PER_PACKET, MAX_FEEDBACK_PACKETS):
        raise DecodeError(f"screen report: {count} arrivals, expected 1 to {MAX_PER_PACKET}")
    if len(fci) != _HEAD.size + 4 * count:
        raise DecodeError(
            f"screen report: {len(fci)} bytes for {count} arrivals, "
            f"expected {_HEAD.size + 4 * count}"
        )
    if hold_us > _MAX_HOLD:
        raise DecodeError(f"screen report: hold of {hold_us} us, at most {_MAX_HOLD}")
    raw = struct.unpack_from(f"!{count}I", fci, _HEAD.size)
    at: list[int | None] = []
    for a in raw:
        if a == MISSING:
            at.append(None)
        elif a > _MAX_AT:
            raise DecodeError(f"screen report: an arrival {a} us after t0, at most {_MAX_AT}")
        else:
            at.append(a)
    return ScreenFeedback(base=base, t0_us=t0_us, at=tuple(at), hold_us=hold_us)
