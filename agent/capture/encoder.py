"""Screen encoders (PyAV: libvpx VP8, libx264 H.264) tuned for text at low latency.

Bitrate bounds. Measured with ``python -m bench.screen --legibility``: a 1080p page of
11 px DejaVu Sans text, black on white, scrolling 4 px a frame at 30 fps for 1 s,
then still ("settled"), then a forced keyframe; decoded and compared with the
source (PSNR on luma). First the aiortc 1.16 VP8 encoder at its own cap, then
ours (2-core VM, one encoder thread):

    ======================= ============== ================== ========= =====
    encoder, target         keyframe       scrolling          settled   P
    ======================= ============== ================== ========= =====
    aiortc, 1.5 Mb/s (cap)  22.8 dB 255 kB 23.1 dB at 0.9 Mb/s 23.9 dB  19 ms
    ours, 1.5 Mb/s          32.5 dB 497 kB 33.1 dB at 1.6 Mb/s 33.1 dB   7 ms
    ours, 3 Mb/s            32.9 dB 504 kB 33.3 dB at 1.5 Mb/s 33.8 dB   7 ms
    ours, 6 Mb/s            38.9 dB 647 kB 39.1 dB at 2.5 Mb/s 40.9 dB   7 ms
    ours, 10 Mb/s           43.7 dB 781 kB 44.2 dB at 4.1 Mb/s 48.8 dB   9 ms
    ======================= ============== ================== ========= =====

Looking at the crops: below about 30 dB 11 px text rings and smudges ("e", "a",
"s"); about 33 dB is readable with halos; from 35 dB it reads cleanly. aiortc's
encoder (CBR, 0.5 Mb/s start, 1.5 Mb/s cap, denoiser on) blurs a 1080p desktop; CBR
also starves a keyframe forced mid-stream (25 dB at 6 Mb/s, then +0.2 dB a frame
while nothing changes, and a static screen is not re-encoded). So we use VBR with
a quantizer ceiling (``VP8_QMAX`` 36: no frame below about 32 dB, overshooting the
target when it must) and no denoiser. Scrolling text costs well under the target
(motion vectors carry it); the target mostly sets the quality. Hence:

- ``BITRATE_1080P`` = 6 Mb/s (39 dB, clean text), scaled by pixel count for other
  monitor sizes and clamped to [``BITRATE_MIN`` 1.5 Mb/s, ``BITRATE_MAX`` 10 Mb/s].
  Below 1.5 Mb/s the quantizer ceiling overshoots all the time anyway; above
  10 Mb/s text is already at 44 dB.
- keyframes are large (0.5-0.8 MB at 1080p; ``VP8_MAX_INTRA_PCT`` trims the first
  one from 811 to about 600 kB): fine on a LAN, over a second on a 3 Mb/s uplink.
  They are rate-limited (``grab.KEYFRAME_MIN_INTERVAL``) and paced (``rtc.Pacer``).

On a limited link (``Quality.limited``) the encoder runs at a constant bitrate (CBR,
``VP8_QMIN_LIMITED``), and each frame may take at most 0.1 s of it
(``LIMITED_STEP_MAX``). libvpx's screen-content mode 2 goes with it: in CBR a long
scroll through 0.9 Mbit/s had one step coded as the whole page again (156 kB) in 30 s
(``tests/test_scroll.py``), with it none; a still page's frames are then 27-38 kB
(0.2-0.3 s of 1 Mbit/s) on the first pass over it, and 53 kB at most (22 without).
Between keyframes its bitrate follows the link: libvpx sets each frame's share of the
bitrate from the time its timestamps say has passed, so the encoder's own clock runs
faster or slower than the real one by the wanted bitrate over the one it was opened at
(``retune``), and a bitrate the link allows takes effect at the next frame rather than
at a keyframe, which costs a slow link 1.4 s of freeze. Measured on the still page at
10 fps, opened at 1 Mbit/s (``examples/screen_steer.py``): 0.3-0.6 Mbit/s sent, 31.5 dB
after 4 s; steered to 2 then, 1.3-2.2 Mbit/s from the next second, 44 dB 4 s later,
and no keyframe.

Speed: libvpx ``cpu-used`` -12 (a fixed speed; negative values fix it, positive ones
let libvpx choose) encodes a 1080p text P-frame in 3-8 ms on one core of the 2-core
bench VM, as fast as 16 (6: 13 ms, same PSNR within 0.2 dB); a keyframe takes
40-100 ms. At 16 (fixed or chosen) libvpx now and then missed a 6 px scroll it
follows for 4 kB everywhere else and coded the whole page again (155 kB at ceiling
63, five times in 30 s of scrolling steps, ``tests/test_scroll.py``); at -12 and
below it never did, and a 1 Mbit/s scroll went from 0.6-7.9 fps to 4.5-9.1. x264 ``ultrafast`` +
``zerolatency`` is faster (P 3.5-5 ms, keyframe 10-14 ms) but 3-5 dB worse at the
same bitrate (6 Mb/s: keyframe 29.9 dB, scrolling 35.2 dB), so VP8 is the default
and H.264 an option.
"""

from __future__ import annotations

import fractions
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import av
from av.video.codeccontext import VideoCodecContext

from agent.capture.grab import TIME_BASE
from agent.session.adapt import STEER_MAX, Quality

Codec = Literal["vp8", "h264"]

BITRATE_1080P = 6_000_000
"Target bitrate (bits/s) for a 1920x1080 screen; other sizes scale by pixel count."
BITRATE_MIN = 1_500_000
"Lowest target bitrate (bits/s) on a link that is not limited (on a slow one, see adapt)."
BITRATE_MAX = 10_000_000
"Highest target bitrate (bits/s): beyond it text gains under 2 dB."
VP8_SPEED = -12
"libvpx cpu-used in realtime mode: speed 12, fixed (see the module docstring)."
VP8_QMAX = 36
"Quantizer ceiling: keeps keyframes and big changes legible at the cost of overshooting."
VP8_MAX_INTRA_PCT = 1600
"Keyframe size cap, in percent of a frame's share of the bitrate (measured: 811 → 580 kB)."
VP8_QMIN_LIMITED = 8
"""Finest quantizer on a limited link, where the encoder runs at a constant bitrate.

A still 1080p page of text at 0.9 Mbit/s, a counter changing, a frame every 0.2 s
(offline, as ``tests/test_encoder_fit.py``): in VBR libvpx saved up the bits of the
small frames and spent them in lumps, one frame refining the whole page at once
(188-211 kB, 1.7 s of the link, while every counter after it waited); in CBR the
frames stayed within 22 kB until the page neared the finest quantizer (2), where
lumps of 53-129 kB bought the last dB. Over real 1-4 Mbit/s links (``bench.links``,
still page, one run each; unlimited: 42.6 dB) a floor of 16 left the page at
40.1-40.3 dB, 12 at 40.7-41.2, 8 at 42.3-42.5 from 2 Mbit/s up (39.7 at 1), with the
same latency p95 (123-199 ms). Lumps of 100-180 kB still come now and then (1-4 in
20 s, at any floor from 8 to 16, with a buffer of 0.25 s as of 1 s); where from,
libvpx does not say."""
GOP = 3000
"Frames between unrequested keyframes (as aiortc): viewers ask with PLI or request_keyframe."
CLOCK_STEP_MAX = 22_500
"""Most time (1/90000 s) the encoder is told passed between two frames: 1/4 s.

libvpx sets its frame rate from the timestamps, and each frame's share of the bitrate
from that: after a 2.3 s gap (the capture held while a slow link drained) it made an
877 kB frame at ceiling 63, where the ceiling's own size is 157 kB. The encoder gets
a clock of its own that moves by the real gap up to this; the packets keep the real
timestamps. (At 1/10 s a still page re-sent every 0.2 s on a 1 Mbit/s link refined
by 0.3 dB instead of 5. Short gaps count as they are: the steps of a scroll, 1 ms
apart, get a small share each, and 60 px of steps cost 72 kB at ceiling 36; told
1/30 s each, the encoder spent 140 kB on them.)"""
LIMITED_STEP_MAX = 9_000
"""Most time (1/90000 s) the encoder is told passed between two frames on a limited link
(1/10 s): a frame's share is then at most 0.1 s of the link, and the frame rate, not the
frames, grows to fill it."""


def encoder_threads(width: int, height: int, cpus: int | None = None) -> int:
    """Encoder threads for a frame size: aiortc's rule (``vpx.number_of_threads``).

    One thread below 3 cores. Measured on the 2-core VM with a busy process on the
    other core (as in use: the event loop sends, other apps run): libvpx with 2
    threads took 20-33 ms median and 270-400 ms worst on a small-change 1080p
    P-frame (its threads wait on each other); with 1 thread 5 ms median, 25 ms worst.
    Idle, both take about 3 ms.
    """
    cpus = cpus or os.cpu_count() or 1
    pixels = width * height
    if pixels >= 1920 * 1080 and cpus > 8:
        return 8
    if pixels > 1280 * 960 and cpus >= 6:
        return 3
    if pixels > 640 * 480 and cpus >= 3:
        return 2
    return 1


def default_bitrate(width: int, height: int) -> int:
    """Target bits/s for a screen of this size, within [BITRATE_MIN, BITRATE_MAX]."""
    scaled = BITRATE_1080P * (width * height) / (1920 * 1080)
    return int(min(max(scaled, BITRATE_MIN), BITRATE_MAX))


@dataclass(frozen=True)
class EncoderSettings:
    """How ``Encoder`` encodes; the defaults are the measured choice above."""

    codec: Codec = "vp8"
    "vp8 (libvpx) or h264 (libx264, constrained baseline, packetization-mode 1)."
    bitrate: int | None = None
    "Target bits/s; None: ``default_bitrate`` for the frame size."
    speed: int = VP8_SPEED
    "VP8 cpu-used (-16..16, higher magnitude is faster; negative fixes the speed)."
    qmax: int = VP8_QMAX
    "VP8 quantizer ceiling (4-63)."
    threads: int | None = None
    "Encoder threads; None: ``encoder_threads`` for the frame size and this machine."


class Encoder:
    """Encodes yuv420p frames to ``av.Packet[Any]`` s (one per frame), pts in 1/90000 s.

    Not thread-safe: call ``encode`` from one thread (the capture thread).
    """

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        self.settings = settings or EncoderSettings()
        self._ctx: VideoCodecContext | None = None
        self._lock = threading.Lock()
        self.encodes = 0
        "Frames encoded so far."
        self.keyframes = 0
        "Keyframes produced so far."
        self.last_encode_s = 0.0
        "Seconds the last ``encode`` took."
        self.bytes_out = 0
        "Encoded bytes produced so far."
        self.frame_bits = 0.0
        "Bits of a recent inter frame (moving average over about 5; keyframes left out)."
        self.key_bits = 0
        "Bits of the last keyframe."
        self.key_qmax = 0
        "Quantiser ceiling the last keyframe was made at."
        self.quality: Quality | None = None
        "Bitrate and quantiser ceiling the open encoder runs at (None: not open yet)."
        self._wanted: Quality | None = None
        self._clock = 0  # the encoder's own timestamps, see CLOCK_STEP_MAX
        self._last_pts: int | None = None

    @property
    def mime_type(self) -> str:
        """The RTP codec this encoder produces (``video/VP8`` or ``video/H264``)."""
        return "video/VP8" if self.settings.codec == "vp8" else "video/H264"

    def full_bitrate(self, width: int, height: int) -> int:
        """The bitrate on a link that is not limited (settings, or ``default_bitrate``)."""
        return self.settings.bitrate or default_bitrate(width, height)

    def retune(self, quality: Quality | None) -> None:
        """Encode at ``quality``: its bitrate at once, the rest from the next keyframe
        on (None: the settings again). Thread-safe.

        libvpx takes no new settings once open, but a keyframe needs no history, so
        the encoder is opened again there. The bitrate is steered before that through
        the encoder's clock (see the module docstring), within ``adapt.STEER_MAX`` times the
        bitrate it was opened at either way.
        """
        with self._lock:
            self._wanted = quality

    def _wanted_for(self, frame: av.VideoFrame) -> Quality:
        if self._wanted is not None:
            return self._wanted
        return Quality(self.full_bitrate(frame.width, frame.height), self.settings.qmax)

    def _open(self, frame: av.VideoFrame) -> VideoCodecContext:
        s = self.settings
        self.quality = q = self._wanted_for(frame)
        bitrate, qmax = q.bitrate, q.qmax
        if s.codec == "vp8":
            ctx = av.CodecContext.create("libvpx", "w")
            ctx.qmin = VP8_QMIN_LIMITED if q.limited else 2
            ctx.qmax = qmax
            ctx.options = {
                "deadline": "realtime",
                "cpu-used": str(s.speed),
                "lag-in-frames": "0",
                "auto-alt-ref": "0",
                "static-thresh": "1",
                "partitions": "0",
                "noise-sensitivity": "0",
                # a 1 s buffer around the target: VBR (no minrate), or CBR on a limited
                # link (minrate = maxrate = bitrate; see VP8_QMIN_LIMITED)
                "maxrate": str(bitrate),
                "bufsize": str(bitrate),
                "max-intra-rate": str(q.intra_pct or VP8_MAX_INTRA_PCT),
                **({"minrate": str(bitrate), "screen-content-mode": "2"} if q.limited else {}),
            }
        elif s.codec == "h264":
            ctx = av.CodecContext.create("libx264", "w")
            ctx.profile = "Baseline"
            ctx.max_b_frames = 0
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "forced-idr": "1",
                "level": "31",  # what aiortc's SDP offers (42e01f); decoders accept 1080p
                "vbv-maxrate": str(bitrate // 1000),
                "vbv-bufsize": str(bitrate // 1000),
            }
        else:
            raise ValueError(f"unknown codec {s.codec!r}")
        ctx.width = frame.width
        ctx.height = frame.height
        ctx.pix_fmt = "yuv420p"
        ctx.bit_rate = bitrate
        ctx.time_base = TIME_BASE
        ctx.framerate = fractions.Fraction(30, 1)
        ctx.gop_size = GOP
        ctx.thread_count = s.threads or encoder_threads(frame.width, frame.height)
        ctx.open()
        return ctx

    def encode(
        self, frame: av.VideoFrame, keyframe: bool = False, *, elapsed: int | None = None
    ) -> list[av.Packet[Any]]:
        """Encode one frame; ``keyframe`` (or ``frame.pict_type == I``) forces a keyframe.

        ``elapsed`` is the time (1/90000 s) the encoder is told passed since the last
        frame; None: the gap between their timestamps, up to ``CLOCK_STEP_MAX``. The
        steps of a scroll pass the gap between two steps, however long the capture
        waited: libvpx spends a long gap's bits on the frame after it, and a step that
        refines the whole page (40-310 kB at ceiling 63 after 1-2 s) costs what ten
        steps do."""
        started = time.perf_counter()
        with self._lock:
            ctx = self._ctx
            if ctx is not None and (ctx.width != frame.width or ctx.height != frame.height):
                ctx = None  # monitor resized: a new stream starts with a keyframe
            key = keyframe or frame.pict_type == av.video.frame.PictureType.I
            if ctx is not None and key and self._wanted_for(frame) != self.quality:
                ctx = None  # new settings, where a keyframe starts over anyway
            if ctx is None:
                ctx = self._ctx = self._open(frame)
            if keyframe:
                frame.pict_type = av.video.frame.PictureType.I
            pts = frame.pts
            frame.pts = self._tick(pts, elapsed)
            try:
                packets = list(ctx.encode(frame))
            finally:
                frame.pts = pts
        for p in packets:
            p.time_base = TIME_BASE
            p.pts = p.dts = pts  # one frame in, its packets out (no lag, no B-frames)
            self.bytes_out += p.size
            self.keyframes += p.is_keyframe
            if p.is_keyframe:
                self.key_bits = p.size * 8
                self.key_qmax = self.quality.qmax if self.quality else self.settings.qmax
            else:
                old = self.frame_bits
                self.frame_bits = p.size * 8 if old == 0 else 0.8 * old + 0.2 * p.size * 8
        self.encodes += 1
        self.last_encode_s = time.perf_counter() - started
        return packets

    def _tick(self, pts: int | None, elapsed: int | None = None) -> int:
        """The encoder's timestamp for a frame at ``pts`` (``CLOCK_STEP_MAX``, steering)."""
        if elapsed is None and pts is not None and self._last_pts is not None:
            elapsed = pts - self._last_pts
        limited = self.quality is not None and self.quality.limited
        most = LIMITED_STEP_MAX if limited else CLOCK_STEP_MAX
        step = most if elapsed is None else min(max(elapsed, 1), most)
        self._last_pts = pts
        self._clock += max(1, round(step * self._steering()))
        return self._clock

    def _steering(self) -> float:
        """How much faster than real time the encoder's clock runs (see the module docstring)."""
        if self.quality is None or self._wanted is None:
            return 1.0
        ratio = self._wanted.bitrate / self.quality.bitrate
        return min(max(ratio, 1 / STEER_MAX), STEER_MAX)

    def close(self) -> None:
        """Drop the codec context (the next ``encode`` opens a new one)."""
        with self._lock:
            self._ctx = None
