"""Signaling nodes sharing rooms through a real redis-server started by the test.

Nodes are real ``python -m signaling --redis URL`` processes; killing one is a real
SIGKILL. Agents are the real runtime (SPAKE2, sealed SDP, aiortc on loopback).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from signaling import cluster
from signaling.server import CLOSE_SERVICE_RESTART, Hub, ServerConfig
from tests.servers import Node, nodes, redis_server
from tests.test_signaling_server import Client

TIMEOUT = 5.0


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with redis_server(tmp_path) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def client(http: aiohttp.ClientSession, node: Node) -> Client:
    ws = await http.ws_connect(f"{node.url}/ws", timeout=aiohttp.ClientWSTimeout(TIMEOUT))
    return Client(ws)


async def test_a_join_across_two_nodes(http: aiohttp.ClientSession, redis_url: str) -> None:
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        host, joiner = await client(http, a), await client(http, b)
        room = await host.create()
        store = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await store.get(f"peerdesk:room:{room}")  # claimed with SET NX EX
            assert 0 < await store.ttl(f"peerdesk:room:{room}") <= 660

            peer = await joiner.join(room)
            assert await host.recv(TIMEOUT) == {"type": "peer", "room": room, "peer": peer}
            await joiner.send("send", to="host", data="offer")
            assert await host.recv(TIMEOUT) == {
                "type": "relay",
                "room": room,
                "from": peer,
                "data": "offer",
            }
            await host.send("send", to=peer, data="answer")
            assert await joiner.recv(TIMEOUT) == {
                "type": "relay",
                "room": room,
                "from": "host",
                "data": "answer",
            }
            # order holds for a burst across the nodes
            for i in range(40):
                await host.send("send", to=peer, data=f"m{i}")
            got = [(await joiner.recv(TIMEOUT))["data"] for _ in range(40)]
            assert got == [f"m{i}" for i in range(40)]

            # a joiner of another node leaving is seen by the host
            await joiner.ws.close()
            assert await host.recv(TIMEOUT) == {"type": "gone", "room": room, "peer": peer}

            # the host closing the room frees its id in Redis
            await host.send("close", room=room)
            deadline = time.monotonic() + TIMEOUT
            while await store.exists(f"peerdesk:room:{room}"):
                assert time.monotonic() < deadline, "the room id was not released"
                await asyncio.sleep(0.05)
            late = await client(http, b)
            await late.send("join", room=room)
            assert await late.error() == "room_not_found"
        finally:
            await store.aclose()


async def test_room_ids_are_unique_across_nodes(
    http: aiohttp.ClientSession, redis_url: str
) -> None:
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        hosts = [await client(http, node) for node in (a, b) for _ in range(8)]
        rooms = [await h.create() for h in hosts for _ in range(4)]
        assert len(set(rooms)) == len(rooms) == 64
        store = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            owners = [await store.get(f"peerdesk:room:{r}") for r in rooms]
        finally:
            await store.aclose()
        assert len(set(owners)) == 2  # each node claimed its own


async def test_a_dead_node_drops_only_its_websockets(
    http: aiohttp.ClientSession, redis_url: str
) -> None:
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        host_a = await client(http, a)
        room_a = await host_a.create()
        host_b, joiner_b = await client(http, b), await client(http, b)
        room_b = await host_b.create()
        forwarded = await client(http, b)  # connected to b, served by a (room_a lives there)
        await forwarded.join(room_a)
        assert (await host_a.recv(TIMEOUT))["type"] == "peer"

        a.kill()
        # the client on b whose room lived on a is told to reconnect (1012) once a's
        # heartbeat lapses; nothing else on b is touched
        msg = await forwarded.ws.receive(timeout=cluster.HEARTBEAT_TTL + 5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == CLOSE_SERVICE_RESTART
        peer = await joiner_b.join(room_b)
        assert await host_b.recv(TIMEOUT) == {"type": "peer", "room": room_b, "peer": peer}
        # a's rooms are gone for everyone
        retry = await client(http, b)
        await retry.send("join", room=room_a)
        assert await retry.error() == "room_not_found"


async def test_a_node_that_loses_a_joiners_node_tells_the_host(
    http: aiohttp.ClientSession, redis_url: str
) -> None:
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        host = await client(http, a)
        room = await host.create()
        joiner = await client(http, b)
        peer = await joiner.join(room)
        assert (await host.recv(TIMEOUT))["type"] == "peer"
        b.kill()
        assert await host.recv(cluster.HEARTBEAT_TTL + 5) == {
            "type": "gone",
            "room": room,
            "peer": peer,
        }
        await host.works()


async def test_agents_across_nodes_and_a_node_killed_mid_session(redis_url: str) -> None:
    """CSR on node a, customer through node b; a dies: the session goes on, and new
    joins go through b."""
    events: dict[str, list[status.Status]] = {"csr": [], "customer": [], "csr2": [], "c2": []}
    chats: dict[str, asyncio.Queue[str]] = {k: asyncio.Queue() for k in events}

    def sink(who: str):  # type: ignore[no-untyped-def]
        def emit(event: status.Status) -> None:
            events[who].append(event)
            if isinstance(event, status.ChatReceived):
                chats[who].put_nowait(event.text)

        return emit

    def identity(name: str) -> Identity:
        return Identity(Ed25519PrivateKey.generate(), name)

    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        url_a, url_b = f"ws://127.0.0.1:{a.port}", f"ws://127.0.0.1:{b.port}"
        csr = CsrSession(identity("Carol"), url_a, sink("csr"))
        # its URL names node a alone (no balancer): resuming cannot work, and it says so
        # soon (tests/test_signaling_resume.py resumes through a balancer)
        csr.resume_within = 1.0
        code = await csr.start()
        customer = CustomerSession(
            identity("Alice"), JoinLink(code, url_b), url_b, sink("customer")
        )
        try:
            await asyncio.wait_for(customer.join(), 20)
            assert a.events("forwarded") == []
            assert b.events("forwarded"), "the customer's join went through node b"
            customer.chat("before")
            assert await asyncio.wait_for(chats["csr"].get(), TIMEOUT) == "before"

            a.kill()  # the CSR's signaling node dies
            deadline = time.monotonic() + 10
            while not any(getattr(e, "code", "") == "signal_lost" for e in events["csr"]):
                assert time.monotonic() < deadline, events["csr"]
                await asyncio.sleep(0.05)
            customer.chat("after")  # peer to peer: the session does not need signaling
            assert await asyncio.wait_for(chats["csr"].get(), TIMEOUT) == "after"
            csr.chat("still here")
            assert await asyncio.wait_for(chats["customer"].get(), TIMEOUT) == "still here"

            # new joins go through the surviving node
            csr2 = CsrSession(identity("Dan"), url_b, sink("csr2"))
            code2 = await csr2.start()
            c2 = CustomerSession(identity("Bob"), JoinLink(code2, url_b), url_b, sink("c2"))
            await asyncio.wait_for(c2.join(), 20)
            c2.chat("via b")
            assert await asyncio.wait_for(chats["csr2"].get(), TIMEOUT) == "via b"
            await csr2.end()
            assert await asyncio.wait_for(c2.wait(), TIMEOUT) == 0
        finally:
            await csr.end()
            await asyncio.wait_for(customer.wait(), TIMEOUT)


async def test_without_redis_the_node_says_so(tmp_path: Path) -> None:
    from tests.servers import free_port

    with pytest.raises(AssertionError, match="cannot reach Redis"):
        Node("--redis", f"redis://127.0.0.1:{free_port()}/0")


def test_mail_from_redis_is_parsed_not_trusted() -> None:
    assert cluster.parse_mail({"k": "f", "n": "ab12", "c": "0123456789ab", "d": "{}"})
    assert cluster.parse_mail({"k": "q", "n": "ab12", "c": "0123456789ab", "d": ""}) is None
    assert cluster.parse_mail({"k": "f", "n": "", "c": "0123456789ab", "d": ""}) is None
    assert cluster.parse_mail({"k": "f", "n": "ab12", "c": "x" * 65, "d": ""}) is None
    assert cluster.parse_mail({"k": "f", "n": "ab12", "c": "0123456789ab"}) is None


def test_shared_hub_claims_then_opens_and_retries_taken_ids() -> None:
    from signaling.server import Claim, Deliver, Release

    hub = Hub(ServerConfig(), shared=True)
    conn = hub.connect(0.0)
    (claim,) = hub.receive(conn, '{"type":"create"}', 0.0)
    assert isinstance(claim, Claim)
    assert hub.rooms == {}
    (retry,) = hub.claimed(claim, False, 0.0)  # taken by another node
    assert isinstance(retry, Claim)
    assert retry.attempt == 1
    (created,) = hub.claimed(retry, True, 0.0)
    assert isinstance(created, Deliver)
    assert created.message.type == "created"
    assert list(hub.rooms) == [retry.room]
    # unreachable store: a clear error, nothing half-made
    (claim2,) = hub.receive(conn, '{"type":"create"}', 0.0)
    assert isinstance(claim2, Claim)
    (err,) = hub.claimed(claim2, None, 0.0)
    assert isinstance(err, Deliver)
    assert err.message.type == "error"
    assert len(hub.rooms) == 1
    assert hub.claiming == 0
    # the host leaving releases the id once the room stopped waiting for it to resume
    assert Release(retry.room) not in hub.disconnect(conn, 0.0)
    assert Release(retry.room) in hub.expire(hub.config.resume_grace)


async def test_a_node_stopped_gracefully_leaves_its_rooms_resumable_and_others_notice_at_once(
    http: aiohttp.ClientSession, redis_url: str
) -> None:
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        host = await client(http, a)
        room = await host.create()
        forwarded = await client(http, b)
        await forwarded.join(room)
        assert (await host.recv(TIMEOUT))["type"] == "peer"
        store = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert await store.exists(f"peerdesk:room:{room}")
            started = time.monotonic()
            a.proc.terminate()  # SIGTERM: a graceful stop
            msg = await host.ws.receive(timeout=TIMEOUT)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
            assert await asyncio.to_thread(a.proc.wait, 10) == 0  # loop free for its close
            # a's claim stays, with no live node behind it, so that its host can resume
            # the room elsewhere (tests/test_signaling_resume.py); nobody can join it
            owner = await store.get(f"peerdesk:room:{room}")
            assert owner
            assert not await store.exists(f"peerdesk:node:{owner}")
            assert await store.keys("peerdesk:node:*") != []  # b is still there
            late = await client(http, b)
            await late.send("join", room=room)
            assert await late.error() == "room_not_found"
            # the client b forwarded to a is closed too (a says 1001 as it goes, or b's
            # heartbeat check says 1012), well before a's heartbeat TTL would lapse
            msg = await forwarded.ws.receive(timeout=TIMEOUT)
            assert msg.type is WSMsgType.CLOSE
            assert msg.data in (1001, CLOSE_SERVICE_RESTART)
            assert time.monotonic() - started < cluster.HEARTBEAT_TTL
        finally:
            await store.aclose()


def test_a_connection_with_state_here_is_not_forwarded() -> None:
    from agent.protocol.signaling import Join, Wait, encode
    from signaling.queues import Remember
    from signaling.server import Forward, Locate, LocateQueues

    hub = Hub(ServerConfig(), shared=True)
    conn = hub.connect(0.0)
    (where,) = hub.handle(conn, Wait(queue="support", name="Ann"), 0.0)
    assert isinstance(where, LocateQueues)
    waiting, remember = hub.queues_located(where, "", 0.0)  # this node holds the queues
    assert waiting.message.type == "waiting"  # type: ignore[union-attr]
    assert isinstance(remember, Remember)  # its place, for other nodes should this one die
    (locate,) = hub.receive(conn, '{"type":"join","room":"123456"}', 0.0)
    assert isinstance(locate, Locate)
    (err,) = hub.located(locate, "othernode", 0.0)
    assert not isinstance(err, Forward)
    assert err.message.code == "room_elsewhere"  # type: ignore[union-attr]
    assert conn.id in hub.connections  # still served here, its ticket with it
    fresh = hub.connect(0.0)
    (locate2,) = hub.receive(fresh, '{"type":"join","room":"123456"}', 0.0)
    assert isinstance(locate2, Locate)
    assert hub.located(locate2, "othernode", 0.0) == [
        Forward(fresh, "othernode", encode(Join(room="123456")))
    ]
    assert fresh.id not in hub.connections


async def test_queues_across_nodes(http: aiohttp.ClientSession, redis_url: str) -> None:
    """A customer waiting through one node and a CSR serving through another meet."""
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        cust = await client(http, b)
        await cust.send("wait", queue="support", name="Alice")
        waiting = await cust.recv(TIMEOUT)
        assert waiting["type"] == "waiting"
        assert waiting["position"] == 1
        csr = await client(http, a)
        await csr.send("serve", name="carol", queues=["support"])
        seen = [await csr.recv(TIMEOUT) for _ in range(2)]
        support = [m for m in seen if m["queue"] == "support"]
        assert [t["name"] for t in support[0]["waiting"]] == ["Alice"]
        await csr.send("take", queue="support", room="123456")
        while (taken := await csr.recv(TIMEOUT))["type"] == "queue":
            pass
        assert taken == {**taken, "type": "taken", "name": "Alice"}
        assigned = await cust.recv(TIMEOUT)
        assert assigned == {**assigned, "type": "assigned", "room": "123456", "csr": "carol"}
        await csr.send("transfer", ticket=waiting["ticket"], queue="billing", message="x" * 346)
        while (err := await csr.recv(TIMEOUT))["type"] == "queue":
            pass
        assert err["code"] == "too_long"
        store = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            holder = await store.get("peerdesk:queues")
        finally:
            await store.aclose()
        assert holder  # one node holds the queues, and the other forwarded to it
        assert len(a.events("forwarded") + b.events("forwarded")) == 1


async def test_a_waiting_customer_reconnects_and_keeps_its_place_when_the_queue_node_dies(
    http: aiohttp.ClientSession, redis_url: str
) -> None:
    import json
    import sys

    from tests.servers import ROOT

    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        csr = await client(http, a)  # a claims the queues
        await csr.send("serve", name="carol", queues=["support"])
        assert (await csr.recv(TIMEOUT))["type"] == "queue"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "agent", "queue", "wait", "support", "--name", "Alice", "--json"),
            *("--signal", f"ws://127.0.0.1:{b.port}"),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None

            async def line() -> dict[str, object]:
                assert proc.stdout is not None
                text = await asyncio.wait_for(proc.stdout.readline(), cluster.HEARTBEAT_TTL + 10)
                body: dict[str, object] = json.loads(text)
                return body

            first = await line()
            assert (first["event"], first["position"]) == ("waiting", 1)
            assert b.events("forwarded"), "b forwarded the customer to a, which holds the queues"
            bob = await client(http, b)  # behind Alice
            await bob.send("wait", queue="support", name="Bob")
            assert (await bob.recv(TIMEOUT))["position"] == 2

            a.kill()
            # Bob comes back first, without his ticket: a new customer at the end of the line
            msg = await bob.ws.receive(timeout=cluster.HEARTBEAT_TTL + 5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, CLOSE_SERVICE_RESTART)
            bob = await client(http, b)
            await bob.send("wait", queue="support", name="Bob")
            assert (await bob.recv(TIMEOUT))["position"] == 1
            # Alice's agent reconnects with her ticket and gets her place back, ahead of Bob
            assert (await line())["event"] == "reconnecting"
            again = await line()
            assert (again["event"], again["queue"], again["position"]) == ("waiting", "support", 1)
            assert again["ticket"] == first["ticket"]
            assert (await bob.recv(TIMEOUT))["position"] == 2
            # b holds the queues now, and a CSR there sees both in that order
            carol = await client(http, b)
            await carol.send("serve", name="carol", queues=["support"])
            seen = [await carol.recv(TIMEOUT) for _ in range(2)]
            support = next(m for m in seen if m["queue"] == "support")
            assert [t["name"] for t in support["waiting"]] == ["Alice", "Bob"]
            # a taken ticket's place is forgotten: coming back with it is a new wait
            await carol.send("take", queue="support", room="123456")
            while (await carol.recv(TIMEOUT))["type"] != "taken":
                pass
            assert (await line())["event"] == "assigned"
            late = await client(http, b)
            await late.send("wait", queue="support", name="Alice", ticket=first["ticket"])
            body = await late.recv(TIMEOUT)
            assert body["ticket"] != first["ticket"]
            assert body["position"] == 2  # behind Bob
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_junk_in_a_nodes_mailbox_is_dropped_and_the_node_goes_on(
    http: aiohttp.ClientSession, redis_url: str
) -> None:
    with nodes(2, "--redis", redis_url, "--drain", "0") as (a, b):
        host = await client(http, a)
        room = await host.create()
        store = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            (node_a,) = [
                k.split(":")[-1]
                for k in await store.keys("peerdesk:node:*")
                if await store.get(f"peerdesk:room:{room}") == k.split(":")[-1]
            ]
            mbox = f"peerdesk:mbox:{node_a}"
            for fields in (
                {"junk": "1"},
                {"k": "?", "n": "x", "c": "y", "d": ""},
                {"k": "f", "n": "nobody", "c": "0123456789ab", "d": '{"type":"create"}'},
                {"k": "o", "n": "nobody", "c": "0123456789ab", "d": "hi"},
                {"k": "a", "n": "n" * 100, "c": "0123456789ab", "d": ""},
                {"k": "z", "n": "nobody", "c": "0123456789ab", "d": "not a code"},
            ):
                await store.xadd(mbox, fields)  # type: ignore[arg-type]
        finally:
            await store.aclose()
        deadline = time.monotonic() + TIMEOUT
        while not a.events("bad_mail"):
            assert time.monotonic() < deadline, "junk mail was not noticed"
            await asyncio.sleep(0.05)
        # a still serves: a joiner through b reaches the host on a
        joiner = await client(http, b)
        peer = await joiner.join(room)
        assert await host.recv(TIMEOUT) == {"type": "peer", "room": room, "peer": peer}
