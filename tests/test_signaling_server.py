"""The signaling server, end to end: a real server on 127.0.0.1 and real WebSocket clients.

Every message a client receives is also checked with ``decode_server``, so the server
never says anything the agent's decoder would refuse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

import agent
from agent.protocol import signaling as sig
from signaling import server as signaling_server
from signaling.logs import JsonFormatter
from signaling.server import Deliver, Hub, ServerConfig, start_server

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 2.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Client:
    """A test client: send JSON, receive decoded JSON, and check it against the wire."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, type: str, **fields: Any) -> None:
        await self.ws.send_str(json.dumps({"type": type, **fields}))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is WSMsgType.TEXT, f"expected a text frame, got {msg.type!r} {msg.data!r}"
        sig.decode_server(msg.data)  # the server only says what agents accept
        body: dict[str, Any] = json.loads(msg.data)
        return body

    async def error(self) -> str:
        body = await self.recv()
        assert body["type"] == "error", body
        assert body["message"]
        code: str = body["code"]
        return code

    async def quiet(self, timeout: float = 0.15) -> None:
        """Nothing arrives within ``timeout``."""
        try:
            msg = await self.ws.receive(timeout=timeout)
        except TimeoutError:
            return
        pytest.fail(f"unexpected message {msg!r}")

    async def create(self) -> str:
        await self.send("create")
        body = await self.recv()
        assert body["type"] == "created", body
        room: str = body["room"]
        return room

    async def join(self, room: str) -> str:
        await self.send("join", room=room)
        body = await self.recv()
        assert body["type"] == "joined", body
        assert body["room"] == room
        peer: str = body["peer"]
        return peer

    async def works(self) -> None:
        """The connection still answers: a join of a missing room gets a clean error."""
        await self.send("join", room="000000")
        assert await self.error() in ("room_not_found", "already_joined", "own_room")


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start servers on 127.0.0.1 with a random port; returns their base URL."""
    runners = []

    async def start(config: ServerConfig | None = None) -> str:
        runner, port = await start_server("127.0.0.1", 0, config)
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def url(serve: Callable[..., Awaitable[str]]) -> str:
    return await serve()


@pytest.fixture
def connect(http: aiohttp.ClientSession, url: str) -> Connect:
    async def open_client(base: str | None = None) -> Client:
        ws = await http.ws_connect(f"{base or url}/ws", timeout=aiohttp.ClientWSTimeout(TIMEOUT))
        return Client(ws)

    return open_client


async def health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/healthz") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


# --------------------------------------------------------------------------- basics


async def test_healthz_counts_rooms_and_connections(
    http: aiohttp.ClientSession, url: str, connect: Connect
) -> None:
    assert await health(http, url) == {
        "status": "ok",
        "rooms": 0,
        "connections": 0,
        "version": agent.__version__,
    }
    host = await connect()
    await host.create()
    joiner = await connect()
    body = await health(http, url)
    assert (body["rooms"], body["connections"]) == (1, 2)
    await joiner.ws.close()
    await host.ws.close()
    for _ in range(100):
        body = await health(http, url)
        if body["connections"] == 0:
            break
        await asyncio.sleep(0.01)
    # the host's room waits (ServerConfig.resume_grace) for its host to resume it
    assert (body["rooms"], body["connections"]) == (1, 0)


async def test_create_join_and_relay_both_ways(connect: Connect) -> None:
    host, joiner = await connect(), await connect()
    room = await host.create()
    assert len(room) == 6
    assert room.isdigit()
    peer = await joiner.join(room)
    assert sig.PEER_RE.fullmatch(peer)
    assert peer != "host"
    assert await host.recv() == {"type": "peer", "room": room, "peer": peer}

    await joiner.send("send", to="host", data="hello-from-joiner")
    assert await host.recv() == {
        "type": "relay",
        "room": room,
        "from": peer,
        "data": "hello-from-joiner",
    }
    await host.send("send", to=peer, data="hello-from-host")
    assert await joiner.recv() == {
        "type": "relay",
        "room": room,
        "from": "host",
        "data": "hello-from-host",
    }
    await host.quiet()
    await joiner.quiet()


async def test_created_says_when_the_room_expires(serve: Any, connect: Connect) -> None:
    base = await serve(ServerConfig(room_idle_ttl=90.0))
    host = await connect(base)
    await host.send("create")
    body = await host.recv()
    assert body["expires_in"] == 90


async def test_joiner_disconnect_tells_the_host(connect: Connect) -> None:
    host, joiner, other = await connect(), await connect(), await connect()
    room = await host.create()
    peer = await joiner.join(room)
    await host.recv()
    other_peer = await other.join(room)
    await host.recv()
    await joiner.ws.close()
    assert await host.recv() == {"type": "gone", "room": room, "peer": peer}
    await other.quiet()
    # the room lives on for the others
    await host.send("send", to=other_peer, data="still here")
    assert (await other.recv())["data"] == "still here"


@pytest.mark.parametrize("grace", [0.0, 30.0])
async def test_host_disconnect_tells_joiners_and_removes_the_room(
    http: aiohttp.ClientSession, serve: Callable[..., Awaitable[str]], grace: float
) -> None:
    """Without a resume grace the room goes at once; with one it waits for its host
    (``host_away`` for joiners meanwhile; see tests/test_signaling_resume.py)."""
    url = await serve(ServerConfig(resume_grace=grace))

    async def connect() -> Client:
        ws = await http.ws_connect(f"{url}/ws", timeout=aiohttp.ClientWSTimeout(TIMEOUT))
        return Client(ws)

    host, a, b = await connect(), await connect(), await connect()
    room = await host.create()
    await a.join(room)
    await b.join(room)
    await host.ws.close()
    assert await a.recv() == {"type": "gone", "room": room, "peer": "host"}
    assert await b.recv() == {"type": "gone", "room": room, "peer": "host"}
    late = await connect()
    await late.send("join", room=room)
    assert await late.error() == ("host_away" if grace else "room_not_found")
    # a joiner of a vanished room is free to join another one
    room2 = await late.create()
    await a.join(room2)
    body = await health(http, url)
    assert body["rooms"] == (2 if grace else 1)


async def test_close_room_tells_joiners_and_refuses_later_joins(connect: Connect) -> None:
    host, a, b = await connect(), await connect(), await connect()
    room = await host.create()
    await a.join(room)
    await b.join(room)
    await b.ws.close()
    await host.recv()  # peer a
    await host.recv()  # peer b
    assert (await host.recv())["type"] == "gone"
    await host.send("close", room=room, reason="burned")
    assert await a.recv() == {"type": "closed", "room": room, "reason": "burned"}
    late = await connect()
    await late.send("join", room=room)
    assert await late.error() == "room_burned"  # says why, not only "no such room"
    await host.send("close", room=room)
    assert await host.error() == "room_not_found"
    # the host may open a new room; the old joiner may join it
    room2 = await host.create()
    await a.join(room2)


async def test_only_the_host_closes_a_room(connect: Connect) -> None:
    host, joiner = await connect(), await connect()
    room = await host.create()
    await joiner.join(room)
    await joiner.send("close", room=room)
    assert await joiner.error() == "not_host"
    await host.recv()
    await host.quiet()


# --------------------------------------------------------------------------- expiry


async def test_idle_room_expires_and_join_refreshes_it(
    serve: Any, connect: Connect, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    base = await serve(ServerConfig(clock=clock, sweep_interval=0.02, room_idle_ttl=600.0))
    host, joiner = await connect(base), await connect(base)
    room = await host.create()
    clock.advance(500)
    await asyncio.sleep(0.1)
    await joiner.join(room)  # refreshes the room
    await host.recv()
    clock.advance(500)
    await asyncio.sleep(0.1)
    await host.quiet()
    assert (await health(http, base))["rooms"] == 1
    clock.advance(101)
    assert await host.recv() == {"type": "closed", "room": room, "reason": "expired"}
    assert await joiner.recv() == {"type": "closed", "room": room, "reason": "expired"}
    assert (await health(http, base))["rooms"] == 0
    other = await connect(base)
    await other.send("join", room=room)
    assert await other.error() == "room_expired"
    clock.advance(601)  # remembered for ten minutes, then just gone
    await other.send("join", room=room)
    assert await other.error() == "room_not_found"


async def test_expired_room_frees_the_hosts_quota(serve: Any, connect: Connect) -> None:
    clock = FakeClock()
    base = await serve(ServerConfig(clock=clock, sweep_interval=0.02, max_rooms_per_connection=1))
    host = await connect(base)
    room = await host.create()
    clock.advance(601)
    assert await host.recv() == {"type": "closed", "room": room, "reason": "expired"}
    await host.send("create")  # the expired room no longer counts against the quota
    assert (await host.recv())["type"] == "created"
    await host.send("create")
    assert await host.error() == "too_many_rooms"


# --------------------------------------------------------------------------- limits


async def test_rate_limit_refuses_then_recovers(serve: Any, connect: Connect) -> None:
    clock = FakeClock()
    base = await serve(ServerConfig(clock=clock, rate=1.0, burst=3.0))
    client = await connect(base)
    for _ in range(3):
        await client.send("send", to="host", data="x")
        assert await client.error() == "not_in_room"
    await client.send("send", to="host", data="x")
    assert await client.error() == "rate_limited"
    clock.advance(1.0)  # one token back
    await client.works()
    await client.send("create")
    assert await client.error() == "rate_limited"


async def test_rate_limit_abuse_closes_with_1008(serve: Any, connect: Connect) -> None:
    base = await serve(
        ServerConfig(clock=FakeClock(), rate=1.0, burst=2.0, rate_limit_close_after=3)
    )
    client = await connect(base)
    for _ in range(2):
        await client.send("create")
        assert (await client.recv())["type"] == "created"
    for _ in range(2):
        await client.send("create")
        assert await client.error() == "rate_limited"
    await client.send("create")
    msg = await client.ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == 1008


async def test_oversized_message_gets_too_large_and_connection_survives(
    connect: Connect,
) -> None:
    client = await connect()
    big = json.dumps({"type": "send", "to": "host", "data": "x" * (70 * 1024)})
    assert sig.MAX_MESSAGE_BYTES < len(big) < 2 * sig.MAX_MESSAGE_BYTES
    await client.ws.send_str(big)
    assert await client.error() == "too_large"
    await client.works()
    await client.create()


async def test_data_longer_than_the_wire_allows_is_refused(connect: Connect) -> None:
    host, joiner = await connect(), await connect()
    room = await host.create()
    await joiner.join(room)
    await joiner.send("send", to="host", data="y" * (sig.MAX_DATA_CHARS + 1))
    assert await joiner.error() == "malformed"
    await host.recv()  # peer
    await host.quiet()
    await joiner.send("send", to="host", data="y" * sig.MAX_DATA_CHARS)
    assert len((await host.recv())["data"]) == sig.MAX_DATA_CHARS


async def test_frame_above_the_websocket_limit_closes_with_1009(connect: Connect) -> None:
    client = await connect()
    await client.ws.send_str("x" * (2 * sig.MAX_MESSAGE_BYTES + 1024))
    msg = await client.ws.receive(timeout=TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "malformed"),
        ("[1, 2, 3]", "malformed"),
        ('"create"', "malformed"),
        ("{}", "malformed"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "join"}', "malformed"),
        ('{"type": "join", "room": "12345"}', "malformed"),
        ('{"type": "join", "room": 123456}', "malformed"),
        ('{"type": "send", "to": "host"}', "malformed"),
        ('{"type": "send", "to": "HOST", "data": "x"}', "malformed"),
        ('{"type": "send", "to": "host", "data": ""}', "malformed"),
        ('{"type": "close", "room": "123456", "reason": "Not Allowed!"}', "malformed"),
        ('{"type": "create", "n": NaN}', "malformed"),
        ('{"type": "\\u0000\\ud800x"}', "unknown_type"),
        ('{"type": "send", "to": "host", "data": "\\ud800"}', "malformed"),
    ],
)
async def test_bad_text_gets_an_error_and_connection_survives(
    connect: Connect, frame: str, code: str
) -> None:
    client = await connect()
    await client.ws.send_str(frame)
    assert await client.error() == code
    await client.works()


async def test_binary_frame_gets_malformed_and_connection_survives(connect: Connect) -> None:
    client = await connect()
    await client.ws.send_bytes(b'{"type":"create"}')
    body = await client.recv()
    assert body["code"] == "malformed"
    assert "text" in body["message"]
    await client.create()


async def test_unexpected_failure_answers_internal(
    connect: Connect, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(self: Hub, *args: Any) -> Any:
        raise RuntimeError("bug")

    client = await connect()
    monkeypatch.setattr(Hub, "_create", boom)
    with caplog.at_level(logging.ERROR, logger="peerdesk.signaling"):
        await client.send("create")
        body = await client.recv()
    assert body["code"] == "internal"
    assert "bug" not in body["message"]
    assert "Traceback" not in body["message"]
    assert any(r.getMessage() == "internal_error" for r in caplog.records)
    monkeypatch.undo()
    await client.create()


async def test_too_many_rooms_per_connection(connect: Connect) -> None:
    host = await connect()
    rooms = {await host.create() for _ in range(4)}
    assert len(rooms) == 4
    await host.send("create")
    assert await host.error() == "too_many_rooms"
    await host.send("close", room=rooms.pop())
    await host.create()


async def test_room_full(serve: Any, connect: Connect) -> None:
    base = await serve(ServerConfig(max_joiners_per_room=2))
    host = await connect(base)
    room = await host.create()
    first = await connect(base)
    second = await connect(base)
    third = await connect(base)
    await first.join(room)
    await second.join(room)
    await third.send("join", room=room)
    assert await third.error() == "room_full"
    await first.ws.close()
    assert [(await host.recv())["type"] for _ in range(3)] == ["peer", "peer", "gone"]
    await third.join(room)


async def test_server_full(serve: Any, connect: Connect) -> None:
    base = await serve(ServerConfig(max_rooms=2))
    a, b = await connect(base), await connect(base)
    room = await a.create()
    await b.create()
    await a.send("create")
    assert await a.error() == "server_full"
    await a.send("close", room=room)
    await b.create()


async def test_one_joined_room_per_connection_and_not_ones_own(connect: Connect) -> None:
    h1, h2, joiner = await connect(), await connect(), await connect()
    r1, r2 = await h1.create(), await h2.create()
    await joiner.join(r1)
    await joiner.send("join", room=r2)
    assert await joiner.error() == "already_joined"
    await joiner.send("join", room=r1)
    assert await joiner.error() == "already_joined"
    assert (await h1.recv())["type"] == "peer"
    await h1.send("join", room=r1)
    assert await h1.error() == "own_room"


async def test_send_outside_ones_rooms_is_refused(connect: Connect) -> None:
    h1, h2, j1, j2 = await connect(), await connect(), await connect(), await connect()
    r1, r2 = await h1.create(), await h2.create()
    p1, p2 = await j1.join(r1), await j2.join(r2)
    await h1.recv()
    await h2.recv()
    await h1.send("send", to=p2, data="not yours")
    assert await h1.error() == "peer_not_found"
    await j1.send("send", to=p2, data="joiners only talk to their host")
    assert await j1.error() == "peer_not_found"
    await h1.send("send", to="0123456789ab", data="nobody")
    assert await h1.error() == "peer_not_found"
    await h1.send("send", to="host", data="a host that joined nothing")
    assert await h1.error() == "not_in_room"
    await j2.quiet()
    await h2.quiet()
    # the right routes still work
    await j2.send("send", to="host", data="to h2")
    assert await h2.recv() == {"type": "relay", "room": r2, "from": p2, "data": "to h2"}
    await h1.quiet()
    assert p1 != p2


async def test_host_of_several_rooms_routes_by_joiner(connect: Connect) -> None:
    host, j1, j2 = await connect(), await connect(), await connect()
    r1, r2 = await host.create(), await host.create()
    assert r1 != r2
    p1, p2 = await j1.join(r1), await j2.join(r2)
    assert await host.recv() == {"type": "peer", "room": r1, "peer": p1}
    assert await host.recv() == {"type": "peer", "room": r2, "peer": p2}
    await host.send("send", to=p2, data="for two")
    await host.send("send", to=p1, data="for one")
    assert await j2.recv() == {"type": "relay", "room": r2, "from": "host", "data": "for two"}
    assert await j1.recv() == {"type": "relay", "room": r1, "from": "host", "data": "for one"}
    await j2.send("send", to="host", data="from two")
    assert await host.recv() == {"type": "relay", "room": r2, "from": p2, "data": "from two"}
    # closing one room leaves the other alone
    await host.send("close", room=r1, reason="ended")
    assert await j1.recv() == {"type": "closed", "room": r1, "reason": "ended"}
    await host.send("send", to=p1, data="gone")
    assert await host.error() == "peer_not_found"
    await host.send("send", to=p2, data="still")
    assert (await j2.recv())["data"] == "still"
    # the host leaving ends both
    await host.ws.close()
    assert await j2.recv() == {"type": "gone", "room": r2, "peer": "host"}
    await j1.quiet()


# --------------------------------------------------------------------------- logs


async def test_logs_are_json_lines_without_data(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sealed-payload-that-must-never-be-logged"
    with caplog.at_level(logging.DEBUG, logger="peerdesk.signaling"):
        host, joiner = await connect(), await connect()
        room = await host.create()
        await joiner.join(room)
        await joiner.send("send", to="host", data=secret)
        await host.recv()
        await host.recv()
        await joiner.ws.close()
        await host.recv()
    lines = [JsonFormatter().format(r) for r in caplog.records]
    events = [json.loads(line)["event"] for line in lines]
    assert {"connected", "room_created", "room_joined", "relay", "peer_gone"} <= set(events)
    assert not any(secret in line for line in lines)
    created = next(json.loads(x) for x in lines if json.loads(x)["event"] == "room_created")
    assert created["room"] == room


def test_json_formatter_keeps_reserved_names_and_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None)
    record.fields = {"event": "clash", "room": "123456"}
    try:
        raise ValueError("inner")
    except ValueError:
        record.exc_info = sys.exc_info()
    body = json.loads(JsonFormatter().format(record))
    assert body["event"] == "boom"
    assert body["field_event"] == "clash"
    assert body["room"] == "123456"
    assert "ValueError: inner" in body["exc"]


# --------------------------------------------------------------------------- hub alone


def test_room_ids_retry_on_collision(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([42, 42, 42, 7])
    monkeypatch.setattr("signaling.server.secrets.randbelow", lambda n: next(draws))
    hub = Hub()
    a, b = hub.connect(0.0), hub.connect(0.0)
    first = hub.receive(a, '{"type":"create"}', 0.0)
    second = hub.receive(b, '{"type":"create"}', 0.0)
    assert [(d.to, d.message.room) for d in first] == [(a, "000042")]  # type: ignore[union-attr]
    assert [(d.to, d.message.room) for d in second] == [(b, "000007")]  # type: ignore[union-attr]


def test_hub_disconnect_is_idempotent() -> None:
    hub = Hub(ServerConfig(resume_grace=0))
    host, joiner = hub.connect(0.0), hub.connect(0.0)
    (created,) = hub.receive(host, '{"type":"create"}', 0.0)
    assert isinstance(created, Deliver)
    assert isinstance(created.message, sig.Created)
    hub.receive(joiner, json.dumps({"type": "join", "room": created.message.room}), 0.0)
    assert len(hub.disconnect(joiner, 1.0)) == 1
    assert hub.disconnect(joiner, 1.0) == []
    assert hub.disconnect(host, 1.0) == []
    assert hub.stats() == {"rooms": 0, "connections": 0}


# --------------------------------------------------------------------------- lifecycle


async def test_shutdown_closes_clients_with_1001(http: aiohttp.ClientSession) -> None:
    runner, port = await start_server("127.0.0.1", 0)
    try:
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
        await ws.send_str('{"type":"create"}')
        assert (await ws.receive(timeout=TIMEOUT)).type is WSMsgType.TEXT
        cleanup = asyncio.create_task(runner.cleanup())
        msg = await ws.receive(timeout=TIMEOUT)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1001
        assert msg.extra == "server shutting down"
        await asyncio.wait_for(cleanup, TIMEOUT)
    finally:
        await runner.cleanup()


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
async def test_several_hosts_share_one_port(http: aiohttp.ClientSession) -> None:
    runner, port = await start_server(["127.0.0.1", "::1"], 0)
    try:
        assert port > 0
        for base in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            assert (await health(http, base))["status"] == "ok"
    finally:
        await runner.cleanup()


async def test_start_server_releases_everything_when_a_bind_fails() -> None:
    runner, port = await start_server("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="address already in use"):
            await start_server("127.0.0.1", port)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_python_m_signaling_stops_cleanly_on_signal(
    http: aiohttp.ClientSession, signum: int
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signaling",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        ready = json.loads(line)
        assert ready["event"] == "listening"
        port = ready["port"]
        ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
        await ws.send_str('{"type":"create"}')
        created = sig.decode_server((await ws.receive(timeout=TIMEOUT)).data)
        assert isinstance(created, sig.Created)

        proc.send_signal(signum)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1001
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err.decode()
        assert out == b""  # only the one "listening" line goes to stdout
        events = [json.loads(x)["event"] for x in err.decode().splitlines()]
        assert "listening" in events
        assert "room_created" in events
        assert events[-1] == "stopped"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_plain_get_on_ws_is_refused(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(f"{url}/ws") as resp:
        assert resp.status == 400
    assert (await health(http, url))["connections"] == 0


async def test_a_client_that_stops_reading_is_dropped(serve: Any, connect: Connect) -> None:
    base = await serve(ServerConfig(rate=1e6, burst=1e6, send_queue_limit=4))
    host, joiner = await connect(base), await connect(base)
    room = await host.create()
    await joiner.join(room)
    payload = "z" * 40_000
    # The host never reads: once the socket buffers are full, its queue overflows.
    for sent in range(5000):
        await joiner.send("send", to="host", data=payload)
        if sent % 50 == 0:
            try:
                msg = await joiner.ws.receive(timeout=0.001)
            except TimeoutError:
                continue
            assert sig.decode_server(msg.data) == sig.Gone(room=room, peer="host")
            break
    else:
        pytest.fail("the host was never dropped")


async def test_a_reading_host_survives_a_burst_from_every_joiner(
    serve: Any, connect: Connect
) -> None:
    # (a join and 50 sends is 51 messages: over the default burst of 50, so the last one
    # was refused whenever the burst came within 50 ms of the join, and the host waited
    # for it: the test is about the queue, not the rate limit)
    base = await serve(ServerConfig(rate=1e6, burst=1e6, send_queue_limit=64))
    host = await connect(base)
    room = await host.create()
    joiners = [await connect(base) for _ in range(16)]
    for joiner in joiners:
        await joiner.join(room)
    for _ in joiners:
        assert (await host.recv())["type"] == "peer"
    payload = "b" * 4000

    async def burst(joiner: Client) -> None:
        for _ in range(50):
            await joiner.send("send", to="host", data=payload)

    await asyncio.gather(*(burst(j) for j in joiners))
    for _ in range(16 * 50):
        assert (await host.recv())["type"] == "relay"


def test_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        ServerConfig(rate=0)
    with pytest.raises(ValueError, match="burst"):
        ServerConfig(burst=0.5)
    with pytest.raises(ValueError, match="frame_limit_bytes"):
        ServerConfig(frame_limit_bytes=10)
    assert ServerConfig().max_message_bytes == sig.MAX_MESSAGE_BYTES


async def test_serve_until_stopped(http: aiohttp.ClientSession) -> None:
    ready: asyncio.Queue[int] = asyncio.Queue()
    stop = asyncio.Event()
    task = asyncio.create_task(
        signaling_server.serve("127.0.0.1", 0, stop=stop, on_ready=ready.put_nowait)
    )
    try:
        port = await asyncio.wait_for(ready.get(), TIMEOUT)
        assert (await health(http, f"http://127.0.0.1:{port}"))["status"] == "ok"
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
        with pytest.raises(aiohttp.ClientConnectionError):
            await health(http, f"http://127.0.0.1:{port}")
    finally:
        task.cancel()
