"""The session record's glue (``agent/services/record.py``): three real records, their
log channels joined in memory, their SQLite copies on disk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.services.record import SessionRecord

ROOM = "123456"


class Wires:
    """Log channels between records, in order, each delivered on the next loop turn;
    a record that is cut off neither sends nor receives (a ``kill -9``)."""

    def __init__(self) -> None:
        self.records: dict[str, SessionRecord] = {}
        self.cut: set[str] = set()

    def send_from(self, sender: str) -> Callable[[str, str], None]:
        loop = asyncio.get_running_loop()

        def send(peer: str, text: str) -> None:
            if sender not in self.cut and peer not in self.cut and peer in self.records:
                loop.call_soon(self._deliver, sender, peer, text)

        return send

    def _deliver(self, sender: str, peer: str, text: str) -> None:
        if sender not in self.cut and peer not in self.cut:
            self.records[peer].receive(sender, text)


async def until(what: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not what():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def joined(peer: Identity, role: str, *, primary: bool = False) -> status.Joined:
    return status.Joined(
        peer=peer.peer_id, role=role, name=peer.name, sas=None, me="", primary=primary
    )


@pytest.mark.asyncio
async def test_an_assistant_that_never_saw_the_primary_join_still_records_it_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary's first channel message can beat the end of the assistant's join: the
    Joined that names the primary is said before the assistant's copy of the log opens.
    When the primary dies, the assistant takes over and the record still says who was lost
    (the seat comes from the log itself)."""
    monkeypatch.setenv("PEERDESK_HOME", str(tmp_path))
    pat, dan, alice = (
        Identity(Ed25519PrivateKey.generate(), name) for name in ("Pat", "Dan", "Alice")
    )
    wires = Wires()
    events: list[status.Status] = []
    primary = SessionRecord(pat, ROOM, send=wires.send_from(pat.peer_id), emit=events.append)
    wires.records[pat.peer_id] = primary
    records = [primary]
    try:
        primary.observe(joined(alice, "customer", primary=True))
        primary.observe(joined(dan, "csr"))
        customer = SessionRecord(
            alice,
            ROOM,
            send=wires.send_from(alice.peer_id),
            emit=events.append,
            primary=pat.peer_id,
            role="customer",
        )
        assistant = SessionRecord(
            dan, ROOM, send=wires.send_from(dan.peer_id), emit=events.append, primary=pat.peer_id
        )
        records += [customer, assistant]
        wires.records.update({alice.peer_id: customer, dan.peer_id: assistant})
        customer.sync()
        assistant.sync()
        # the assistant hears of the customer from the roster; the primary's Joined came
        # before its record existed
        assistant.observe(joined(alice, "customer", primary=True))
        everyone = {pat.peer_id, dan.peer_id, alice.peer_id}
        await until(lambda: assistant.core.state.voters() == everyone)
        primary.chat("Pat", "one moment please", None)
        await until(lambda: len(assistant.core.entries) == len(primary.core.entries))

        wires.cut.add(pat.peer_id)  # kill -9
        assistant.observe(status.Left(peer=pat.peer_id, reason="lost"))
        customer.observe(status.Left(peer=pat.peer_id, reason="lost"))
        for _ in range(40):  # as the joiner does: stand until the customer, silent too, votes
            assert assistant.take_over()
            await asyncio.sleep(0.25)
            if assistant.leads:
                break
        assert assistant.leads
        await until(lambda: not assistant.core.state.people[pat.peer_id].present)
        await assistant.settle(2.0)

        lost = [
            e.body
            for e in assistant.core.entries
            if e.kind == "participant" and e.body["action"] == "lost"
        ]
        assert [(b["peer"], b["name"], b["role"], b["primary"]) for b in lost] == [
            (pat.peer_id, "Pat", "csr", True)
        ]
        assert assistant.core.committed_seq == len(assistant.core.entries) - 1
        await until(lambda: len(customer.core.entries) == len(assistant.core.entries))
        assert [e.digest for e in customer.core.entries] == [
            e.digest for e in assistant.core.entries
        ]
    finally:
        for record in records:
            await record.close()
