"""Helpers for the session-log tests: fixed identities and a hand-pumped network of cores."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.protocol.handshake import peer_id
from agent.protocol.log import Entry, public_bytes
from agent.session.log import Committed, LogEvent, Persist, SessionLog, VoteRecord


@dataclass(frozen=True)
class Who:
    name: str
    key: Ed25519PrivateKey
    id: str


def who(name: str, n: int) -> Who:
    """A fixed identity (the same every run, so Hypothesis examples replay)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)
    return Who(name, key, peer_id(public_bytes(key)))


ALICE = who("Alice", 1)  # primary CSR
BOB = who("Bob", 2)  # assistant CSR
DAVE = who("Dave", 4)  # a second assistant
CAROL = who("Carol", 3)  # primary customer
EVE = who("Eve", 9)  # not in the session


def joined(person: Who, role: str, primary: bool = False) -> dict[str, Any]:
    return {
        "peer": person.id,
        "name": person.name,
        "role": role,
        "primary": primary,
        "action": "joined",
    }


class FakeStore:
    """Models exactly what is durable: only requests the test chose to flush."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.vote: VoteRecord | None = None

    def load(self) -> list[Entry]:
        return list(self.entries)

    def load_vote(self) -> VoteRecord | None:
        return self.vote

    def apply(self, request: Persist) -> None:
        if request.truncate_from is not None:
            del self.entries[request.truncate_from :]
        for entry in request.entries:
            assert entry.seq == len(self.entries), "a persist request skipped an entry"
            self.entries.append(entry)
        if request.vote is not None:
            self.vote = request.vote


@dataclass
class Net:
    """Cores pumped by hand: deliver every message at once, unless a link is cut."""

    nodes: dict[str, SessionLog] = field(default_factory=dict)
    stores: dict[str, FakeStore] = field(default_factory=dict)
    events: dict[str, list[LogEvent]] = field(default_factory=dict)
    cut: set[frozenset[str]] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    auto_persist: bool = True
    now: float = 0.0
    clock: float = 1_700_000_000.0
    tap: Callable[[str, str, str], str | None] | None = None
    "Sees (sender, to, text); returns the text to deliver, or None to drop it."

    def add(self, person: Who, voters: Iterable[str], sequencer: str, **kw: Any) -> SessionLog:
        store = self.stores.setdefault(person.id, FakeStore())
        node = SessionLog(
            person.id,
            person.key,
            voters,
            sequencer,
            0,
            entries=store.load(),
            vote=store.load_vote(),
            now=self.now,
            clock=self._clock,
            rng=random.Random(int.from_bytes(person.id.encode(), "big")),
            **kw,
        )
        self.nodes[person.id] = node
        self.events.setdefault(person.id, [])
        return node

    def _clock(self) -> float:
        self.clock += 0.001
        return self.clock

    def link_ok(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and frozenset((a, b)) not in self.cut

    def flush(self, pid: str) -> None:
        node = self.nodes[pid]
        for request in node.persist_requests():
            self.stores[pid].apply(request)
            node.persisted(request.id, self.now)

    def pump(self, rounds: int = 500) -> None:
        for _ in range(rounds):
            moved = False
            for pid, node in self.nodes.items():
                if pid in self.down:
                    continue
                if self.auto_persist:
                    if node._queue:
                        moved = True
                    self.flush(pid)
                while (event := node.next_event()) is not None:
                    self.events[pid].append(event)
            for pid, node in list(self.nodes.items()):
                if pid in self.down:
                    node.messages_to_send()
                    continue
                for to, text in node.messages_to_send():
                    moved = True
                    if to not in self.nodes or not self.link_ok(pid, to):
                        continue
                    if self.tap is not None:
                        tapped = self.tap(pid, to, text)
                        if tapped is None:
                            continue
                        text = tapped
                    self.nodes[to].receive(pid, text, self.now)
            if not moved:
                return
        raise AssertionError("the cores never went quiet")

    def tick(self, seconds: float, step: float = 0.05) -> None:
        """Let time pass, running due timers and pumping after each step."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            for pid, node in self.nodes.items():
                if pid in self.down:
                    continue
                timer = node.get_timer()
                if timer is not None and timer <= self.now:
                    node.handle_timer(self.now)
            self.pump()

    def committed(self, pid: str) -> list[Entry]:
        node = self.nodes[pid]
        return list(node.entries[: node.committed_seq + 1])

    def kinds(self, pid: str) -> list[str]:
        return [e.kind for e in self.committed(pid)]

    def drain(self, pid: str) -> list[LogEvent]:
        out, self.events[pid] = self.events[pid], []
        return out

    def refusals(self, pid: str) -> list[Any]:
        return [e for e in self.drain(pid) if not isinstance(e, Committed)]


def session(*, customer: bool = True, assistant: bool = True, dave: bool = False) -> Net:
    """Alice starts a session; Carol (primary customer) and Bob (assistant) join."""
    net = Net()
    everyone = [ALICE] + ([CAROL] if customer else []) + ([BOB] if assistant else [])
    everyone += [DAVE] if dave else []
    for person in everyone:
        net.add(person, {ALICE.id}, ALICE.id)
    alice = net.nodes[ALICE.id]
    alice.start("123456", "Alice", net.now)
    net.pump()
    if customer:
        alice.propose("participant", joined(CAROL, "customer", True), net.now)
    if assistant:
        alice.propose("participant", joined(BOB, "assistant"), net.now)
    if dave:
        alice.propose("participant", joined(DAVE, "assistant"), net.now)
    net.pump()
    net.tick(0.5)
    return net
