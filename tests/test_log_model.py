"""A model of the session log under a hostile network: Hypothesis drives 2-3 CSRs and a
customer voter through message loss, reordering, duplication, partitions, crashes
(in-memory state lost, the store kept exactly as far as it was flushed), restarts,
rejoins, proposals and control transfers, and checks after every step:

* every participant's committed prefix agrees with every other's, ever;
* at most one sequencer per epoch, ever;
* every committed entry is in the store of a majority of the voters;
* the control token a participant derives from committed entries never decreases;

and at the end, once the network heals and everyone restarts, every participant
catches up and holds every entry that was ever committed.

``PEERDESK_LOG_EXAMPLES=2000 pytest tests/test_log_model.py`` digs deeper.
"""

from __future__ import annotations

import contextlib
import os
import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from agent.errors import LocalProtocolError
from agent.protocol.log import Entry
from agent.session.log import Committed, Role, SessionLog
from tests.logsim import ALICE, BOB, CAROL, DAVE, FakeStore, Who, joined

CSRS = [ALICE, BOB, DAVE]
NAMES = {p.id: p for p in [ALICE, BOB, DAVE, CAROL]}
ACTIONS = (
    ["run"] * 4
    + ["write"] * 3
    + ["deliver_all", "one_message", "tick", "flush_disk", "links", "crash", "restart"] * 2
    + ["stand", "rejoin"]
)


class LogModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.people: list[Who] = []
        self.nodes: dict[str, SessionLog] = {}
        self.stores: dict[str, FakeStore] = {}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.wire: list[tuple[str, str, str]] = []
        self.now = 0.0
        self.wall = 1_700_000_000.0
        self.committed: dict[int, Entry] = {}
        self.sequencers: dict[int, str] = {}
        self.tokens: dict[str, tuple[int, int]] = {}
        self.texts = 0

    # -- plumbing

    def _clock(self) -> float:
        self.wall += 0.001
        return self.wall

    def _make(self, who: Who) -> SessionLog:
        store = self.stores.setdefault(who.id, FakeStore())
        node = SessionLog(
            who.id,
            who.key,
            {ALICE.id},
            ALICE.id,
            0,
            entries=store.load(),
            vote=store.load_vote(),
            now=self.now,
            clock=self._clock,
            rng=random.Random(int.from_bytes(who.id.encode(), "big") ^ int(self.now * 1000)),
        )
        self.nodes[who.id] = node
        self.tokens.pop(who.id, None)
        return node

    def _collect(self) -> None:
        for pid, node in self.nodes.items():
            if pid in self.down:
                continue
            for to, text in node.messages_to_send():
                self.wire.append((pid, to, text))
            while (event := node.next_event()) is not None:
                if isinstance(event, Committed):
                    entry = event.entry
                    seen = self.committed.setdefault(entry.seq, entry)
                    assert seen == entry, f"two different entries committed at {entry.seq}"
            if node.role is Role.SEQUENCER:
                holder = self.sequencers.setdefault(node.epoch, pid)
                assert holder == pid, f"two sequencers in epoch {node.epoch}"
            control = node.control
            if control is not None:
                last = self.tokens.get(pid, (-1, -1))
                assert control.token >= last, "the control token went backwards"
                self.tokens[pid] = control.token

    def _flush(self, pid: str) -> None:
        node = self.nodes[pid]
        for request in node.persist_requests():
            self.stores[pid].apply(request)
            node.persisted(request.id, self.now)

    def _deliver(self, sender: str, to: str, text: str) -> None:
        if sender in self.down or to in self.down or to not in self.nodes:
            return
        if frozenset((sender, to)) in self.cut:
            return
        self.nodes[to].receive(sender, text, self.now)

    def _live(self) -> list[str]:
        return [p.id for p in self.people if p.id not in self.down]

    # -- setup: a healthy session with everyone joined

    @initialize(dave=st.booleans())
    def setup(self, dave: bool) -> None:
        self.people = [ALICE, BOB, CAROL] + ([DAVE] if dave else [])
        for who in self.people:
            self._make(who)
        alice = self.nodes[ALICE.id]
        alice.start("123456", "Alice", self.now)
        others = [(CAROL, "customer", True), (BOB, "assistant", False)]
        others += [(DAVE, "assistant", False)] if dave else []
        for who, role, primary in others:
            alice.propose("participant", joined(who, role, primary), self.now)
        for _ in range(60):
            for pid in self.nodes:
                self._flush(pid)
            self._collect()
            wire, self.wire = self.wire, []
            for msg in wire:
                self._deliver(*msg)
            self.now += 0.05
            for node in self.nodes.values():
                timer = node.get_timer()
                if timer is not None and timer <= self.now:
                    node.handle_timer(self.now)
        self._collect()
        assert len(self.committed) == len(self.people)
        self.voters = frozenset(p.id for p in self.people)

    # -- steps: one rule draws a weighted action, so every example mixes failures and
    # progress (separate rules would let Hypothesis's swarm testing switch off, say,
    # every way for time to pass in half of the examples)

    @rule(action=st.sampled_from(ACTIONS), data=st.data())
    def step(self, action: str, data: st.DataObject) -> None:
        getattr(self, f"_{action}")(data)
        self._collect()

    def _one_message(self, data: st.DataObject) -> None:
        """Deliver (out of order), duplicate or lose one message in flight."""
        if not self.wire:
            return
        i = data.draw(st.integers(0, len(self.wire) - 1), label="message")
        how = data.draw(st.sampled_from(["deliver", "duplicate", "drop"]), label="how")
        if how == "deliver":
            self._deliver(*self.wire.pop(i))
        elif how == "duplicate":
            self.wire.append(self.wire[i])
        else:
            del self.wire[i]

    def _deliver_all(self, data: st.DataObject) -> None:
        """Deliver everything in flight, in order, losing every n-th message."""
        drop_every = data.draw(st.sampled_from([0, 0, 2, 3, 7]), label="drop every")
        wire, self.wire = self.wire, []
        for n, msg in enumerate(wire, start=1):
            if not drop_every or n % drop_every:
                self._deliver(*msg)

    def _links(self, data: st.DataObject) -> None:
        """Heal the network, cut random links, or cut the sequencer off."""
        how = data.draw(st.sampled_from(["heal", "random", "isolate", "isolate_partly"]))
        ids = [p.id for p in self.people]
        if how == "heal":
            self.cut = set()
        elif how == "random":
            pairs = [frozenset((a, b)) for i, a in enumerate(ids) for b in ids[i + 1 :]]
            self.cut = set(data.draw(st.lists(st.sampled_from(pairs), max_size=3), label="cut"))
        elif (pid := self._sequencer()) is not None:
            others = [o for o in ids if o != pid]
            self.cut = {frozenset((pid, o)) for o in others[(how == "isolate_partly") :]}

    def _run(self, data: st.DataObject) -> None:
        """Time passes with the network working (lossy) and the disks (but lagging ones)
        keeping up."""
        seconds = data.draw(st.sampled_from([0.3, 1.0, 2.5]), label="seconds")
        drop_every = data.draw(st.sampled_from([0, 0, 3, 5]), label="drop every")
        lagging = data.draw(st.sets(st.sampled_from(sorted(NAMES)), max_size=2), label="lagging")
        n = 0
        end = self.now + seconds
        while self.now < end:
            for pid in self._live():
                if pid not in lagging:
                    self._flush(pid)
            self._collect()
            wire, self.wire = self.wire, []
            for msg in wire:
                n += 1
                if not drop_every or n % drop_every:
                    self._deliver(*msg)
            self._collect()
            self.now += 0.05
            self._timers()

    def _tick(self, data: st.DataObject) -> None:
        self.now += data.draw(st.sampled_from([0.05, 0.2, 0.5, 1.0, 1.5]), label="dt")
        self._timers()

    def _timers(self) -> None:
        for pid in self._live():
            node = self.nodes[pid]
            timer = node.get_timer()
            if timer is not None and timer <= self.now:
                node.handle_timer(self.now)
        self._collect()

    def _flush_disk(self, data: st.DataObject) -> None:
        """One disk (or every disk) finishes what it was asked to write."""
        who = data.draw(st.sampled_from([None, *sorted(NAMES)]), label="who")
        for pid in self._live():
            if who is None or who == pid:
                self._flush(pid)

    def _sequencer(self) -> str | None:
        live = [p for p in self._live() if self.nodes[p].role is Role.SEQUENCER]
        return max(live, key=lambda p: self.nodes[p].epoch) if live else None

    def _crash(self, data: st.DataObject) -> None:
        """A participant (often the sequencer) dies: memory and unflushed writes are lost."""
        if len(self.down) >= 2:
            return
        who = data.draw(st.sampled_from([None, *sorted(NAMES)]), label="who")
        pid = self._sequencer() if who is None else who
        if pid is not None and pid in self.nodes and pid not in self.down:
            self.down.add(pid)
            self.nodes[pid].messages_to_send()

    def _restart(self, data: st.DataObject) -> None:
        """A dead participant comes back from its store (and maybe asks to catch up)."""
        if not self.down:
            return
        pid = data.draw(st.sampled_from(sorted(self.down)), label="who")
        self.down.discard(pid)
        node = self._make(NAMES[pid])
        if data.draw(st.booleans(), label="rejoin"):
            node.request_sync(self.now)

    def _write(self, data: st.DataObject) -> None:
        """Chat lines; from a CSR, sometimes a control transfer first."""
        pid = data.draw(st.sampled_from(sorted(NAMES)), label="who")
        node = self.nodes.get(pid)
        if node is None or pid in self.down:
            return
        who = NAMES[pid]
        to = data.draw(st.sampled_from([None, *(c.id for c in CSRS)]), label="control to")
        if to is not None and who in CSRS and node.state.control is not None:
            token = list(node.state.control.token)
            with contextlib.suppress(LocalProtocolError):
                node.propose("control", {"holder": to, "token": token, "by": pid}, self.now)
        for _ in range(data.draw(st.integers(1, 3), label="lines")):
            self.texts += 1
            body = {"from": pid, "name": who.name, "text": f"t{self.texts}", "to": None}
            with contextlib.suppress(LocalProtocolError):
                node.propose("chat", body, self.now)

    def _stand(self, data: st.DataObject) -> None:
        """A CSR takes over on purpose, or the sequencer hands over to it."""
        pid = data.draw(st.sampled_from([c.id for c in CSRS]), label="who")
        node = self.nodes.get(pid)
        if node is None or pid in self.down:
            return
        sequencer = self._sequencer()
        with contextlib.suppress(LocalProtocolError):
            if data.draw(st.booleans(), label="hand over") and sequencer not in (None, pid):
                self.nodes[sequencer].hand_over(pid, self.now)
            else:
                node.start_election(self.now)

    def _rejoin(self, data: st.DataObject) -> None:
        pid = data.draw(st.sampled_from(sorted(NAMES)), label="who")
        if pid in self.nodes and pid not in self.down:
            self.nodes[pid].request_sync(self.now)

    # -- invariants

    @invariant()
    def committed_prefixes_agree(self) -> None:
        for pid, node in self.nodes.items():
            if pid in self.down:
                continue
            for entry in node.entries[: node.committed_seq + 1]:
                assert self.committed.get(entry.seq) == entry, f"{pid} disagrees at {entry.seq}"

    @invariant()
    def committed_entries_are_on_a_majority_of_disks(self) -> None:
        if not self.people:
            return
        for seq, entry in self.committed.items():
            holders = sum(
                1
                for pid in self.voters
                if len(self.stores[pid].entries) > seq and self.stores[pid].entries[seq] == entry
            )
            assert holders * 2 > len(self.voters), f"committed entry {seq} is on {holders} disks"

    def teardown(self) -> None:
        if not self.people:
            return
        # Heal everything, bring everyone back, and let the session settle.
        self.cut = set()
        for pid in sorted(self.down):
            self.down.discard(pid)
            self._make(NAMES[pid])
        for _ in range(200):
            for pid in self.nodes:
                self._flush(pid)
            self._collect()
            wire, self.wire = self.wire, []
            for msg in wire:
                self._deliver(*msg)
            self.now += 0.05
            for node in self.nodes.values():
                timer = node.get_timer()
                if timer is not None and timer <= self.now:
                    node.handle_timer(self.now)
        self._collect()
        top = max(self.committed)
        for pid, node in self.nodes.items():
            assert node.committed_seq >= top, f"{NAMES[pid].name} did not catch up"
            for seq, entry in self.committed.items():
                assert node.entries[seq] == entry
        assert sum(1 for n in self.nodes.values() if n.role is Role.SEQUENCER) == 1


LogModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("PEERDESK_LOG_EXAMPLES", "200")),
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLogModel = LogModel.TestCase
