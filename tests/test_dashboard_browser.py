"""The CSR dashboard in a real browser (Debian's Chromium) against a real session.

A ``peerdesk dashboard`` process, a customer's ``peerdesk join`` under Xvfb and an
assistant's, all on loopback. Each step leaves a screenshot in tests/artifacts/screenshots/.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium, close_to, dashboard_agent, settles, shot
from tests.desktop import pointer, xvfb
from tests.procs import Proc, start_signal_server

QUADRANTS = {
    (0, 0): (220, 30, 30),
    (1, 0): (30, 180, 40),
    (0, 1): (40, 60, 220),
    (1, 1): (240, 200, 20),
}
WAIT_MS = 20_000


@pytest.fixture
def display() -> Iterator[str]:
    with xvfb(1280, 800) as name:
        yield name


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def _desktop_picture(width: int, height: int) -> Any:
    """A plausible customer desktop for the screenshots: a window with printer settings."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), (36, 74, 122))
    d = ImageDraw.Draw(image)
    for y in range(height):  # a quiet gradient wallpaper
        d.line((0, y, width, y), fill=(36, 74 + y * 40 // height, 122 + y * 50 // height))
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 15)
        bold = ImageFont.truetype("DejaVuSans-Bold.ttf", 17)
    except OSError:
        font = bold = ImageFont.load_default()
    d.rectangle((0, height - 40, width, height), fill=(20, 24, 32))
    d.text((16, height - 30), "Start    Files    Browser    Settings", fill="white", font=font)
    x0, y0, x1, y1 = width // 6, height // 8, width * 5 // 6, height * 3 // 4
    d.rectangle((x0 + 6, y0 + 6, x1 + 6, y1 + 6), fill=(15, 30, 50))
    d.rectangle((x0, y0, x1, y1), fill=(250, 250, 252))
    d.rectangle((x0, y0, x1, y0 + 36), fill=(230, 233, 238))
    d.text((x0 + 14, y0 + 9), "Printers & Scanners", fill=(30, 30, 30), font=bold)
    rows = [
        ("HP LaserJet 400 (office)", "Error: driver out of date", (207, 34, 46)),
        ("Canon PIXMA (home)", "Ready", (26, 127, 55)),
        ("Microsoft Print to PDF", "Ready", (26, 127, 55)),
    ]
    for i, (name, state, colour) in enumerate(rows):
        y = y0 + 60 + i * 56
        d.rectangle((x0 + 16, y, x1 - 16, y + 46), outline=(220, 224, 230), fill="white")
        d.text((x0 + 30, y + 6), name, fill=(20, 20, 20), font=bold)
        d.text((x0 + 30, y + 27), state, fill=colour, font=font)
    d.rectangle((x1 - 190, y1 - 56, x1 - 20, y1 - 20), fill=(31, 111, 235))
    d.text((x1 - 170, y1 - 47), "Update driver…", fill="white", font=font)
    return image


def _settled(display: str, want: tuple[int, int]) -> tuple[int, int]:
    """The pointer once it came within 3 px of ``want`` (or where it is after 5 s)."""
    deadline = time.monotonic() + 5
    where = pointer(display)
    while max(abs(where[0] - want[0]), abs(where[1] - want[1])) > 3:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
        where = pointer(display)
    return where


def _near(got: tuple[int, int], want: tuple[int, int], box: dict[str, float]) -> bool:
    """Within one displayed pixel of the scaled video (1280 px wide on the customer's side)."""
    slack = 1280 / box["width"] + 0.5
    return abs(got[0] - want[0]) <= slack and abs(got[1] - want[1]) <= slack


def test_a_whole_support_session_from_the_dashboard(
    procs: list[Proc], tmp_path: Path, display: str, browser: Any
) -> None:
    from agent.capture.xvfb import Canvas

    signal_proc, signal = start_signal_server()
    procs.append(signal_proc)
    dash, url = dashboard_agent(tmp_path / "csr", signal)
    procs.append(dash)

    # bypass_csp: Playwright evaluates wait_for_function predicates with eval, which our CSP forbids
    context = browser.new_context(viewport={"width": 1600, "height": 1000}, bypass_csp=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.split("/?")[0])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    shot(page, "01-dashboard-empty")

    # start a session from the dashboard
    page.click("#start-first")
    page.wait_for_function(
        "/^[0-9]{4}-[0-9]{4}-[0-9]{4}$/.test(document.getElementById('invite-code').textContent)"
    )
    code = page.text_content("#invite-code") or ""
    shot(page, "02-session-started")

    # Invite: the copied link is the one a customer joins with
    page.click("#copy-link")
    link = page.evaluate("navigator.clipboard.readText()")
    assert link == page.input_value("#invite-link")
    assert link.startswith(f"peerdesk://join/{code}?signal="), link
    mailto = page.get_attribute("#email-link", "href") or ""
    assert mailto.startswith("mailto:?subject=") and code in mailto
    # and the web page, for customers without PeerDesk: the secret only in the fragment
    page.click("#copy-web")
    web = page.evaluate("navigator.clipboard.readText()")
    room, secret = code.replace("-", "")[:6], code.replace("-", "")[6:]
    assert web.startswith("http://") and web.endswith(f"/j/{room}#{secret}"), web
    # nobody to talk to, nobody to pass control to, nobody to ask: those wait
    assert page.is_disabled("#chat-send") and page.is_disabled("#transfer-control")
    assert page.is_disabled("#request-view")

    canvas = Canvas(display)
    try:
        w, h = canvas.width // 2, canvas.height // 2
        for (qx, qy), rgb in QUADRANTS.items():
            canvas.fill(qx * w, qy * h, w, h, rgb)
        canvas.sync()

        downloads = tmp_path / "downloads"
        downloads.mkdir()
        cust = Proc(
            [
                "agent",
                "join",
                link,
                "--headless",
                "--json",
                "--name",
                "Alice",
                "--download-dir",
                str(downloads),
            ],
            home=tmp_path / "cust",
            name="customer",
            env={"DISPLAY": display},
        )
        procs.append(cust)
        joined = cust.expect("joined", timeout=30)
        assert joined["name"] == "Carol" and joined["sas"]
        page.wait_for_selector("#participants li:has-text('Alice')")
        # the check code to read aloud is on Alice's card, the same digits as hers
        card = page.text_content("#participants li:has-text('Alice') .psas .digits") or ""
        assert card.replace(" ", "") == joined["sas"], (card, joined["sas"])
        shot(page, "03-customer-joined")

        # Request View: the customer is asked (naming the CSR), the video shows the pattern
        page.click(".tab[data-tab=desktop]")
        page.click("#request-view")
        prompt = cust.expect("request", lambda e: e["cap"] == "view")
        assert prompt["name"] == "Carol"
        cust.send({"cmd": "grant", "id": prompt["id"]})
        page.wait_for_function("Number(document.getElementById('screen').dataset.frames || 0) >= 3")
        # scaled down to what the page shows, aspect kept (1280x800 on the customer's side)
        page.wait_for_function(
            "(c => c.width > 600 && c.width <= 1280 && Math.abs(c.width / c.height - 1.6) < 0.01)"
            "(document.getElementById('screen'))"
        )
        # the page decodes the customer's own VP8 frames (WebCodecs), no re-encoding
        assert page.get_attribute("#screen", "data-mode") == "vp8"
        for (qx, qy), rgb in QUADRANTS.items():
            got = settles(page, 0.25 + 0.5 * qx, 0.25 + 0.5 * qy, rgb)
            assert close_to(got, rgb), ((qx, qy), got, rgb)
        # and it plays: a change on the customer's screen reaches the page
        canvas.fill(0, 0, w, h, (250, 250, 250))
        canvas.sync()
        page.wait_for_function(
            """() => {
                const c = document.getElementById('screen');
                const d = c.getContext('2d').getImageData(c.width / 4, c.height / 4, 1, 1).data;
                return d[0] > 225 && d[1] > 225 && d[2] > 225;
            }"""
        )
        assert page.text_content("#cap-view") == "granted"
        assert page.text_content("#request-view") == "View: granted"  # not "Request view"
        assert page.is_visible("#release-view")  # with Stop beside it
        # the link under the picture, from the agent's link events (every 2 s)
        page.wait_for_selector("#link-quality:not([hidden])", timeout=10_000)
        quality = page.text_content("#link-quality") or ""
        assert re.fullmatch(r"connection good: [\d.]+ (Mbit|kbit)/s, \d+ fps", quality), quality
        shot(page, "04-view-pattern")
        canvas.put_image(0, 0, _desktop_picture(canvas.width, canvas.height))
        canvas.sync()
        page.wait_for_function(  # the window's title bar reached the page
            """() => {
                const c = document.getElementById('screen');
                const d = c.getContext('2d').getImageData(c.width / 2, c.height / 8 + 4, 1, 1).data;
                return Math.abs(d[0] - 230) < 20 && Math.abs(d[2] - 238) < 20;
            }"""
        )
        shot(page, "04-view")

        # Request Control: a click in the video moves the customer's pointer there
        page.click("#request-control")
        prompt = cust.expect("request", lambda e: e["cap"] == "control")
        cust.send({"cmd": "grant", "id": prompt["id"]})
        page.wait_for_function(
            "document.getElementById('control-pill').textContent === 'you control'"
        )
        box = page.locator("#screen").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.5)
        # the video is scaled to fit: one page pixel covers more than one of the customer's
        assert _near(_settled(display, (320, 400)), (320, 400), box)
        page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.25)
        assert _near(_settled(display, (960, 200)), (960, 200), box)
        shot(page, "05-control")

        # chat both ways, and "Send to"
        page.click(".tab[data-tab=tools]")
        page.fill("#chat-input", "Hello Alice, I can see your screen now.")
        page.click("#chat-send")
        got = cust.expect("chat", lambda e: e["text"].startswith("Hello Alice"))
        assert got["name"] == "Carol" and not got.get("to")
        cust.send({"cmd": "chat", "text": "Great, the printer is the problem."})
        page.wait_for_selector("#chat-log :text('Great, the printer is the problem.')")
        page.select_option("#chat-to", label="Alice (customer)")
        page.fill("#chat-input", "Only for you: click Start.")
        page.click("#chat-send")
        private = cust.expect("chat", lambda e: e["text"] == "Only for you: click Start.")
        assert private["to"] == [joined["me"]] or private["to"], private
        shot(page, "06-chat")
        # a reload keeps every line, ours too, with the times they were said
        lines_before = page.eval_on_selector_all("#chat-log .msg", "l => l.map(m => m.textContent)")
        activity_before = page.text_content("#activity li:last-child")
        assert len(lines_before) == 3 and all(":" in x[:6] for x in lines_before), lines_before
        page.reload()
        page.wait_for_selector("#chat-log :text('Only for you: click Start.')")
        lines_after = page.eval_on_selector_all("#chat-log .msg", "l => l.map(m => m.textContent)")
        assert lines_after == lines_before
        assert page.text_content("#activity li:last-child") == activity_before
        page.click(".tab[data-tab=tools]")

        # a second customer: the CSR makes them primary, then Alice again
        bob = Proc(
            ["agent", "join", link, "--headless", "--json", "--name", "Bob"],
            home=tmp_path / "bob",
            name="bob",
            env={"DISPLAY": display},
        )
        procs.append(bob)
        bob.expect("joined", timeout=30)
        bob_row = page.locator("#participants li:has-text('Bob')")
        bob_row.wait_for()
        assert bob_row.locator(".tag.primary").count() == 0
        bob_row.locator("button:has-text('Make primary')").click()
        page.wait_for_selector("#participants li:has-text('Bob') .tag.primary")
        assert page.locator("#participants li:has-text('Alice') .tag.primary").count() == 0
        bob.expect(
            "roster", lambda e: any(p["name"] == "Bob" and p["primary"] for p in e["participants"])
        )
        page.locator("#participants li:has-text('Alice') button:has-text('Make primary')").click()
        page.wait_for_selector("#participants li:has-text('Alice') .tag.primary")
        # choose whom to assist: requests go to Bob now, and back to Alice
        page.locator("#participants li:has-text('Bob') button:has-text('Assist')").click()
        page.wait_for_selector("#participants li.target:has-text('Bob')")
        page.click(".tab[data-tab=desktop]")
        page.click("#request-sysinfo")
        assert bob.expect("request")["cap"] == "sysinfo"
        page.wait_for_function("document.getElementById('cap-sysinfo').textContent === 'pending'")
        assert page.text_content("#cap-view") == "not asked"  # Bob's answers, not Alice's
        page.locator("#participants li:has-text('Alice') button:has-text('Assist')").click()
        page.wait_for_selector("#participants li.target:has-text('Alice')")
        assert page.text_content("#cap-view") == "granted"
        assert page.text_content("#cap-sysinfo") == "not asked"
        page.click(".tab[data-tab=tools]")
        bob.send({"cmd": "leave"})
        assert bob.wait(20) == 0
        page.wait_for_selector("#participants li:has-text('Bob')", state="detached")

        # a file with a progress bar that reaches 100 % and the same hash at the customer
        page.click(".tab[data-tab=desktop]")
        page.click("#request-files")
        prompt = cust.expect("request", lambda e: e["cap"] == "files")
        cust.send({"cmd": "grant", "id": prompt["id"]})
        page.wait_for_function("document.getElementById('cap-files').textContent === 'granted'")
        page.click(".tab[data-tab=tools]")
        src = tmp_path / "printer-driver.bin"
        src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        page.set_input_files("#file-input", str(src))
        page.click("#file-send")
        offer = cust.expect("file", lambda e: e["state"] == "offered", timeout=30)
        assert offer["name"] == "printer-driver.bin" and offer["size"] == src.stat().st_size
        cust.send({"cmd": "accept_file", "id": offer["id"]})
        done = cust.expect("file", lambda e: e["state"] in ("done", "failed"), timeout=60)
        assert done["state"] == "done" and done["sha256"] == digest, done
        assert hashlib.sha256(Path(done["path"]).read_bytes()).hexdigest() == digest
        row = page.locator(f"#file-list li[data-sha256='{digest}']")
        row.wait_for()
        assert row.get_attribute("data-percent") == "100"
        assert page.locator("#file-list progress").first.evaluate("b => b.value") == 100

        # notes go into the session record
        page.fill("#note-input", "Customer's printer driver was outdated; sent v2.1.")
        page.click("#note-save")
        page.wait_for_selector("#note-list li:has-text('printer driver was outdated')")
        shot(page, "07-file-and-notes")

        # an assistant joins with the assistant code, is admitted, and gets control
        page.click("#copy-csr-code")
        csr_code = page.evaluate("navigator.clipboard.readText()")
        assert re.fullmatch(r"[0-9]{4}-[0-9]{4}-[0-9]{4}", csr_code) and csr_code != code, csr_code
        dan = Proc(
            [
                "agent",
                "join",
                csr_code,
                "--signal",
                signal,
                "--as",
                "assistant",
                "--headless",
                "--json",
                "--name",
                "Dan",
            ],
            home=tmp_path / "dan",
            name="assistant",
        )
        procs.append(dan)
        page.click("#asking button:has-text('Admit')", timeout=30_000)
        dan_me = dan.expect("joined", lambda e: e["role"] == "csr", timeout=30)["me"]
        page.wait_for_selector("#participants li:has-text('Dan')")
        page.click(".tab[data-tab=session]")
        page.select_option("#transfer-to", label="Dan")
        page.click("#transfer-control")
        page.wait_for_selector("#participants li:has-text('Dan') .tag.control")
        cust.expect("control", lambda e: e["holder"] == dan_me)
        dan.expect("control", lambda e: e["holder"] == dan_me)
        shot(page, "08-control-transferred")

        # take control back, then End Session shows the report
        page.select_option("#transfer-to", label="Me (take it back)")
        page.click("#transfer-control")
        page.wait_for_function(
            "document.getElementById('control-pill').textContent === 'you control'"
        )
        page.click("#end-session")
        page.wait_for_selector("#report-link:not([hidden])")
        cust.expect("ended", timeout=20)
        dan.expect("ended", timeout=20)
        shot(page, "09-session-report")
        href = page.get_attribute("#report-link", "href")
        assert href
        page.goto(url.split("/?")[0] + href)
        report_html = page.content()
        assert "printer-driver.bin" in report_html  # the file
        assert "printer driver was outdated" in report_html  # the note, from the signed log
        shot(page, "10-report-page")
        assert cust.wait() == 0
        assert dan.wait() == 0
    finally:
        canvas.close()
        context.close()
