"""Stopping the dashboard agent ends its sessions for everyone at once.

``peerdesk dashboard`` (the same agent the tray runs) hosts a session started from
its page; a customer joins and shares the screen. SIGTERM (or SIGINT, SIGHUP) to the
agent: the customer is told the session ended within a couple of seconds (not when
its link times out), its agent exits 0, and nothing reaches stderr but log lines.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.procs import Proc, dashboard_page


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_stopping_the_dashboard_ends_its_sessions_at_once(
    procs: list[Proc], tmp_path: Path, sig: str
) -> None:
    dash = Proc(
        ["agent", "dashboard", "--no-browser", "--json", "--port", "0", "--name", "Carol"],
        home=tmp_path / "csr",
        name="dashboard",
    )
    procs.append(dash)
    page = dashboard_page(dash.expect("dashboard", timeout=30)["url"])
    procs.append(page)
    session = page.expect("session", timeout=30)
    alice = Proc(
        ["agent", "join", session["link"], "--headless", "--json", "--name", "Alice"],
        home=tmp_path / "alice",
        name="alice",
    )
    procs.append(alice)
    alice.expect("joined", timeout=30)
    page.expect("joined", timeout=15)
    stopped = time.monotonic()
    os.kill(dash.proc.pid, getattr(signal, sig))
    assert alice.expect("ended", timeout=10)["reason"] == "ended"
    took = time.monotonic() - stopped
    assert took < 3.0, f"the customer heard of the end after {took:.1f} s"
    assert alice.wait(timeout=10) == 0
    assert dash.wait(timeout=15) == 0
    dash.quiet()
    alice.quiet()
