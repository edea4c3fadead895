"""Screen sharing at 1080p: delivered fps and end-to-end latency, against an in-process baseline.

    python -m bench.screen                 # measure(10) and print the figures
    python -m bench.screen --legibility    # the bitrate/legibility table behind encoder.py
    python -m bench.screen --profile       # also cProfile both event loops

``measure`` starts its own Xvfb (1920x1080), paints a page of 11 px text on it, and
draws a frame counter at 60 Hz as a 24-bit barcode of 32 px black/white blocks
(16-bit counter + 8-bit check, one PutImage request so a grab never sees half of
it). The sender — a separate process, so its CPU can be measured alone — captures,
encodes once (``EncodedScreen``) and sends over a real aiortc connection on
loopback; this process decodes (aiortc), reads the counter back and takes
latency = decoded time - draw time (one clock: both happen here).

Baseline, same run, same drawing: the same ``Capturer`` and ``Encoder`` with a PyAV
decoder in one thread of this process: capture + encode + decode with no aiortc, no
network, no second process. The ratio is what WebRTC transport costs.

Sender CPU is ``psutil.Process.cpu_percent`` of the sender process (100 % = one
core) while the screen is static and while the counter changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import av
import numpy as np

BITS = 24
BLOCK = 32
BAR_X, BAR_Y = 64, 64
DRAW_HZ = 60.0


# -- the counter barcode


def _check(value: int) -> int:
    return (value * 151 + 89) % 251


def barcode_bgrx(value: int) -> bytes:
    """The counter as BITS blocks of BLOCK px, black = 1, as BGRX bytes (one row of blocks)."""
    word = ((value & 0xFFFF) << 8) | _check(value & 0xFFFF)
    row = np.full((BLOCK, BITS * BLOCK, 4), 255, dtype=np.uint8)
    for i in range(BITS):
        if word >> (BITS - 1 - i) & 1:
            row[:, i * BLOCK : (i + 1) * BLOCK, :3] = 0
    return row.tobytes()


def read_barcode(frame: av.VideoFrame) -> int | None:
    """The counter in a decoded frame, or None if unreadable (check mismatch)."""
    plane = frame.planes[0]
    y = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, plane.line_size)
    return read_barcode_luma(y)


BAR_RIGHT, BAR_BOTTOM = BAR_X + BITS * BLOCK, BAR_Y + BLOCK
"The counter's corner: a picture from (0, 0) to here holds it whole."


def read_barcode_luma(y: np.ndarray) -> int | None:
    """The counter in a picture's brightness (rows and columns from the screen's corner,
    at least ``BAR_BOTTOM`` by ``BAR_RIGHT``), or None if unreadable."""
    band = y[BAR_Y + 8 : BAR_Y + BLOCK - 8]
    word = 0
    for i in range(BITS):
        x = BAR_X + i * BLOCK
        dark = band[:, x + 8 : x + BLOCK - 8].mean() < 128
        word = (word << 1) | int(dark)
    value = word >> 8
    return value if _check(value) == word & 0xFF else None


def text_page(width: int, height: int) -> Any:
    """A Pillow image of 11 px text lines, black on white (a typical desktop's worst case)."""
    import random

    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(1)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "settings"]
    words += ["network", "adapter", "properties", "driver", "version", "error", "code"]
    words += ["printer", "queue", "firewall", "update", "restart"]
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    try:
        font: Any = ImageFont.truetype("DejaVuSans.ttf", 11)
    except OSError:
        font = ImageFont.load_default()
    for y in range(0, height, 15):
        draw.text((8, y), " ".join(rng.choice(words) for _ in range(45)), fill="black", font=font)
    return page


class Drawer:
    """Draws the counter at DRAW_HZ in its own thread; remembers when each value was drawn."""

    def __init__(self, display: str) -> None:
        from agent.capture.xvfb import Canvas

        self.canvas = Canvas(display)
        self.drawn: dict[int, float] = {}
        self.value = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def paint_background(self) -> None:
        self.canvas.put_image(0, 0, text_page(self.canvas.width, self.canvas.height))
        self.draw(0)

    def draw(self, value: int) -> None:
        self.canvas.put_bgrx(BAR_X, BAR_Y, BITS * BLOCK, BLOCK, barcode_bgrx(value))
        self.canvas.sync()
        self.drawn[value & 0xFFFF] = time.monotonic()
        self.value = value

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bench-drawer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        period = 1.0 / DRAW_HZ
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.draw(self.value + 1)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                nxt = time.monotonic()

    def close(self) -> None:
        self.stop()
        self.canvas.close()


class Latencies:
    """Decoded frames: counter read back → latency since it was drawn."""

    def __init__(self, drawer: Drawer) -> None:
        self.drawer = drawer
        self.samples: list[float] = []
        self.frames = 0
        self.unreadable = 0
        self.seen: set[int] = set()
        self.recording = False

    def on_frame(self, frame: av.VideoFrame, at: float) -> None:
        if not self.recording:
            return
        self.frames += 1
        value = read_barcode(frame)
        if value is None:
            self.unreadable += 1
            return
        drawn = self.drawer.drawn.get(value)
        if drawn is not None and value not in self.seen:
            self.seen.add(value)
            self.samples.append(at - drawn)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- the sender process


async def _sender(display: str, profile: bool) -> None:
    """Child process: offer a screen transceiver, send the screen, answer stats requests."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from agent.capture import EncodedScreen, add_screen_transceiver, share
    from agent.capture.grab import Capture
    from agent.net.peer import rtc_configuration

    stages: dict[str, list[float]] = {"grab": [], "convert": [], "encode": [], "key": []}

    class Timed(EncodedScreen):
        def _on_capture(self, cap: Capture) -> None:
            super()._on_capture(cap)
            if cap.changed or cap.keyframe:
                stages["grab"].append(cap.grab_s)
                stages["convert"].append(cap.convert_s)
                stages["key" if cap.keyframe else "encode"].append(self.encoder.last_encode_s)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    prof = cProfile.Profile() if profile else None
    screen = Timed(display=display)
    pc = RTCPeerConnection(rtc_configuration())
    transceiver = add_screen_transceiver(pc)
    await pc.setLocalDescription(await pc.createOffer())
    say({"offer": pc.localDescription.sdp})
    try:
        while line := await reader.readline():
            msg = json.loads(line)
            if "answer" in msg:
                await pc.setRemoteDescription(RTCSessionDescription(msg["answer"], "answer"))
                share(transceiver.sender, screen.track())
                if prof is not None:
                    prof.enable()
            elif msg.get("cmd") == "stats":
                s = screen.stats()
                say(
                    {
                        "stats": asdict(s),
                        "stages_ms": {
                            k: (1000 * statistics.median(v) if v else None)
                            for k, v in stages.items()
                        },
                        "stages_n": {k: len(v) for k, v in stages.items()},
                    }
                )
                for v in stages.values():
                    v.clear()
            elif msg.get("cmd") == "quit":
                break
    finally:
        if prof is not None:
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
            sys.stderr.write("== sender event loop profile (main thread)\n" + out.getvalue())
        await screen.aclose()
        await pc.close()


# -- the measurement


@dataclass(frozen=True)
class ScreenFigures:
    seconds: float
    fps: float
    "Distinct frames decoded per second while the counter changed."
    latency_p50: float
    latency_p95: float
    frames: int
    unreadable: int
    base_fps: float
    "Baseline (capture + encode + decode in one process, no aiortc): frames per second."
    base_p50: float
    base_p95: float
    cpu_static: float
    "Sender process CPU % (100 = one core) on a static screen."
    cpu_changing: float
    "Sender process CPU % while the counter changes at 60 Hz."
    sender: dict[str, Any]
    "Sender stage medians (ms) and counters over the changing phase."
    base_stages_ms: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.latency_p50 / self.base_p50


async def _read_json(stream: asyncio.StreamReader, key: str) -> Any:
    async with asyncio.timeout(20.0):
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError("the sender process exited")
            msg = json.loads(line)
            if key in msg:
                return msg


async def _network_phase(
    display: str, drawer: Drawer, seconds: float, static_s: float, profile: bool
) -> dict[str, Any]:
    import psutil
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from agent.capture import ScreenViewer
    from agent.net.peer import rtc_configuration

    cmd = [sys.executable, "-m", "bench.screen", "--sender", display]
    if profile:
        cmd.append("--profile")
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "DISPLAY": display},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    pc = RTCPeerConnection(rtc_configuration())
    lat = Latencies(drawer)
    viewer: ScreenViewer | None = None
    prof = cProfile.Profile() if profile else None
    try:
        offer = (await _read_json(proc.stdout, "offer"))["offer"]
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pc.on("track", lambda t: None if got.done() else got.set_result(t))
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        proc.stdin.write((json.dumps({"answer": pc.localDescription.sdp}) + "\n").encode())
        await proc.stdin.drain()
        viewer = ScreenViewer(await asyncio.wait_for(got, 10), on_frame=lat.on_frame)
        viewer.start()
        async with asyncio.timeout(20):
            await viewer.wait_frame()

        sender = psutil.Process(proc.pid)
        await asyncio.sleep(1.5)  # settle after the keyframe; capture goes idle
        sender.cpu_percent()
        await asyncio.sleep(static_s)
        cpu_static = sender.cpu_percent()

        proc.stdin.write(b'{"cmd": "stats"}\n')  # reset the stage samples
        await proc.stdin.drain()
        await _read_json(proc.stdout, "stats")
        drawer.start()
        await asyncio.sleep(0.5)
        lat.recording = True
        if prof is not None:
            prof.enable()
        sender.cpu_percent()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        cpu_changing = sender.cpu_percent()
        elapsed = time.monotonic() - started
        lat.recording = False
        if prof is not None:
            prof.disable()
        drawer.stop()
        proc.stdin.write(b'{"cmd": "stats"}\n')
        await proc.stdin.drain()
        stats = await _read_json(proc.stdout, "stats")
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
            sys.stderr.write("== viewer event loop profile (main thread)\n" + out.getvalue())
        return {
            "fps": len(lat.samples) / elapsed,
            "p50": _pct(lat.samples, 0.5),
            "p95": _pct(lat.samples, 0.95),
            "frames": lat.frames,
            "unreadable": lat.unreadable,
            "cpu_static": cpu_static,
            "cpu_changing": cpu_changing,
            "sender": stats,
        }
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.write(b'{"cmd": "quit"}\n')
            await proc.stdin.drain()
        if viewer is not None:
            await viewer.stop()
        await pc.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _baseline_phase(display: str, drawer: Drawer, seconds: float) -> dict[str, Any]:
    """Capture + encode + decode in one thread of this process, same drawing, no aiortc."""
    from agent.capture.encoder import Encoder
    from agent.capture.grab import Capture, Capturer

    encoder = Encoder()
    decoder = av.CodecContext.create("libvpx", "r")
    lat = Latencies(drawer)
    stages: dict[str, list[float]] = {"grab": [], "convert": [], "encode": [], "decode": []}

    def sink(cap: Capture) -> None:
        packets = encoder.encode(cap.frame, cap.keyframe)
        t = time.perf_counter()
        frames = [f for p in packets for f in decoder.decode(p)]
        decode_s = time.perf_counter() - t
        now = time.monotonic()
        if lat.recording and cap.changed:
            stages["grab"].append(cap.grab_s)
            stages["convert"].append(cap.convert_s)
            stages["encode"].append(encoder.last_encode_s)
            stages["decode"].append(decode_s)
        for f in frames:
            lat.on_frame(f, now)

    capturer = Capturer(sink, display=display)
    capturer.request_keyframe()
    capturer.start()
    try:
        drawer.start()
        time.sleep(0.5)
        lat.recording = True
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        lat.recording = False
    finally:
        drawer.stop()
        capturer.stop()
        capturer.join()
    return {
        "fps": len(lat.samples) / elapsed,
        "p50": _pct(lat.samples, 0.5),
        "p95": _pct(lat.samples, 0.95),
        "stages_ms": {k: 1000 * statistics.median(v) for k, v in stages.items() if v},
    }


@contextlib.contextmanager
def _desktop() -> Iterator[tuple[str, Drawer]]:
    from agent.capture.xvfb import Xvfb

    with Xvfb(1920, 1080) as x:
        drawer = Drawer(x.display)
        try:
            drawer.paint_background()
            yield x.display, drawer
        finally:
            drawer.close()


async def measure(seconds: float = 10, *, profile: bool = False) -> dict[str, Any]:
    """Screen figures at 1080p (see the module docstring); returns ``ScreenFigures`` as a dict."""
    with _desktop() as (display, drawer):
        net = await _network_phase(display, drawer, seconds, static_s=3.0, profile=profile)
        base = await asyncio.to_thread(_baseline_phase, display, drawer, min(seconds, 5.0))
    fig = ScreenFigures(
        seconds=seconds,
        fps=net["fps"],
        latency_p50=net["p50"],
        latency_p95=net["p95"],
        frames=net["frames"],
        unreadable=net["unreadable"],
        base_fps=base["fps"],
        base_p50=base["p50"],
        base_p95=base["p95"],
        cpu_static=net["cpu_static"],
        cpu_changing=net["cpu_changing"],
        sender=net["sender"],
        base_stages_ms=base["stages_ms"],
    )
    return {**asdict(fig), "ratio": fig.ratio}


def report(f: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``measure``'s figures."""
    ms = 1000.0
    st = f["sender"]["stages_ms"]
    stats = f["sender"]["stats"]
    b = f["base_stages_ms"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return [
        f"screen: 1920x1080 Xvfb, counter drawn at {DRAW_HZ:.0f} Hz, {f['seconds']:.0f} s, "
        "VP8 encoded once, aiortc on loopback",
        f"  delivered          {f['fps']:5.1f} fps   latency p50 {f['latency_p50'] * ms:6.1f} ms"
        f"   p95 {f['latency_p95'] * ms:6.1f} ms   (goal >= 30 fps, p50 <= 50 ms)",
        f"  baseline, no aiortc {f['base_fps']:5.1f} fps   latency p50 {f['base_p50'] * ms:6.1f} ms"
        f"   p95 {f['base_p95'] * ms:6.1f} ms   ratio (p50) {f['ratio']:.2f}x",
        f"  sender CPU         static {f['cpu_static']:5.1f} %"
        f"   changing {f['cpu_changing']:5.1f} %   (100 % = one core)",
        f"  sender stages (median ms)  grab {fmt(st.get('grab'))}  convert {fmt(st.get('convert'))}"
        f"  encode {fmt(st.get('encode'))}  keyframe {fmt(st.get('key'))}"
        f"   capture rate {stats['fps']:.1f} fps, {stats['encodes']} encodes, "
        f"{stats['keyframes']} keyframes",
        f"  baseline stages (median ms) grab {fmt(b.get('grab'))}  convert {fmt(b.get('convert'))}"
        f"  encode {fmt(b.get('encode'))}  decode {fmt(b.get('decode'))}",
        f"  frames decoded {f['frames']}, counter unreadable in {f['unreadable']}",
    ]


def rows(f: dict[str, Any]) -> list[str]:
    """Rows for bench/RESULTS.md (figure | PeerDesk | baseline | ratio | runs)."""
    ms = 1000.0
    return [
        f"| screen 1080p latency p50 / p95 | {f['latency_p50'] * ms:.1f} ms / "
        f"{f['latency_p95'] * ms:.1f} ms | in-process capture+encode+decode "
        f"{f['base_p50'] * ms:.1f} ms / {f['base_p95'] * ms:.1f} ms | **{f['ratio']:.2f}x** "
        f"| {f['seconds']:.0f} s |",
        f"| screen 1080p delivered fps | {f['fps']:.1f} | {f['base_fps']:.1f} "
        f"| {f['fps'] / f['base_fps']:.2f}x | {f['seconds']:.0f} s |",
        f"| screen sender CPU static / changing | {f['cpu_static']:.1f} % / "
        f"{f['cpu_changing']:.1f} % | - | - | {f['seconds']:.0f} s |",
    ]


# -- legibility: the bitrate table in agent/capture/encoder.py


def legibility(
    bitrates: tuple[int, ...] = (1_500_000, 3_000_000, 6_000_000, 10_000_000),
    frames: int = 45,
) -> list[dict[str, Any]]:
    """PSNR of 11 px text at 1080p through our encoder at each bitrate, and through aiortc's.

    Scene: the text page scrolls 4 px a frame for 30 frames at 30 fps, then stays
    still; a keyframe is forced at frame 35. PSNR is on luma over the text.
    """
    from aiortc.codecs import vpx

    from agent.capture.encoder import Encoder, EncoderSettings
    from agent.capture.grab import TIME_BASE, bgra_to_yuv420p

    w, h = 1920, 1080
    page = text_page(w, h * 2)

    def psnr(a: Any, b: Any) -> float:
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        return 99.0 if mse == 0 else 10 * float(np.log10(255**2 / mse))

    scene = []
    for i in range(frames):
        j = min(i, 29)
        bgra = np.asarray(page.crop((0, j * 4, w, h + j * 4)).convert("RGBX"))[:, :, [2, 1, 0, 3]]
        scene.append(bgra_to_yuv420p(np.ascontiguousarray(bgra).tobytes(), w, h))

    def run(label: str, bitrate: int, encode: Any) -> dict[str, Any]:
        dec = av.CodecContext.create("libvpx", "r")
        out: list[float] = []
        sizes: list[int] = []
        times: list[float] = []
        for i, src in enumerate(scene):
            frame = src.reformat()  # a copy: encoders mark pict_type
            frame.pts = i * 3000
            frame.time_base = TIME_BASE
            t = time.perf_counter()
            data = encode(frame, i in (0, 35))
            times.append(time.perf_counter() - t)
            sizes.append(len(data))
            ref = src.to_ndarray()[:h]
            for f in dec.decode(av.Packet(data)):
                out.append(psnr(ref, f.to_ndarray()[:h]))
        return {
            "encoder": label,
            "bitrate": bitrate,
            "keyframe_db": out[0],
            "keyframe_kB": sizes[0] / 1000,
            "scroll_db": float(np.mean(out[1:30])),
            "scroll_mbps": float(np.mean(sizes[1:30])) * 30 * 8 / 1e6,
            "settled_db": out[34],
            "forced_key_db": out[35],
            "forced_key_kB": sizes[35] / 1000,
            "p_ms": 1000 * statistics.median(times[1:30]),
        }

    rows = []
    aiortc_enc = vpx.Vp8Encoder()
    aiortc_enc.target_bitrate = vpx.MAX_BITRATE

    def aiortc_encode(frame: av.VideoFrame, key: bool) -> bytes:
        payloads, _ = aiortc_enc.encode(frame, key)
        return b"".join(vpx.vp8_depayload(p) for p in payloads)

    rows.append(run("aiortc 1.16 VP8 at its cap", vpx.MAX_BITRATE, aiortc_encode))
    for bitrate in bitrates:
        ours = Encoder(EncoderSettings(bitrate=bitrate))

        def our_encode(frame: av.VideoFrame, key: bool, enc: Encoder = ours) -> bytes:
            return b"".join(bytes(p) for p in enc.encode(frame, key))

        rows.append(run("PeerDesk VP8", bitrate, our_encode))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--legibility", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sender", metavar="DISPLAY", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sender:
        if os.environ.get("PEERDESK_BENCH_DEBUG"):
            import logging

            logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        asyncio.run(_sender(args.sender, args.profile))
        return 0
    if args.legibility:
        for r in legibility():
            print(
                f"{r['encoder']:28s} {r['bitrate'] / 1e6:4.1f} Mb/s:"
                f" keyframe {r['keyframe_db']:5.1f} dB {r['keyframe_kB']:4.0f} kB"
                f" | scrolling {r['scroll_db']:5.1f} dB at {r['scroll_mbps']:4.1f} Mb/s,"
                f" P {r['p_ms']:4.1f} ms | settled {r['settled_db']:5.1f} dB"
                f" | forced keyframe {r['forced_key_db']:5.1f} dB {r['forced_key_kB']:4.0f} kB"
            )
        return 0
    figures = asyncio.run(measure(args.seconds, profile=args.profile))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print("\n".join(report(figures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
