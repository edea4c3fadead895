"""The dashboard answers only its own page: token, Host and Origin checks; hostile messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.browser import chromium, dashboard_agent
from tests.procs import Proc, start_signal_server


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(base, token, url) of a real ``peerdesk dashboard`` process."""
    signal_proc, signal = start_signal_server()
    procs: list[Proc] = [signal_proc]
    try:
        dash, url = dashboard_agent(tmp_path / "csr", signal)
        procs.append(dash)
        parts = urlsplit(url)
        yield f"{parts.scheme}://{parts.netloc}", parts.query.removeprefix("t="), url
    finally:
        for p in procs:
            p.kill()


async def _status(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> int:
    async with session.get(url, headers=headers or {}) as r:
        return r.status


async def test_no_token_wrong_token_wrong_origin_or_host_get_403(
    dashboard: tuple[str, str, str],
) -> None:
    base, token, url = dashboard
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        assert await _status(s, url) == 200
        assert await _status(s, f"{base}/") == 403
        assert await _status(s, f"{base}/?t=wrong{token}") == 403
        assert await _status(s, f"{base}/?t=") == 403
        assert await _status(s, url, {"Origin": "http://evil.example"}) == 403
        assert await _status(s, url, {"Origin": "null"}) == 403
        assert await _status(s, url, {"Origin": base}) == 200
        port = urlsplit(base).port
        assert await _status(s, url, {"Host": f"evil.example:{port}"}) == 403  # DNS rebinding
        assert await _status(s, f"{base}/report?session=s1") == 403
        assert await _status(s, f"{base}/static/app.js") == 200  # public, holds no secret
        assert await _status(s, f"{base}/static/../hub.py") in (403, 404)
        async with s.post(f"{base}/api/upload?session=s1&name=x", data=b"x") as r:
            assert r.status == 403
        for bad in (f"{base}/ws", f"{base}/screen?session=s1"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(bad)
            assert info.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(f"{base}/ws?t={token}", origin="http://evil.example")
        assert info.value.status == 403


async def test_hostile_websocket_messages_get_clear_errors(
    dashboard: tuple[str, str, str],
) -> None:
    base, token, _ = dashboard
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        ws = await s.ws_connect(f"{base}/ws?t={token}", origin=base)
        hello = await ws.receive_json(timeout=10)
        assert hello["type"] == "hello" and hello["me"]["name"] == "Carol"

        async def reply(raw: str | bytes) -> dict[str, Any]:
            if isinstance(raw, bytes):
                await ws.send_bytes(raw)
            else:
                await ws.send_str(raw)
            msg: dict[str, Any] = await ws.receive_json(timeout=10)
            return msg

        assert "JSON" in (await reply("{not json"))["reason"]
        assert "JSON" in (await reply(b"\x00\x01"))["reason"]
        assert "object" in (await reply("[1, 2]"))["reason"]
        assert "unknown op" in (await reply(json.dumps({"op": "rm -rf"})))["reason"]
        got = await reply(json.dumps({"op": "cmd", "session": "../s1", "cmd": {"cmd": "end"}}))
        assert "session" in got["reason"]
        got = await reply(json.dumps({"op": "cmd", "session": "s9", "cmd": {"cmd": "end"}}))
        assert got["code"] == "no_session"
        got = await reply(json.dumps({"op": "start"}))
        assert got["type"] == "started"
        sid = got["session"]
        # status values of the new session arrive; the next error is ours
        while True:
            msg = await ws.receive_json(timeout=10)
            if msg["type"] == "status" and msg["event"]["event"] == "session":
                break
        got = await reply(json.dumps({"op": "cmd", "session": sid, "cmd": {"cmd": "format"}}))
        assert "unknown command" in got["reason"]
        got = await reply(json.dumps({"op": "cmd", "session": sid, "cmd": "end"}))
        assert "command object" in got["reason"]
        got = await reply(
            json.dumps({"op": "cmd", "session": sid, "cmd": {"cmd": "click", "x": 5, "y": 0}})
        )
        assert "between 0 and 1" in got["reason"]
        got = await reply(json.dumps({"op": "cmd", "session": sid, "cmd": {"cmd": "leave"}}))
        assert "end it instead" in got["reason"]
        got = await reply(json.dumps({"op": "note", "session": sid, "text": ""}))
        assert "note" in got["reason"]
        await ws.send_str("x" * (200 * 1024))  # too large: the server closes this socket
        msg = await ws.receive(timeout=10)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
        await ws.close()
        # the agent is still fine
        ws = await s.ws_connect(f"{base}/ws?t={token}", origin=base)
        assert (await ws.receive_json(timeout=10))["type"] == "hello"
        await ws.close()


def test_a_page_from_another_site_cannot_use_the_dashboard(
    dashboard: tuple[str, str, str],
) -> None:
    """Even knowing the token, another site's page gets refused (real Chromium)."""
    base, token, _ = dashboard
    with chromium() as browser:
        context = browser.new_context()
        try:
            evil = "<html><body>evil</body></html>"
            context.route(
                "http://evil.test/**",
                lambda route: route.fulfill(body=evil, content_type="text/html"),
            )
            page = context.new_page()
            page.goto("http://evil.test/")
            outcome = page.evaluate(
                """async ([base, token]) => {
                    const ws = await new Promise((done) => {
                        const s = new WebSocket(base.replace('http', 'ws') + '/ws?t=' + token);
                        s.onopen = () => done('open');
                        s.onerror = () => done('refused');
                        setTimeout(() => done('timeout'), 8000);
                    });
                    return [ws];
                }""",
                [base, token],
            )
            assert outcome[0] == "refused", outcome
        finally:
            context.close()
