"""The link under a viewed screen, measured for real: the CSR's ``link`` events.

Real processes, a real X server for the customer; once on plain loopback, once in a
namespace of the test's own whose loopback is a 2 Mbit/s tbf bottleneck (300 ms of
buffer), with the customer's screen changing all the time so that it fills the link.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.netns import ShapedNamespace
from tests.desktop import pointer, xvfb
from tests.procs import Event, Proc


@contextmanager
def busy_screen(display: str) -> Iterator[None]:
    """Rectangles of random colour drawn all over the screen, 30 times a second."""
    from agent.capture.xvfb import Canvas

    canvas = Canvas(display)
    stop = threading.Event()
    rng = random.Random(5)

    def draw() -> None:
        while not stop.is_set():
            for _ in range(6):
                w, h = rng.randint(40, 300), rng.randint(40, 200)
                x, y = rng.randint(0, canvas.width - w), rng.randint(0, canvas.height - h)
                canvas.fill(
                    x, y, w, h, (rng.randrange(256), rng.randrange(256), rng.randrange(256))
                )
            canvas.sync()
            stop.wait(1 / 30)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        canvas.close()


def viewed_session(
    procs: list[Proc], tmp_path: Path, display: str, wrap: list[str] | None = None
) -> tuple[Proc, Proc]:
    csr = Proc(
        ["agent", "start", "--headless", "--json", "--port", "0", "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
        wrap=wrap,
    )
    procs.append(csr)
    code = csr.expect("session", timeout=30)
    cust = Proc(
        ["agent", "join", code["link"], "--headless", "--json", "--name", "Alice"],
        home=tmp_path / "cust",
        name="customer",
        env={"DISPLAY": display},
        wrap=wrap,
    )
    procs.append(cust)
    cust.expect("joined", timeout=40)
    csr.expect("joined", timeout=40)
    csr.send({"cmd": "request", "cap": "view"})
    cust.send({"cmd": "grant", "id": cust.expect("request", timeout=20)["id"]})
    csr.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "granted", timeout=20)
    return csr, cust


def links(csr: Proc, seconds: float) -> list[Event]:
    """The ``link`` events the CSR says within ``seconds`` from now."""
    start = len(csr.drain(0.01))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        csr.drain(0.5)
    return [e for e in csr.events[start:] if e.get("event") == "link"]


def test_the_csr_hears_how_the_link_is_doing_every_two_seconds(
    procs: list[Proc], tmp_path: Path
) -> None:
    with xvfb(1280, 800) as display, busy_screen(display):
        csr, cust = viewed_session(procs, tmp_path, display)
        seen = links(csr, 7)
        assert 2 <= len(seen) <= 5, seen
        last = seen[-1]
        assert last["peer"] and last["fps"] > 3, last
        assert last["kbps"] > 50 and last["target_kbps"] >= 150, last
        assert last["rtt_ms"] is not None and last["rtt_ms"] < 250, last
        assert last["loss"] <= 0.05 and last["queue_ms"] < 150, last
        # view revoked: the reports stop with the frames
        cust.send({"cmd": "revoke", "cap": "view"})
        csr.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "revoked")
        csr.drain(1.0)
        assert links(csr, 4.5) == []
        csr.send({"cmd": "end"})
        assert csr.wait(20) == 0 and cust.wait(20) == 0


def test_on_a_two_megabit_link_the_screen_keeps_the_queue_short_and_frames_coming(
    procs: list[Proc], tmp_path: Path
) -> None:
    """The customer's agent finds the 2 Mbit/s bottleneck under a screen that fills it,
    paces its packets below it and fits the frame rate to it.

    Before (no pacing to the estimate): one report in 16 s reached the CSR, 1573
    packets dropped, RTT 450-520 ms with the bottleneck's 300 ms queue always full.
    """
    with ShapedNamespace("2mbit") as ns, xvfb(1280, 800) as display, busy_screen(display):
        csr, cust = viewed_session(procs, tmp_path, display, wrap=ns.exec)
        links(csr, 5.0)  # the first keyframe may fill the queue once
        dropped = ns.drops()
        seen = links(csr, 12.0)
        # every report comes (one per 2 s), truthful, and the queue stays short
        assert len(seen) >= 5, seen
        assert all(e["kbps"] <= 2300 and e["target_kbps"] <= 4000 for e in seen), seen
        rtts = sorted(e["rtt_ms"] for e in seen)
        assert rtts[len(rtts) // 2] < 100, seen
        assert ns.drops() - dropped < 50, (ns.drops(), dropped)
        # and the link is used: frames keep coming
        assert sum(e["kbps"] for e in seen) / len(seen) >= 600, seen
        assert min(e["fps"] for e in seen) >= 1.0, seen
        csr.send({"cmd": "end"})
        csr.wait(30)
        cust.wait(30)


def test_on_a_saturated_two_megabit_link_a_csr_click_lands_at_once(
    procs: list[Proc], tmp_path: Path
) -> None:
    """Control shares the screen's path; with the screen filling a 2 Mbit/s bottleneck,
    each click of the CSR's lands on the customer's display (read with xdotool) within
    p50 100 ms.

    Before the screen was paced to the link: p50 222 ms at 4 Mbit/s, and at 2 Mbit/s
    not within 3 s (the data channel's packets dropped with the video's).
    """
    with ShapedNamespace("2mbit") as ns, xvfb(1280, 800) as display, busy_screen(display):
        csr, cust = viewed_session(procs, tmp_path, display, wrap=ns.exec)
        csr.send({"cmd": "request", "cap": "control"})
        cust.send({"cmd": "grant", "id": cust.expect("request", timeout=20)["id"]})
        csr.expect("control", lambda e: e["holder"] is not None, timeout=20)
        links(csr, 4.0)  # past the first keyframe
        rng = random.Random(7)
        took: list[float] = []
        for _ in range(20):
            want = (rng.randrange(40, 1240), rng.randrange(40, 760))
            csr.send({"cmd": "click", "x": (want[0] + 0.5) / 1280, "y": (want[1] + 0.5) / 800})
            sent = time.monotonic()
            while pointer(display) != want and time.monotonic() - sent < 3.0:
                time.sleep(0.002)
            took.append(time.monotonic() - sent)
            assert pointer(display) == want, f"the click at {want} did not land within 3 s"
            time.sleep(0.25)
        seen = links(csr, 2.5)
        took.sort()
        p50, p95 = took[len(took) // 2], took[int(len(took) * 0.95)]
        print(f"click to pointer p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; links {seen}")
        assert p50 <= 0.100, took
        # the screen was live all along: the link carried it
        assert seen and seen[-1]["kbps"] >= 300, seen
        csr.send({"cmd": "end"})
        csr.wait(30)
        cust.wait(30)


pytestmark = pytest.mark.timeout(150)
