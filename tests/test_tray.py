"""The tray: its menu for each state (pure), its icons, and the real thing under Xvfb.

The real tray runs ``peerdesk`` under Xvfb with trayer (Debian's stand-alone tray
host) holding the system tray selection; without a tray host it opens the dashboard
instead and says why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent import status
from tests.desktop import xdotool, xvfb
from tests.procs import Proc, returning, start_signal_server
from tray import icons, model
from tray.model import Action, State, TrayView

ME, ALICE, DAN = "me0000000a", "alice0000a", "dan000000a"


def _csr_view(*events: status.Status) -> TrayView:
    v = model.fold(
        TrayView(),
        "s1",
        status.SessionStarted(
            code="1234-5678-9012",
            link="peerdesk://join/1234-5678-9012?signal=ws://127.0.0.1:1",
            room="123456",
            signal="ws://127.0.0.1:1",
            me=ME,
        ),
    )
    for e in events:
        v = model.fold(v, "s1", e)
    return v


ROSTER = status.RosterChanged(
    participants=(
        {"id": ME, "name": "Carol", "role": "csr", "primary": False},
        {"id": ALICE, "name": "Alice", "role": "customer", "primary": True},
        {"id": DAN, "name": "Dan", "role": "csr", "primary": False},
    )
)


def _labels(items: tuple[model.Item, ...]) -> list[str]:
    return [i.label for i in items if not i.separator]


def _find(items: tuple[model.Item, ...], label: str) -> model.Item:
    return next(i for i in items if i.label.startswith(label))


def test_csr_menu_when_idle() -> None:
    v = TrayView()
    assert v.state is State.IDLE
    items = model.menu(v)
    assert _labels(items) == [
        "Open dashboard",
        "Start session",
        "Join as assistant…",
        "Invite",
        "Transfer control",
        "End session",
        "Quit PeerDesk",
    ]
    assert _find(items, "Start session").action == Action("start")
    assert _find(items, "Open dashboard").default
    for label in ("Invite", "Transfer control", "End session"):
        assert not _find(items, label).enabled, label


def test_csr_menu_in_a_session_with_an_assistant() -> None:
    v = _csr_view(ROSTER)
    assert v.state is State.SESSION
    items = model.menu(v)
    invite = _find(items, "Invite")
    assert invite.enabled
    assert [(c.label, c.action) for c in invite.children] == [
        ("Copy link", Action("copy_link")),
        ("Copy web page link", Action("copy_web")),
        ("Email the link…", Action("email")),
        ("Show code (1234-5678-9012)", Action("show_code")),
    ]
    transfer = _find(items, "Transfer control")
    assert [(c.label, c.action) for c in transfer.children] == [("Dan", Action("transfer", DAN))]
    assert (
        _find(items, "End session").action == Action("end") and _find(items, "End session").enabled
    )
    assert "1234-5678-9012" in model.mailto(v) and model.mailto(v).startswith("mailto:?subject=")


def test_csr_state_follows_view_control_and_prompts() -> None:
    granted = status.ConsentChanged(id="r1", cap="view", state="granted", peer=ALICE)
    v = _csr_view(ROSTER, granted)
    assert v.state is State.VIEWED
    v = model.fold(v, "s1", status.ControlChanged(holder=DAN, token=(1, 2)))
    assert v.state is State.CONTROLLED
    assert model.tooltip(v) == "PeerDesk: control is with Dan"
    transfer = _find(model.menu(v), "Transfer control")
    assert [(c.label, c.action, c.enabled) for c in transfer.children] == [
        ("Take control back", Action("transfer", ME), True),
        ("Dan ✓", Action("transfer", DAN), False),
    ]
    v = model.fold(v, "s1", status.AssistantRequest(peer="eve000000a", name="Eve", sas="123456"))
    assert v.state is State.PROMPT
    v = model.fold(
        v, "s1", status.Joined(peer="eve000000a", role="csr", name="Eve", sas="123456", me=ME)
    )
    assert v.state is State.CONTROLLED
    # another session's events leave this view alone
    assert model.fold(v, "s9", status.Ended()) == v
    v = model.fold(v, "s1", status.Ended())
    assert v.state is State.IDLE
    assert not _find(model.menu(v), "End session").enabled


def _customer_view(*events: status.Status) -> TrayView:
    v = model.fold(
        TrayView(),
        "c",
        status.Joined(peer="carol0000a", role="csr", name="Carol", sas="654321", me=ALICE),
    )
    for e in events:
        v = model.fold(v, "c", e)
    return v


def test_customer_menu_and_states() -> None:
    v = _customer_view()
    assert v.role == "customer" and v.state is State.SESSION
    items = model.menu(v)
    assert _labels(items) == [
        "Stop sharing (revoke everything)",
        "Leave session",
        "Session info",
        "Quit PeerDesk",
    ]
    assert not _find(items, "Stop sharing").enabled  # nothing shared yet
    assert "Carol" in model.info(v) and "654 321" in model.info(v)

    v = model.fold(
        v, "c", status.ConsentRequest(id="r1", cap="view", from_="carol0000a", name="Carol")
    )
    assert v.state is State.PROMPT
    v = model.fold(
        v, "c", status.ConsentChanged(id="r1", cap="view", state="granted", peer="carol0000a")
    )
    assert v.state is State.VIEWED
    assert model.tooltip(v) == "PeerDesk: Carol can SEE your screen"
    stop = _find(model.menu(v), "Stop sharing")
    assert stop.enabled and stop.default and stop.action == Action("stop_sharing")

    v = model.fold(v, "c", status.ControlChanged(holder="carol0000a", token=(1, 1)))
    assert v.state is State.CONTROLLED
    assert "CONTROLLING" in model.tooltip(v)
    v = model.fold(
        v, "c", status.ConsentChanged(id="r2", cap="control", state="revoked", peer="carol0000a")
    )
    assert v.state is State.VIEWED
    v = model.fold(v, "c", status.Ended())
    assert v.state is State.IDLE and not _find(model.menu(v), "Leave session").enabled


def test_each_state_has_its_own_icon() -> None:
    drawn = {s: icons.draw(s) for s in State}
    assert all(im.size == (64, 64) and im.mode == "RGBA" for im in drawn.values())
    assert len({im.tobytes() for im in drawn.values()}) == len(State)
    assert drawn[State.CONTROLLED].getpixel((4, 32))[:3] == icons.COLOURS[State.CONTROLLED]


# -- the real tray under Xvfb


@pytest.fixture
def desktop() -> Iterator[str]:
    with xvfb(640, 480) as name:
        yield name


def _start_trayer(desktop: str) -> subprocess.Popen[bytes]:
    """A real tray host (trayer) on ``desktop``, once its panel shows."""
    host = subprocess.Popen(
        [
            "trayer",
            "--edge",
            "top",
            "--align",
            "right",
            "--widthtype",
            "pixel",
            "--width",
            "160",
            "--height",
            "32",
            "--transparent",
            "false",
            "--tint",
            "0xffffff",
        ],
        env={**os.environ, "DISPLAY": desktop},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            xdotool(desktop, "search", "--name", "^panel$")
            return host
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    host.kill()
    host.wait(10)
    raise AssertionError("trayer did not show its panel")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def tray_host(desktop: str) -> Iterator[str]:
    host = _start_trayer(desktop)
    try:
        yield desktop
    finally:
        _stop(host)


def _docked(display: str, wid: str) -> bool:
    """Whether the icon's window sits inside a tray (a tray host embeds it in its own)."""
    from Xlib import display as xdisplay

    d = xdisplay.Display(display)
    try:
        win = d.create_resource_object("window", int(wid))
        return bool(win.query_tree().parent.id != d.screen().root.id)
    finally:
        d.close()


def _browser_script(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A BROWSER that records what it was asked to open (webbrowser honours $BROWSER)."""
    opened = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    script.chmod(0o755)
    return {"BROWSER": f"{script} %s"}, opened


def _wait(predicate: Any, what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {value!r})")


def _icon_window(display: str) -> str | None:
    try:
        return xdotool(display, "search", "--classname", "peerdeskSystemTrayIcon").split()[0]
    except (subprocess.CalledProcessError, IndexError):
        return None


class _NotShown(Exception):
    """The icon's window is not on the screen (not docked yet, or being re-docked)."""


def _icon_colour(display: str, wid: str) -> tuple[int, int, int]:
    """The colour the icon shows on the screen, read from the root window.

    Reading the icon's own window fails with BadMatch whenever any part of it lies
    outside its parent (trayer lays icons out again as they dock, slowly on a busy
    machine); the screen at the icon's place is what a user sees anyway.
    """
    from PIL import Image
    from Xlib import X
    from Xlib import display as xdisplay

    d = xdisplay.Display(display)
    try:
        root = d.screen().root
        win = d.create_resource_object("window", int(wid))
        if win.get_attributes().map_state != X.IsViewable:
            raise _NotShown(f"window {wid} is not viewable")
        geo = win.get_geometry()
        at = root.translate_coords(win, 0, 0)
        x, y = at.x + 2, at.y + geo.height // 2
        raw = root.get_image(x, y, 1, 1, X.ZPixmap, 0xFFFFFFFF)
        return Image.frombytes("RGB", (1, 1), raw.data, "raw", "BGRX").getpixel((0, 0))  # type: ignore[return-value]
    finally:
        d.close()


def _icon_state(display: str, wid: str) -> State | None:
    """The state whose colour the docked icon shows (scaled by the host: nearest colour)."""
    from Xlib.error import XError

    try:
        got = _icon_colour(display, wid)
    except (XError, _NotShown):  # not mapped yet or being re-docked
        return None

    def distance(state: State) -> int:
        return sum(abs(a - b) for a, b in zip(got, icons.COLOURS[state], strict=True))

    best = min(State, key=distance)
    return best if distance(best) < 60 else None


def _wait_state(display: str, wid: str, state: State, what: str) -> None:
    """Until the icon shows ``state``'s colour; the failure says what it showed."""
    from Xlib.error import XError

    deadline = time.monotonic() + 15
    got: object = None
    while time.monotonic() < deadline:
        if _icon_state(display, wid) is state:
            return
        try:
            got = _icon_colour(display, wid)
        except (XError, _NotShown) as exc:
            got = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: the icon shows {got!r}")


async def _start_session(url: str) -> None:
    base, token = url.split("/?t=")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
        ws = await s.ws_connect(f"{base}/ws?t={token}", origin=base)
        await ws.receive_json()
        await ws.send_str(json.dumps({"op": "start"}))
        while (await ws.receive_json())["type"] != "started":
            pass
        await ws.close()


def test_the_tray_runs_for_real_with_a_tray_host(tray_host: str, tmp_path: Path) -> None:
    signal_proc, signal_url = start_signal_server()
    browser_env, opened = _browser_script(tmp_path)
    tray = Proc(
        ["agent", "tray", "--json", "--no-browser", "--signal", signal_url, "--name", "Carol"],
        home=tmp_path / "home",
        name="tray",
        env={"DISPLAY": tray_host, **browser_env},
    )
    try:
        _the_tray_for_real(tray, tray_host, opened)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ntray stderr:\n{''.join(tray.stderr[-60:])}") from None
    finally:
        tray.kill()
        signal_proc.kill()


def _the_tray_for_real(tray: Proc, tray_host: str, opened: Path) -> None:
    import asyncio

    url = tray.expect("dashboard", timeout=30)["url"]
    wid = _wait(lambda: _icon_window(tray_host), "the tray icon")
    assert xdotool(tray_host, "getwindowname", wid).strip() == "PeerDesk: idle"
    _wait_state(tray_host, wid, State.IDLE, "the idle icon")

    # a session started from the dashboard shows in the tray: title and colour
    asyncio.run(_start_session(url))
    _wait(
        lambda: xdotool(tray_host, "getwindowname", wid).strip() == "PeerDesk: in a session",
        "the in-session title",
    )
    _wait_state(tray_host, wid, State.SESSION, "the in-session icon")

    # a click on the icon runs the default item: Open dashboard
    xdotool(tray_host, "mousemove", "--window", wid, "5", "5", "click", "1")
    _wait(lambda: opened.exists() and opened.read_text().strip(), "the browser to open")
    assert opened.read_text().split() == [url]

    tray.proc.send_signal(signal.SIGTERM)
    assert tray.wait(20) == 0


def test_the_icon_comes_back_when_the_tray_host_restarts(desktop: str, tmp_path: Path) -> None:
    """A panel that crashes and restarts (or one still starting) gets the icon again."""
    first = _start_trayer(desktop)
    tray = Proc(
        ["agent", "tray", "--json", "--no-browser", "--name", "Carol"],
        home=tmp_path / "home",
        name="tray",
        env={"DISPLAY": desktop},
    )
    second = None
    try:
        tray.expect("dashboard", timeout=30)
        wid = _wait(lambda: _icon_window(desktop), "the tray icon")
        _wait(lambda: _docked(desktop, wid), "the icon in the tray")
        _stop(first)
        _wait(lambda: not _docked(desktop, wid), "the icon out of the stopped tray")
        second = _start_trayer(desktop)
        _wait(lambda: _docked(desktop, wid), "the icon in the restarted tray")
        _wait_state(desktop, wid, State.IDLE, "the idle icon in the restarted tray")
        tray.proc.send_signal(signal.SIGTERM)
        assert tray.wait(20) == 0
    finally:
        tray.kill()
        for host in (first, second):
            if host is not None and host.poll() is None:
                _stop(host)


def test_without_a_tray_host_peerdesk_opens_the_dashboard_and_says_why(
    desktop: str, tmp_path: Path
) -> None:
    browser_env, opened = _browser_script(tmp_path)
    env = {
        **os.environ,
        **browser_env,
        "DISPLAY": desktop,
        "PEERDESK_HOME": str(tmp_path / "home"),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent"],  # no arguments: the tray agent
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PeerDesk dashboard: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        _wait(lambda: opened.exists() and opened.read_text().strip(), "the browser to open")
        assert opened.read_text().split() == [url]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert "no tray host" in err and "Opening the dashboard" in err, err
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_customers_tray_turns_red_when_controlled_and_a_click_stops_it(
    tray_host: str, tmp_path: Path
) -> None:
    signal_proc, signal_url = start_signal_server()
    browser_env, opened = _browser_script(tmp_path)
    csr = Proc(
        ["agent", "start", "--headless", "--json", "--signal", signal_url, "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
    )
    out = (tmp_path / "customer.out").open("w")
    returning(tmp_path / "cust")  # the first-run warning is tested in test_customer_panel
    customer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "join",
            "--name",
            "Alice",
            csr.expect("session")["link"],
        ],  # not headless: the page and the tray
        env={
            **os.environ,
            **browser_env,
            "DISPLAY": tray_host,
            "PEERDESK_HOME": str(tmp_path / "cust"),
            "PYTHONUNBUFFERED": "1",
        },
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        csr.expect("joined", timeout=30)
        wid = _wait(lambda: _icon_window(tray_host), "the customer's tray icon")
        _wait_state(tray_host, wid, State.SESSION, "the in-session icon")
        page = _wait(lambda: opened.exists() and opened.read_text().strip(), "the prompt page")

        csr.send({"cmd": "request", "cap": "control"})
        asked = csr.expect("consent", lambda e: e["state"] == "pending")
        _wait_state(tray_host, wid, State.PROMPT, "the prompt icon")
        assert customer.stdin is not None
        customer.stdin.write(f"/grant {asked['id']}\n")  # the console takes answers too
        customer.stdin.flush()
        csr.expect("control", lambda e: e["holder"] is not None)
        _wait_state(tray_host, wid, State.CONTROLLED, "the red icon")
        title = xdotool(tray_host, "getwindowname", wid).strip()
        assert title == "PeerDesk: Carol is CONTROLLING this computer", title

        # a click on the icon is Stop sharing while something is shared
        xdotool(tray_host, "mousemove", "--window", wid, "5", "5", "click", "1")
        assert csr.expect("consent", lambda e: e["state"] == "revoked")["cap"] == "control"
        _wait_state(tray_host, wid, State.SESSION, "the icon back to blue")

        # and then Session info: it opens the prompts page again
        xdotool(tray_host, "mousemove", "--window", wid, "5", "5", "click", "1")
        _wait(lambda: len(opened.read_text().split()) == 2, "the page to open again")
        assert opened.read_text().split() == [page, page]

        csr.send({"cmd": "end"})
        assert customer.wait(20) == 0
        assert csr.wait(20) == 0
    finally:
        if customer.poll() is None:
            customer.kill()
            customer.wait(10)
        out.close()
        csr.kill()
        signal_proc.kill()
