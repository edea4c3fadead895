"""Hardening of one signaling node: admission caps and rates, per-room rate limit, slow
clients dropped without stalling others, Prometheus ``/metrics``, drain on SIGTERM,
``/ice`` with coturn REST credentials. Real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from signaling.server import Admission, ServerConfig, start_server
from signaling.turn import TurnSecret, credential
from tests.servers import ROOT
from tests.test_signaling_server import Client

TIMEOUT = 3.0
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners = []

    async def start(config: ServerConfig | None = None, **kw: Any) -> str:
        runner, port = await start_server("127.0.0.1", 0, config, **kw)
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def ws(http: aiohttp.ClientSession, base: str) -> Client:
    return Client(await http.ws_connect(f"{base}/ws", timeout=aiohttp.ClientWSTimeout(TIMEOUT)))


async def refused(http: aiohttp.ClientSession, base: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"{base}/ws")
    return info.value.status


def metrics_of(text: str) -> dict[str, float]:
    """Parse Prometheus text exposition strictly enough to catch a malformed line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = re.fullmatch(r'([a-z_]+(?:\{[a-z_]+="[a-z_]+"\})?) (-?[0-9.e+]+)', line)
        assert m, f"not a Prometheus sample: {line!r}"
        out[m.group(1)] = float(m.group(2))
    return out


async def metrics(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return metrics_of(await resp.text())


async def test_connections_per_address_are_capped(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    base = await serve(ServerConfig(max_connections_per_ip=3))
    clients = [await ws(http, base) for _ in range(3)]
    assert await refused(http, base) == 429
    await clients[0].ws.close()
    deadline = time.monotonic() + TIMEOUT
    while True:  # the slot frees once the server has seen the close
        try:
            clients[0] = await ws(http, base)
            break
        except aiohttp.WSServerHandshakeError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    await clients[0].works()
    m = await metrics(http, base)
    assert m['peerdesk_connections_refused_total{reason="per_ip_cap"}'] >= 1


async def test_new_connections_per_address_are_rate_limited(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    base = await serve(ServerConfig(connect_rate_per_ip=0.5, connect_burst_per_ip=4))
    for _ in range(4):
        await (await ws(http, base)).ws.close()
    assert await refused(http, base) == 429
    m = await metrics(http, base)
    assert m['peerdesk_connections_refused_total{reason="per_ip_rate"}'] == 1


async def test_the_server_caps_connections_in_all(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    base = await serve(ServerConfig(max_connections=2))
    a, b = await ws(http, base), await ws(http, base)
    assert await refused(http, base) == 503
    await a.works()
    await b.works()


def test_admission_core_forgets_idle_addresses_only_when_owed_nothing() -> None:
    adm = Admission(ServerConfig(connect_rate_per_ip=1.0, connect_burst_per_ip=2))
    assert adm.admit("10.0.0.1", 0.0) is None
    adm.release("10.0.0.1")
    adm.sweep(0.5)
    assert "10.0.0.1" in adm.addresses  # its bucket is not full yet: forgetting would be a gift
    adm.sweep(10.0)
    assert adm.addresses == {}


async def test_a_room_has_its_own_rate_limit(http: aiohttp.ClientSession, serve: Serve) -> None:
    base = await serve(ServerConfig(rate=1000, burst=1000, room_rate=1, room_burst=5))
    host, joiner = await ws(http, base), await ws(http, base)
    room = await host.create()
    peer = await joiner.join(room)
    await host.recv()
    for i in range(5):
        await host.send("send", to=peer, data=f"x{i}")
        assert (await joiner.recv())["data"] == f"x{i}"
    await joiner.send("send", to="host", data="over")
    assert await joiner.error() == "room_rate_limited"
    # another room is not affected
    host2, joiner2 = await ws(http, base), await ws(http, base)
    room2 = await host2.create()
    await joiner2.join(room2)
    await host2.recv()
    await joiner2.send("send", to="host", data="fine")
    assert (await host2.recv())["data"] == "fine"
    m = await metrics(http, base)
    assert m['peerdesk_rate_limited_total{scope="room"}'] == 1


async def test_a_slow_client_does_not_stall_the_others(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    base = await serve(
        ServerConfig(rate=1e6, burst=1e6, room_rate=1e6, room_burst=1e6, send_queue_limit=8)
    )
    host, joiner = await ws(http, base), await ws(http, base)
    room = await host.create()
    await joiner.join(room)
    host2, joiner2 = await ws(http, base), await ws(http, base)
    room2 = await host2.create()
    peer2 = await joiner2.join(room2)
    await host2.recv()
    payload = "z" * 40_000
    worst = 0.0
    dropped = False
    for sent in range(3000):  # host never reads; meanwhile room2 keeps talking
        await joiner.send("send", to="host", data=payload)
        if sent % 25 == 0:
            start = time.perf_counter()
            await host2.send("send", to=peer2, data="ping")
            assert (await joiner2.recv())["data"] == "ping"
            worst = max(worst, time.perf_counter() - start)
            try:
                msg = await joiner.ws.receive(timeout=0.001)
            except TimeoutError:
                continue
            assert json.loads(msg.data) == {"type": "gone", "room": room, "peer": "host"}
            dropped = True
            break
    assert dropped, "the host that never reads was never dropped"
    assert worst < 0.5, f"the other room waited {worst:.3f} s"
    m = await metrics(http, base)
    assert m["peerdesk_slow_clients_dropped_total"] == 1


async def test_metrics_count_rooms_and_messages(http: aiohttp.ClientSession, serve: Serve) -> None:
    base = await serve()
    m0 = await metrics(http, base)
    assert m0["peerdesk_up"] == 1
    assert m0["peerdesk_rooms"] == 0
    host, joiner = await ws(http, base), await ws(http, base)
    room = await host.create()
    peer = await joiner.join(room)
    await host.recv()
    for _ in range(3):
        await host.send("send", to=peer, data="d")
        await joiner.recv()
    m = await metrics(http, base)
    assert m["peerdesk_rooms"] == 1
    assert m["peerdesk_rooms_created_total"] == 1
    assert m['peerdesk_connections{kind="local"}'] == 2
    assert m["peerdesk_relayed_total"] == 3
    assert m["peerdesk_messages_total"] == 5  # create, join, 3 sends


async def test_ice_hands_out_coturn_rest_credentials(
    http: aiohttp.ClientSession, serve: Serve
) -> None:
    secret = "s3cret-s3cret-s3cret"
    turn = TurnSecret(("turn:127.0.0.1:3478",), secret, ttl=600)
    base = await serve(turn=turn)
    async with http.get(f"{base}/ice") as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    (server,) = body["iceServers"]
    assert server["urls"] == ["turn:127.0.0.1:3478"]
    expiry, _, _name = server["username"].partition(":")
    assert 590 <= int(expiry) - time.time() <= 610
    mac = hmac.new(secret.encode(), server["username"].encode(), hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(mac).decode()
    assert credential(secret, server["username"]) == server["credential"]
    plain = await serve()
    async with http.get(f"{plain}/ice") as resp:
        assert await resp.json() == {"iceServers": []}


def test_turn_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="TURN URL"):
        TurnSecret(("http://x",), "0123456789abcdef")
    with pytest.raises(ValueError, match="16 characters"):
        TurnSecret(("turn:x:3478",), "short")
    with pytest.raises(ValueError, match="at least one"):
        TurnSecret((), "0123456789abcdef")


async def test_sigterm_drains_joins_in_progress_then_closes(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "signaling", "--host", "127.0.0.1", "--port", "0", "--drain", "20"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))["port"]
        base = f"http://127.0.0.1:{port}"
        host, joiner = await ws(http, base), await ws(http, base)
        room = await host.create()
        peer = await joiner.join(room)
        await host.recv()

        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while True:
            async with http.get(f"{base}/healthz") as resp:
                if resp.status == 503:
                    assert (await resp.json())["status"] == "draining"
                    break
            assert time.monotonic() < deadline, "healthz never said draining"
            await asyncio.sleep(0.02)
        assert await refused(http, base) == 503  # newcomers go to another node
        await host.send("create")
        assert await host.error() == "draining"
        await joiner.send("send", to="host", data="answer")  # the join in progress finishes
        assert (await host.recv())["data"] == "answer"
        await host.send("send", to=peer, data="ok")
        assert (await joiner.recv())["data"] == "ok"
        started = time.monotonic()
        await joiner.ws.close()  # the last join is done: the server stops well before 20 s
        assert await host.recv() == {"type": "gone", "room": room, "peer": peer}
        msg = await host.ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1001
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
        assert time.monotonic() - started < 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_ice_answers_are_parsed_as_hostile_input() -> None:
    from agent.errors import DecodeError
    from agent.protocol.signaling import IceServer, decode_ice

    ok = (
        '{"iceServers":[{"urls":["turn:10.0.0.1:3478?transport=udp"],'
        '"username":"1:a","credential":"c"}]}'
    )
    assert decode_ice(ok) == (IceServer(("turn:10.0.0.1:3478?transport=udp",), "1:a", "c"),)
    assert decode_ice('{"iceServers":[]}') == ()
    for bad in (
        "[]",
        '{"iceServers":{}}',
        '{"iceServers":[{"urls":["http://evil"]}]}',
        '{"iceServers":[{"urls":["turn:x:1"]}]}',  # TURN without credentials
        '{"iceServers":[{"urls":[]}]}',
        '{"iceServers":[{"urls":["turn:x:1 --inject"],"username":"u","credential":"c"}]}',
        '{"iceServers":[' + ",".join(['{"urls":["stun:x"]}'] * 5) + "]}",
        '{"iceServers":[{"urls":["stun:x"],"username":"' + "u" * 300 + '"}]}',
        '{"iceServers":"' + "x" * 20000 + '"}',
    ):
        with pytest.raises(DecodeError):
            decode_ice(bad)


async def test_ice_is_rate_limited_per_address(http: aiohttp.ClientSession, serve: Serve) -> None:
    turn = TurnSecret(("turn:127.0.0.1:3478",), "s3cret-s3cret-s3cret")
    base = await serve(ServerConfig(connect_rate_per_ip=0.5, connect_burst_per_ip=3), turn=turn)
    statuses = []
    for _ in range(5):
        async with http.get(f"{base}/ice") as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429, 429]


def test_redis_passwords_stay_out_of_messages() -> None:
    from signaling.cluster import redact

    assert redact("redis://:hunter2@db:6379/0") == "redis://:***@db:6379/0"
    assert redact("rediss://app:hunter2@db/1") == "rediss://app:***@db/1"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


async def test_agents_take_ice_servers_from_their_current_signaling_server(serve: Serve) -> None:
    from agent.net.peer import rtc_configuration
    from agent.net.signaling_client import SignalingClient

    turn = TurnSecret(("turn:127.0.0.1:3478",), "s3cret-s3cret-s3cret")
    with_turn, without = await serve(turn=turn), await serve()
    client = await SignalingClient.connect(with_turn.replace("http", "ws"))
    await client.close()
    (server,) = rtc_configuration().iceServers
    assert server.urls == ["turn:127.0.0.1:3478"]
    assert server.username.endswith(tuple("0123456789abcdef"))
    client = await SignalingClient.connect(without.replace("http", "ws"))
    await client.close()
    assert rtc_configuration().iceServers == []


def test_signal_options_become_a_config_or_a_clear_error() -> None:
    import argparse

    from signaling.options import add_arguments
    from signaling.server import options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config, redis_url, turn = options(
        parser.parse_args(["--max-connections-per-ip", "500", "--redis", "redis://r:6379/0"])
    )
    assert (config.max_connections_per_ip, redis_url, turn) == (500, "redis://r:6379/0", None)
    for argv, message in (
        (["--max-connections", "0"], "--max-connections must be at least 1"),
        (["--redis", "http://r"], "redis://"),
        (["--turn-url", "turn:t:3478"], "go together"),
        (["--turn-url", "http://t", "--turn-secret", "s" * 20], "not a TURN URL"),
        (["--csr-token", "short"], "at least 16"),
        (["--drain", "-1"], "--drain"),
    ):
        with pytest.raises(ValueError, match=message):
            options(parser.parse_args(argv))
