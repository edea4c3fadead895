"""The customer's encoded VP8 frames, as they arrive, for the dashboard page to decode.

The CSR's agent receives the customer's screen as VP8 over WebRTC and decodes it
(``ScreenViewer``). The page can decode the very same frames itself (WebCodecs'
``VideoDecoder``), in parallel with the agent instead of after it: no re-encoding, no
second WebRTC stack. ``EncodedTap`` copies each complete encoded frame that aiortc's
receiver hands its decoder thread (the receiver's queue is wrapped; aiortc has no
public hook for it), so listeners get ``(codec, data, rtp_timestamp)`` on the loop.

``is_keyframe`` tells a VP8 keyframe (RFC 6386 9.1: bit 0 of the first byte is 0).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Listener = Callable[[str, bytes, int], None]
_taps: weakref.WeakKeyDictionary[Any, EncodedTap] = weakref.WeakKeyDictionary()


def is_keyframe(data: bytes) -> bool:
    """Whether an encoded VP8 frame is a keyframe."""
    return bool(data) and data[0] & 1 == 0


class _Tee:
    """Stands in for the receiver's decoder queue: forwards, and tells the tap."""

    def __init__(self, queue: Any, tap: EncodedTap) -> None:
        self._queue = queue
        self._tap = tap

    def put(self, item: Any, *args: Any, **kwargs: Any) -> None:
        self._queue.put(item, *args, **kwargs)
        if item is not None:
            codec, frame = item
            self._tap.emit(str(codec.name), bytes(frame.data), int(frame.timestamp))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class EncodedTap:
    """Encoded video frames of one aiortc receiver, for any number of listeners."""

    _ATTR = "_RTCRtpReceiver__decoder_queue"

    def __init__(self, receiver: Any) -> None:
        self.listeners: set[Listener] = set()
        queue = getattr(receiver, self._ATTR)
        setattr(receiver, self._ATTR, _Tee(queue, self))

    @classmethod
    def of(cls, link: Any, track: Any) -> EncodedTap | None:
        """The tap on the receiver of ``track`` in ``link`` (made once), or None if
        aiortc's internals are not what this expects (then the page gets JPEG)."""
        for receiver in link.pc.getReceivers():
            if receiver.track is track:
                tap = _taps.get(receiver)
                if tap is None:
                    if not hasattr(receiver, cls._ATTR):
                        log.info("aiortc's receiver has no decoder queue: no passthrough")
                        return None
                    tap = cls(receiver)
                    _taps[receiver] = tap
                return tap
        return None

    def emit(self, codec: str, data: bytes, timestamp: int) -> None:
        for listener in list(self.listeners):
            try:
                listener(codec, data, timestamp)
            except Exception:  # one broken page must not stop the decoder's feed
                log.exception("encoded frame listener failed")
