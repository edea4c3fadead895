"""aiortc video tracks for the screen: raw frames (``ScreenTrack``) or one shared encode.

``ScreenTrack`` hands aiortc yuv420p frames, and each ``RTCRtpSender`` encodes them
itself: simple, but one encode per viewer, at aiortc's bitrate caps unless
``rtc.raise_aiortc_bitrate_caps()`` is called.

``EncodedScreen`` encodes each changed frame once, in the capture thread, and gives
the same ``av.Packet[Any]`` to one ``PacketTrack`` per viewer; aiortc's sender then only
packetises it (``Vp8Encoder.pack`` / ``H264Encoder.pack``: payload descriptor with its
own picture id per sender, or FU-A/STAP-A). Inter frames cannot be skipped, so a
viewer whose queue overflows drops to the next keyframe and asks for one; a keyframe
empties every queue of what came before it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.capture.encoder import Encoder, EncoderSettings
from agent.capture.grab import (
    FPS_IDLE,
    FPS_MAX,
    FPS_MIN,
    HEARTBEAT,
    KEYFRAME_MIN_INTERVAL,
    REFINE_FRAMES,
    TIME_BASE,
    Capture,
    Capturer,
)
from agent.capture.scroll import Planes, find_scroll, steps
from agent.session.adapt import Quality, Rekey, ScreenMode

log = logging.getLogger(__name__)

QUEUE_MAX = 8
"Encoded frames a viewer may lag behind (about 0.25 s at 30 fps) before it skips to a keyframe."
HOLD_QUEUE = 2
"Frames waiting for one viewer at which capture holds (``Capturer.hold``)."
STEP_PTS = 90
"The steps of a scroll are this far apart (1/90000 s; 1 ms), just before the real frame."


def _released() -> av.Packet[Any]:
    """What a pending ``recv`` returns when its track is stopped: an empty packet.

    aiortc's sender packetises it to nothing and sends nothing. Raising
    ``MediaStreamError`` instead would end the sender's RTP loop for good, and a later
    ``share`` on the same sender (view revoked, then granted again) would send nothing.
    """
    packet = av.Packet(b"")
    packet.pts = 0
    packet.time_base = TIME_BASE
    return packet


def _deliver(loop: asyncio.AbstractEventLoop | None, fn: Any, *args: Any) -> None:
    """Call ``fn(*args)`` on ``loop`` from the capture thread; no-op once the loop is gone."""
    if loop is None:
        return
    with contextlib.suppress(RuntimeError):  # loop closed while the thread finished a frame
        loop.call_soon_threadsafe(fn, *args)


class ScreenTrack(MediaStreamTrack):
    """A video track of one monitor's raw frames; aiortc encodes them per sender.

    Capture starts at the first ``recv()``. ``recv()`` returns the newest frame and
    drops older ones, so a slow encoder never builds up latency.
    """

    kind = "video"

    def __init__(
        self,
        *,
        monitor: int = 1,
        display: str | None = None,
        fps_max: float = FPS_MAX,
        fps_min: float = FPS_MIN,
        fps_idle: float = FPS_IDLE,
        heartbeat: float = HEARTBEAT,
        with_cursor: bool = True,
    ) -> None:
        super().__init__()
        self.capturer = Capturer(
            self._on_capture,
            monitor=monitor,
            display=display,
            fps_max=fps_max,
            fps_min=fps_min,
            fps_idle=fps_idle,
            heartbeat=heartbeat,
            with_cursor=with_cursor,
            on_error=self._on_error,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest: av.VideoFrame | None = None
        self._fresh = asyncio.Event()
        self.delivered = 0
        "Frames returned by ``recv``."
        self.dropped = 0
        "Frames replaced by a newer one before ``recv`` took them."

    def _on_capture(self, cap: Capture) -> None:
        _deliver(self._loop, self._put, cap.frame)

    def _on_error(self, exc: BaseException) -> None:
        _deliver(self._loop, self._fresh.set)

    def _put(self, frame: av.VideoFrame) -> None:
        if self._latest is not None:
            self.dropped += 1
        self._latest = frame
        self._fresh.set()

    async def recv(self) -> av.VideoFrame | av.Packet[Any]:
        """The newest captured frame (yuv420p, pts in 1/90000 s).

        Raises ``MediaStreamError`` once stopped; a call pending when ``stop()`` is
        called returns an empty packet instead (see ``_released``).
        """
        if self.readyState != "live" or self.capturer.error is not None:
            raise MediaStreamError
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.capturer.start()
        while self._latest is None:
            self._fresh.clear()
            await self._fresh.wait()
            if self.readyState != "live":
                return _released()
            if self.capturer.error is not None:
                raise MediaStreamError
        frame, self._latest = self._latest, None
        self.delivered += 1
        return frame

    def request_keyframe(self) -> None:
        """Capture now and mark the frame as a keyframe.

        aiortc's VP8 encoder honours the mark; its H.264 encoder resets it and only
        obeys the viewer's PLI, which aiortc handles by itself for raw-frame tracks.
        """
        self.capturer.request_keyframe()

    def stop(self) -> None:
        """End the track and its capture thread (returns at once)."""
        self.capturer.stop()
        self._latest = None
        super().stop()
        self._fresh.set()


@dataclass(frozen=True, slots=True)
class ScreenStats:
    """Counters of an ``EncodedScreen`` (a snapshot)."""

    grabs: int
    "Screens grabbed."
    encodes: int
    "Frames encoded (each at most once, whatever the number of viewers)."
    keyframes: int
    "Keyframes among them."
    bytes_out: int
    "Encoded bytes."
    viewers: int
    "Live ``PacketTrack`` s."
    fps: float
    "Current capture rate target."
    last_encode_s: float
    "Seconds the last encode took."


class EncodedScreen:
    """Capture and encode a monitor once; give each viewer its own ``PacketTrack``.

    Capture runs while at least one track is receiving and stops when the last one
    stops. Use from the event loop's thread.
    """

    def __init__(
        self,
        *,
        monitor: int = 1,
        display: str | None = None,
        settings: EncoderSettings | None = None,
        fps_max: float = FPS_MAX,
        fps_min: float = FPS_MIN,
        fps_idle: float = FPS_IDLE,
        heartbeat: float = HEARTBEAT,
        refine_frames: int = REFINE_FRAMES,
        with_cursor: bool = True,
        queue_max: int = QUEUE_MAX,
        adaptive: bool = False,
    ) -> None:
        self.adaptive = adaptive
        """Whether ``limit`` will be called with each viewer's link as it is learnt: the
        first keyframe is then made for ``adapt.STARTUP_BPS``."""
        self.encoder = Encoder(settings)
        self.capturer = Capturer(
            self._on_capture,
            monitor=monitor,
            display=display,
            fps_max=fps_max,
            fps_min=fps_min,
            fps_idle=fps_idle,
            heartbeat=heartbeat,
            refine_frames=refine_frames,
            with_cursor=with_cursor,
            on_error=self._on_error,
        )
        self.capturer.hold = self._backed_up
        self.queue_max = queue_max
        self.mode = ScreenMode.SHARP
        "How a slow link is spent (``set_mode``)."
        self._limit_bps: float | None = None
        self.capture_bits = 0.0
        "Bits a recent frame cost (its scroll steps and keyframes left out): sets the frame rate."
        self.scroll_steps = 0
        "Frames made to lead up to a scroll the encoder could not follow (see ``scroll``)."
        self._prev_planes: Planes | None = None  # the last frame encoded, while limited
        self._prev_pts = -1
        self._size = (1920, 1080)  # of the last frame captured
        self._rekey = Rekey()
        self._started_at = -1e9  # when capture last started (for adapt.STARTUP_S)
        self._starting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tracks: set[PacketTrack] = set()
        self._receiving = 0
        self._closed = False

    @property
    def codec(self) -> str:
        """``vp8`` or ``h264``: what the viewers' transceivers must negotiate."""
        return self.encoder.settings.codec

    def track(self) -> PacketTrack:
        """A new track for one viewer (give it to that viewer's ``RTCRtpSender``)."""
        if self._closed:
            raise RuntimeError("this EncodedScreen is closed")
        self._loop = asyncio.get_running_loop()
        t = PacketTrack(self)
        self._tracks.add(t)
        return t

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe for every viewer (rate-limited, see grab)."""
        self.capturer.request_keyframe()

    def poke(self) -> None:
        """Grab now rather than at the next tick (after injecting input)."""
        self.capturer.poke()

    def limit(self, bps: float | None) -> None:
        """Fit the frames to ``bps`` (the slowest limited viewer's link); None lifts it.

        Frame rate first (``adapt.frame_rate``, from what recent inter frames cost),
        keyframes spaced so that each fits (``adapt.keyframe_interval``), and the
        encoder's bitrate and quantiser ceiling from the next keyframe on
        (``adapt.screen_quality``; for ``STARTUP_S`` a link not yet found full counts
        as ``STARTUP_BPS``); a better picture that lasts gets its keyframe now
        (``adapt.Rekey``).
        """
        from agent.session.adapt import (
            POLICIES,
            STARTUP_BPS,
            STARTUP_S,
            frame_rate,
            keyframe_interval,
        )

        self._limit_bps = bps
        enc = self.encoder
        now = time.monotonic()
        starting = bps is None and now - self._started_at < STARTUP_S
        wanted = self._quality(STARTUP_BPS if starting else bps)
        enc.retune(wanted)
        current = enc.quality
        started = self._starting and not starting and bps is None
        self._starting = starting
        if current is not None and (started or self._rekey.update(current, wanted, now)):
            self.capturer.request_keyframe()  # the link is not slow: the full picture now
        if bps is None:
            self.capturer.link_fps = None
            self.capturer.key_interval = KEYFRAME_MIN_INTERVAL
            return
        floor = POLICIES[self.mode].fps_floor
        fps = frame_rate(bps, self.capture_bits, self.capturer.fps_max, floor)
        self.capturer.link_fps = fps if fps < self.capturer.fps_max else None
        self.capturer.key_interval = keyframe_interval(bps, enc.key_bits)

    def _quality(self, bps: float | None) -> Quality:
        from agent.session.adapt import screen_quality

        enc = self.encoder
        width, height = self._size
        full = enc.full_bitrate(width, height)
        if bps is None and self.mode is ScreenMode.SHARP:
            return Quality(full, enc.settings.qmax)  # as configured
        return screen_quality(
            bps,
            self.mode,
            full_bitrate=full,
            key_bytes=enc.key_bits // 8,
            key_qmax=enc.key_qmax,
            pixels=width * height,
        )

    def set_mode(self, mode: ScreenMode) -> None:
        """Spend a slow link on text (``SHARP``) or on motion (``SMOOTH``); see adapt."""
        if mode is self.mode:
            return
        self.mode = mode
        self.limit(self._limit_bps)
        self.capturer.request_keyframe()  # the new ceiling shows at once

    def stats(self) -> ScreenStats:
        """A snapshot of the counters."""
        c = self.capturer.stats()
        return ScreenStats(
            grabs=c.grabs,
            encodes=self.encoder.encodes,
            keyframes=self.encoder.keyframes,
            bytes_out=self.encoder.bytes_out,
            viewers=len(self._tracks),
            fps=c.fps,
            last_encode_s=self.encoder.last_encode_s,
        )

    def close(self) -> None:
        """End every track and the capture (returns at once; ``aclose`` also waits)."""
        self._closed = True
        for t in list(self._tracks):
            t.stop()
        self.capturer.stop()

    async def aclose(self) -> None:
        """``close()`` and wait (bounded, off the loop) for the capture thread to end."""
        self.close()
        await asyncio.to_thread(self.capturer.join)

    # -- called by PacketTrack (loop thread)

    def _started(self, track: PacketTrack) -> None:
        self._receiving += 1
        if self._receiving == 1 and self.adaptive:
            self._started_at = time.monotonic()
            self.limit(self._limit_bps)  # the first keyframe at the startup settings
        self.capturer.start()  # no-op while running
        self.capturer.request_keyframe()

    def _stopped(self, track: PacketTrack, was_receiving: bool) -> None:
        self._tracks.discard(track)
        if was_receiving:
            self._receiving -= 1
        if self._receiving == 0:
            self.capturer.stop()

    # -- capture thread

    def _backed_up(self) -> bool:
        """A viewer has frames waiting beyond the one its sender is on (a slow link's
        pacer is still on a keyframe): the next grab waits rather than pile up."""
        return any(len(t._queue) >= HOLD_QUEUE for t in list(self._tracks))

    def _on_capture(self, cap: Capture) -> None:
        if self._receiving == 0:
            return
        frame = cap.frame
        self._size = (frame.width, frame.height)
        packets: list[av.Packet[Any]] = []
        if self._limit_bps is not None or self._starting:
            planes = planes_of(frame)
            if not cap.keyframe:
                packets = self._scroll_steps(planes, frame.pts)
            self._prev_planes = planes
        else:
            self._prev_planes = None
        own = self.encoder.encode(frame, cap.keyframe)
        packets += own
        if frame.pts is not None:
            self._prev_pts = frame.pts
        if not cap.keyframe and not any(p.is_keyframe for p in own):
            # the frame's own cost, not its steps': a scroll costs about the same bits a
            # second at any frame rate (more steps a capture at a lower one), so lowering
            # the rate for them only makes each capture's scroll longer
            bits = 8 * sum(p.size for p in own)
            old = self.capture_bits
            self.capture_bits = bits if old == 0 else 0.8 * old + 0.2 * bits
        if packets:
            _deliver(self._loop, self._fanout, packets)

    def _scroll_steps(self, planes: Planes, pts: int | None) -> list[av.Packet[Any]]:
        """The frames leading up to a scroll too far for the encoder to follow (see
        ``scroll``), encoded: one step each ``STEP_PTS`` before the real frame."""
        prev = self._prev_planes
        if prev is None or pts is None or prev[0].shape != planes[0].shape:
            return []
        moved = find_scroll(prev[0], planes[0])
        if moved is None:
            return []
        between = steps(prev, planes, moved)
        if not between or pts - len(between) * STEP_PTS <= self._prev_pts:
            return []
        self.scroll_steps += len(between)
        packets: list[av.Packet[Any]] = []
        for i, mid in enumerate(between):
            packets += self.encoder.encode(frame_of(mid, pts - (len(between) - i) * STEP_PTS))
        return packets

    def _on_error(self, exc: BaseException) -> None:
        _deliver(self._loop, self.close)

    def _fanout(self, packets: list[av.Packet[Any]]) -> None:
        for t in list(self._tracks):
            t._offer(packets)


def planes_of(frame: av.VideoFrame) -> Planes:
    """A yuv420p frame's planes as numpy arrays (copies, without line padding)."""
    out = []
    for p in frame.planes:
        rows = np.frombuffer(memoryview(p), dtype=np.uint8).reshape(p.height, p.line_size)
        out.append(np.array(rows[:, : p.width]))
    return (out[0], out[1], out[2])


def frame_of(planes: Planes, pts: int | None = None) -> av.VideoFrame:
    """A yuv420p frame of planes (even width and height), at ``pts`` in 1/90000 s."""
    height, width = planes[0].shape
    flat = np.concatenate([x.ravel() for x in planes]).reshape(height * 3 // 2, width)
    frame = av.VideoFrame.from_ndarray(flat, format="yuv420p")
    if pts is not None:
        frame.pts, frame.time_base = pts, TIME_BASE
    return frame


class PacketTrack(MediaStreamTrack):
    """One viewer's track of pre-encoded packets from an ``EncodedScreen``.

    Give it to an ``RTCRtpSender`` negotiated for the screen's codec (see
    ``rtc.add_screen_transceiver``) and route that sender's PLI/FIR here with
    ``rtc.share``; aiortc does not act on them for packet tracks.
    """

    kind = "video"

    def __init__(self, screen: EncodedScreen) -> None:
        super().__init__()
        self._screen = screen
        self._queue: collections.deque[av.Packet[Any]] = collections.deque()
        self._ready = asyncio.Event()
        self._receiving = False
        self._need_key = True
        self.delivered = 0
        "Packets returned by ``recv``."
        self.dropped = 0
        "Packets dropped: queue overflow, or inter frames while waiting for a keyframe."

    def _offer(self, packets: list[av.Packet[Any]]) -> None:
        """Queue one capture's packets (a frame, or the steps of a scroll and its
        frame) whole: a viewer with ``queue_max`` packets still waiting when the next
        capture comes skips to the next keyframe (capture holds for it first, up to
        ``grab.HOLD_MAX_S``, see ``_backed_up``)."""
        if not self._receiving:
            return  # not sending yet: the first recv() asks for a keyframe
        behind = len(self._queue) >= self._screen.queue_max
        for packet in packets:
            if packet.is_keyframe:
                self.dropped += len(self._queue)
                self._queue.clear()
                self._need_key = False
                behind = False
            elif self._need_key:
                self.dropped += 1
                continue
            elif behind:
                self.dropped += len(self._queue) + 1
                self._queue.clear()
                self._need_key = True
                self._screen.request_keyframe()
                continue
            self._queue.append(packet)
            self._ready.set()

    async def recv(self) -> av.Packet[Any]:
        """The next encoded frame for this viewer, starting with a keyframe.

        Raises ``MediaStreamError`` once stopped; a call pending when ``stop()`` is
        called returns an empty packet instead (see ``_released``).
        """
        if self.readyState != "live":
            raise MediaStreamError
        if not self._receiving:
            self._receiving = True
            self._screen._started(self)
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
            if self.readyState != "live":
                return _released()
        self.delivered += 1
        return self._queue.popleft()

    def request_keyframe(self) -> None:
        """Ask for a keyframe (for every viewer: there is one encoder)."""
        self._screen.request_keyframe()

    def stop(self) -> None:
        """End this viewer's track; capture stops with the last one."""
        if self.readyState == "live":
            was = self._receiving
            self._receiving = False
            self._queue.clear()
            super().stop()
            self._screen._stopped(self, was)
        self._ready.set()
