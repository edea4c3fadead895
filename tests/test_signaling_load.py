"""A bounded load generator on loopback: many rooms at once, host and joiner exchanging
messages, on one node and on two nodes sharing Redis; it stops by itself, and every
message arrives once, in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bench.signaling import bench_config
from signaling.server import start_server, state_of
from tests.servers import redis_server

ROOMS = 150
MESSAGES = 20
DEADLINE = 60.0


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


async def recv(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, object]:
    msg = await ws.receive(timeout=10)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    body: dict[str, object] = json.loads(msg.data)
    assert body["type"] == kind, body
    return body


async def one_room(http: aiohttp.ClientSession, host_url: str, join_url: str) -> int:
    host = await http.ws_connect(f"{host_url}/ws")
    joiner = await http.ws_connect(f"{join_url}/ws")
    try:
        await host.send_json({"type": "create"})
        room = (await recv(host, "created"))["room"]
        await joiner.send_json({"type": "join", "room": room})
        peer = (await recv(joiner, "joined"))["peer"]
        await recv(host, "peer")
        for i in range(MESSAGES):
            await host.send_json({"type": "send", "to": peer, "data": f"h{i}"})
            await joiner.send_json({"type": "send", "to": "host", "data": f"j{i}"})
        got_j = [(await recv(joiner, "relay"))["data"] for _ in range(MESSAGES)]
        got_h = [(await recv(host, "relay"))["data"] for _ in range(MESSAGES)]
        assert got_j == [f"h{i}" for i in range(MESSAGES)]
        assert got_h == [f"j{i}" for i in range(MESSAGES)]
        return 2 * MESSAGES
    finally:
        await joiner.close()
        await host.close()


async def load(urls: list[str], crossed: bool) -> int:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        jobs = [
            one_room(http, urls[i % len(urls)], urls[(i + crossed) % len(urls)])
            for i in range(ROOMS)
        ]
        counts = await asyncio.wait_for(asyncio.gather(*jobs), DEADLINE)
    return sum(counts)


async def test_many_rooms_on_one_node() -> None:
    runner, port = await start_server("127.0.0.1", 0, bench_config())
    try:
        assert await load([f"http://127.0.0.1:{port}"], crossed=False) == ROOMS * 2 * MESSAGES
        counters = state_of(runner).hub.counters
        assert counters["relayed"] == ROOMS * 2 * MESSAGES
        assert counters["rooms_created"] == ROOMS
    finally:
        await runner.cleanup()


async def test_many_rooms_across_two_nodes_on_redis(redis_url: str) -> None:
    a, port_a = await start_server("127.0.0.1", 0, bench_config(), redis_url=redis_url)
    b, port_b = await start_server("127.0.0.1", 0, bench_config(), redis_url=redis_url)
    try:
        urls = [f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"]
        assert await load(urls, crossed=True) == ROOMS * 2 * MESSAGES
        relayed = sum(state_of(r).hub.counters["relayed"] for r in (a, b))
        assert relayed == ROOMS * 2 * MESSAGES
        # every joiner crossed to the other node: the mail went through Redis
        for r in (a, b):
            link = state_of(r).cluster
            assert link is not None
            assert link.received >= ROOMS // 2 * MESSAGES
    finally:
        await b.cleanup()
        await a.cleanup()
