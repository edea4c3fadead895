"""Consent, control and system information end to end: real processes, a real X server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.desktop import pointer, wait_pointer, xvfb
from tests.procs import Proc


@pytest.fixture
def display() -> Iterator[str]:
    with xvfb(1280, 800) as name:
        yield name


def session(procs: list[Proc], tmp_path: Path, display: str, *join_args: str) -> tuple[Proc, Proc]:
    csr = Proc(
        ["agent", "start", "--headless", "--json", "--port", "0", "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
    )
    procs.append(csr)
    code = csr.expect("session")
    cust = Proc(
        ["agent", "join", code["link"], "--headless", "--json", "--name", "Alice", *join_args],
        home=tmp_path / "cust",
        name="customer",
        env={"DISPLAY": display},  # the customer's desktop
    )
    procs.append(cust)
    cust.expect("joined")
    csr.expect("joined")
    return csr, cust


def test_control_needs_a_grant_and_stops_at_revoke(
    procs: list[Proc], tmp_path: Path, display: str
) -> None:
    csr, cust = session(procs, tmp_path, display)

    # refused before it is granted: the CSR's agent says so, nothing moves
    start = pointer(display)
    csr.send({"cmd": "click", "x": 0.25, "y": 0.5})
    assert "not granted" in csr.expect("error")["reason"]

    csr.send({"cmd": "request", "cap": "control"})
    prompt = cust.expect("request")
    assert prompt["cap"] == "control" and prompt["name"] == "Carol"
    assert csr.expect("consent")["state"] == "pending"
    cust.send({"cmd": "grant", "id": prompt["id"]})
    assert csr.expect("consent", lambda e: e["state"] == "granted")["cap"] == "control"
    control = csr.expect("control")
    assert control["holder"] is not None and control["token"][1] >= 1

    csr.send({"cmd": "click", "x": 0.25, "y": 0.5, "button": "left"})
    assert wait_pointer(display, (320, 400)) == (320, 400)
    csr.send({"cmd": "move", "x": 0.75, "y": 0.25})
    assert wait_pointer(display, (960, 200)) == (960, 200)

    # the customer revokes: the next click has no effect
    cust.send({"cmd": "revoke", "cap": "all"})
    revoked = csr.expect("consent", lambda e: e["state"] == "revoked")
    assert revoked["cap"] == "control"
    csr.send({"cmd": "click", "x": 0.1, "y": 0.1})
    assert "not granted" in csr.expect("error")["reason"]
    assert wait_pointer(display, (128, 80), timeout=1.0) == (960, 200)
    assert start != (128, 80)

    csr.send({"cmd": "end"})
    cust.expect("ended")
    assert csr.wait() == 0
    assert cust.wait() == 0


def test_sysinfo_is_refused_then_granted_by_preaccept(
    procs: list[Proc], tmp_path: Path, display: str
) -> None:
    csr, cust = session(procs, tmp_path, display, "--accept", "sysinfo")
    csr.send({"cmd": "request", "cap": "view"})
    prompt = cust.expect("request")
    cust.send({"cmd": "deny", "id": prompt["id"]})
    assert csr.expect("consent", lambda e: e["state"] == "denied")["cap"] == "view"
    csr.send({"cmd": "snapshot", "path": str(tmp_path / "x.png")})
    assert "not granted" in csr.expect("error")["reason"]
    assert not (tmp_path / "x.png").exists()

    csr.send({"cmd": "sysinfo"})
    info = csr.expect("sysinfo", timeout=20)["data"]
    assert info["agent"]["version"]
    assert info["memory"]["total"] > 0
    assert info["displays"] == [{"index": 1, "x": 0, "y": 0, "width": 1280, "height": 800}]
    assert any(n["name"] == "lo" for n in info["network"])
    assert cust.expect("consent", lambda e: e["cap"] == "sysinfo")["state"] == "granted"

    # bad commands are refused clearly
    cust.send({"cmd": "grant", "id": "r999"})
    assert "no open request" in cust.expect("error")["reason"]
    csr.send({"cmd": "click", "x": 2, "y": 0})
    assert "between 0 and 1" in csr.expect("error")["reason"]
    csr.send({"cmd": "request", "cap": "root"})
    assert "unknown capability" in csr.expect("error")["reason"]
    csr.send({"cmd": "end"})
    assert csr.wait() == 0
    assert cust.wait() == 0


QUADRANTS = {
    (0, 0): (220, 30, 30),
    (1, 0): (30, 180, 40),
    (0, 1): (40, 60, 220),
    (1, 1): (240, 200, 20),
}


def test_view_shows_the_customers_screen_in_the_snapshot(
    procs: list[Proc], tmp_path: Path, display: str
) -> None:
    from PIL import Image

    from agent.capture.xvfb import Canvas

    canvas = Canvas(display)
    try:
        w, h = canvas.width // 2, canvas.height // 2
        for (qx, qy), rgb in QUADRANTS.items():
            canvas.fill(qx * w, qy * h, w, h, rgb)
        canvas.sync()
        csr, cust = session(procs, tmp_path, display)
        csr.send({"cmd": "request", "cap": "view"})
        prompt = cust.expect("request")
        cust.send({"cmd": "grant", "id": prompt["id"]})
        csr.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "granted")
        monitors = csr.expect("monitors")
        assert monitors["items"][0]["width"] == 1280 and monitors["current"] == 1

        shot = tmp_path / "shot.png"
        csr.send({"cmd": "snapshot", "path": str(shot)})
        saved = csr.expect("snapshot", timeout=20)
        assert (saved["width"], saved["height"]) == (1280, 800)
        image = Image.open(shot).convert("RGB")
        for (qx, qy), rgb in QUADRANTS.items():
            # the middle of each quadrant, averaged over a patch (codec loss tolerated)
            cx, cy = qx * w + w // 2, qy * h + h // 2
            patch = image.crop((cx - 20, cy - 20, cx + 20, cy + 20)).resize((1, 1), Image.BOX)
            got = patch.getpixel((0, 0))
            assert all(abs(a - b) <= 24 for a, b in zip(got, rgb, strict=True)), (qx, qy, got)

        # the seeds' session option: every viewer and the customer hear the new mode
        csr.send({"cmd": "screen_mode", "mode": "blurry"})
        assert "must be one of sharp, smooth" in csr.expect("error")["reason"]
        csr.send({"cmd": "screen_mode", "mode": "smooth"})
        assert csr.expect("screen_mode")["mode"] == "smooth"
        assert cust.expect("screen_mode")["mode"] == "smooth"

        # the pattern changes: a fresh snapshot shows the change (in the new mode)
        canvas.fill(0, 0, w, h, (250, 250, 250))
        canvas.sync()
        csr.send({"cmd": "keyframe"})
        deadline_shot = tmp_path / "shot2.png"
        for _ in range(20):
            csr.send({"cmd": "snapshot", "path": str(deadline_shot)})
            csr.expect("snapshot", timeout=10)
            top_left = Image.open(deadline_shot).convert("RGB").getpixel((w // 2, h // 2))
            if min(top_left) > 226:
                break
        assert min(top_left) > 226, top_left

        # revoked: the CSR can no longer take snapshots
        cust.send({"cmd": "revoke", "cap": "view"})
        csr.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "revoked")
        csr.send({"cmd": "snapshot", "path": str(tmp_path / "after.png")})
        assert "not granted" in csr.expect("error")["reason"]
        assert not (tmp_path / "after.png").exists()
        csr.send({"cmd": "screen_mode", "mode": "sharp"})
        assert "not granted" in csr.expect("error")["reason"]
        csr.send({"cmd": "end"})
        assert csr.wait() == 0
        assert cust.wait() == 0
    finally:
        canvas.close()


def test_typed_text_arrives_in_a_window_on_the_customers_display(
    procs: list[Proc], tmp_path: Path, display: str
) -> None:
    import subprocess
    import sys
    import time

    from tests.desktop import xdotool
    from tests.test_control import TK_WINDOW, wait_for_text

    out, script = tmp_path / "typed.txt", tmp_path / "window.py"
    script.write_text(TK_WINDOW)
    title = f"peerdesk-cli-typing-{time.monotonic_ns()}"
    window = subprocess.Popen(
        [sys.executable, str(script), str(out), title], env={**os.environ, "DISPLAY": display}
    )
    try:
        deadline = time.monotonic() + 15
        wid = ""
        while not wid and time.monotonic() < deadline:
            try:
                wid = xdotool(display, "search", "--name", title).split()[0]
            except (subprocess.CalledProcessError, IndexError):
                time.sleep(0.05)
        assert wid, "the Tk window did not appear"
        xdotool(display, "windowfocus", "--sync", wid)
        wait_for_text(out, "")
        csr, cust = session(procs, tmp_path, display, "--accept", "control")
        csr.send({"cmd": "request", "cap": "control"})
        csr.expect("control", lambda e: e["holder"] is not None)
        csr.send({"cmd": "type", "text": "hello PeerDesk 123"})
        csr.send({"cmd": "key", "key": "enter"})
        csr.send({"cmd": "key", "key": "x"})
        wait_for_text(out, "hello PeerDesk 123\nx")
        cust.send({"cmd": "revoke", "cap": "all"})
        csr.expect("consent", lambda e: e["state"] == "revoked")
        csr.send({"cmd": "type", "text": "not after revoke"})
        csr.expect("error")
        time.sleep(0.5)
        assert out.read_text() == "hello PeerDesk 123\nx"
        csr.send({"cmd": "end"})
        assert csr.wait() == 0
        assert cust.wait() == 0
    finally:
        window.terminate()
        window.wait(5)
