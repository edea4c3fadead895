"""The replicated session log's core, pumped by hand: two CSRs and a customer.

Alice is the primary CSR (sequencer of epoch 0), Bob an assistant CSR, Carol the
primary customer; all three are voters, so any two of them commit.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from agent.errors import DecodeError, LocalProtocolError
from agent.logverify import verify
from agent.protocol import log as lw
from agent.protocol.log import Entry
from agent.session.log import (
    EpochChanged,
    Refused,
    Role,
    SessionLog,
    Truncated,
    VoteRecord,
)
from agent.session.logstate import LogState
from agent.store import LogStore
from tests.logsim import ALICE, BOB, CAROL, DAVE, EVE, Net, Who, joined, session

A, B, C, D = ALICE.id, BOB.id, CAROL.id, DAVE.id


def chat(person: Who, text: str) -> dict[str, object]:
    return {"from": person.id, "name": person.name, "text": text, "to": None}


def same_committed(net: Net) -> list[Entry]:
    logs = [net.committed(pid) for pid in net.nodes if pid not in net.down]
    assert all(log == logs[0] for log in logs)
    return logs[0]


def texts(entries: list[Entry]) -> list[str]:
    return [str(e.body["text"]) for e in entries if e.kind == "chat"]


# --------------------------------------------------------------------------- happy path


def test_proposals_are_sequenced_replicated_and_committed() -> None:
    net = session()
    alice, bob, carol = (net.nodes[p] for p in (A, B, C))
    assert alice.role is Role.SEQUENCER and bob.role is carol.role is Role.FOLLOWER
    assert alice.voters == bob.voters == carol.voters == {A, B, C}
    assert net.kinds(C) == ["session_start", "participant", "participant"]

    carol.propose("chat", chat(CAROL, "my printer is on fire"), net.now)
    net.pump()
    bob.propose("note", {"text": "check the printer driver", "by": B}, net.now)
    net.pump()
    alice.propose("chat", chat(ALICE, "on it"), net.now)
    net.pump()

    log = same_committed(net)
    assert [e.kind for e in log[3:]] == ["chat", "note", "chat"]
    assert [e.seq for e in log] == list(range(6))
    carols, bobs, alices = log[3:]
    assert carols.author == C and carols.sequenced and carols.session == log[0].digest
    assert bobs.author == B and bobs.sequenced
    assert alices.author == A and not alices.sequenced  # the sequencer's own: one signature
    for prev, entry in itertools.pairwise(log):
        assert entry.prev == prev.digest
    state = LogState()
    for entry in log:
        assert state.check(entry) is None
        state.apply(entry)


def test_an_entry_commits_only_on_a_majority_of_voters() -> None:
    net = session()
    alice = net.nodes[A]
    before = alice.committed_seq
    net.cut = {frozenset((A, B)), frozenset((A, C))}
    alice.propose("chat", chat(ALICE, "anyone there?"), net.now)
    net.tick(0.5)
    assert len(alice.entries) == before + 2 and alice.committed_seq == before  # 1 of 3
    net.cut = {frozenset((A, C))}  # Bob comes back: 2 of 3
    net.tick(0.5)
    assert alice.committed_seq == before + 1
    assert net.nodes[B].committed_seq == before + 1
    assert net.nodes[C].committed_seq == before  # Carol is still cut off
    net.cut = set()
    net.tick(0.5)
    assert texts(same_committed(net)) == ["anyone there?"]


def test_acks_and_commits_wait_for_the_disk() -> None:
    net = session()
    net.auto_persist = False
    alice = net.nodes[A]
    before = alice.committed_seq
    alice.propose("chat", chat(ALICE, "hello"), net.now)
    net.pump()
    assert alice.committed_seq == before  # nobody has it on disk yet
    net.flush(A)
    net.pump()
    assert alice.committed_seq == before  # only Alice: 1 of 3
    net.flush(C)  # Carol's disk finishes: her ack leaves now
    net.pump()
    assert alice.committed_seq == before + 1
    assert net.nodes[B].committed_seq == before  # Bob has not persisted: commits nothing
    net.flush(B)
    net.tick(0.3)
    assert net.nodes[B].committed_seq == before + 1


def test_a_vote_leaves_only_once_it_is_durable() -> None:
    net = session()
    net.auto_persist = False
    net.down = {A}
    bob = net.nodes[B]
    bob.start_election(net.now, transfer=True)
    net.pump()
    assert bob.role is Role.CANDIDATE
    assert net.stores[C].vote is None  # Bob's request waits for his own vote on disk
    net.flush(B)
    net.pump()
    assert net.stores[C].vote is None  # Carol's grant is not durable yet, so not sent
    assert bob.role is Role.CANDIDATE
    net.flush(C)
    net.pump()
    assert net.stores[C].vote == VoteRecord(1, B)
    assert bob.role is Role.SEQUENCER and bob.epoch == 1


# --------------------------------------------------------------------------- forgeries


def resign(entry: Entry, who: Who) -> Entry:
    """Sign ``entry`` as its own sequencer would, whatever its fields say."""
    unsigned = dataclasses.replace(entry, sig=b"")
    obj = unsigned.to_obj()
    del obj["sig"]
    return dataclasses.replace(entry, sig=who.key.sign(lw.DOMAIN_ENTRY + lw.canonical(obj)))


def next_entry(node: SessionLog, author: Who = ALICE, **body_over: object) -> Entry:
    body = chat(author, "forged?") | body_over
    return lw.make_entry(
        author.key,
        epoch=node.epoch,
        seq=len(node.entries),
        prev=node.head[2],
        ts=1.0,
        kind="chat",
        body=body,
    )


def sequenced(node: SessionLog, author: Who, kind: str, body: dict[str, object]) -> Entry:
    genesis = node.entries[0].digest
    proposal = lw.make_proposal(author.key, session=genesis, ts=2.0, kind=kind, body=body)
    return lw.sequence(
        proposal, ALICE.key, epoch=node.epoch, seq=len(node.entries), prev=node.head[2]
    )


def deliver(
    net: Net, sender: str, to: str, entry: Entry, epoch: int | None = None
) -> list[Refused]:
    node = net.nodes[to]
    msg = lw.Append(node.epoch if epoch is None else epoch, -1, (entry,))
    node.receive(sender, lw.encode(msg), net.now)
    net.pump()
    return [e for e in net.drain(to) if isinstance(e, Refused)]


def test_forged_entries_are_refused_with_a_reason_and_the_log_goes_on() -> None:
    net = session()
    bob = net.nodes[B]
    length = len(bob.entries)
    honest = next_entry(bob)
    tampered_body = dataclasses.replace(honest, body=chat(ALICE, "pay me"))
    forged_by_carol_key = dataclasses.replace(honest, key=lw.public_bytes(CAROL.key))
    customer_note = sequenced(bob, CAROL, "note", {"text": "I am a CSR now", "by": C})
    bad_seqsig = dataclasses.replace(
        sequenced(bob, CAROL, "chat", chat(CAROL, "hi")), seqsig=BOB.key.sign(b"x")
    )
    cases = {
        "bad_signature": dataclasses.replace(honest, sig=bytes(64)),
        "broken_chain": resign(dataclasses.replace(honest, prev="1" * 64), ALICE),
        "wrong_author": resign(forged_by_carol_key, ALICE),
        "not_allowed": customer_note,
        "not_sequencer": next_entry(bob, BOB),
    }
    for reason, entry in cases.items():
        refused = deliver(net, A, B, entry)
        assert [r.reason for r in refused] == [reason], (reason, refused)
        assert refused[0].entry == entry and refused[0].peer == A and refused[0].detail
        assert len(bob.entries) == length
    refused = deliver(net, A, B, tampered_body)
    assert [r.reason for r in refused] == ["bad_signature"]
    refused = deliver(net, A, B, bad_seqsig)
    assert [(r.reason, "sequencer" in r.detail) for r in refused] == [("bad_signature", True)]

    net.nodes[A].propose("chat", chat(ALICE, "still here"), net.now)
    net.pump()
    assert texts(same_committed(net)) == ["still here"]


def test_a_customer_cannot_write_a_note_through_the_sequencer() -> None:
    net = session()
    carol, alice = net.nodes[C], net.nodes[A]
    with pytest.raises(LocalProtocolError, match="customer may not write note"):
        carol.propose("note", {"text": "mine", "by": C}, net.now)
    genesis = carol.entries[0].digest
    proposal = lw.make_proposal(
        CAROL.key, session=genesis, ts=3.0, kind="note", body={"text": "x", "by": C}
    )
    answers: list[str] = []
    net.tap = lambda sender, to, text: answers.append(text) or text
    alice.receive(C, lw.encode(lw.Propose(proposal)), net.now)
    net.pump()
    refused = [e for e in net.drain(A) if isinstance(e, Refused)]
    assert [(r.reason, r.proposal) for r in refused] == [("not_allowed", proposal)]
    rejects = [lw.decode(t) for t in answers if '"reject"' in t]
    assert rejects == [lw.Reject(proposal.sig, "not_allowed", refused[0].detail)]
    assert all(e.kind != "note" for e in alice.entries)


def test_messages_from_outsiders_and_from_a_second_sequencer_are_refused() -> None:
    net = session()
    net.add(EVE, {A}, A)
    bob = net.nodes[B]
    length = len(bob.entries)
    refused = deliver(net, EVE.id, B, next_entry(bob))
    assert [r.reason for r in refused] == ["not_allowed"]
    refused = deliver(net, B, C, next_entry(bob, BOB))  # Bob pretends to sequence epoch 0
    assert [r.reason for r in refused] == ["not_sequencer"]
    bob.receive(A, "{not json", net.now)
    bob.receive(A, '{"type":"gossip"}', net.now)
    net.pump()
    assert [r.reason for r in net.refusals(B)] == ["malformed", "unknown_type"]
    assert len(bob.entries) == length


def test_a_proposal_is_sequenced_once_however_often_it_is_sent() -> None:
    net = session()
    carol, alice = net.nodes[C], net.nodes[A]
    carol.propose("chat", chat(CAROL, "once"), net.now)
    net.pump()
    entry = next(e for e in alice.entries if e.kind == "chat")
    for _ in range(3):
        alice.receive(C, lw.encode(lw.Propose(entry.proposal())), net.now)
    net.pump()
    assert texts(same_committed(net)) == ["once"]
    replay = lw.sequence(
        entry.proposal(), ALICE.key, epoch=0, seq=len(alice.entries), prev=alice.head[2]
    )
    refused = deliver(net, A, B, replay)
    assert [r.reason for r in refused] == ["duplicate"]


# --------------------------------------------------------------------------- epochs


def test_the_sequencer_fails_over_and_old_epochs_are_refused() -> None:
    net = session()
    alice = net.nodes[A]
    old_epoch_entry = next_entry(alice)
    net.down = {A}
    net.tick(2.0)
    bob, carol = net.nodes[B], net.nodes[C]
    assert bob.role is Role.SEQUENCER and bob.epoch == 1 and carol.sequencer == B
    assert EpochChanged(1, B) in net.drain(C)
    epoch_entry = bob.entries[-1]
    assert epoch_entry.kind == "epoch"
    assert epoch_entry.body == {"epoch": 1, "sequencer": B, "votes": sorted([B, C])}
    assert carol.committed_seq == epoch_entry.seq

    # Alice comes back still believing in epoch 0: her entries are refused...
    refused = deliver(net, A, C, old_epoch_entry, epoch=0)
    assert [r.reason for r in refused] == ["old_epoch"]
    # ...and she learns of epoch 1 and follows Bob.
    net.down = set()
    net.tick(0.5)
    assert alice.role is Role.FOLLOWER and alice.epoch == 1 and alice.sequencer == B
    alice.propose("chat", chat(ALICE, "back"), net.now)
    net.pump()
    assert texts(same_committed(net)) == ["back"]


def test_a_diverged_uncommitted_tail_is_truncated_and_its_entries_proposed_again() -> None:
    net = session()
    alice = net.nodes[A]
    net.cut = {frozenset((A, B)), frozenset((A, C))}
    alice.propose("chat", chat(ALICE, "lost 1"), net.now)
    alice.propose("chat", chat(ALICE, "lost 2"), net.now)
    net.pump()
    first_lost = len(alice.entries) - 2
    net.tick(2.0)  # Bob and Carol elect Bob; Alice still thinks she sequences epoch 0
    bob = net.nodes[B]
    assert bob.role is Role.SEQUENCER and alice.role is Role.SEQUENCER
    bob.propose("chat", chat(BOB, "epoch one"), net.now)
    net.pump()
    assert bob.entries[first_lost].kind == "epoch"

    net.cut = set()
    net.tick(1.0)
    events = net.drain(A)
    truncated = [e for e in events if isinstance(e, Truncated)]
    assert len(truncated) == 1 and truncated[0].from_seq == first_lost
    assert texts(list(truncated[0].entries)) == ["lost 1", "lost 2"]
    assert alice.role is Role.FOLLOWER
    log = same_committed(net)
    assert texts(log) == ["epoch one", "lost 1", "lost 2"]  # proposed again, once each
    assert all(e.epoch == 1 for e in log[first_lost:])


def test_hand_over_moves_the_sequencer_without_waiting_for_a_timeout() -> None:
    net = session(dave=True)
    alice, bob, dave = net.nodes[A], net.nodes[B], net.nodes[DAVE.id]
    net.tick(0.5)
    # While Alice is alive, a CSR standing on his own is not elected (voters stick).
    dave.start_election(net.now)
    net.pump()
    assert dave.role is not Role.SEQUENCER
    net.tick(1.5)
    assert alice.role is Role.SEQUENCER or bob.role is Role.SEQUENCER
    sequencer = alice if alice.role is Role.SEQUENCER else bob
    successor = bob if sequencer is alice else alice
    # The successor missed the latest entries: the hand-over brings it up to date first.
    net.cut = {frozenset((sequencer.me, successor.me))}
    sequencer.propose("chat", chat(ALICE if sequencer is alice else BOB, "just now"), net.now)
    net.pump()
    net.cut = set()
    assert len(successor.entries) < len(sequencer.entries)
    sequencer.hand_over(successor.me, net.now)
    net.pump()
    assert successor.role is Role.SEQUENCER and sequencer.role is Role.FOLLOWER
    assert len({n.sequencer for n in net.nodes.values()}) == 1


def test_a_restarted_sequencer_stands_again_instead_of_resuming() -> None:
    net = session()
    net.nodes[A].propose("chat", chat(ALICE, "before"), net.now)
    net.pump()
    net.down = {A}
    restarted = net.add(ALICE, {A}, A)  # from what its store holds
    assert restarted.role is Role.FOLLOWER and restarted.sequencer is None
    net.down = set()
    net.tick(3.0)
    sequencers = [n for n in net.nodes.values() if n.role is Role.SEQUENCER]
    assert len(sequencers) == 1 and sequencers[0].epoch >= 1
    assert texts(same_committed(net)) == ["before"]


# --------------------------------------------------------------------------- rejoin


def test_a_participant_that_dropped_catches_up_on_rejoin() -> None:
    net = session()
    net.down = {B}
    alice, carol = net.nodes[A], net.nodes[C]
    for i in range(40):
        alice.propose("chat", chat(ALICE, f"a{i}"), net.now)
    for i in range(10):
        carol.propose("chat", chat(CAROL, f"c{i}"), net.now)
    net.pump()
    assert len(texts(net.committed(A))) == 50
    bob = net.nodes[B]
    assert len(bob.entries) == 3
    net.down = set()
    bob.request_sync(net.now)
    net.pump()
    assert len(texts(net.committed(B))) == 50
    assert same_committed(net) == net.committed(B)


def test_an_assistant_admitted_late_gets_the_log_so_far_without_asking() -> None:
    """Its sync request went out before it was admitted and was dropped; the next
    would wait a retry interval. The sequencer sends the log along with the entry
    that admits it, so it can vote and stand for the log at once."""
    net = session(assistant=False)
    alice = net.nodes[A]
    for i in range(5):
        alice.propose("chat", chat(ALICE, f"a{i}"), net.now)
    net.pump()
    bob = net.add(BOB, {A}, A)
    net.cut = {frozenset((A, B))}
    bob.request_sync(net.now)  # lost: the primary's host drops it until it admits Bob
    net.pump()
    net.cut = set()
    alice.propose("participant", joined(BOB, "assistant"), net.now)
    net.pump()  # no time passes: no heartbeat, no retry
    assert texts(list(bob.entries)) == [f"a{i}" for i in range(5)]
    assert [e.kind for e in bob.entries] == [e.kind for e in alice.entries]
    assert bob.voters == {A, B, C}
    net.down = {A}  # the primary dies right after: Bob can stand, and wins with Carol
    net.tick(4.0)
    assert bob.role is Role.SEQUENCER


def test_a_crashed_participant_restarts_from_its_store_and_catches_up() -> None:
    net = session()
    alice = net.nodes[A]
    alice.propose("chat", chat(ALICE, "one"), net.now)
    net.pump()
    net.down = {C}
    alice.propose("chat", chat(ALICE, "two"), net.now)
    net.pump()
    restarted = net.add(CAROL, {A}, A)
    assert texts(list(restarted.entries)) == ["one"]
    assert restarted.committed_seq == -1  # commit knowledge is not durable; it comes back
    net.down = set()
    net.tick(0.5)
    assert texts(net.committed(C)) == ["one", "two"]


# --------------------------------------------------------------------------- control


def test_the_control_token_grows_and_an_epoch_change_releases_control() -> None:
    net = session()
    alice, bob = net.nodes[A], net.nodes[B]
    start = alice.control
    assert start is not None and start.holder is None and start.token == (0, 0)
    alice.propose("control", {"holder": B, "token": list(start.token), "by": A}, net.now)
    net.pump()
    granted = bob.control
    assert granted is not None and granted.holder == B and granted.token > start.token
    with pytest.raises(LocalProtocolError, match="current token"):
        alice.propose("control", {"holder": A, "token": list(start.token), "by": A}, net.now)
    # Bob hands control back against the current token.
    bob.propose("control", {"holder": A, "token": list(granted.token), "by": B}, net.now)
    net.pump()
    back = alice.control
    assert back is not None and back.holder == A and back.token > granted.token
    net.down = {A}
    net.tick(2.0)
    released = bob.control
    assert released is not None and released.holder is None and released.token > back.token


def test_sealed_notes_open_only_with_the_key() -> None:
    key = bytes(range(32))
    sealed = lw.seal_note(key, "customer's password is on a sticky note")
    net = session()
    net.nodes[B].propose("note", {"sealed": sealed, "by": B}, net.now)
    net.pump()
    note = same_committed(net)[-1]
    assert note.kind == "note" and "sticky" not in note.raw.decode()
    assert lw.open_note(key, str(note.body["sealed"])) == "customer's password is on a sticky note"
    with pytest.raises(DecodeError):
        lw.open_note(bytes(32), str(note.body["sealed"]))


def test_policy_keeps_customers_to_themselves() -> None:
    net = session()
    state = net.nodes[A].state
    chat_as_alice = chat(ALICE, "hi")
    assert state.allowed(C, "chat", chat_as_alice) is not None
    assert state.allowed(C, "sysinfo", {"customer": C, "data": {}}) is None
    assert state.allowed(C, "sysinfo", {"customer": B, "data": {}}) is not None
    assert (
        state.allowed(C, "participant", joined(CAROL, "customer", True) | {"action": "left"})
        is None
    )
    assert state.allowed(C, "participant", joined(BOB, "customer")) is not None
    assert state.allowed(C, "participant", joined(CAROL, "csr", True)) is not None
    consent = {"id": "r1", "cap": "view", "state": "granted", "csr": A, "customer": C}
    assert state.allowed(C, "consent", consent) is None
    assert state.allowed(A, "consent", consent) is not None  # only the customer grants
    assert state.allowed(EVE.id, "chat", chat(EVE, "hi")) is not None
    end = {"by": C, "reason": "bye"}
    assert state.allowed(C, "session_end", end) is not None  # a customer only leaves


def test_a_solo_log_records_everything_before_replication_exists(tmp_path: Path) -> None:
    """The primary alone holds the log: joins of voters must not hold anything back."""
    path = tmp_path / "solo.sqlite"
    with LogStore(path) as store:
        alice = SessionLog(A, ALICE.key, {A}, A, store=store, solo=True)
        alice.start("123456", "Alice", 0.0)
        alice.propose("participant", joined(CAROL, "customer", True), 0.0)
        alice.propose("participant", joined(BOB, "assistant"), 0.0)
        alice.propose("chat", chat(ALICE, "hello"), 0.0)
        assert [e.kind for e in alice.entries][1:] == ["participant", "participant", "chat"]
        assert alice.committed_seq == 3 and alice.voters == {A, B, C}
        assert alice.messages_to_send() == [] and alice.get_timer() is None
    with LogStore(path) as store:  # a restart goes on in the same epoch: no election
        again = SessionLog(A, ALICE.key, {A}, A, store=store, solo=True)
        assert again.role is Role.SEQUENCER and again.epoch == 0
        again.propose("chat", chat(ALICE, "after the restart"), 1.0)
        assert again.committed_seq == 4
    assert verify(path).ok


def test_a_customer_gone_before_acknowledging_its_join_does_not_stall_the_log() -> None:
    """Two voters, one of them gone: the customer's join made it a voter, and it left
    (or was lost) before acknowledging that entry. Its departure brings the voters back
    to the committed ones, so it is appended and commits, and so does what follows: a
    second customer's join, chat, the end. (Before, every later entry waited forever
    and the session's record ended at the first customer's join.)"""
    net = session(customer=False, assistant=False)
    net.add(CAROL, {A}, A)
    alice, carol = net.nodes[A], net.nodes[C]
    net.cut = {frozenset((A, C))}  # Carol never hears of (nor acknowledges) her join
    alice.propose("participant", joined(CAROL, "customer", True), net.now)
    net.tick(0.5)
    assert alice.voters == {A, C} and alice.committed_seq == 0
    gone = {**joined(CAROL, "customer", True), "action": "lost"}
    alice.propose("participant", gone, net.now)
    net.tick(0.5)
    assert alice.voters == {A}
    assert alice.committed_seq == 2  # her join and her loss, on Alice's vote alone
    net.add(DAVE, {A}, A)
    alice.propose("participant", joined(DAVE, "customer", True), net.now)
    net.tick(0.5)
    net.pump()
    net.nodes[D].propose("chat", chat(DAVE, "my turn"), net.now)
    net.tick(0.5)
    kinds = [e.kind for e in alice.entries]
    assert kinds == ["session_start", "participant", "participant", "participant", "chat"]
    assert alice.committed_seq == 4 and net.nodes[D].committed_seq == 4
    assert carol.committed_seq == -1
