"""The customer's screen in the CSR dashboard: fps and latency in the browser vs the agent.

    python -m bench.dashboard            # measure(10) and print the figures
    peerdesk bench dashboard --record bench/RESULTS.md

A real session at 1080p: Xvfb (1920x1080) with bench.screen's page of text and its
frame counter drawn at 60 Hz; a customer agent process (``peerdesk join --accept
view``) shares it; this process hosts the CSR's hub and dashboard, and Debian's
Chromium (headless, Playwright) shows the dashboard. Both ends are measured in the
same run on the same frames:

- agent: frames the CSR agent decoded, counter read back, latency = decoded - drawn;
- dashboard: frames the page decoded (JPEG) and drew on its canvas, acknowledged
  back to the agent; latency = acknowledged - drawn (one clock: this process).

Also the reason for the JPEG path: the cost per 1080p frame of re-encoding the
decoded frame for the page, JPEG (Pillow) vs VP8 (aiortc's encoder, which a local
WebRTC relay to the page would run, since aiortc does not forward encoded frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _until(predicate: Any, what: str, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(f"bench dashboard: timed out waiting for {what}")


def encode_costs(frames: list[Any]) -> dict[str, float]:
    """Median ms per frame: JPEG (what the dashboard does) vs aiortc VP8 (a WebRTC relay)."""
    from aiortc.codecs.vpx import Vp8Encoder

    from tray.dashboard import encode_jpeg

    jpeg, vp8 = [], []
    encoder = Vp8Encoder()
    for frame in frames:
        t0 = time.perf_counter()
        encode_jpeg(frame)
        jpeg.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        encoder.encode(frame)
        vp8.append(time.perf_counter() - t0)
    return {
        "jpeg_ms": 1000 * statistics.median(jpeg),
        "vp8_ms": 1000 * statistics.median(vp8[1:] or vp8),  # the first is a keyframe
    }


async def measure(seconds: float = 10.0) -> dict[str, Any]:
    """The figures described in the module docstring, as a dict."""
    from playwright.async_api import async_playwright

    from agent.capture.xvfb import Xvfb
    from agent.protocol import commands as cmds
    from bench.screen import Drawer, read_barcode

    home = tempfile.TemporaryDirectory(prefix="peerdesk-bench-dash-")
    os.environ["PEERDESK_HOME"] = str(Path(home.name) / "csr")
    from agent import identity, status
    from signaling.server import start_server
    from tray.dashboard import Dashboard
    from tray.hub import Hub

    with Xvfb(1920, 1080) as x:
        drawer = Drawer(x.display)
        customer: asyncio.subprocess.Process | None = None
        hub: Hub | None = None
        dash: Dashboard | None = None
        runner, port = await start_server(["127.0.0.1"], 0)
        try:
            drawer.paint_background()
            hub = Hub(identity.load().with_name("Bench CSR"), f"ws://127.0.0.1:{port}")
            dash = Dashboard(hub)
            url = await dash.start()
            sid = await hub.start_session()
            entry = hub.entry(sid)
            started = next(e for _, e in entry.history if isinstance(e, status.SessionStarted))
            customer = await asyncio.create_subprocess_exec(
                *[
                    sys.executable,
                    "-m",
                    "agent",
                    "join",
                    started.link,
                    "--headless",
                    "--json",
                    "--accept",
                    "view",
                    "--name",
                    "Bench customer",
                ],
                env={
                    **os.environ,
                    "DISPLAY": x.display,
                    "PEERDESK_HOME": str(Path(home.name) / "customer"),
                },
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await _until(
                lambda: any(isinstance(e, status.Joined) for _, e in entry.history), "the customer"
            )
            await hub.command(sid, cmds.RequestCommand(cap="view"))
            viewer = await _until(
                lambda: (v := hub.viewer(sid, None)) is not None and v.frames > 0 and v,
                "the first frame",
            )

            shown: list[tuple[Any, float, float]] = []
            page_ms: list[float] = []
            recording = False

            def on_shown(key: Any, sent: float, at: float, draw: float) -> None:
                if recording:
                    shown.append((key, at, draw))
                    page_ms.append(at - sent)

            dash.on_shown = on_shown
            samples: list[Any] = []
            values_by_pts: dict[int, int] = {}

            async def phase(page: Any, address: str) -> dict[str, float]:
                """One page mode: agent and page figures over ``seconds``."""
                nonlocal recording
                shown.clear()
                page_ms.clear()
                await page.goto(address)
                await page.wait_for_function(
                    "Number(document.getElementById('screen').dataset.frames || 0) >= 2",
                    timeout=30_000,
                )
                await asyncio.sleep(2.0)  # warm up
                agent_lat: list[float] = []
                seen: set[int] = set()
                recording = True
                first = viewer.frames
                t0 = time.monotonic()
                while time.monotonic() - t0 < seconds:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(viewer.wait_frame(), 1.0)
                    frame, at = viewer.latest, viewer.times[-1].received_at
                    value = read_barcode(frame)
                    drawn = drawer.drawn.get(value) if value is not None else None
                    if value is not None and frame.pts is not None:
                        values_by_pts[int(frame.pts)] = value
                    if value is not None and drawn is not None and value not in seen:
                        seen.add(value)
                        agent_lat.append(at - drawn)
                    if len(samples) < 20 and len(agent_lat) % 10 == 1:
                        samples.append(frame)
                elapsed = time.monotonic() - t0
                recording = False
                agent_frames = viewer.frames - first
                await asyncio.sleep(0.5)  # late acknowledgements
                dash_lat: list[float] = []
                decoded_lat: list[float] = []
                draws: list[float] = []
                dash_seen: set[int] = set()
                for key, at, draw in shown:
                    value = values_by_pts.get(key) if isinstance(key, int) else read_barcode(key)
                    drawn = drawer.drawn.get(value) if value is not None else None
                    if value is not None and drawn is not None and value not in dash_seen:
                        dash_seen.add(value)
                        dash_lat.append(at - drawn)
                        decoded_lat.append(at - draw - drawn)
                        draws.append(draw)
                return {
                    "seconds": elapsed,
                    "agent_fps": agent_frames / elapsed,
                    "agent_p50": _pct(agent_lat, 0.5),
                    "agent_p95": _pct(agent_lat, 0.95),
                    "dash_fps": len(shown) / elapsed,
                    "dash_p50": _pct(dash_lat, 0.5),
                    "dash_p95": _pct(dash_lat, 0.95),
                    "page_p50": _pct(page_ms, 0.5),
                    "decoded_p50": _pct(decoded_lat, 0.5),
                    "draw_p50": _pct(draws, 0.5),
                    "matched": len(dash_lat),
                }

            drawer.start()
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page(
                        viewport={"width": 1920, "height": 1200}, bypass_csp=True
                    )
                    vp8 = await phase(page, url)
                    mode = await page.get_attribute("#screen", "data-mode")
                    await page.close()
                    page = await browser.new_page(
                        viewport={"width": 1920, "height": 1200}, bypass_csp=True
                    )
                    jpeg = await phase(page, url + "#jpeg")
                finally:
                    await browser.close()
            drawer.stop()
            costs = await asyncio.to_thread(encode_costs, samples)
        finally:
            drawer.close()
            if customer is not None:
                customer.kill()
                await asyncio.wait_for(customer.wait(), 10)
            if dash is not None:
                await dash.stop()
            if hub is not None:
                await hub.close()
            await runner.cleanup()
            home.cleanup()
    return {"vp8": vp8, "jpeg": jpeg, "vp8_mode": mode, **costs}


def _lines(label: str, f: dict[str, float]) -> list[str]:
    ms = 1000.0
    return [
        f"  {label}: agent (decoded)  {f['agent_fps']:5.1f} fps   latency p50 "
        f"{f['agent_p50'] * ms:6.1f} ms   p95 {f['agent_p95'] * ms:6.1f} ms",
        f"  {label}: page (drawn)     {f['dash_fps']:5.1f} fps   latency p50 "
        f"{f['dash_p50'] * ms:6.1f} ms   p95 {f['dash_p95'] * ms:6.1f} ms   "
        f"(page alone p50 {f['page_p50'] * ms:.1f} ms, {f['matched']:.0f} frames matched)",
        f"  {label}: page (decoded)   latency p50 {f['decoded_p50'] * ms:6.1f} ms   "
        f"(drawing the decoded frame on the canvas: p50 {f['draw_p50'] * ms:.1f} ms)",
        f"  {label}: ratio page/agent fps {f['dash_fps'] / f['agent_fps']:.2f}x   "
        f"latency p50 drawn {f['dash_p50'] / f['agent_p50']:.2f}x, decoded "
        f"{f['decoded_p50'] / f['agent_p50']:.2f}x   (goal: within 20 %)",
    ]


def report(f: dict[str, Any]) -> list[str]:
    """Human-readable lines for ``measure``'s figures."""
    return [
        "dashboard: 1920x1080 session, counter at 60 Hz, headless Chromium on loopback "
        f"(passthrough ran as {f['vp8_mode']})",
        *_lines("VP8 passthrough (WebCodecs)", f["vp8"]),
        *_lines("JPEG relay", f["jpeg"]),
        f"  re-encode a frame for the page: JPEG {f['jpeg_ms']:.1f} ms, "
        f"VP8 (aiortc, as a local WebRTC relay would) {f['vp8_ms']:.1f} ms",
    ]


def rows(f: dict[str, Any]) -> list[str]:
    """Rows for bench/RESULTS.md (figure | PeerDesk | baseline | ratio | runs)."""
    ms = 1000.0
    out = []
    for key, label in (("vp8", "VP8 passthrough"), ("jpeg", "JPEG relay")):
        g = f[key]
        out += [
            f"| dashboard 1080p, {label}: latency p50 / p95 (page drew it) | "
            f"{g['dash_p50'] * ms:.1f} ms / {g['dash_p95'] * ms:.1f} ms | agent decoded "
            f"{g['agent_p50'] * ms:.1f} ms / {g['agent_p95'] * ms:.1f} ms "
            f"| **{g['dash_p50'] / g['agent_p50']:.2f}x** | {g['seconds']:.0f} s |",
            f"| dashboard 1080p, {label}: latency p50, page decoded it (like the agent) | "
            f"{g['decoded_p50'] * ms:.1f} ms | agent decoded {g['agent_p50'] * ms:.1f} ms "
            f"| {g['decoded_p50'] / g['agent_p50']:.2f}x | {g['seconds']:.0f} s |",
            f"| dashboard 1080p, {label}: fps | {g['dash_fps']:.1f} | agent {g['agent_fps']:.1f} "
            f"| {g['dash_fps'] / g['agent_fps']:.2f}x | {g['seconds']:.0f} s |",
        ]
    out.append(
        f"| re-encode a 1080p frame for the page | JPEG {f['jpeg_ms']:.1f} ms "
        f"| VP8 (aiortc, for a local WebRTC relay) {f['vp8_ms']:.1f} ms "
        f"| {f['jpeg_ms'] / f['vp8_ms']:.2f}x | 20 frames |"
    )
    return out


def main() -> int:
    f = asyncio.run(measure(10.0))
    print("\n".join(report(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
