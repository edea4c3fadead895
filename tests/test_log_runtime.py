"""The replicated log between real agents: forged log messages from a participant are
refused with an error that says why, and the session and its log go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.logverify import verify
from agent.protocol import log as lw
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from agent.store.logstore import LogStore
from signaling.server import start_server


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_forged_log_messages_are_refused_and_the_session_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERDESK_HOME", str(tmp_path))
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    seen: dict[str, list[status.Status]] = {"csr": [], "customer": []}
    carol_key, alice_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    csr = CsrSession(Identity(carol_key, "Carol"), url, seen["csr"].append)
    cust: CustomerSession | None = None
    try:
        code = await csr.start()
        cust = CustomerSession(
            Identity(alice_key, "Alice"), JoinLink(code, url), url, seen["customer"].append
        )
        await cust.join()
        await until(
            lambda: cust is not None and cust.record is not None and cust.record.core.entries
        )
        assert csr.record is not None and cust._link is not None
        carol, alice = csr.me, cust.me
        genesis = csr.record.core.entries[0].digest

        def chat(text: str, sender: str = alice) -> dict[str, object]:
            return {"from": sender, "name": "Alice", "text": text, "to": None}

        honest = lw.make_proposal(
            alice_key, session=genesis, ts=time.time(), kind="chat", body=chat("hi")
        )
        forged = [
            # altered after signing: the signature no longer covers the body
            replace(honest, body=chat("I never said this")),
            # a chat line in the CSR's name, signed by the customer
            lw.make_proposal(
                alice_key, session=genesis, ts=time.time(), kind="chat", body=chat("x", carol)
            ),
            # a customer writing a CSR's note
            lw.make_proposal(
                alice_key,
                session=genesis,
                ts=time.time(),
                kind="note",
                body={"text": "forged note", "by": alice},
            ),
            # a proposal made for another session
            lw.make_proposal(
                alice_key, session="0" * 64, ts=time.time(), kind="chat", body=chat("replayed")
            ),
        ]
        for proposal in forged:
            cust._link.send_raw("log", lw.encode(lw.Propose(proposal)))
        # the customer acting as sequencer: an append of its own, off the chain
        entry = lw.make_entry(
            alice_key,
            epoch=0,
            seq=len(csr.record.core.entries),
            prev="0" * 64,
            ts=time.time(),
            kind="chat",
            body=chat("appended by a customer"),
        )
        cust._link.send_raw("log", lw.encode(lw.Append(0, 0, (entry,))))

        def refusals() -> list[status.Error]:
            return [
                e for e in seen["csr"] if isinstance(e, status.Error) and e.code == "log_refused"
            ]

        await until(lambda: len(refusals()) >= 5)
        reasons = " | ".join(e.reason for e in refusals())
        for words in (
            "signature does not verify",
            f'"from" must be its author {alice}',
            "may not write note entries",
            "another session",
            "cannot sequence",
        ):
            assert words in reasons, (words, reasons)

        # the session goes on, and so does its log
        cust.chat("still here")
        await until(
            lambda: any(
                isinstance(e, status.ChatReceived) and e.text == "still here" for e in seen["csr"]
            )
        )
        await until(
            lambda: any(
                e.kind == "chat" and e.body["text"] == "still here"
                for e in csr.record.core.entries[: csr.record.core.committed_seq + 1]
            )
        )
        path = csr.record.path
        await csr.end()
        await asyncio.wait_for(cust.wait(), 10)
    finally:
        await csr.end(force=True)
        if cust is not None:
            await cust.leave()
        await runner.cleanup()

    report = verify(path)
    assert report.ok, report.summary()
    with LogStore(path) as store:
        texts = [e.body.get("text") for e in store.load()]
    assert "still here" in texts
    assert not {"I never said this", "x", "forged note", "replayed", "appended by a customer"} & {
        t for t in texts if isinstance(t, str)
    }


@pytest.mark.timeout(60)
async def test_a_new_primary_customer_takes_the_old_ones_place_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERDESK_HOME", str(tmp_path))
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    events: list[status.Status] = []
    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, events.append)
    customers: list[CustomerSession] = []
    try:
        code = await csr.start()
        for name in ("Alice", "Bob"):
            customer = CustomerSession(
                Identity(Ed25519PrivateKey.generate(), name),
                JoinLink(code, url),
                url,
                events.append,
            )
            await customer.join()
            customers.append(customer)
        alice, bob = customers
        await until(lambda: alice.record is not None and bob.record is None)
        assert csr.record is not None
        csr.make_primary(bob.me)
        await until(lambda: bob.record is not None and bool(bob.record.core.entries))
        bob.chat("I am the one with the broken printer")
        assert csr.record is not None
        record = csr.record

        def committed(text: str) -> bool:
            core = record.core
            return any(
                e.kind == "chat" and e.body["text"] == text
                for e in core.entries[: core.committed_seq + 1]
            )

        await until(lambda: committed("I am the one with the broken printer"))
        assert record.core.voters == frozenset({csr.me, bob.me})
        # the old primary is gone from the voters: losing it stops nothing
        await alice.leave()
        csr.chat("thanks both")
        await until(lambda: committed("thanks both"))
        path = record.path
        await csr.end()
        await asyncio.wait_for(bob.wait(), 10)
    finally:
        await csr.end(force=True)
        for customer in customers:
            await customer.leave()
        await runner.cleanup()

    with LogStore(path) as store:
        mine = store.load()
    promoted = [e for e in mine if e.kind == "participant" and e.body["action"] == "promoted"]
    assert [(e.body["peer"], e.body["primary"]) for e in promoted] == [(bob.me, True)]
    (copy,) = (tmp_path / "sessions").glob(f"*-customer-{bob.me}.sqlite")
    assert verify(copy).ok
    with LogStore(copy) as store:  # the new primary customer holds the whole log
        assert [e.digest for e in store.load()] == [e.digest for e in mine]
