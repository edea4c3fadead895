"""Monitor listing and the capture thread: mss grabs, change detection, pacing.

mss objects are bound to the thread that made them, so the ``Capturer`` makes its
own inside its thread and never shares it. Each tick it grabs the monitor (XShm on
X11: 2-3 ms at 1080p), compares the BGRA bytes with the previous grab (a
``memcmp``: 0.6 ms, where crc32 takes 1.8 ms and blake2b 8.9 ms on 8 MB) and only
when something changed — or a keyframe was asked for, or the heartbeat is due —
wraps the bytes without copying (``VideoFrame.from_numpy_buffer``: 0.01 ms, where
``from_ndarray`` copies in 4 ms) and converts them to yuv420p with swscale on two
threads. Measured at 1080p on the 2-core VM, convert + VP8 encode of a text screen:
10.9 ms this way, 11.7 ms handing BGRA to the encoder (PyAV converts on one
thread), 12.0 ms with one swscale thread. The frame then goes to the sink, still in
this thread, where ``EncodedScreen`` encodes it or ``ScreenTrack`` hands it to the
event loop.

The grab rate adapts within ``[FPS_MIN, FPS_MAX]``: the interval between grabs is
the per-frame work (grab + convert + sink, smoothed, keyframes left out) divided by
``BUSY_SHARE``, so a slow encoder lowers the rate instead of queueing frames; after
``IDLE_AFTER`` seconds without a change the thread polls at ``FPS_IDLE`` until the
next change. ``poke()`` wakes it at once (call it after injecting input, so the
CSR's click shows without waiting for the idle poll).
"""

from __future__ import annotations

import fractions
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import av
import numpy as np

log = logging.getLogger(__name__)

FPS_MAX = 30.0
"Highest capture rate (frames per second) while the screen changes."
FPS_MIN = 5.0
"Lowest capture rate when the per-frame work is too slow for more."
FPS_IDLE = 10.0
"Polling rate once nothing has changed for ``IDLE_AFTER`` seconds."
IDLE_AFTER = 1.0
"Seconds without a change before polling drops to ``FPS_IDLE``."
BUSY_SHARE = 0.7
"At most this share of one core goes to grab + convert + encode; beyond it the rate drops."
HEARTBEAT = 1.0
"Seconds after which an unchanged screen is sent again (late viewers, lost last packets)."
HOLD_MAX_S = 3.0
"Longest a viewer still sending earlier frames holds the capture (``Capturer.hold``)."
HOLD_POLL_S = 0.005
"How often a held capture looks again."
REFINE_FRAMES = 8
"""Times a screen that stopped changing is sent again, at the current frame rate: the
encoder's rate control spends each on the picture's detail (a 2 Mbit/s link takes a
1080p page of text from 28 to 35 dB in 3 s), then the screen is left alone, unless
the sink asks for more (``Capturer.refine_more``)."""
KEYFRAME_MIN_INTERVAL = 0.5
"""Seconds between two forced keyframes: repeated requests (PLI storms) are coalesced.
The second keyframe after a start may always follow the first this soon: a viewer
that lost the first has nothing on screen, and the slow link's spacing
(``Capturer.key_interval``, up to 8 s) made it wait that long for a picture."""
VIDEO_CLOCK = 90_000
"RTP video clock rate (Hz); frame pts count in 1/VIDEO_CLOCK seconds."
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
CONVERT_THREADS = 2
"swscale threads for BGRA → yuv420p (1080p, idle machine: 1.9 ms with 2, 3.6 ms with 1)."


class MonitorInfo(TypedDict):
    """One monitor as ``monitors()`` lists it (pixels, virtual-desktop coordinates)."""

    index: int
    x: int
    y: int
    width: int
    height: int
    primary: bool


def _mss(display: str | None = None, with_cursor: bool = False) -> Any:
    import mss

    kwargs: dict[str, Any] = {}
    if sys.platform.startswith("linux"):  # X11-only options; mss warns about them elsewhere
        kwargs["with_cursor"] = with_cursor
        if display is not None:
            kwargs["display"] = display
    factory = getattr(mss, "MSS", None)  # mss >= 10.2; mss.mss() before
    if factory is None:
        factory = mss.mss
    return factory(**kwargs)


def monitors(display: str | None = None) -> list[MonitorInfo]:
    """List the monitors; ``index`` is what ``Capturer(monitor=...)`` takes (1-based).

    When the platform marks no monitor as primary (Xvfb, X without RandR), the first
    one is reported as primary. Blocking (opens a display connection: 5-40 ms); from
    the event loop, call it with ``asyncio.to_thread``. ``display`` is X11 only.
    """
    with _mss(display) as sct:
        mons = sct.monitors[1:]
    out: list[MonitorInfo] = [
        MonitorInfo(
            index=i,
            x=int(m["left"]),
            y=int(m["top"]),
            width=int(m["width"]),
            height=int(m["height"]),
            primary=bool(m.get("is_primary", False)),
        )
        for i, m in enumerate(mons, start=1)
    ]
    if out and not any(m["primary"] for m in out):
        out[0]["primary"] = True
    return out


@dataclass(frozen=True, slots=True)
class Capture:
    """One frame handed to a sink, in the capture thread."""

    frame: av.VideoFrame
    "yuv420p, ``pts`` in ``TIME_BASE`` units since the capturer started; pict_type I if keyframe."
    changed: bool
    "The image differs from the previous grab (False for heartbeats and keyframe repeats)."
    keyframe: bool
    "A keyframe was requested for this frame."
    grabbed_at: float
    "``time.monotonic()`` just before the grab."
    grab_s: float
    "Seconds spent grabbing and comparing."
    convert_s: float
    "Seconds spent converting BGRA to yuv420p."
    asked: bool = False
    """Sent only because ``request_frame`` asked for it: unchanged, no keyframe, no
    refinement or heartbeat due (a sink that did not ask may leave it)."""


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Counters of a ``Capturer`` (read from any thread; a snapshot)."""

    grabs: int
    "Screens grabbed."
    frames: int
    "Frames handed to the sink (changed + heartbeats + keyframe repeats)."
    changed: int
    "Frames handed on because the screen changed."
    fps: float
    "Current grab rate target (frames per second)."
    work_s: float
    "Smoothed seconds of work per emitted frame (grab + convert + sink), keyframes excluded."


Sink = Callable[[Capture], None]


def key_spacing(key_interval: float, keys: int) -> float:
    """Seconds from the last keyframe to the next, after ``keys`` keyframes since the
    start: ``key_interval``, except that the second may follow the first at
    ``KEYFRAME_MIN_INTERVAL`` (see there)."""
    return KEYFRAME_MIN_INTERVAL if keys == 1 else key_interval


def bgra_to_yuv420p(raw: bytes | bytearray, width: int, height: int) -> av.VideoFrame:
    """Convert a BGRA screen grab to a yuv420p frame (cropped to even width and height)."""
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 4)
    if width % 2 or height % 2:
        arr = np.ascontiguousarray(arr[: height & ~1, : width & ~1])
    src = av.VideoFrame.from_numpy_buffer(arr, format="bgra")
    return src.reformat(format="yuv420p", threads=CONVERT_THREADS)


class Capturer:
    """Grabs one monitor in a dedicated thread and hands changed frames to ``sink``.

    ``sink`` runs in the capture thread and should do its heavy work there (encode)
    and hand results to the event loop with ``call_soon_threadsafe``. ``on_error`` is
    called (in the thread) if grabbing fails for good; the thread then ends.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        monitor: int = 1,
        display: str | None = None,
        fps_max: float = FPS_MAX,
        fps_min: float = FPS_MIN,
        fps_idle: float = FPS_IDLE,
        heartbeat: float = HEARTBEAT,
        refine_frames: int = REFINE_FRAMES,
        with_cursor: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not 0 < fps_min <= fps_max:
            raise ValueError(f"need 0 < fps_min <= fps_max, got {fps_min}, {fps_max}")
        self.monitor = monitor
        self.display = display
        self.fps_max = fps_max
        self.fps_min = fps_min
        self.fps_idle = min(max(fps_idle, fps_min), fps_max)
        self.heartbeat = heartbeat
        self.refine_frames = refine_frames
        self.with_cursor = with_cursor
        self._sink = sink
        self._on_error = on_error
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._want_key = False
        self._want_frame_at: float | None = None
        self._refine_more = False
        self._grabs = 0
        self._frames = 0
        self._changed = 0
        self._interval = 1.0 / fps_max
        self.link_fps: float | None = None
        "A frame-rate cap the viewers' links set (may be below ``fps_min``); None: none."
        self.hold: Callable[[], bool] | None = None
        """While it returns True (a viewer is still sending the frames before), nothing is
        grabbed: a change waits for the next grab, not lost, and no viewer falls so far
        behind that it needs a keyframe. At most ``HOLD_MAX_S`` on end."""
        self.key_interval = KEYFRAME_MIN_INTERVAL
        "Seconds between two forced keyframes (raised on a slow link: each must fit it)."
        self._work = 0.0
        self._epoch = time.monotonic()
        self._last_pts = -1
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether the capture thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the capture thread (no-op if running)."""
        if self.running and not self._stop.is_set():
            return
        # a stopping thread may still finish its current frame: it has its own stop event
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(self._stop,),
            name=f"capture-monitor-{self.monitor}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after its current frame; returns at once (see ``join``)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float = 2.0) -> bool:
        """Wait (bounded, blocking: use ``asyncio.to_thread`` on a loop) for the thread to end.

        Returns whether it has ended.
        """
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("capture thread did not stop within %.1f s", timeout)
            return False
        return True

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (sent even if the screen is unchanged)."""
        with self._lock:
            self._want_key = True
        self._wake.set()

    def poke(self) -> None:
        """Grab now instead of at the next tick (e.g. right after injecting input)."""
        self._wake.set()

    def request_frame(self, at: float | None = None) -> None:
        """Send the current screen even if unchanged (not a keyframe): at the next tick,
        or at the first tick from ``at`` on (``time.monotonic()``), whichever asked sooner."""
        with self._lock:
            when = time.monotonic() if at is None else at
            if self._want_frame_at is None or when < self._want_frame_at:
                self._want_frame_at = when
        self._wake.set()

    def refine_more(self) -> None:
        """The screen just sent, unchanged, still gained detail: send it once more (the
        sink bounds how often it asks). Call from the sink."""
        self._refine_more = True

    def stats(self) -> CaptureStats:
        """A snapshot of the counters."""
        return CaptureStats(
            grabs=self._grabs,
            frames=self._frames,
            changed=self._changed,
            fps=1.0 / self._interval,
            work_s=self._work,
        )

    # -- the thread

    def _run(self, stop: threading.Event) -> None:
        try:
            with _mss(self.display, self.with_cursor) as sct:
                mons = sct.monitors
                if not 1 <= self.monitor < len(mons):
                    raise ValueError(
                        f"monitor {self.monitor} does not exist (have 1..{len(mons) - 1})"
                    )
                self._loop(sct, mons[self.monitor], stop)
        except BaseException as exc:
            if stop.is_set():
                log.debug("screen capture ended while stopping: %r", exc)
                return
            self.error = exc
            log.exception("screen capture stopped")
            if self._on_error is not None:
                self._on_error(exc)

    def _loop(self, sct: Any, mon: dict[str, int], stop: threading.Event) -> None:
        start = self._epoch
        prev: bytearray | None = None
        last_emit = -1e9
        last_key = -1e9
        keys = 0  # keyframes made since the capture started
        last_change = time.monotonic()
        refine = 0
        active = 1.0 / self.fps_max
        held_since: float | None = None
        while not stop.is_set():
            tick = time.monotonic()
            if self.hold is not None and self.hold():
                held_since = tick if held_since is None else held_since
                if tick - held_since < HOLD_MAX_S:
                    stop.wait(HOLD_POLL_S)
                    continue
            held_since = None
            shot = sct.grab(mon)
            raw: bytearray = shot.raw
            changed = prev is None or raw != prev
            prev = raw
            grabbed = time.monotonic()
            self._grabs += 1
            with self._lock:
                key = self._want_key and tick - last_key >= key_spacing(self.key_interval, keys)
                asked = self._want_frame_at is not None and tick >= self._want_frame_at
                if key:
                    self._want_key = False
                if asked:
                    self._want_frame_at = None
            forced = False
            if changed:
                last_change = tick
                refine = self.refine_frames
            elif refine > 0 and not key:
                refine -= 1
                forced = True
            beat = tick - last_emit >= self.heartbeat
            if changed or key or forced or asked or beat:
                width, height = shot.size
                frame = bgra_to_yuv420p(raw, width, height)
                converted = time.monotonic()
                pts = max(self._last_pts + 1, round((tick - start) * VIDEO_CLOCK))
                self._last_pts = pts
                frame.pts = pts
                frame.time_base = TIME_BASE
                if key:
                    frame.pict_type = av.video.frame.PictureType.I
                    last_key = tick
                    keys += 1
                self._frames += 1
                self._changed += changed
                self._sink(
                    Capture(
                        frame=frame,
                        changed=changed,
                        keyframe=key,
                        grabbed_at=tick,
                        grab_s=grabbed - tick,
                        convert_s=converted - grabbed,
                        asked=asked and not (changed or key or forced or beat),
                    )
                )
                last_emit = tick
                if self._refine_more:
                    self._refine_more = False
                    refine = max(refine, 1)
                if not key:  # keyframes (and the encoder's start) are rare outliers
                    work = time.monotonic() - tick
                    self._work = work if self._work == 0 else 0.8 * self._work + 0.2 * work
                    active = min(
                        max(self._work / BUSY_SHARE, 1.0 / self.fps_max), 1.0 / self.fps_min
                    )
                cap = self.link_fps
                if cap is not None:
                    active = max(active, 1.0 / cap)  # the link first: the frame rate goes down
            if tick - last_change >= IDLE_AFTER and refine == 0:
                self._interval = max(active, 1.0 / self.fps_idle)
            else:
                self._interval = active
            with self._lock:
                pending_key = self._want_key
                frame_at = self._want_frame_at
            if pending_key:
                # wake no earlier than the keyframe rate limit allows
                spacing = key_spacing(self.key_interval, keys)
                wait = max(self._interval, last_key + spacing - tick)
            else:
                wait = self._interval
            if frame_at is not None:  # a frame asked for sooner than the next tick
                wait = min(wait, max(frame_at - tick, 1.0 / self.fps_max))
            delay = tick + wait - time.monotonic()
            if delay > 0 and self._wake.wait(delay):
                self._wake.clear()
                if not stop.is_set():
                    # a poke or request: do not grab again sooner than FPS_MAX allows
                    rest = tick + 1.0 / self.fps_max - time.monotonic()
                    if rest > 0:
                        time.sleep(rest)
            else:
                self._wake.clear()
