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
import logging
import time
from collections.abc import Mapping
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
    HOLD_POLL_S,
    KEYFRAME_MIN_INTERVAL,
    REFINE_FRAMES,
    TIME_BASE,
    Capture,
    Capturer,
    key_spacing,
)
from agent.capture.scroll import Planes, find_scroll, steps
from agent.session.adapt import Quality, Rekey, ScreenMode

log = logging.getLogger(__name__)

QUEUE_MAX = 8
"Encoded frames a viewer may lag behind (about 0.25 s at 30 fps) before it skips to a keyframe."
HOLD_QUEUE = 2
"Frames waiting for one viewer at which capture holds (``Capturer.hold``)."
_INTRA = av.video.frame.PictureType.I
_ANY = av.video.frame.PictureType.NONE
REFINED_BYTES = 3000
"""An unchanged screen re-sent for more than this is still gaining detail, and is sent
again (``Capturer.refine_more``, ``REFINE_LULL``); a refined 1080p page costs 1-2 kB."""
REFINE_MAX = 100
"""Most times a screen that stopped changing is sent again while it gains detail: at a
constant 1 Mbit/s libvpx refreshes a 1080p page a strip at a time, and takes it from
19.5 to 42.7 dB in about 100 frames."""
REFINE_LULL = 20
"""Refinements without detail that end a still screen's refinement: at a constant
bitrate libvpx pauses for 12-14 frames of 0-2 kB after its first pass over the page."""
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


def _deliver(loop: asyncio.AbstractEventLoop | None, fn: Any, *args: Any) -> bool:
    """Call ``fn(*args)`` on ``loop`` from the capture thread; no-op once the loop is gone.

    Returns whether the call was scheduled."""
    if loop is None:
        return False
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # loop closed while the thread finished a frame
        return False
    return True


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
    "Frames encoded (each at most once per lane, whatever the number of viewers)."
    keyframes: int
    "Keyframes among them."
    bytes_out: int
    "Encoded bytes."
    viewers: int
    "Live ``PacketTrack`` s."
    fps: float
    "Current capture rate target."
    last_encode_s: float
    "Seconds the last encode of the shared lane took."
    lanes: int = 1
    "Encodes running: 1, or 2 while a viewer on a slow link has its own (``fit``)."


class _Lane:
    """One encode of the captured frames, for the viewers whose links are alike.

    The shared lane (the first) drives the capture: its frame rate is the capture's,
    its keyframes the capturer's. A slow lane encodes the captures that its own frame
    rate and keyframe spacing allow, and asks the capturer for a frame when it owes
    its viewers one (a change it skipped, a refinement, a keyframe).
    """

    def __init__(self, settings: EncoderSettings) -> None:
        self.encoder = Encoder(settings)
        self.bps: float | None = None
        "The link the frames are fitted to (None: not limited)."
        self.starting = False
        self.capture_bits = 0.0
        "Bits a recent frame cost (its scroll steps and keyframes left out): sets the frame rate."
        self.fps: float | None = None
        "The frame-rate cap the link sets (None: none)."
        self.key_interval = KEYFRAME_MIN_INTERVAL
        self.rekey = Rekey()
        self.prev_planes: Planes | None = None  # the last frame encoded, while limited
        self.prev_pts = -1
        # the slow lane's own pacing (the shared lane's is the capturer's)
        self.want_key = False
        self.last_key = -1e9
        self.keys = 0
        self.last_at = -1e9
        self.dirty = False  # a change was captured that this lane has not encoded
        self.owed = 0  # refinements still owed after the last change
        self._still = 0  # frames of an unchanged screen since it last changed
        self._gained = False  # one of them carried detail
        self._quiet = 0  # of them since the last one that did
        # captures encoded (capture thread) and handed to the viewers (loop thread): the
        # difference is on its way to the viewers' queues, each counter has one writer
        self.offered = 0
        self.fanned = 0

    def gaining(self, size: int, *, still: bool) -> bool:
        """Whether a still screen is worth sending again, after a frame of ``size`` bytes
        (``still``: the screen had not changed): one of its last ``REFINE_LULL`` frames
        carried more than ``REFINED_BYTES``, and it has been sent fewer than
        ``REFINE_MAX`` times since it changed."""
        if not still:
            self._still, self._gained, self._quiet = 0, False, 0
            return False
        self._still += 1
        if size > REFINED_BYTES:
            self._gained, self._quiet = True, 0
        else:
            self._quiet += 1
        return self._gained and self._quiet < REFINE_LULL and self._still < REFINE_MAX

    @property
    def in_transit(self) -> bool:
        """A capture's packets are encoded but not yet in its viewers' queues."""
        return self.offered != self.fanned

    @property
    def limited(self) -> bool:
        return self.bps is not None or self.starting

    @property
    def key_spacing(self) -> float:
        """Seconds from its last keyframe to the next (``grab.key_spacing``)."""
        return key_spacing(self.key_interval, self.keys)


class EncodedScreen:
    """Capture a monitor once and encode it once per lane; each viewer its own ``PacketTrack``.

    Every viewer shares one encode unless ``fit`` finds one on a link much slower than
    the fastest (``adapt.split_lanes``): that one gets a second encode at its own
    rate, so the others keep theirs. Capture runs while at least one track is
    receiving and stops when the last one stops. Use from the event loop's thread.
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
        """Whether ``limit`` or ``fit`` will be called with each viewer's link as it is
        learnt: the first keyframe is then made for ``adapt.STARTUP_BPS``."""
        self._settings = settings or EncoderSettings()
        self._lanes: list[_Lane] = [_Lane(self._settings)]
        "The shared lane, and the slow lane while there is one (replaced, never changed in place)."
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
        self._default_bps: float | None = None  # ``limit``'s rate, for viewers ``fit`` did not name
        self._limits: dict[PacketTrack, float | None] = {}
        self._slow: frozenset[PacketTrack] = frozenset()
        self.scroll_steps = 0
        "Frames made to lead up to a scroll the encoder could not follow (see ``scroll``)."
        self._retired = (0, 0, 0)  # encodes, keyframes, bytes of slow lanes that ended
        self._size = (1920, 1080)  # of the last frame captured
        self._started_at = -1e9  # when capture last started (for adapt.STARTUP_S)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tracks: set[PacketTrack] = set()
        self._receiving = 0
        self._closed = False

    @property
    def encoder(self) -> Encoder:
        """The shared lane's encoder."""
        return self._lanes[0].encoder

    @property
    def capture_bits(self) -> float:
        """Bits a recent frame of the shared lane cost (steps and keyframes left out)."""
        return self._lanes[0].capture_bits

    @property
    def codec(self) -> str:
        """``vp8`` or ``h264``: what the viewers' transceivers must negotiate."""
        return self._settings.codec

    def track(self) -> PacketTrack:
        """A new track for one viewer (give it to that viewer's ``RTCRtpSender``)."""
        if self._closed:
            raise RuntimeError("this EncodedScreen is closed")
        self._loop = asyncio.get_running_loop()
        t = PacketTrack(self, self._lanes[0])
        self._tracks.add(t)
        return t

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe for every viewer (rate-limited, see grab)."""
        for lane in self._lanes:
            self._key(lane)

    def poke(self) -> None:
        """Grab now rather than at the next tick (after injecting input)."""
        self.capturer.poke()

    def limit(self, bps: float | None) -> None:
        """Fit the frames to ``bps`` for every viewer, now and later; None lifts it.

        Frame rate first (``adapt.frame_rate``, from what recent inter frames cost),
        keyframes spaced so that each fits (``adapt.keyframe_interval``), and the
        encoder's bitrate and quantiser ceiling from the next keyframe on
        (``adapt.screen_quality``; for ``STARTUP_S`` a link not yet found full counts
        as ``STARTUP_BPS``); a better picture that lasts gets its keyframe now
        (``adapt.Rekey``).
        """
        self._default_bps = bps
        self._limits = {}
        self._refit()

    def fit(self, limits: Mapping[PacketTrack, float | None]) -> None:
        """Fit the frames to each viewer's link (bits/s; None or absent: not limited).

        Viewers on alike links share one encode fitted to the slowest of them, as
        ``limit`` does; one much slower than the fastest gets its own
        (``adapt.split_lanes``), and moves there at its next keyframe.
        """
        self._default_bps = None
        self._limits = dict(limits)
        self._refit()

    def _refit(self) -> None:
        from agent.session.adapt import split_lanes

        lanes = self._lanes
        full = lanes[0].encoder.full_bitrate(*self._size)
        viewers = {t: self._limits.get(t, self._default_bps) for t in self._tracks}
        split = split_lanes(viewers, full, self._slow)
        self._slow = split.slow
        if split.slow and len(lanes) == 1:
            slow = _Lane(self._settings)
            slow.last_at = time.monotonic()  # its first frame is its keyframe
            lanes = self._lanes = [lanes[0], slow]
        elif not split.slow and len(lanes) == 2:
            gone = lanes[1].encoder
            e, k, b = self._retired
            self._retired = (e + gone.encodes, k + gone.keyframes, b + gone.bytes_out)
            lanes = self._lanes = [lanes[0]]
        self._fit_lane(lanes[0], split.fast_bps, shared=True)
        if len(lanes) == 2:
            self._fit_lane(lanes[1], split.slow_bps, shared=False)
        for t in self._tracks:  # after the fit: a lane's first keyframe is made for its link
            lane = lanes[1] if t in split.slow else lanes[0]
            if t._lane is not lane:
                t._lane = lane
                t._need_key = True  # the new lane's stream starts at its keyframe
                self._key(lane)

    def _fit_lane(self, lane: _Lane, bps: float | None, *, shared: bool) -> None:
        from agent.session.adapt import (
            POLICIES,
            STARTUP_BPS,
            STARTUP_S,
            frame_rate,
            key_bytes_at,
            keyframe_interval,
        )

        lane.bps = bps
        enc = lane.encoder
        now = time.monotonic()
        starting = bps is None and now - self._started_at < STARTUP_S
        wanted = self._quality(lane, STARTUP_BPS if starting else bps)
        enc.retune(wanted)
        current = enc.quality
        started = lane.starting and not starting and bps is None
        lane.starting = starting
        key_s = 0.0
        if bps:
            width, height = self._size
            key = key_bytes_at(wanted.qmax, enc.key_bits // 8, enc.key_qmax, width * height)
            key_s = key * 8 / bps
        if current is not None and (started or lane.rekey.update(current, wanted, now, key_s)):
            self._key(lane)  # the link is not slow: the full picture now
        if bps is None:
            lane.fps, lane.key_interval = None, KEYFRAME_MIN_INTERVAL
        else:
            floor = POLICIES[self.mode].fps_floor
            fps = frame_rate(bps, lane.capture_bits, self.capturer.fps_max, floor)
            lane.fps = fps if fps < self.capturer.fps_max else None
            lane.key_interval = keyframe_interval(bps, enc.key_bits)
        if shared:
            self.capturer.link_fps = lane.fps
            self.capturer.key_interval = lane.key_interval

    def _key(self, lane: _Lane) -> None:
        """A keyframe for the viewers of ``lane`` (rate-limited by its spacing)."""
        if lane is self._lanes[0]:
            self.capturer.request_keyframe()
        elif lane in self._lanes:
            lane.want_key = True
            self.capturer.request_frame(at=lane.last_key + lane.key_spacing)

    def _quality(self, lane: _Lane, bps: float | None) -> Quality:
        from agent.session.adapt import screen_quality

        enc = lane.encoder
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
        self._refit()
        self.request_keyframe()  # the new ceiling shows at once

    def stats(self) -> ScreenStats:
        """A snapshot of the counters."""
        c = self.capturer.stats()
        lanes = self._lanes
        encodes, keyframes, bytes_out = self._retired
        for lane in lanes:
            encodes += lane.encoder.encodes
            keyframes += lane.encoder.keyframes
            bytes_out += lane.encoder.bytes_out
        return ScreenStats(
            grabs=c.grabs,
            encodes=encodes,
            keyframes=keyframes,
            bytes_out=bytes_out,
            viewers=len(self._tracks),
            fps=c.fps,
            last_encode_s=lanes[0].encoder.last_encode_s,
            lanes=len(lanes),
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
            self._refit()  # the first keyframe at the startup settings
        self.capturer.start()  # no-op while running
        self._key(track._lane)

    def _stopped(self, track: PacketTrack, was_receiving: bool) -> None:
        self._tracks.discard(track)
        self._limits.pop(track, None)
        if was_receiving:
            self._receiving -= 1
        if self._receiving == 0:
            self.capturer.stop()
        if track in self._slow:
            self._refit()  # its lane may end with it

    def _key_for(self, track: PacketTrack) -> None:
        self._key(track._lane)

    # -- capture thread

    def _viewers_of(self, lane: _Lane) -> list[PacketTrack]:
        return [t for t in list(self._tracks) if t._lane is lane]

    def _backed_up(self) -> bool:
        """A viewer of the shared lane has frames waiting beyond the one its sender is
        on (a slow link's pacer is still on a keyframe): the next grab waits rather than
        pile up. (A slow lane's viewer makes only its own lane wait.)"""
        return self._waiting(self._lanes[0])

    def _waiting(self, lane: _Lane) -> bool:
        """The viewers of ``lane`` are still sending earlier frames, counting a capture
        on its way to their queues: the queues fill on the loop, after this thread
        has gone on (a 4 Mbit/s scroll grabbed again 0.13 s after a capture of 13
        scroll steps, found the queues empty, and its frame found them full: the viewer
        dropped them for a keyframe, 490 kB, and the scroll fell to 5-8 fps)."""
        return lane.in_transit or any(len(t._queue) >= HOLD_QUEUE for t in self._viewers_of(lane))

    def _on_capture(self, cap: Capture) -> None:
        if self._receiving == 0:
            return
        frame = cap.frame
        self._size = (frame.width, frame.height)
        planes: Planes | None = None
        for i, lane in enumerate(self._lanes):
            if i == 0:
                if cap.asked:
                    continue  # a frame only a slow lane asked for
                key = cap.keyframe
            else:
                due = self._slow_due(lane, cap)
                if due is None:
                    continue
                key = due
            if lane.limited and planes is None:
                planes = planes_of(frame)
            packets = self._encode(lane, frame, key, planes if lane.limited else None)
            if packets and lane.gaining(packets[-1].size, still=not (key or cap.changed)):
                if i == 0:
                    self.capturer.refine_more()
                else:
                    lane.owed = max(lane.owed, 1)
            if packets:
                lane.offered += 1  # before the loop can run the fanout
                if not _deliver(self._loop, self._fanout, lane, packets):
                    lane.offered -= 1

    def _slow_due(self, lane: _Lane, cap: Capture) -> bool | None:
        """Whether the slow lane encodes this capture: None (not now), or as a keyframe
        (True) or not (False); when it owes its viewers a frame it asks for one."""
        now = cap.grabbed_at
        lane.dirty = lane.dirty or cap.changed
        gap = 1.0 / lane.fps if lane.fps else 0.0
        if lane.want_key and now - lane.last_key >= lane.key_spacing:
            lane.want_key = False
            lane.last_key = lane.last_at = now
            lane.keys += 1
            lane.dirty, lane.owed = False, self.capturer.refine_frames
            return True
        if self._waiting(lane):
            when = now + HOLD_POLL_S * 10  # its viewers are still sending: it waits
        elif now - lane.last_at < gap:
            when = lane.last_at + gap
        elif lane.dirty or lane.owed > 0 or now - lane.last_at >= self.capturer.heartbeat:
            if lane.dirty:
                lane.dirty, lane.owed = False, self.capturer.refine_frames
            elif lane.owed > 0:
                lane.owed -= 1
            lane.last_at = now
            return False
        else:
            return None
        if lane.want_key:
            when = max(when, lane.last_key + lane.key_spacing)
        if lane.want_key or lane.dirty or lane.owed > 0:
            self.capturer.request_frame(at=when)
        return None

    def _encode(
        self, lane: _Lane, frame: av.VideoFrame, key: bool, planes: Planes | None
    ) -> list[av.Packet[Any]]:
        packets: list[av.Packet[Any]] = []
        if planes is not None:
            if not key:
                packets = self._scroll_steps(lane, planes, frame.pts)
            lane.prev_planes = planes
        else:
            lane.prev_planes = None
        # the capturer marks its keyframes on the frame itself; each lane decides its own
        frame.pict_type = _INTRA if key else _ANY
        own = lane.encoder.encode(frame, key)
        packets += own
        if frame.pts is not None:
            lane.prev_pts = frame.pts
        if not key and not any(p.is_keyframe for p in own):
            # the frame's own cost, not its steps': a scroll costs about the same bits a
            # second at any frame rate (more steps a capture at a lower one), so lowering
            # the rate for them only makes each capture's scroll longer
            bits = 8 * sum(p.size for p in own)
            old = lane.capture_bits
            lane.capture_bits = bits if old == 0 else 0.8 * old + 0.2 * bits
        return packets

    def _scroll_steps(self, lane: _Lane, planes: Planes, pts: int | None) -> list[av.Packet[Any]]:
        """The frames leading up to a scroll too far for the encoder to follow (see
        ``scroll``), encoded: one step each ``STEP_PTS`` before the real frame."""
        prev = lane.prev_planes
        if prev is None or pts is None or prev[0].shape != planes[0].shape:
            return []
        moved = find_scroll(prev[0], planes[0])
        if moved is None:
            return []
        between = steps(prev, planes, moved)
        if not between or pts - len(between) * STEP_PTS <= lane.prev_pts:
            return []
        self.scroll_steps += len(between)
        packets: list[av.Packet[Any]] = []
        for i, mid in enumerate(between):
            at = pts - (len(between) - i) * STEP_PTS
            packets += lane.encoder.encode(frame_of(mid, at), elapsed=STEP_PTS)
        return packets

    def _on_error(self, exc: BaseException) -> None:
        _deliver(self._loop, self.close)

    def _fanout(self, lane: _Lane, packets: list[av.Packet[Any]]) -> None:
        lane.fanned += 1
        for t in self._viewers_of(lane):
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

    def __init__(self, screen: EncodedScreen, lane: _Lane) -> None:
        super().__init__()
        self._screen = screen
        self._queue: collections.deque[av.Packet[Any]] = collections.deque()
        self._ready = asyncio.Event()
        self._receiving = False
        self._need_key = True
        self._lane = lane  # which of the screen's encodes it gets (``EncodedScreen.fit``)
        self.delivered = 0
        "Packets returned by ``recv``."
        self.delivered_bytes = 0
        "Bytes of the packets returned by ``recv``."
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
                self._screen._key_for(self)
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
        packet = self._queue.popleft()
        self.delivered += 1
        self.delivered_bytes += packet.size
        return packet

    def request_keyframe(self) -> None:
        """Ask for a keyframe (for every viewer of this track's lane: one encode each)."""
        self._screen._key_for(self)

    def stop(self) -> None:
        """End this viewer's track; capture stops with the last one."""
        if self.readyState == "live":
            was = self._receiving
            self._receiving = False
            self._queue.clear()
            super().stop()
            self._screen._stopped(self, was)
        self._ready.set()
