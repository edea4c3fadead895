"""Support queues: order, take, transfer with a message, the 345-character limit, and
``peerdesk queue`` against a real signaling server."""

from __future__ import annotations

import asyncio
import html
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import DecodeError
from agent.protocol import signaling as sig
from signaling.server import ServerConfig, start_server
from tests.servers import ROOT
from tests.test_signaling_server import Client

TIMEOUT = 3.0
TOKEN = "team-token-0123456789"
Open = Callable[[], Awaitable[Client]]


@pytest.fixture
async def server() -> AsyncIterator[str]:
    runner, port = await start_server("127.0.0.1", 0, ServerConfig(csr_token=TOKEN))
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def open_client(server: str) -> AsyncIterator[Open]:
    async with aiohttp.ClientSession() as http:

        async def make() -> Client:
            return Client(await http.ws_connect(f"{server}/ws"))

        yield make


async def expect(c: Client, kind: str, **fields: Any) -> dict[str, Any]:
    """The next message of type ``kind`` (``queue`` pushes in between are skipped)."""
    while True:
        body = await c.recv(TIMEOUT)
        if body["type"] == kind and all(body.get(k) == v for k, v in fields.items()):
            return body
        if body["type"] not in ("queue", "waiting"):
            pytest.fail(f"expected {kind} {fields}, got {body}")


async def serve(c: Client, name: str, *queues: str) -> None:
    await c.send("serve", name=name, queues=list(queues), token=TOKEN)
    for _ in range(len(queues) + 1):
        assert (await c.recv(TIMEOUT))["type"] == "queue"


async def customer(open_client: Open, queue: str, name: str) -> tuple[Client, str]:
    c = await open_client()
    await c.send("wait", queue=queue, name=name)
    body = await expect(c, "waiting")
    return c, body["ticket"]


async def listing(c: Client, queue: str) -> list[str]:
    await c.send("list", queue=queue)
    body = await expect(c, "queue", queue=queue)
    return [t["name"] for t in body["waiting"]]


async def test_customers_wait_in_order_and_positions_move(open_client: Open) -> None:
    alice, _ = await customer(open_client, "support", "Alice")
    bob, _ = await customer(open_client, "support", "Bob")
    carl, ticket_c = await customer(open_client, "support", "Carl")
    csr = await open_client()
    await serve(csr, "carol", "support")
    assert await listing(csr, "support") == ["Alice", "Bob", "Carl"]

    await csr.send("take", queue="support", room="123456")
    taken = await expect(csr, "taken")
    assert taken["name"] == "Alice"
    assert taken["note"] == ""
    assigned = await expect(alice, "assigned")
    assert assigned == {**assigned, "room": "123456", "csr": "carol"}
    assert (await bob.recv(TIMEOUT))["position"] == 1
    assert (await carl.recv(TIMEOUT))["position"] == 2

    await bob.ws.close()  # leaving the line moves those behind
    assert (await carl.recv(TIMEOUT)) == {
        "type": "waiting",
        "queue": "support",
        "ticket": ticket_c,
        "position": 1,
    }
    # a chosen ticket can be taken out of order; an empty queue says so
    await csr.send("take", queue="support", room="123456", ticket=ticket_c)
    assert (await expect(csr, "taken"))["name"] == "Carl"
    await csr.send("take", queue="support", room="123456")
    assert await csr.error() == "queue_empty"


async def test_transfer_to_a_queue_keeps_the_place_and_carries_the_message(
    open_client: Open,
) -> None:
    first, ticket = await customer(open_client, "support", "First")
    carol = await open_client()
    await serve(carol, "carol", "support")
    await carol.send("take", queue="support", room="111111")
    await expect(carol, "taken")
    await expect(first, "assigned")

    later, _ = await customer(open_client, "billing", "Later")
    dave = await open_client()
    await serve(dave, "dave", "billing")
    message = "Printer fixed; the invoice is wrong. " * 9  # 333 characters
    await carol.send("transfer", ticket=ticket, queue="billing", message=message)
    assert await expect(carol, "transferred") == {
        "type": "transferred",
        "ticket": ticket,
        "queue": "billing",
    }
    # First asked before Later: it goes ahead of Later
    assert (await expect(first, "waiting"))["position"] == 1
    await dave.send("list", queue="billing")
    body = await expect(dave, "queue", queue="billing", total=2)
    assert [t["name"] for t in body["waiting"]] == ["First", "Later"]
    assert body["waiting"][0]["note"] == message
    await dave.send("take", queue="billing", room="222222")
    taken = await expect(dave, "taken")
    assert (taken["name"], taken["note"]) == ("First", message)
    assert (await expect(first, "assigned"))["csr"] == "dave"
    # carol let go of it: she cannot transfer it again
    await carol.send("transfer", ticket=ticket, queue="support", message="again")
    assert await carol.error() == "not_holder"
    assert later  # still waiting


async def test_transfer_to_a_named_csr(open_client: Open) -> None:
    cust, ticket = await customer(open_client, "support", "Eve")
    carol, frank = await open_client(), await open_client()
    await serve(carol, "carol", "support")
    await serve(frank, "frank")
    await carol.send("take", queue="support", room="333333")
    await expect(carol, "taken")
    assert (await expect(cust, "assigned"))["room"] == "333333"
    await carol.send("transfer", ticket=ticket, csr="nobody", message="hi")
    assert await carol.error() == "no_such_csr"
    await carol.send("transfer", ticket=ticket, csr="frank", message="needs admin rights")
    await expect(carol, "transferred", queue="@frank")
    pushed = await expect(frank, "queue", queue="@frank", total=1)
    assert pushed["waiting"][0]["note"] == "needs admin rights"
    await frank.send("take", queue="@frank", room="444444")
    assert (await expect(frank, "taken"))["name"] == "Eve"
    assert (await expect(cust, "assigned"))["room"] == "444444"
    # carol cannot see frank's own queue
    await carol.send("list", queue="@frank")
    assert await carol.error() == "not_your_queue"


async def test_a_transfer_message_over_345_characters_is_a_clear_error(
    open_client: Open,
) -> None:
    _cust, ticket = await customer(open_client, "support", "Gus")
    carol = await open_client()
    await serve(carol, "carol", "support")
    await carol.send("take", queue="support", room="555555")
    await expect(carol, "taken")
    await carol.send("transfer", ticket=ticket, queue="billing", message="x" * 346)
    body = await carol.recv(TIMEOUT)
    assert body["type"] == "error"
    assert body["code"] == "too_long"
    assert "346 characters" in body["message"]
    assert "345" in body["message"]
    # nothing moved: carol still holds it, and exactly 345 goes through
    await carol.send("transfer", ticket=ticket, queue="billing", message="y" * 345)
    await expect(carol, "transferred", queue="billing")
    with pytest.raises(DecodeError, match="346 characters"):
        sig.decode_client(
            json.dumps({"type": "transfer", "ticket": "0" * 12, "queue": "q", "message": "z" * 346})
        )


async def test_serving_needs_the_token_and_a_free_name(open_client: Open) -> None:
    a, b = await open_client(), await open_client()
    await a.send("serve", name="carol", queues=["support"], token="wrong")
    assert await a.error() == "bad_token"
    await a.send("list", queue="support")
    assert await a.error() == "not_serving"
    await serve(a, "carol", "support")
    await b.send("serve", name="carol", queues=["support"], token=TOKEN)
    assert await b.error() == "name_taken"
    c = await open_client()
    await c.send("wait", queue="@carol", name="Sneaky")
    assert await c.error() == "personal_queue"
    await c.send("wait", queue="bad queue!", name="x")
    assert await c.error() == "malformed"


def peerdesk_queue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "queue", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


async def test_peerdesk_queue_commands(open_client: Open, server: str) -> None:
    signal_url = server.replace("http://", "ws://")
    cust, ticket = await customer(open_client, "support", "Hana")
    csr = ("--signal", signal_url, "--as", "carol", "--token", TOKEN)

    listed = await asyncio.to_thread(peerdesk_queue, "list", "support", *csr, "--json")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout.splitlines()[-1])
    assert body["event"] == "queue"
    assert [t["name"] for t in body["waiting"]] == ["Hana"]

    took = await asyncio.to_thread(peerdesk_queue, "take", "support", "--room", "6666-6612", *csr)
    assert took.returncode == 0, took.stderr
    assert "Hana" in took.stdout
    assert (await expect(cust, "assigned"))["room"] == "666666"

    too_long = await asyncio.to_thread(
        peerdesk_queue, "transfer", ticket, "--to-queue", "billing", "--message", "m" * 346, *csr
    )
    assert too_long.returncode == 2
    assert "346 characters" in too_long.stderr
    assert "at most 345" in too_long.stderr

    moved = await asyncio.to_thread(
        peerdesk_queue,
        "transfer",
        ticket,
        "--to-queue",
        "billing",
        "--message",
        "over to you",
        *csr,
    )
    assert moved.returncode == 0, moved.stderr
    assert "billing" in moved.stdout
    assert (await expect(cust, "waiting"))["queue"] == "billing"

    wrong = await asyncio.to_thread(
        peerdesk_queue, "list", "support", "--signal", signal_url, "--as", "x", "--token", "no"
    )
    assert wrong.returncode == 1
    assert "token" in wrong.stderr


async def test_get_help_link_page_and_a_waiting_customer_process(
    open_client: Open, server: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server}/help/support") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Security-Policy"] == "default-src 'none'"
            page = await resp.text()
        async with http.get(f"{server}/help/@carol") as resp:
            assert resp.status == 404
    link = re.search(r'href="(peerdesk://help/[^"]+)"', page)
    assert link, page
    url = html.unescape(link.group(1))
    assert url.startswith("peerdesk://help/support?signal=ws%3A%2F%2F127.0.0.1%3A")

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "queue",
        "wait",
        url,
        "--name",
        "Ines",
        "--json",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        waiting = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert waiting == {**waiting, "event": "waiting", "queue": "support", "position": 1}
        csr = await open_client()
        await serve(csr, "carol", "support")
        await csr.send("take", queue="support", room="777777")
        assert (await expect(csr, "taken"))["name"] == "Ines"
        assigned = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
        assert assigned == {**assigned, "event": "assigned", "room": "777777", "csr": "carol"}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_help_links_are_checked() -> None:
    from agent.queue_cli import parse_help_link

    assert parse_help_link("support") == ("support", None)
    assert parse_help_link("peerdesk://help/support?signal=wss%3A%2F%2Fs.example") == (
        "support",
        "wss://s.example",
    )
    with pytest.raises(Exception, match="signaling URL"):
        parse_help_link("peerdesk://help/support?signal=ftp%3A%2F%2Fx")
    bad = peerdesk_queue("wait", "peerdesk://help/no such?signal=ws%3A%2F%2Fx", "--name", "A")
    assert bad.returncode == 2
    assert "not a queue name" in bad.stderr


# --------------------------------------------------------------------------- wire


queue_names = st.from_regex(r"@?[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True)
csr_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True)
tickets = st.from_regex(r"[0-9a-f]{12}", fullmatch=True)
rooms = st.from_regex(r"[0-9]{6}", fullmatch=True)
text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
names = text.filter(bool).map(lambda t: t[:64])
notes = text.map(lambda t: t[:345])

client_queue_messages = st.one_of(
    st.builds(sig.Wait, queue=queue_names, name=names),
    st.builds(
        sig.Serve,
        name=csr_names,
        queues=st.lists(queue_names, max_size=16).map(tuple),
        token=text.map(lambda t: t[:128]),
    ),
    st.builds(sig.ListQueue, queue=queue_names),
    st.builds(sig.Take, queue=queue_names, room=rooms, ticket=st.just("") | tickets),
    st.builds(sig.Transfer, ticket=tickets, message=notes, queue=queue_names, csr=st.just(""))
    | st.builds(sig.Transfer, ticket=tickets, message=notes, queue=st.just(""), csr=csr_names),
)
server_queue_messages = st.one_of(
    st.builds(sig.Waiting, queue=queue_names, ticket=tickets, position=st.integers(1, 10**9)),
    st.builds(sig.Assigned, ticket=tickets, room=rooms, csr=csr_names),
    st.builds(
        sig.QueueState,
        queue=queue_names,
        waiting=st.lists(
            st.builds(
                sig.QueuedTicket,
                ticket=tickets,
                name=text.map(lambda t: t[:64]),
                waited=st.integers(0, 10**9),
                note=notes,
            ),
            max_size=5,
        ).map(tuple),
        total=st.integers(0, 10**9),
    ),
    st.builds(
        sig.Taken, ticket=tickets, queue=queue_names, name=text.map(lambda t: t[:64]), note=notes
    ),
    st.builds(sig.Transferred, ticket=tickets, queue=queue_names),
)


@given(client_queue_messages)
def test_client_queue_messages_round_trip(msg: sig.ClientMessage) -> None:
    assert sig.decode_client(sig.encode(msg)) == msg


@given(server_queue_messages)
def test_server_queue_messages_round_trip(msg: sig.ServerMessage) -> None:
    assert sig.decode_server(sig.encode(msg)) == msg


async def test_metrics_count_queue_customers(open_client: Open, server: str) -> None:
    from tests.test_signaling_hardening import metrics_of

    _a, _ = await customer(open_client, "support", "A")
    _b, _ = await customer(open_client, "support", "B")
    csr = await open_client()
    await serve(csr, "carol", "support")
    await csr.send("take", queue="support", room="123456")
    await expect(csr, "taken")
    async with aiohttp.ClientSession() as http, http.get(f"{server}/metrics") as resp:
        m = metrics_of(await resp.text())
    assert m['peerdesk_queue_customers{state="waiting"}'] == 1
    assert m['peerdesk_queue_customers{state="taken"}'] == 1
    assert m["peerdesk_queue_csrs"] == 1
