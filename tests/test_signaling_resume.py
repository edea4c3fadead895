"""A room's host resumes its room after losing its signaling connection or its node.

Hub alone (pumped by hand), one in-memory node with a TCP proxy that cuts the host's
connection, and a real redis-server with two real node processes, one killed with
SIGKILL. The agents are the real runtime (SPAKE2, sealed SDP, aiortc on loopback).
The proxy stands in for the load balancer a team puts in front of its nodes: the CSR's
agent knows one URL, and the proxy maps it to a node that lives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.protocol import signaling as sig
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from signaling import cluster
from signaling.server import (
    CLOSE_POLICY,
    Connection,
    Deliver,
    Disconnect,
    Hub,
    Reclaim,
    Rekey,
    ServerConfig,
    resume_digest,
    start_server,
)
from tests.proxy import TcpProxy
from tests.servers import Node, nodes, redis_server
from tests.test_signaling_server import Client

TIMEOUT = 5.0
JOIN_TIMEOUT = 20.0


# --------------------------------------------------------------------------- hub alone


def _created(hub: Hub, now: float = 0.0) -> tuple[Connection, str, str]:
    host = hub.connect(now)
    (out,) = hub.receive(host, '{"type":"create"}', now)
    assert isinstance(out, Deliver)
    assert isinstance(out.message, sig.Created)
    assert sig.RESUME_RE.fullmatch(out.message.resume)
    return host, out.message.room, out.message.resume


def _resume(room: str, secret: str) -> str:
    return json.dumps({"type": "resume", "room": room, "secret": secret})


def _codes(out: Sequence[object]) -> list[str]:
    return [
        a.message.code if isinstance(a.message, sig.Error) else a.message.type
        for a in out
        if isinstance(a, Deliver)
    ]


def test_a_host_resumes_its_away_room_within_the_grace_and_each_secret_works_once() -> None:
    hub = Hub(ServerConfig(resume_grace=30.0))
    host, room, secret = _created(hub)
    assert hub.rooms[room].secret_hash == resume_digest(secret)  # only the hash is kept
    assert secret not in repr(hub.rooms[room])
    joiner = hub.connect(0.0)
    hub.receive(joiner, json.dumps({"type": "join", "room": room}), 0.0)
    # the host's connection drops: the joiner is told, the room waits
    out = hub.disconnect(host, 1.0)
    assert [(a.to, a.message) for a in out if isinstance(a, Deliver)] == [
        (joiner, sig.Gone(room=room, peer="host"))
    ]
    assert room in hub.rooms
    late = hub.connect(2.0)
    assert _codes(hub.receive(late, json.dumps({"type": "join", "room": room}), 2.0)) == [
        "host_away"
    ]
    # a wrong secret is refused; the right one re-attaches a new connection as host
    back = hub.connect(3.0)
    assert _codes(hub.receive(back, _resume(room, "0" * 64), 3.0)) == ["bad_secret"]
    (ok,) = hub.receive(back, _resume(room, secret), 3.0)
    assert isinstance(ok, Deliver)
    assert isinstance(ok.message, sig.Resumed)
    assert ok.message.room == room
    assert ok.message.resume != secret
    assert hub.rooms[room].host is back
    assert back.hosted == {room: hub.rooms[room]}
    # joins work again and reach the new connection
    out = hub.receive(late, json.dumps({"type": "join", "room": room}), 4.0)
    assert [(a.to, a.message.type) for a in out if isinstance(a, Deliver)] == [
        (late, "joined"),
        (back, "peer"),
    ]
    # the old secret (replayed) is refused, also once the host is away again
    hub.disconnect(back, 5.0)
    again = hub.connect(6.0)
    assert _codes(hub.receive(again, _resume(room, secret), 6.0)) == ["bad_secret"]
    assert _codes(hub.receive(again, _resume(room, ok.message.resume), 6.0)) == ["resumed"]


def test_an_away_room_closes_after_the_grace_and_a_connected_host_is_not_replaced() -> None:
    hub = Hub(ServerConfig(resume_grace=30.0))
    host, room, secret = _created(hub)
    other = hub.connect(0.0)
    # while its host is connected, even the right secret does not take the room
    assert _codes(hub.receive(other, _resume(room, secret), 1.0)) == ["host_connected"]
    assert hub.rooms[room].host is host
    hub.disconnect(host, 2.0)
    assert hub.expire(31.0) == []
    hub.expire(32.0)
    assert room not in hub.rooms
    assert _codes(hub.receive(other, _resume(room, secret), 33.0)) == ["room_not_found"]


def test_refused_resumes_are_counted_and_a_flood_is_cut_off() -> None:
    hub = Hub(ServerConfig(max_resume_failures=3))
    host, room, _secret = _created(hub)
    hub.disconnect(host, 0.0)
    attacker = hub.connect(0.0)
    for i in range(2):
        assert _codes(hub.receive(attacker, _resume(room, f"{i:064x}"), 0.0)) == ["bad_secret"]
    out = hub.receive(attacker, _resume("999999", "f" * 64), 0.0)
    assert _codes(out) == ["room_not_found"]
    assert Disconnect(attacker, CLOSE_POLICY, "too many refused resumes") in out
    # malformed secrets never reach the room
    fresh = hub.connect(0.0)
    for bad in ("", "x" * 64, "0" * 63, "0" * 65, 5):
        body = json.dumps({"type": "resume", "room": room, "secret": bad})
        assert _codes(hub.receive(fresh, body, 0.0)) == ["malformed"]
    assert hub.rooms[room].away_since == 0.0  # nothing changed
    # and the per-connection rate limit applies to resumes like to anything else
    flood = hub.connect(0.0)
    codes = [c for _ in range(60) for c in _codes(hub.receive(flood, "{}", 0.0))]
    assert "rate_limited" in codes


def test_shared_hub_reclaims_rooms_it_does_not_hold_through_the_store() -> None:
    hub = Hub(ServerConfig(), shared=True)
    conn = hub.connect(0.0)
    (reclaim,) = hub.receive(conn, _resume("123456", "a" * 64), 0.0)
    assert isinstance(reclaim, Reclaim)
    assert reclaim.old_hash == resume_digest("a" * 64)
    assert _codes(hub.reclaimed(reclaim, "owner_alive", 0.0)) == ["owner_alive"]
    assert _codes(hub.reclaimed(reclaim, None, 0.0)) == ["unavailable"]
    assert _codes(hub.reclaimed(reclaim, "bad_secret", 0.0)) == ["bad_secret"]
    assert hub.rooms == {}
    (ok,) = hub.reclaimed(reclaim, "ok", 0.0)
    assert isinstance(ok, Deliver)
    assert ok.message == sig.Resumed(room="123456", resume=reclaim.new_secret)
    assert hub.rooms["123456"].host is conn
    assert hub.claiming == 0
    # resuming an away room held here rekeys it in the store
    hub.disconnect(conn, 1.0)
    back = hub.connect(1.0)
    out = hub.receive(back, _resume("123456", reclaim.new_secret), 1.0)
    assert isinstance(out[1], Rekey)
    assert out[1].new_hash == hub.rooms["123456"].secret_hash


# --------------------------------------------------------------------------- agents


def _identity(name: str) -> Identity:
    return Identity(Ed25519PrivateKey.generate(), name)


class Sinks:
    """Every agent's status events, and its chat lines as a queue."""

    def __init__(self) -> None:
        self.events: dict[str, list[status.Status]] = {}
        self.chats: dict[str, asyncio.Queue[str]] = {}

    def __call__(self, who: str) -> Callable[[status.Status], None]:
        self.events[who] = []
        self.chats[who] = asyncio.Queue()

        def emit(event: status.Status) -> None:
            self.events[who].append(event)
            if isinstance(event, status.ChatReceived):
                self.chats[who].put_nowait(event.text)

        return emit

    async def chat(self, who: str) -> str:
        return await asyncio.wait_for(self.chats[who].get(), TIMEOUT)

    async def event(self, who: str, kind: type[status.Status], within: float) -> status.Status:
        deadline = time.monotonic() + within
        while True:
            found = [e for e in self.events[who] if isinstance(e, kind)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no {kind.__name__}: {self.events[who]}"
            await asyncio.sleep(0.05)


async def _chat_both_ways(sinks: Sinks, csr: CsrSession, customer: CustomerSession, n: str) -> None:
    customer.chat(f"hello {n}")
    assert await sinks.chat("csr") == f"hello {n}"
    csr.chat(f"hi {n}")
    assert await sinks.chat(n) == f"hi {n}"


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    made: list[TcpProxy] = []
    yield made
    for proxy in made:
        await proxy.close()


async def test_one_node_the_hosts_connection_drops_and_it_resumes_within_the_grace(
    proxies: list[TcpProxy],
) -> None:
    runner, port = await start_server("127.0.0.1", 0, ServerConfig(resume_grace=30.0))
    proxy = await TcpProxy(port).start()
    proxies.append(proxy)
    sinks = Sinks()
    csr = CsrSession(_identity("Carol"), proxy.url, sinks("csr"))
    direct = f"ws://127.0.0.1:{port}"
    customers: list[CustomerSession] = []
    try:
        code = await csr.start()
        first = CustomerSession(_identity("Alice"), JoinLink(code, direct), direct, sinks("a"))
        customers.append(first)
        await asyncio.wait_for(first.join(), JOIN_TIMEOUT)
        await _chat_both_ways(sinks, csr, first, "a")

        assert proxy.cut() >= 1  # the CSR's signaling connection (and its /ice one), reset
        resumed = await sinks.event("csr", status.SignalResumed, 15.0)
        assert isinstance(resumed, status.SignalResumed)
        assert resumed.room == code.room
        assert not [e for e in sinks.events["csr"] if getattr(e, "code", "") == "signal_lost"]
        await _chat_both_ways(sinks, csr, first, "a")

        # the same code admits a new customer
        second = CustomerSession(_identity("Bob"), JoinLink(code, direct), direct, sinks("b"))
        customers.append(second)
        await asyncio.wait_for(second.join(), JOIN_TIMEOUT)
        await _chat_both_ways(sinks, csr, second, "b")
    finally:
        await csr.end(force=True)
        for customer in customers:
            await asyncio.wait_for(customer.wait(), TIMEOUT)
        await runner.cleanup()


async def test_resuming_fails_cleanly_once_the_grace_is_over(proxies: list[TcpProxy]) -> None:
    runner, port = await start_server(
        "127.0.0.1", 0, ServerConfig(resume_grace=0.5, sweep_interval=0.1)
    )
    proxy = await TcpProxy(port).start()
    proxies.append(proxy)
    sinks = Sinks()
    csr = CsrSession(_identity("Carol"), proxy.url, sinks("csr"))
    csr.resume_within = 5.0
    try:
        await csr.start()
        proxy.target = 1  # the balancer has no live node for a while
        proxy.cut()
        await asyncio.sleep(1.0)  # longer than the grace
        proxy.target = port
        lost = await sinks.event("csr", status.Error, 10.0)
        assert isinstance(lost, status.Error)
        assert lost.code == "signal_lost"
        assert "room_not_found" in lost.reason
        assert not [e for e in sinks.events["csr"] if isinstance(e, status.SignalResumed)]
    finally:
        await csr.end(force=True)
        await runner.cleanup()


# --------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


async def test_the_csr_resumes_on_another_node_when_its_node_is_killed(
    redis_url: str, proxies: list[TcpProxy]
) -> None:
    """CSR on node a (through the balancer), customer on node b; a is killed -9: the
    CSR's agent resumes on b, the session goes on, and a new customer joins with the
    same code through b."""
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        balancer = await TcpProxy(a.port).start()
        proxies.append(balancer)
        url_b = f"ws://127.0.0.1:{b.port}"
        sinks = Sinks()
        csr = CsrSession(_identity("Carol"), balancer.url, sinks("csr"))
        customers: list[CustomerSession] = []
        try:
            code = await csr.start()
            first = CustomerSession(_identity("Alice"), JoinLink(code, url_b), url_b, sinks("a"))
            customers.append(first)
            await asyncio.wait_for(first.join(), JOIN_TIMEOUT)
            assert b.events("forwarded"), "the customer reached the room on a through b"
            await _chat_both_ways(sinks, csr, first, "a")

            a.kill()
            balancer.target = b.port  # the balancer's health check moves traffic to b
            resumed = await sinks.event("csr", status.SignalResumed, cluster.HEARTBEAT_TTL + 15)
            assert isinstance(resumed, status.SignalResumed)
            assert resumed.room == code.room
            assert b.events("room_resumed")
            await _chat_both_ways(sinks, csr, first, "a")  # the established session

            second = CustomerSession(_identity("Bob"), JoinLink(code, url_b), url_b, sinks("b"))
            customers.append(second)
            await asyncio.wait_for(second.join(), JOIN_TIMEOUT)
            await _chat_both_ways(sinks, csr, second, "b")
            assert not [e for e in sinks.events["csr"] if getattr(e, "code", "") == "signal_lost"]
        finally:
            await csr.end(force=True)
            for customer in customers:
                await asyncio.wait_for(customer.wait(), TIMEOUT)


async def _ws(http: aiohttp.ClientSession, node: Node) -> Client:
    ws = await http.ws_connect(f"{node.url}/ws", timeout=aiohttp.ClientWSTimeout(TIMEOUT))
    return Client(ws)


async def test_resumes_refused_on_nodes_wrong_secret_live_owner_replay(redis_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
            host = await _ws(http, a)
            await host.send("create")
            created = await host.recv()
            room, secret = created["room"], created["resume"]
            store = aioredis.Redis.from_url(redis_url, decode_responses=True)
            try:
                # Redis holds the hash, never the secret
                assert await store.get(f"peerdesk:resume:{room}") == resume_digest(secret)
                owner = await store.get(f"peerdesk:room:{room}")

                thief = await _ws(http, b)
                await thief.send("resume", room=room, secret="0" * 64)
                assert await thief.error() == "bad_secret"
                # the right secret, but a's node and its host are alive: refused
                await thief.send("resume", room=room, secret=secret)
                assert await thief.error() == "owner_alive"
                await thief.send("resume", room="000000", secret=secret)
                assert await thief.error() == "room_not_found"
                assert await store.get(f"peerdesk:room:{room}") == owner  # untouched

                a.proc.terminate()  # a graceful stop: its rooms stay resumable
                assert await asyncio.to_thread(a.proc.wait, 10) == 0  # loop free for its close
                back = await _ws(http, b)
                await back.send("resume", room=room, secret=secret)
                resumed = await back.recv()
                assert resumed["type"] == "resumed", resumed
                assert await store.get(f"peerdesk:room:{room}") != owner  # b holds it now
                assert await store.get(f"peerdesk:resume:{room}") == resume_digest(
                    resumed["resume"]
                )
                # a replay of the old secret is refused; a joiner reaches the resumed host
                replay = await _ws(http, b)
                await replay.send("resume", room=room, secret=secret)
                assert await replay.error() == "bad_secret"
                joiner = await _ws(http, b)
                peer = await joiner.join(room)
                assert await back.recv() == {"type": "peer", "room": room, "peer": peer}
                # closing the room frees both keys
                await back.send("close", room=room)
                deadline = time.monotonic() + TIMEOUT
                while await store.exists(f"peerdesk:room:{room}", f"peerdesk:resume:{room}"):
                    assert time.monotonic() < deadline, "the room's keys were not released"
                    await asyncio.sleep(0.05)
            finally:
                await store.aclose()


async def test_a_headless_csr_process_resumes_after_its_node_is_killed(
    redis_url: str, proxies: list[TcpProxy], tmp_path: Path
) -> None:
    """The same across real ``peerdesk start --headless --json`` and ``peerdesk join``
    processes: ``signal_resumed`` on stdout, and the code admits a new customer."""
    from tests.procs import Event, Proc

    started: list[Proc] = []

    def peerdesk(name: str, *args: str) -> Proc:
        proc = Proc(
            ["agent", *args, "--headless", "--json", "--name", name],
            name=name,
            home=tmp_path / name,
        )
        started.append(proc)
        return proc

    async def expect(proc: Proc, event: str, timeout: float = 20.0, **match: object) -> Event:
        def where(e: Event) -> bool:
            return all(e.get(k) == v for k, v in match.items())

        return await asyncio.to_thread(proc.expect, event, where, timeout)  # the proxy runs here

    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        balancer = await TcpProxy(a.port).start()
        proxies.append(balancer)
        url_b = f"ws://127.0.0.1:{b.port}"
        try:
            csr = peerdesk("Carol", "start", "--signal", balancer.url)
            code = (await expect(csr, "session"))["code"]
            alice = peerdesk("Alice", "join", code, "--signal", url_b)
            await expect(alice, "joined")
            await expect(csr, "joined", name="Alice")

            a.kill()
            balancer.target = b.port
            resumed = await expect(csr, "signal_resumed", cluster.HEARTBEAT_TTL + 15)
            assert resumed["room"] == code.replace("-", "")[:6]
            alice.send({"cmd": "chat", "text": "still there?"})
            assert (await expect(csr, "chat"))["text"] == "still there?"

            bob = peerdesk("Bob", "join", code, "--signal", url_b)
            await expect(bob, "joined")
            await expect(csr, "joined", name="Bob")
            csr.send({"cmd": "chat", "text": "hello both"})
            assert (await expect(bob, "chat"))["text"] == "hello both"
            assert (await expect(alice, "chat"))["text"] == "hello both"
            assert not [e for e in csr.events if e.get("code") == "signal_lost"]
            csr.send({"cmd": "end"})
            await expect(csr, "ended")
        finally:
            for proc in started:
                proc.kill()
