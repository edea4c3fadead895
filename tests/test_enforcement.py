"""The customer's agent enforces consent itself: a CSR that ignores the rules gets nowhere.

A real CSR agent refuses locally before sending; here the CSR's side is bypassed and
raw control events are sent straight down the data channel, as a modified agent would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.protocol import channel as ch
from agent.protocol import control as ctl
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from signaling.server import start_server
from tests.desktop import pointer, xvfb


@pytest.fixture
def display(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with xvfb(1280, 800) as name:
        monkeypatch.setenv("DISPLAY", name)  # the in-process customer's desktop
        yield name


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.fixture
async def pair(
    display: str,
) -> AsyncIterator[tuple[CsrSession, CustomerSession, list[status.Status]]]:
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    csr_events: list[status.Status] = []
    cust_events: list[status.Status] = []
    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Mallory"), url, csr_events.append)
    code = await csr.start()
    cust = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Alice"),
        JoinLink(code, url),
        url,
        cust_events.append,
        timeout=5,
    )
    await cust.join()
    await until(lambda: any(isinstance(e, status.Joined) for e in csr_events))
    try:
        yield csr, cust, cust_events
    finally:
        await csr.end()
        await runner.cleanup()


def forged_click(x: float, y: float, token: tuple[int, int], seq: int) -> str:
    return ctl.encode(ctl.Pointer(token=token, seq=seq, action="click", x=x, y=y, button="left"))


async def test_forged_input_is_dropped_without_a_grant_and_with_stale_tokens(
    pair: tuple[CsrSession, CustomerSession, list[status.Status]], display: str
) -> None:
    csr, cust, cust_events = pair
    link = next(iter(csr._members.values())).link  # the raw channel, bypassing CsrServices
    arbiter = cust.services.arbiter
    start = pointer(display)

    # no grant: dropped and counted, nothing moves
    link.send_raw("control", forged_click(0.5, 0.5, (0, 1), 1))
    await until(lambda: arbiter.dropped["no_grant"] == 1)
    assert pointer(display) == start

    # a request is pending: input is paused even for a forged token
    link.send(ch.Request(cap="control"))
    await until(lambda: any(isinstance(e, status.ConsentRequest) for e in cust_events))
    link.send_raw("control", forged_click(0.5, 0.5, (0, 1), 2))
    await asyncio.sleep(0.2)
    assert pointer(display) == start

    prompt = next(e for e in cust_events if isinstance(e, status.ConsentRequest))
    cust.services.answer(prompt.id, True)
    token = arbiter.token
    assert token is not None
    link.send_raw("control", forged_click(0.25, 0.5, token, 3))
    await until(lambda: pointer(display) == (320, 400))

    # revoke and grant again: the old token is dead for ever
    cust.services.revoke("control")
    link.send_raw("control", forged_click(0.75, 0.75, token, 4))
    await until(lambda: arbiter.dropped["no_grant"] == 2)
    link.send(ch.Request(cap="control"))
    await until(lambda: len([e for e in cust_events if isinstance(e, status.ConsentRequest)]) == 2)
    second = [e for e in cust_events if isinstance(e, status.ConsentRequest)][-1]
    cust.services.answer(second.id, True)
    assert arbiter.token is not None and arbiter.token > token
    link.send_raw("control", forged_click(0.75, 0.75, token, 5))
    await until(lambda: arbiter.dropped["stale_token"] == 1)
    assert pointer(display) == (320, 400)

    # garbage on the control channel changes nothing and breaks nothing
    link.send_raw("control", '{"type":"pointer","x":"NaN"}')
    link.send_raw("control", b"\x00\xff")
    await asyncio.sleep(0.2)
    assert pointer(display) == (320, 400)
    link.send_raw("control", forged_click(0.5, 0.25, arbiter.token, 6))
    await until(lambda: pointer(display) == (640, 200))


async def test_customer_revoke_is_immediate_even_if_the_csr_never_hears(
    pair: tuple[CsrSession, CustomerSession, list[status.Status]], display: str
) -> None:
    csr, cust, cust_events = pair
    link = next(iter(csr._members.values())).link
    link.send(ch.Request(cap="control"))
    await until(lambda: any(isinstance(e, status.ConsentRequest) for e in cust_events))
    prompt = next(e for e in cust_events if isinstance(e, status.ConsentRequest))
    cust.services.answer(prompt.id, True)
    token = cust.services.arbiter.token
    assert token is not None
    # the revoke and the next click race; the customer decides before any round trip
    cust.services.revoke("all")
    link.send_raw("control", forged_click(0.9, 0.9, token, 1))
    await asyncio.sleep(0.3)
    assert pointer(display) != (1152, 720)
    assert not cust.services.consent.allows(csr.me, "control")


async def test_view_revoke_stops_frames_on_the_customers_machine(
    pair: tuple[CsrSession, CustomerSession, list[status.Status]], display: str
) -> None:
    csr, cust, cust_events = pair
    member = next(iter(csr._members.values()))
    member.link.send(ch.Request(cap="view"))
    await until(lambda: any(isinstance(e, status.ConsentRequest) for e in cust_events))
    prompt = next(e for e in cust_events if isinstance(e, status.ConsentRequest))
    cust.services.answer(prompt.id, True)
    await until(lambda: member.services.viewer is not None and member.services.viewer.frames > 0)
    viewer = member.services.viewer
    cust.services.revoke("view")
    await asyncio.sleep(0.5)  # frames already on the wire may land
    before = viewer.frames
    await asyncio.sleep(2.5)  # longer than the 1 s heartbeat of a static screen
    assert viewer.frames == before
    assert cust.services.screen is not None
    assert cust.services.screen.stats().viewers == 0


async def test_files_requests_are_refused_without_a_grant_and_after_revoke(
    pair: tuple[CsrSession, CustomerSession, list[status.Status]], tmp_path: Path
) -> None:
    from agent.protocol import files as fw

    csr, cust, cust_events = pair
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("private\n")
    member = next(iter(csr._members.values()))
    replies: list[fw.Message] = []
    member.services.on_channel = lambda name, data: replies.append(fw.decode(data))  # type: ignore[method-assign]

    def ask() -> None:
        member.link.send_raw(
            "files", fw.encode(fw.ListFiles(id=fw.new_transfer_id(), scope="browse"))
        )
        member.link.send_raw(
            "files", fw.encode(fw.Get(id=fw.new_transfer_id(), scope="browse", path="notes.txt"))
        )

    ask()
    await until(lambda: len(replies) == 2)
    assert all(isinstance(r, fw.Reject) and r.reason == "no_grant" for r in replies), replies

    member.link.send(ch.Request(cap="files_advanced"))
    await until(lambda: any(isinstance(e, status.ConsentRequest) for e in cust_events))
    prompt = next(e for e in cust_events if isinstance(e, status.ConsentRequest))
    cust.services.answer(prompt.id, True, str(shared))
    replies.clear()
    member.link.send_raw("files", fw.encode(fw.ListFiles(id=fw.new_transfer_id(), scope="browse")))
    await until(lambda: len(replies) == 1)
    assert isinstance(replies[0], fw.Listing)
    assert [e.name for e in replies[0].entries] == ["notes.txt"]

    cust.services.revoke("files_advanced")
    replies.clear()
    ask()
    await until(lambda: len(replies) == 2)
    assert all(isinstance(r, fw.Reject) and r.reason == "no_grant" for r in replies), replies
