"""Files yield to a live screen: a real fast path and a real bottleneck (needs root).

In a network namespace whose loopback is a 4 Mbit/s tbf with 300 ms of buffer, a
2 Mbit/s stream of UDP stands in for the screen and a real fast-path transfer
(``FastPathSender``/``receive_file``, real TCP) shares the link with it
(``tests/yield_worker.py``). Unpaced, TCP fills the buffer and every screen packet
waits a third of a second; yielding, the screen's packets pass at once and the file
still gets most of what the screen leaves free.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.netns import ShapedNamespace

ROOT = Path(__file__).parent.parent


def _run(mode: str) -> dict[str, Any]:
    with ShapedNamespace("4mbit") as ns:
        done = subprocess.run(
            [*ns.exec, sys.executable, "-m", "tests.yield_worker", mode, "8"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(120)
def test_a_file_yields_to_the_screen_and_still_gets_most_of_what_is_free() -> None:
    paced = _run("yield")
    assert paced["wrong"] == 0, paced  # the bytes that arrived are the file's
    assert paced["p95"] < 0.060, paced  # the screen's one-way delay (s)
    assert paced["screen_got"] >= 0.98 * paced["screen_sent"], paced
    free = 4e6 * 0.97 - 2e6  # tbf counts headers too
    assert paced["file_bps"] >= 0.5 * free, paced


@pytest.mark.timeout(120)
def test_without_yielding_the_file_fills_the_bottleneck() -> None:
    """The case the yielding is for: this test fails if the bottleneck stops being one."""
    full = _run("full")
    assert full["wrong"] == 0, full
    assert full["p95"] > 0.150, full
    assert full["file_bps"] > 1.5e6, full
