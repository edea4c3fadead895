"""A prompt video jitter buffer for aiortc's receiver, worked around in our code (no fork).

aiortc 1.16's ``JitterBuffer`` hands a video frame to the decoder only when the first
packet of the *next* frame arrives: it ignores the RTP marker bit that ends a frame.
A screen only sends frames when something changes, so the last change before a
pause was shown only at the next heartbeat, up to a second later; even at 30 fps
every frame waited one frame interval (33 ms) for nothing. Measured on loopback
with aiortc 1.16: first keyframe packetised at 177 ms, shown at 1220 ms, when the
1 s heartbeat frame arrived.

``PromptJitterBuffer`` completes a video frame as soon as it holds every packet from
the frame's first to the one with the marker bit, and otherwise keeps aiortc's rule
(a new timestamp closes the previous frame). It also raises the video capacity from
512 packets (665 kB: a 1080p text keyframe can be 600-800 kB, and an overflowing
keyframe is dropped, PLI'd and re-sent forever) to ``VIDEO_CAPACITY``.

A packet that is lost for good (its retransmission lost too, or too old for the
sender's history) used to block every later frame until the buffer overflowed:
with sparse screen frames, practically forever. Here, when a complete frame
``STALL`` seconds of media time newer than the oldest buffered one arrives, the
stuck frames are dropped and a PLI goes out (the sender answers with a keyframe).
``install()`` also raises the receiver's NACK window (aiortc's
``RTP_HISTORY_SIZE``, 128 packets, less than one keyframe) to ``NACK_WINDOW``.

Audio is left alone. ``install()`` makes new ``RTCRtpReceiver`` s use it; if
aiortc's internals differ from what it expects it leaves aiortc alone and says so.
"""

from __future__ import annotations

import logging
from typing import Any

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

log = logging.getLogger(__name__)

VIDEO_CAPACITY = 2048
"Video packets the buffer holds (about 2.6 MB of frame data at 1300 bytes a packet)."
STALL = 0.5
"Seconds of media time a frame may wait for a lost packet before it is dropped for a PLI."
NACK_WINDOW = 2048
"Packets back that the receiver still NACKs (aiortc: 128)."
_CLOCK = 90_000

_STOCK = JitterBuffer


class PromptJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, but a video frame is complete at its marker bit."""

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        if is_video:
            capacity = max(capacity, VIDEO_CAPACITY)
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        self._highest: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        stuck = frame is None and packet.marker and self._is_video and not self._prefetch
        if stuck and self._skip_stalled(packet):
            pli = True
            frame = self._remove_frame(packet.sequence_number)
        return pli, frame

    def _skip_stalled(self, packet: RtpPacket) -> bool:
        """Drop frames stuck behind a lost packet once ``packet``'s frame is STALL newer."""
        slots: list[RtpPacket | None] = self._packets
        cap = self._capacity
        origin = self._origin
        if origin is None:
            return False
        span = uint16_add(packet.sequence_number, -origin)
        if span >= cap:
            return False
        oldest: int | None = None
        start: int | None = None
        for count in range(span + 1):
            p = slots[(origin + count) % cap]
            if p is None:
                continue
            if oldest is None:
                oldest = p.timestamp
            if p.timestamp == packet.timestamp:
                start = count
                break
        if oldest is None or start is None or start == 0:
            return False
        age = (packet.timestamp - oldest) & 0xFFFFFFFF
        if age >= 1 << 31 or age < STALL * _CLOCK:
            return False
        log.debug("video frames stuck behind a lost packet for %.2f s: dropped", age / _CLOCK)
        self.remove(start)
        return True

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self._is_video or self._prefetch:
            return super()._remove_frame(sequence_number)
        slots: list[RtpPacket | None] = self._packets
        cap = self._capacity
        origin = self._origin
        assert origin is not None
        packet = slots[sequence_number % cap]
        in_order = self._highest is None or uint16_gt(sequence_number, self._highest)
        if in_order:
            self._highest = sequence_number
        first = slots[origin % cap]
        if (
            in_order
            and packet is not None
            and not packet.marker
            and first is not None
            and first.timestamp == packet.timestamp
        ):
            return None  # the middle of the oldest frame: nothing can be complete yet
        parts: list[Any] = []
        timestamp: int | None = None
        for count in range(cap):
            p = slots[(origin + count) % cap]
            if p is None:
                return None
            if timestamp is None:
                timestamp = p.timestamp
            elif p.timestamp != timestamp:
                # aiortc's rule: a new timestamp closes the previous frame
                self.remove(count)
                return JitterFrame(data=b"".join(x._data for x in parts), timestamp=timestamp)
            parts.append(p)
            if p.marker:
                self.remove(count + 1)
                return JitterFrame(data=b"".join(x._data for x in parts), timestamp=timestamp)
        return None


def _compatible() -> bool:
    needed = ("_capacity", "_origin", "_packets", "_prefetch", "_is_video")
    probe = _STOCK.__init__.__code__.co_names
    return (
        all(name in probe for name in needed)
        and callable(getattr(_STOCK, "_remove_frame", None))
        and callable(getattr(_STOCK, "remove", None))
        and getattr(aiortc.rtcrtpreceiver, "JitterBuffer", None) in (_STOCK, PromptJitterBuffer)
        and isinstance(getattr(aiortc.rtcrtpreceiver, "RTP_HISTORY_SIZE", None), int)
    )


def install() -> bool:
    """Make aiortc's receivers created from now on use ``PromptJitterBuffer``.

    Returns whether it is in effect.
    """
    if not _compatible():
        log.warning(
            "aiortc %s's jitter buffer differs from what PeerDesk expects: stock kept "
            "(video frames will be shown one frame late)",
            getattr(aiortc, "__version__", "?"),
        )
        return False
    aiortc.rtcrtpreceiver.JitterBuffer = PromptJitterBuffer  # type: ignore[attr-defined]
    aiortc.rtcrtpreceiver.RTP_HISTORY_SIZE = max(  # type: ignore[attr-defined]
        aiortc.rtcrtpreceiver.RTP_HISTORY_SIZE,  # type: ignore[attr-defined]
        NACK_WINDOW,
    )
    return True


def uninstall() -> None:
    """Back to aiortc's stock jitter buffer (for in-run baselines)."""
    aiortc.rtcrtpreceiver.JitterBuffer = _STOCK  # type: ignore[attr-defined]
