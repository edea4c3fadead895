"""The screen on real links: ``peerdesk bench links`` (needs root: network namespaces).

    python -m bench.links                      # every bottleneck, both pictures
    python -m bench.links --rates 2mbit 1mbit  # some ("none": no bottleneck)

For each bottleneck (a namespace whose loopback is a tbf of that rate with 300 ms of
buffer, ``bench.netns.ShapedNamespace``) and each picture, two real agents share the
screen of an Xvfb (1920x1080) that this process draws on:

- ``still``: the page of 11 px text, a counter (``bench.screen``'s barcode) changing
  at 60 Hz in its corner; at the end the counter stops and, 2 s later, the text's
  PSNR is taken from the CSR's decoded picture against the page;
- ``scroll``: the page scrolling 3 px per frame at 20 Hz, the counter with it.
- ``file``: the same scrolling page while the CSR fetches a 50 MB file from the
  customer (``files_advanced``, the fast path, the customer's uplink: the direction
  the screen takes too): the screen's figures while the file goes, and the file's
  own goodput over the measured seconds. ``PEERDESK_NO_YIELD=1`` in the environment
  shows what the file does to the screen when it does not yield.

The CSR is a worker process inside the namespace (the signaling server, a
``CsrSession``, the CSR's own viewer decoding the screen); the customer is
``peerdesk join --accept view,control``, its own process beside it. Latency is the
counter's decode time in the worker minus its draw time here (one monotonic clock).
Each run reports: the first frame after view is granted, the counter values decoded
per second and their latency p50/p95 after the first 5 s, kbit/s on the wire (the
bottleneck's bytes, both ways), packets dropped there, and the CSR's clicks landing on
the customer's display (xdotool) with the screen live.

Baseline in the same run: the same pictures with no bottleneck (``none``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.screen import BAR_Y, BLOCK, Drawer, read_barcode, text_page

W, H = 1920, 1080
RATES = ["none", "8mbit", "4mbit", "2mbit", "1mbit"]
PICTURES = ["still", "scroll", "file", "key"]
WARMUP_S = float(os.environ.get("PEERDESK_LINKS_WARMUP_S", "5"))
MEASURE_S = float(os.environ.get("PEERDESK_LINKS_MEASURE_S", "10"))
"(The environment shortens both for the smoke test, and reaches the worker with it.)"
STILL_S = 2.0
KEY_AFTER_S, KEY_WAIT_S = 3.0, 6.0
"""The ``key`` picture (the still page with its counter) asks for a keyframe
``KEY_AFTER_S`` after its first frame, as a viewer does that lost a picture, and
reports the longest time in the next ``KEY_WAIT_S`` without a new counter on screen
(what a keyframe costs the picture); then its warm-up and measurement begin."""
SCROLL_PX, SCROLL_HZ = 3, 20.0
CLICKS = 10
FILE_MB = 50
TEXT_TOP = BAR_Y + BLOCK + 16
"Rows above this hold the counter: PSNR is taken below it."


class Scroller(Drawer):
    """The page scrolling ``SCROLL_PX`` per frame at ``SCROLL_HZ``, the counter in each frame."""

    def __init__(self, display: str) -> None:
        super().__init__(display)
        w, h = self.canvas.width, self.canvas.height
        page = np.asarray(text_page(w, h).convert("RGBX"))[:, :, [2, 1, 0, 3]]
        self.tall = np.ascontiguousarray(np.concatenate([page, page]))  # wraps around
        self.offset = 0

    def draw(self, value: int) -> None:
        if value:
            w, h = self.canvas.width, self.canvas.height
            self.offset = (self.offset + SCROLL_PX) % h
            rows = self.tall[self.offset : self.offset + h]
            self.canvas.put_bgrx(0, 0, w, h, rows.tobytes())
        super().draw(value)

    def _run(self) -> None:
        period = 1.0 / SCROLL_HZ
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.draw(self.value + 1)
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))
            nxt = max(nxt, time.monotonic() - period)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _psnr(a: Any, b: Any) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255**2 / mse))


def _page_luma() -> Any:
    from agent.capture.grab import bgra_to_yuv420p

    bgra = np.asarray(text_page(W, H).convert("RGBX"))[:, :, [2, 1, 0, 3]]
    return bgra_to_yuv420p(np.ascontiguousarray(bgra).tobytes(), W, H).to_ndarray()[:H]


def _pointer(display: str) -> tuple[int, int]:
    out = subprocess.run(
        ["xdotool", "getmouselocation"],
        env={**os.environ, "DISPLAY": display},
        capture_output=True, text=True, timeout=5, check=True,
    ).stdout  # fmt: skip
    fields = dict(part.split(":", 1) for part in out.split() if ":" in part)
    return int(fields["x"]), int(fields["y"])


def _latencies(samples: list[tuple[int, float]], drawn: dict[int, float]) -> list[float]:
    """Drawn to shown, for the first time each counter value was read (-1: unreadable)."""
    latencies, seen = [], set()
    for value, at in samples:
        when = drawn.get(value)
        if value >= 0 and when is not None and value not in seen:
            seen.add(value)
            latencies.append(at - when)
    return latencies


def _longest_gap(samples: list[tuple[int, float]], start: float, end: float) -> float:
    """The longest time (s) within [start, end] without a frame showing a new counter."""
    seen: set[int] = set()
    times = [start]
    for value, at in samples:
        if value >= 0 and value not in seen and start <= at <= end:
            seen.add(value)
            times.append(at)
    times.append(end)
    return max(b - a for a, b in itertools.pairwise(times))


def _file_kbps(progress: list[tuple[float, int]], fetched: float, started: float) -> float:
    """The fetch's goodput from its (time, bytes received) progress: over the measured
    window while the file was still coming in it; over the whole transfer when it was
    done before the window began (a link with no bottleneck)."""
    before = [n for at, n in progress if at < started]
    during = [(at, n) for at, n in progress if at >= started]
    if during:  # still going in the window
        at, n = during[-1]
        return (n - (before[-1] if before else 0)) * 8 / max(at - started, 1e-3) / 1000
    at, n = progress[-1]  # done before the window
    return n * 8 / max(at - fetched, 1e-3) / 1000


# -- the worker: the CSR, inside the namespace


async def _worker(display: str, picture: str) -> None:
    import random

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent import status
    from agent.identity import Identity
    from agent.protocol import commands as cmds
    from agent.runtime import CsrSession
    from signaling.server import start_server

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    joined, granted, controls = loop.create_future(), loop.create_future(), loop.create_future()
    links: list[dict[str, Any]] = []
    samples: list[tuple[int, float]] = []
    file_bytes: list[tuple[float, int]] = []
    file_how: list[str] = []

    def saw(e: status.Status) -> None:
        if isinstance(e, status.Joined) and not joined.done():
            joined.set_result(e.peer)
        elif isinstance(e, status.ConsentChanged) and e.state == "granted" and e.cap == "view":
            if not granted.done():
                granted.set_result(time.monotonic())
        elif isinstance(e, status.ControlChanged) and e.holder is not None:
            if not controls.done():  # the customer's agent issued the token
                controls.set_result(e.holder)
        elif isinstance(e, status.Link):
            links.append({
                "at": time.monotonic(), "kbps": e.kbps, "target_kbps": e.target_kbps,
                "rtt_ms": e.rtt_ms, "queue_ms": e.queue_ms, "loss": e.loss, "fps": e.fps,
            })  # fmt: skip
        elif isinstance(e, status.FileProgress) and e.direction == "receive":
            file_bytes.append((time.monotonic(), e.bytes))
            file_how[:] = [e.transport, e.state, e.reason]

    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, saw)
    code = await csr.start()
    home = tempfile.mkdtemp(prefix="pd-links-")
    customer_log = tempfile.TemporaryFile("w+", dir=home)  # noqa: SIM115 (closed below)
    share = Path(home) / "share"
    share.mkdir()
    if picture == "file":
        with (share / "big.bin").open("wb") as f:
            for _ in range(FILE_MB):
                f.write(os.urandom(1 << 20))
    customer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "-v", "join", str(code), "--signal", url,
        "--headless", "--json", "--name", "Alice", "--share-dir", str(share),
        "--accept", "view,control,files_advanced" if picture == "file" else "view,control",
        stdin=asyncio.subprocess.PIPE, stdout=customer_log, stderr=customer_log,
        env={**os.environ, "DISPLAY": display, "PEERDESK_HOME": home},
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):
            await joined
            services = csr.services_for(None)
            services.request("view")
            granted_at = await granted
            while services.viewer is None:  # noqa: ASYNC110 (set by aiortc's track event)
                await asyncio.sleep(0.005)
            viewer = services.viewer
            viewer.on_frame = lambda frame, at: samples.append((read_barcode(frame) or -1, at))
            await viewer.wait_frame()
        say({"first_frame_s": viewer.times[0].received_at - granted_at})
        if picture == "file":
            services.request("files_advanced")
            async with asyncio.timeout(20):
                while services.grants.get("files_advanced") != "granted":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            services.fetch("big.bin", Path(home) / "got")
            fetched = time.monotonic()
        key_gap_s = None
        if picture == "key":  # a picture lost: the viewer asks for a keyframe
            await asyncio.sleep(KEY_AFTER_S)
            mark, asked = len(samples), time.monotonic()
            services.keyframe()
            await asyncio.sleep(KEY_WAIT_S)
            key_gap_s = _longest_gap(samples[mark:], asked, asked + KEY_WAIT_S)
        await asyncio.sleep(WARMUP_S)
        samples.clear()
        started = time.monotonic()
        say({"measuring": started})
        await asyncio.sleep(MEASURE_S)
        measured = list(samples)
        elapsed = time.monotonic() - started
        file_kbps = None
        if picture == "file" and file_bytes:
            file_kbps = _file_kbps(file_bytes, fetched, started)
        services.request("control")
        async with asyncio.timeout(20):
            await controls
        rng, took = random.Random(3), []
        for _ in range(CLICKS):
            want = (rng.randrange(100, W - 100), rng.randrange(200, H - 100))
            sent = time.monotonic()
            await csr.command(cmds.parse_command(json.dumps(
                {"cmd": "click", "x": (want[0] + 0.5) / W, "y": (want[1] + 0.5) / H}
            )))  # fmt: skip
            while time.monotonic() - sent < 3.0:
                if await asyncio.to_thread(_pointer, display) == want:
                    took.append(time.monotonic() - sent)
                    break
            await asyncio.sleep(0.2)
        psnr = None
        if picture == "still":
            say({"stop_drawing": True})
            await reader.readline()  # the drawer stopped
            await asyncio.sleep(STILL_S)
            latest = viewer.latest
            assert latest is not None
            shown = latest.reformat(format="yuv420p", width=W, height=H).to_ndarray()[:H]
            psnr = _psnr(shown[TEXT_TOP:], _page_luma()[TEXT_TOP:])
        say({
            "samples": measured, "elapsed": elapsed, "links": links,
            "clicks": took, "clicks_missed": CLICKS - len(took), "psnr": psnr,
            "file_kbps": file_kbps, "file_how": file_how, "key_gap_s": key_gap_s,
        })  # fmt: skip
    except BaseException:
        customer_log.seek(0)
        sys.stderr.write("the customer's agent said:\n" + customer_log.read()[-4000:] + "\n")
        raise
    finally:
        await csr.end(force=True)
        try:
            await asyncio.wait_for(customer.wait(), 15)
        except TimeoutError:
            customer.kill()
            await customer.wait()
        await runner.cleanup()
        customer_log.close()
        shutil.rmtree(home, ignore_errors=True)


# -- one run, from here


def _read(proc: subprocess.Popen[str], key: str, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    found: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            if key in msg:
                found.append(msg)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise RuntimeError(f"the worker said no {key!r} within {timeout:.0f} s")
    return found[0]


def run_one(rate: str, picture: str) -> dict[str, Any]:
    from agent.capture.xvfb import Xvfb
    from bench.netns import ShapedNamespace

    with (
        ShapedNamespace(None if rate == "none" else rate) as ns,
        Xvfb(W, H) as screen,
    ):
        still = picture in ("still", "key")
        drawer = Drawer(screen.display) if still else Scroller(screen.display)
        drawer.paint_background()
        drawer.start()
        errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read on failure, then closed)
        proc = subprocess.Popen(
            [*ns.exec, sys.executable, "-m", "bench.links", "--worker", screen.display, picture],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=errors, cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        try:
            first = _read(proc, "first_frame_s", 90)["first_frame_s"]
            _read(proc, "measuring", 30)
            sent0, dropped0 = ns.sent_bytes(), ns.drops()
            t0 = time.monotonic()
            if picture == "still":
                _read(proc, "stop_drawing", 60)
                drawer.stop()
                assert proc.stdin is not None
                proc.stdin.write("stopped\n")
                proc.stdin.flush()
            result = _read(proc, "samples", 60)
            wire_s = time.monotonic() - t0
            sent, dropped = ns.sent_bytes() - sent0, ns.drops() - dropped0
        except RuntimeError as e:
            errors.seek(0)
            said = errors.read()[-3000:]
            raise RuntimeError(f"{rate} {picture}: {e}; the worker said:\n{said}") from e
        finally:
            errors.close()
            drawer.close()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    latencies = _latencies(result["samples"], drawer.drawn)
    clicks = result["clicks"]
    return {
        "rate": rate,
        "picture": picture,
        "first_frame_s": first,
        "fps": len(latencies) / result["elapsed"],
        "p50": _pct(latencies, 0.5),
        "p95": _pct(latencies, 0.95),
        "kbps": sent * 8 / wire_s / 1000 if rate != "none" else None,
        "dropped": dropped,
        "psnr": result["psnr"],
        "click_p50": statistics.median(clicks) if clicks else None,
        "clicks_missed": result["clicks_missed"],
        "file_kbps": result["file_kbps"],
        "file_how": result["file_how"],
        "key_gap_s": result["key_gap_s"],
        "links": result["links"],
    }


# -- the peer anchor: x11vnc and a VNC viewer over the same link

VNC_PORT = 5977
VIEWER = "xtigervncviewer"
"TigerVNC's viewer (Debian's ``tigervnc-viewer``): its own decoders, in C++."


class _Watcher:
    """Reads the counter off a display's corner, as often as it can, in a thread.

    The VNC viewer shows the screen it receives on a display of its own; this is the
    anchor's decoder-side clock, as the CSR's agent's ``on_frame`` is PeerDesk's. A
    grab of the counter's corner (832x96 px) takes well under a millisecond.
    """

    def __init__(self, display: str) -> None:
        self.display = display
        self.seen: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-vnc-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import mss

        from bench.screen import BAR_BOTTOM, BAR_RIGHT, read_barcode_luma

        box = {"left": 0, "top": 0, "width": BAR_RIGHT, "height": BAR_BOTTOM}
        last = None
        with mss.MSS(display=self.display) as sct:
            while not self._stop.is_set():
                shot = sct.grab(box)
                at = time.monotonic()
                bgra = np.frombuffer(shot.raw, dtype=np.uint8).reshape(BAR_BOTTOM, BAR_RIGHT, 4)
                value = read_barcode_luma(bgra[:, :, 1])
                if value is not None and value != last:
                    self.seen.append((value, at))
                    last = value
                self._stop.wait(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_vnc(rate: str, picture: str) -> dict[str, Any]:
    """The same picture through the same bottleneck, shown by x11vnc and a VNC viewer."""
    from agent.capture.xvfb import Xvfb
    from bench.netns import ShapedNamespace

    with (
        ShapedNamespace(None if rate == "none" else rate) as ns,
        Xvfb(W, H) as screen,
        Xvfb(W, H) as shown,
    ):
        drawer = Scroller(screen.display) if picture == "scroll" else Drawer(screen.display)
        drawer.paint_background()
        drawer.start()
        errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read on failure, then closed)
        home = tempfile.mkdtemp(prefix="pd-vnc-")
        env = {"PATH": "/usr/bin:/bin", "HOME": home}
        server = subprocess.Popen(
            [*ns.exec, "x11vnc", "-display", screen.display, "-rfbport", str(VNC_PORT),
             "-listen", "10.78.0.1", "-nopw", "-forever", "-shared", "-quiet"],
            stdout=subprocess.DEVNULL, stderr=errors, env=env,
        )  # fmt: skip
        viewer: subprocess.Popen[bytes] | None = None
        watcher = _Watcher(shown.display)
        try:
            deadline = time.monotonic() + 20
            while subprocess.run(  # x11vnc is listening
                [*ns.exec, "bash", "-c", f"exec 3<>/dev/tcp/10.78.0.1/{VNC_PORT}"],
                capture_output=True, timeout=10,
            ).returncode:  # fmt: skip
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("x11vnc did not start")
                time.sleep(0.2)
            started = time.monotonic()
            viewer = subprocess.Popen(
                [*ns.exec, VIEWER, "-FullScreen", "-SecurityTypes", "None",
                 f"10.78.0.1::{VNC_PORT}"],
                stdout=subprocess.DEVNULL, stderr=errors,
                env={**env, "DISPLAY": shown.display},
            )  # fmt: skip
            while not watcher.seen:
                if time.monotonic() - started > 60 or viewer.poll() is not None:
                    raise RuntimeError("the VNC viewer showed nothing within 60 s")
                time.sleep(0.01)
            first = watcher.seen[0][1] - started
            time.sleep(WARMUP_S)
            sent0, dropped0, t0 = ns.sent_bytes(), ns.drops(), time.monotonic()
            n0 = len(watcher.seen)
            time.sleep(MEASURE_S)
            sent, dropped = ns.sent_bytes() - sent0, ns.drops() - dropped0
            elapsed = time.monotonic() - t0
            measured = watcher.seen[n0:]
        except RuntimeError as e:
            errors.seek(0)
            raise RuntimeError(
                f"vnc {rate} {picture}: {e}; it said:\n{errors.read()[-2000:]}"
            ) from e
        finally:
            watcher.stop()
            for proc in (viewer, server):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            drawer.stop()
            drawer.close()
            errors.close()
            shutil.rmtree(home, ignore_errors=True)
    latencies = _latencies(measured, drawer.drawn)
    return {
        "rate": rate,
        "picture": picture,
        "first_frame_s": first,
        "fps": len(latencies) / elapsed,
        "p50": _pct(latencies, 0.5),
        "p95": _pct(latencies, 0.95),
        "kbps": sent * 8 / elapsed / 1000 if rate != "none" else None,
        "dropped": dropped,
    }


def measure_vnc(rates: list[str], pictures: list[str]) -> list[dict[str, Any]]:
    """The anchor for each (bottleneck, picture) that it can show (not ``file`` or
    ``key``: VNC has no keyframes to lose)."""
    runs = []
    for rate in rates:
        for picture in pictures:
            if picture in ("file", "key"):
                continue
            try:
                runs.append(run_vnc(rate, picture))
            except RuntimeError as e:
                runs.append({"rate": rate, "picture": picture, "error": str(e).splitlines()[0]})
    return runs


def vnc_rows(ours: list[dict[str, Any]], vnc: list[dict[str, Any]]) -> list[str]:
    """PeerDesk beside x11vnc, case by case: fps and latency, and their ratios."""
    theirs = {(f["rate"], f["picture"]): f for f in vnc}
    out = [
        "| link | picture | PeerDesk fps / p50, p95 | x11vnc fps / p50, p95 (first frame) "
        "| fps ratio | p50 ratio |",
        "|---|---|---|---|---|---|",
    ]
    for f in ours:
        v = theirs.get((f["rate"], f["picture"]))
        if v is None or "error" in f:
            continue
        if "error" in v:
            out.append(f"| {f['rate']} | {f['picture']} | | x11vnc failed: {v['error']} | | |")
            continue
        fps = f"{f['fps'] / v['fps']:.1f}x" if v["fps"] else "∞"
        p50 = f"{f['p50'] / v['p50']:.2f}x" if f["p50"] and v["p50"] else "—"
        out.append(
            f"| {f['rate']} | {f['picture']} | {f['fps']:.1f} / {_ms(f['p50'])}, {_ms(f['p95'])} "
            f"| {v['fps']:.1f} / {_ms(v['p50'])}, {_ms(v['p95'])} ({v['first_frame_s']:.2f} s) "
            f"| {fps} | {p50} |"
        )
    return out


def measure(
    rates: list[str] | None = None, pictures: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every (bottleneck, picture) run; ``none`` first, the baseline."""
    rates = rates or RATES
    if "none" not in rates:
        rates = ["none", *rates]
    runs = []
    for rate in rates:
        for picture in pictures or PICTURES:
            try:
                runs.append(run_one(rate, picture))
            except RuntimeError as e:  # a run that failed is a figure too: say what happened
                lost = "peer silent" in str(e) or "track ended" in str(e)
                runs.append({"rate": rate, "picture": picture, "error": "session lost" if lost
                             else str(e).splitlines()[0][:200]})  # fmt: skip
    return runs


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v * 1000:.0f} ms"


def report(runs: list[dict[str, Any]]) -> list[str]:
    out = ["links: 1920x1080, 11 px text; tbf bottleneck, 300 ms of buffer; two real agents"]
    out.append(
        f"  {'link':7} {'picture':7} {'first':>7} {'fps':>6} {'p50':>8} {'p95':>8} "
        f"{'kbit/s':>7} {'drops':>6} {'PSNR':>8} {'click p50':>10}"
    )
    for f in runs:
        if "error" in f:
            out.append(f"  {f['rate']:7} {f['picture']:7} failed: {f['error']}")
            continue
        kbps = "—" if f["kbps"] is None else f"{f['kbps']:.0f}"
        psnr = "—" if f["psnr"] is None else f"{f['psnr']:.1f} dB"
        out.append(
            f"  {f['rate']:7} {f['picture']:7} {f['first_frame_s']:6.2f}s {f['fps']:6.1f} "
            f"{_ms(f['p50']):>8} {_ms(f['p95']):>8} {kbps:>7} {f['dropped']:>6} {psnr:>8} "
            f"{_ms(f['click_p50']):>10}"
            + (f" ({f['clicks_missed']} missed)" if f["clicks_missed"] else "")
            + ("" if f["file_kbps"] is None else f"; file {f['file_kbps']:.0f} kbit/s")
            + _key(f)
        )
    return out


def _key(f: dict[str, Any]) -> str:
    if f.get("picture") != "key":
        return ""
    return f"; keyframe asked: longest freeze {f['key_gap_s']:.2f} s"


def rows(runs: list[dict[str, Any]]) -> list[str]:
    base = {f["picture"]: f for f in runs if f["rate"] == "none" and "error" not in f}
    out = []
    for f in runs:
        if "error" in f:
            row = f"| screen over {f['rate']}, {f['picture']} | failed: {f['error']} |"
            out.append(row + " | | 1 run |")
            continue
        b = base.get(f["picture"], f)
        ratio = f["fps"] / b["fps"] if b["fps"] else float("nan")
        psnr = "" if f["psnr"] is None else f", text {f['psnr']:.1f} dB (none {b['psnr']:.1f})"
        if f["file_kbps"] is not None:
            psnr += f"; the file meanwhile {f['file_kbps']:.0f} kbit/s"
        psnr += _key(f)
        out.append(
            f"| screen over {f['rate']}, {f['picture']}: fps / latency p50, p95 "
            f"| {f['fps']:.1f} fps / {_ms(f['p50'])}, {_ms(f['p95'])}; first frame "
            f"{f['first_frame_s']:.2f} s; {f['dropped']} drops; "
            f"click p50 {_ms(f['click_p50'])}{psnr} "
            f"| no bottleneck {b['fps']:.1f} fps / {_ms(b['p50'])} | fps **{ratio:.2f}x** | 1 run |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.links")
    parser.add_argument("--rates", nargs="*", default=RATES)
    parser.add_argument("--pictures", nargs="*", default=PICTURES, choices=PICTURES)
    parser.add_argument("--trace", action="store_true", help="print every link event")
    parser.add_argument(
        "--vnc", action="store_true", help="also run the anchor: x11vnc and TigerVNC's viewer"
    )
    parser.add_argument("--worker", nargs=2, metavar=("DISPLAY", "PICTURE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_worker(*args.worker))
        return 0
    runs = measure(args.rates, args.pictures)
    print("\n".join(report(runs)))
    if args.vnc:
        rates = list(dict.fromkeys(f["rate"] for f in runs))  # with "none", first
        print("\n".join(vnc_rows(runs, measure_vnc(rates, args.pictures))))
    if args.trace:
        for f in runs:
            print(f"{f['rate']} {f['picture']}:")
            for e in f.get("links", []):
                print("   ", {k: v for k, v in e.items() if k != "at"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
