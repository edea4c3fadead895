"""Debian's Chromium under Playwright, and the dashboard agent as a real process."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.procs import Proc

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
SHOTS = Path(
    os.environ.get("PEERDESK_SCREENSHOTS", Path(__file__).parent / "artifacts" / "screenshots")
)
"Where each step's screenshot goes (CI keeps this directory; it is gitignored)."


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's; Playwright never downloads one here)."""
    if shutil.which(CHROMIUM) is None:
        raise RuntimeError("chromium is missing: run tests/run (it installs chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def dashboard_agent(home: Path, signal: str, *extra: str, name: str = "Carol") -> tuple[Proc, str]:
    """``peerdesk dashboard`` as a child process; returns it and the page's URL."""
    proc = Proc(
        [
            "agent",
            "dashboard",
            "--no-browser",
            "--json",
            "--signal",
            signal,
            "--name",
            name,
            *extra,
        ],
        home=home,
        name="dashboard",
    )
    try:
        url = str(proc.expect("dashboard", timeout=30)["url"])
    except BaseException:
        proc.kill()
        raise
    return proc, url


def shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def canvas_pixel(page: Any, fx: float, fy: float) -> tuple[int, int, int]:
    """The canvas pixel at fraction (fx, fy), averaged over a 21x21 patch."""
    rgb = page.evaluate(
        """([fx, fy]) => {
            const c = document.getElementById('screen');
            const x = Math.floor(c.width * fx) - 10, y = Math.floor(c.height * fy) - 10;
            const d = c.getContext('2d').getImageData(x, y, 21, 21).data;
            const sum = [0, 0, 0];
            for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) sum[k] += d[i + k];
            return sum.map((v) => Math.round(v / (d.length / 4)));
        }""",
        [fx, fy],
    )
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def close_to(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 28) -> bool:
    """Each channel of a within tol of b (video codecs move colours a little)."""
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def settles(
    page: Any, fx: float, fy: float, rgb: tuple[int, int, int], timeout: float = 10.0
) -> tuple[int, int, int]:
    """The pixel at (fx, fy) once it is close to rgb, or the last one seen after timeout.

    The first frame is a first look sized to the link's starting estimate; the frames
    after a still screen refine it, so colours settle within a second or two.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = canvas_pixel(page, fx, fy)
        if close_to(got, rgb) or time.monotonic() > deadline:
            return got
        page.wait_for_timeout(100)
