"""One-click links: strict parsing, the landing page at /j/ROOM, and a join through it.

Hostile links are refused with a clear message before anything starts: no network
connection, no identity made. The landing page keeps the secret in the fragment
(checked in a real Chromium: no request the browser makes carries it), builds the
``peerdesk://`` link, and that link joins a real session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import InvalidCode
from agent.protocol.code import parse_code_or_link, parse_link
from tests.procs import Proc, start_signal_server

CHROMIUM = "/usr/bin/chromium"


class Listener:
    """A TCP port on loopback that counts who connects (nobody should)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


HOSTILE = [
    ("https://join/1234-5678-9012?signal=ws://127.0.0.1:{port}", "must start with peerdesk://"),
    ("peerdesk://evil/1234-5678-9012?signal=ws://127.0.0.1:{port}", "unknown link action"),
    ("peerdesk://join@evil/1234-5678-9012?signal=ws://127.0.0.1:{port}", "unknown link action"),
    ("peerdesk://join/1234-5678-9012?signal=ws://127.0.0.1:{port}&run=calc", "unknown parameter"),
    (
        "peerdesk://join/1234-5678-9012?signal=ws://127.0.0.1:{port}&signal=ws://evil",
        "more than one",
    ),
    ("peerdesk://join/1234-5678-9012?signal=ws://127.0.0.1:{port}#x", "fragment"),
    ("peerdesk://join/1234-5678-9012?signal=ws://127.0.0.1:{port}%0a.evil", "control"),
    ("peerdesk://join/1234-5678-9012?signal=file:///etc/passwd", "must start with ws://"),
    ("peerdesk://join/1234-5678-9012?signal=ws://me:pw@127.0.0.1:{port}", "user name"),
    ("peerdesk://join/1234-5678-901?signal=ws://127.0.0.1:{port}", "12 digits"),
    ("peerdesk://join/../1234-5678-9012?signal=ws://127.0.0.1:{port}", "12 digits"),
]


def test_hostile_links_are_refused_before_anything_starts(tmp_path: Path) -> None:
    listener = Listener()
    try:
        for template, message in HOSTILE:
            link = template.format(port=listener.port)
            home = tmp_path / "home"
            r = subprocess.run(
                [sys.executable, "-m", "agent", "join", link, "--headless", "--json"],
                capture_output=True,
                text=True,
                timeout=30,
                env={**os.environ, "PEERDESK_HOME": str(home)},
            )
            assert r.returncode == 2, (link, r.stdout, r.stderr)
            event = json.loads(r.stdout)
            assert event["event"] == "error" and event["code"] == "invalid_code", link
            assert message in event["reason"], (link, event)
            assert not home.exists(), "nothing may be written for a refused link"
        # the console front end says it in words, on stderr
        r = subprocess.run(
            [sys.executable, "-m", "agent", "join", "peerdesk://evil/1234-5678-9012"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PEERDESK_HOME": str(tmp_path / "console")},
        )
        assert r.returncode == 2 and r.stdout == ""
        assert r.stderr.startswith("peerdesk: unknown link action")
    finally:
        listener.close()
    assert listener.accepted == 0


VALID = "peerdesk://join/1234-5678-9012?signal=ws://127.0.0.1:47800"
_KEY = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)


@given(key=_KEY.filter(lambda k: k != "signal"), value=_KEY)
def test_any_unknown_parameter_is_refused(key: str, value: str) -> None:
    with pytest.raises(InvalidCode, match="unknown parameter"):
        parse_link(f"{VALID}&{key}={value}")


@given(scheme=st.from_regex(r"[a-z][a-z0-9+.-]{0,10}", fullmatch=True))
def test_any_other_scheme_is_refused(scheme: str) -> None:
    if scheme == "peerdesk":
        return
    with pytest.raises(InvalidCode, match="peerdesk://"):
        parse_link(VALID.replace("peerdesk", scheme, 1))


@given(action=st.text(st.characters(codec="ascii"), max_size=12))
def test_any_other_action_is_refused(action: str) -> None:
    if action == "join":
        return
    with pytest.raises(InvalidCode):
        parse_code_or_link(VALID.replace("join", action, 1))


# -- the landing page ------------------------------------------------------------------


def _get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def test_landing_page_and_installers(procs: list[Proc], tmp_path: Path) -> None:
    (tmp_path / "install.sh").write_text("#!/bin/sh\necho installer\n")
    server = Proc(
        ["signaling", "--host", "127.0.0.1", "--port", "0"],
        name="signal",
        env={"PEERDESK_INSTALLERS": str(tmp_path)},
    )
    procs.append(server)
    base = f"http://127.0.0.1:{server.expect('listening', timeout=20)['port']}"

    status, headers, body = _get(f"{base}/j/482913")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert 'data-room="482913"' in body
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    for bad in ("48291", "4829134", "48291x", "%3Cscript%3E", "482913%2F..", ""):
        status, _, body = _get(f"{base}/j/{bad}")
        assert status == 404, bad
        assert "<" not in body

    status, headers, body = _get(f"{base}/install/linux")
    assert status == 200 and body == "#!/bin/sh\necho installer\n"
    assert 'filename="install.sh"' in headers["Content-Disposition"]
    status, _, body = _get(f"{base}/install/windows")
    assert status == 404 and "no PeerDesk installer for windows" in body
    status, _, _ = _get(f"{base}/install/..%2F..%2Fetc%2Fpasswd")
    assert status == 404


def test_landing_page_in_chromium_builds_a_link_that_joins(
    procs: list[Proc], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    server, url = start_signal_server()
    procs.append(server)
    base = url.replace("ws://", "http://")
    csr = Proc(
        ["agent", "start", "--signal", url, "--headless", "--json", "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
    )
    procs.append(csr)
    session = csr.expect("session")
    room, secret = session["room"], session["code"].replace("-", "")[6:]

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{base}/j/{room}#{secret}", wait_until="load", timeout=15000)
            href = page.get_attribute("#open", "href", timeout=5000)
            shown = page.inner_text("#code")
            # the page opens the link by itself (the OS hands it to the installed agent)
            for _ in range(50):
                launched = [r for r in requests if r.startswith("peerdesk:")]
                if launched:
                    break
                page.wait_for_timeout(100)
            assert page.get_attribute("body", "data-os") == "linux"
            assert page.get_attribute("#os-linux", "class") == "os-current"
            # an incomplete link says so and offers no button
            page.goto(f"{base}/j/{room}", wait_until="load", timeout=15000)
            assert page.get_attribute("#bad", "class") == "warn"
            assert page.get_attribute("#good", "class") == "hidden"
        finally:
            browser.close()
    assert shown == session["code"]
    assert href is not None
    link = parse_link(href)
    assert str(link.code) == session["code"] and link.signal == url
    assert launched == [href]
    web = [r for r in requests if r.startswith("http")]
    assert web and all(secret not in r for r in web), requests
    assert secret not in "".join(server.stderr)

    customer = Proc(
        ["agent", "join", href, "--headless", "--json", "--name", "Alice"],
        home=tmp_path / "alice",
        name="alice",
    )
    procs.append(customer)
    customer.expect("joined")
    assert csr.expect("joined")["name"] == "Alice"
    csr.send({"cmd": "end"})
    customer.expect("ended")
    assert csr.wait() == 0 and customer.wait() == 0


def test_console_start_prints_the_web_page_of_its_own_server(
    procs: list[Proc], tmp_path: Path
) -> None:
    csr = Proc(["agent", "start", "--port", "0", "--no-advertise"], home=tmp_path / "csr")
    procs.append(csr)
    lines: list[str] = []
    while not any(x.startswith("Web page:") for x in lines):
        line = csr.lines.get(timeout=20)
        assert line is not None, "".join(csr.stderr)
        lines.append(line)
    code = next(x for x in lines if x.startswith("Session code:")).split()[-1]
    page = next(x for x in lines if x.startswith("Web page:")).split()[-1]
    digits = code.replace("-", "")
    assert page.endswith(f"/j/{digits[:6]}#{digits[6:]}")
    port = page.split("/")[2].rsplit(":", 1)[1]
    status, _, body = _get(f"http://127.0.0.1:{port}/j/{digits[:6]}")  # fragments stay home
    assert status == 200 and f'data-room="{digits[:6]}"' in body
