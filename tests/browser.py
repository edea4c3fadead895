"""Debian's Chromium under Playwright, and the dashboard agent as a real process."""

from __future__ import annotations

import os
import shutil
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
