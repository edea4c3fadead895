"""Keyboard control from the dashboard: keys typed on the video reach a window on the
customer's desktop (Chromium, a real session, Xvfb, a Tk text box)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.browser import chromium, dashboard_agent
from tests.desktop import xdotool, xvfb
from tests.procs import Proc, start_signal_server
from tests.test_control import TK_WINDOW, wait_for_text


def test_keys_typed_on_the_video_arrive_in_the_customers_window(
    procs: list[Proc], tmp_path: Path
) -> None:
    signal_proc, signal = start_signal_server()
    procs.append(signal_proc)
    dash, url = dashboard_agent(tmp_path / "csr", signal)
    procs.append(dash)
    with xvfb(1280, 800) as display, chromium() as browser:
        out, script = tmp_path / "typed.txt", tmp_path / "window.py"
        script.write_text(TK_WINDOW)
        title = f"peerdesk-dashboard-typing-{time.monotonic_ns()}"
        window = subprocess.Popen(
            [sys.executable, str(script), str(out), title], env={**os.environ, "DISPLAY": display}
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
        try:
            deadline = time.monotonic() + 15
            wid = ""
            while not wid and time.monotonic() < deadline:
                try:
                    wid = xdotool(display, "search", "--name", title).split()[0]
                except (subprocess.CalledProcessError, IndexError):
                    time.sleep(0.05)
            assert wid, "the Tk window did not appear"
            # no window manager on Xvfb: give the Tk window the X focus as one would
            # (Tk's input method drops characters without it; named keys still arrive)
            xdotool(display, "windowfocus", "--sync", wid)
            wait_for_text(out, "")

            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(url)
            page.click("#start-first")
            page.wait_for_function(
                "/^[0-9]{4}-/.test(document.getElementById('invite-code').textContent)"
            )
            link = page.input_value("#invite-link")
            cust = Proc(
                [
                    "agent",
                    "join",
                    link,
                    "--headless",
                    "--json",
                    "--name",
                    "Alice",
                    "--accept",
                    "view,control",
                ],
                home=tmp_path / "cust",
                name="customer",
                env={"DISPLAY": display},
            )
            procs.append(cust)
            cust.expect("joined", timeout=30)
            page.click(".tab[data-tab=desktop]")
            page.click("#request-view")
            page.wait_for_function("Number(document.getElementById('screen').dataset.frames) >= 1")
            page.click("#request-control")
            page.wait_for_function(
                "document.getElementById('control-pill').textContent === 'you control'"
            )
            # a click in the Tk window's text box (top-left 400x200 of 1280x800), then keys
            box = page.locator("#screen").bounding_box()
            assert box is not None
            page.mouse.click(
                box["x"] + box["width"] * 150 / 1280, box["y"] + box["height"] * 100 / 800
            )
            page.keyboard.type("hi there")
            page.keyboard.press("Enter")
            page.keyboard.press("x")
            wait_for_text(out, "hi there\nx", timeout=10)
            page.keyboard.press("Backspace")
            wait_for_text(out, "hi there\n", timeout=10)
        finally:
            context.close()
            window.terminate()
            window.wait(5)
