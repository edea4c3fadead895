"""The customer's page in Chromium: scam warning, prompts naming the verified CSR with
the check code, Allow / Deny, the indicator with Stop, chat, leave. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import DecodeError
from agent.protocol import commands as cmds
from tests.browser import chromium, shot
from tests.desktop import xvfb
from tests.procs import Proc, start_signal_server
from tray.customer import WARNING_SEEN, CustomerPanel

WAIT_MS = 20_000


def test_page_messages_are_parsed_strictly() -> None:
    parse = CustomerPanel.parse
    assert parse('{"op":"answer","id":"r1","yes":true}') == cmds.AnswerCommand(id="r1", grant=True)
    assert parse('{"op":"answer","id":"r1","yes":false}') == cmds.AnswerCommand(
        id="r1", grant=False
    )
    assert parse('{"op":"stop"}') == cmds.RevokeCommand(cap="all")
    assert parse('{"op":"leave"}') == cmds.LeaveCommand()
    assert parse('{"op":"file","id":"f2","yes":true}') == cmds.FileCommand(
        kind="accept_file", id="f2"
    )
    assert parse('{"op":"warning_seen"}') is None
    for bad, words in (
        ("nope", "not JSON"),
        ("[]", "object"),
        ('{"op":"grant_everything"}', "unknown op"),
        ('{"op":"answer","id":"../x","yes":true}', "id"),
        ('{"op":"answer","id":"r1","yes":"yes"}', "true or false"),
        ('{"op":"chat","text":""}', "text"),
        ('{"op":"chat","text":5}', "text"),
    ):
        with pytest.raises(DecodeError) as info:
            parse(bad)
        assert words in info.value.message, (bad, info.value.message)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for p in reversed(started):
        if isinstance(p, Proc):
            p.kill()
        elif p.poll() is None:
            p.kill()
            p.wait(10)


def _wait_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"nothing in {path} within {timeout}s")


def test_the_customer_answers_in_the_browser(procs: list[Any], tmp_path: Path) -> None:
    signal_proc, signal = start_signal_server()
    procs.append(signal_proc)
    csr = Proc(
        ["agent", "start", "--headless", "--json", "--signal", signal, "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
    )
    procs.append(csr)
    link = csr.expect("session")["link"]

    opened = tmp_path / "opened.txt"
    browser_sh = tmp_path / "browser.sh"
    browser_sh.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser_sh.chmod(0o755)
    with xvfb(1024, 768) as display, chromium() as browser:
        home = tmp_path / "cust"
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        out = (tmp_path / "customer.out").open("w")
        cust = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "join",
                link,
                "--name",
                "Alice",
                "--download-dir",
                str(downloads),
            ],  # not headless
            env={
                **os.environ,
                "DISPLAY": display,
                "PEERDESK_HOME": str(home),
                "BROWSER": f"{browser_sh} %s",
                "PYTHONUNBUFFERED": "1",
            },
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        procs.append(cust)
        url = _wait_file(opened)  # the agent opened its page in the "default browser"
        assert url.startswith("http://127.0.0.1:") and "?t=" in url

        context = browser.new_context(viewport={"width": 1000, "height": 900}, bypass_csp=True)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        try:
            page.goto(url)
            # first run: the warning about support scams comes first
            page.wait_for_selector("#warning:not([hidden])")
            assert "Nobody legitimate calls you unasked" in (page.text_content("#warning") or "")
            shot(page, "customer-01-scam-warning")
            # ...before the join: while it is open, the CSR cannot reach this machine
            csr.drain(2.0)
            assert not [e for e in csr.events if e.get("event") == "joined"], csr.events
            page.click("#warning-ok")
            page.wait_for_selector("#warning", state="hidden")
            assert (home / WARNING_SEEN).exists()
            csr_joined = csr.expect("joined", timeout=30)

            # the verified CSR and the check code
            page.wait_for_selector("#csr-name:has-text('Carol')")
            sas = csr_joined["sas"]
            assert page.text_content("#sas") == f"{sas[:3]} {sas[3:]}"
            assert "verified" in (page.text_content("#csr-name") or "")

            # a prompt names the CSR and shows the check code; Allow
            csr.send({"cmd": "request", "cap": "view"})
            prompt = page.locator(".prompt[data-cap=view]")
            prompt.wait_for()
            text = prompt.text_content() or ""
            assert "Carol asks to see your screen" in text and f"{sas[:3]} {sas[3:]}" in text
            shot(page, "customer-02-consent-prompt")
            prompt.locator("button.allow").click()
            csr.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "granted")
            page.wait_for_selector("#indicator:not([hidden]):has-text('Carol can see your screen')")

            # Deny works, then Allow control: the indicator says so, unmistakably
            csr.send({"cmd": "request", "cap": "control"})
            page.locator(".prompt[data-cap=control] button.deny").click()
            csr.expect("consent", lambda e: e["cap"] == "control" and e["state"] == "denied")
            page.wait_for_selector(".prompt[data-cap=control]", state="detached")
            csr.send({"cmd": "request", "cap": "control"})
            page.locator(".prompt[data-cap=control] button.allow").click()
            csr.expect("control", lambda e: e["holder"] == csr_joined["me"])
            page.wait_for_selector("#indicator.controlled:has-text('Carol is CONTROLLING')")
            assert "Controlled" in page.title()
            shot(page, "customer-03-being-controlled")

            # chat both ways
            csr.send({"cmd": "chat", "text": "I am opening the printer settings."})
            page.wait_for_selector("#chat-log :text('I am opening the printer settings.')")
            page.fill("#chat-input", "OK, go ahead")
            page.press("#chat-input", "Enter")
            assert csr.expect("chat", lambda e: e["text"] == "OK, go ahead")["name"] == "Alice"

            # Stop revokes everything at once
            page.click("#stop")
            revoked = {
                csr.expect("consent", lambda e: e["state"] == "revoked")["cap"] for _ in range(2)
            }
            assert revoked == {"view", "control"}
            page.wait_for_selector("#indicator", state="hidden")
            csr.send({"cmd": "click", "x": 0.5, "y": 0.5})
            assert "not granted" in csr.expect("error")["reason"]
            shot(page, "customer-04-stopped")

            # a file: offered in a human size, then listed with where it was saved
            csr.send({"cmd": "request", "cap": "files"})
            page.locator(".prompt[data-cap=files] button.allow").click()
            csr.expect("consent", lambda e: e["cap"] == "files" and e["state"] == "granted")
            sent = tmp_path / "manual.pdf"
            sent.write_bytes(b"%PDF" + b"x" * 1_500_000)
            csr.send({"cmd": "send_file", "path": str(sent)})
            offer = page.locator(".prompt:has-text('wants to send you manual.pdf')")
            offer.wait_for()
            assert "1.4 MB" in (offer.text_content() or "")
            offer.locator("button.primary").click()
            page.wait_for_selector("#files-card:not([hidden]) :text('(1.4 MB)')", timeout=60_000)
            saved = page.text_content("#received .hint") or ""
            assert saved.startswith(f"Saved as {downloads}") and saved.endswith(".pdf"), saved
            assert Path(saved.removeprefix("Saved as ")).read_bytes() == sent.read_bytes()
            assert page.is_visible("#received button:has-text('Show in folder')")

            # the warning is for the first run only; a reload keeps the chat, ours too
            page.reload()
            page.wait_for_selector("#csr-name:has-text('Carol')")
            assert page.is_hidden("#warning")
            page.wait_for_selector("#chat-log .msg.mine:has-text('OK, go ahead')")

            page.click("#leave")
            # the top of the page says so, and what no longer works is disabled
            page.wait_for_selector("#ended:not([hidden]):has-text('You left the session')")
            assert page.is_disabled("#chat-input") and page.is_disabled("#leave")
            assert (page.text_content(".who .label") or "") == "You were connected to"
            shot(page, "customer-05-left")
            csr.expect("left", timeout=20)
            assert cust.wait(timeout=20) == 0
        finally:
            context.close()
        csr.send({"cmd": "end"})
        assert csr.wait(20) == 0
