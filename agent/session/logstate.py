"""What a session log says at a point, and which entry may come next: the policy.

``LogState`` folds entries one at a time (``apply``) into the session's derived
state: who is present with which role, who votes, which key sequences the current
epoch, the control token, which proposals were already sequenced. ``check(entry)``
says whether ``entry`` may be the next one, and if not, why, in words fit for the
activity report ("prev hash does not match entry 16"). The replication core
(``agent.session.log``) and the offline verifier (``agent.logverify``) use the same
fold, so what a follower refuses is exactly what the verifier flags.

Invariants (everything that decides whether an entry is acceptable lives here):

* Position: ``seq`` is the next number, ``prev`` the hash of the entry before.
* ``author`` is the id of ``key``; the author's signature verifies; an entry without
  ``seqsig`` was written by its epoch's sequencer; an entry with one carries a
  proposal of this session (``session`` = hash of entry 0) that was never sequenced
  before, and ``seqsig`` verifies under the key of the entry that opened the epoch.
* Epochs never decrease, and rise only at an ``epoch`` entry whose votes are a
  majority of the voters at that point (present CSRs plus the present primary
  customer) and include its author, who becomes the sequencer.
* Nothing follows ``session_end``.
* The author is present and its role may write the kind (``POLICY``); the identity
  fields of a body (``from``, ``by``, ``customer``, ``csr``) name the author where the
  table says so; customers write only about themselves.
* A ``control`` entry names the token it replaces (``body.token`` equals the current
  token), so of two concurrent transfers only the first can land. The token is the
  (epoch, seq) of the latest ``session_start``, ``epoch`` or ``control`` entry, so it
  only grows, and an epoch change releases control (holder None).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from agent.protocol.log import ZERO_HASH, Entry, key_id

CSR_ROLES = frozenset({"csr", "assistant"})

REASONS = (
    "bad_seq",
    "broken_chain",
    "wrong_author",
    "old_epoch",
    "bad_epoch",
    "not_sequencer",
    "bad_signature",
    "wrong_session",
    "duplicate",
    "not_allowed",
    "session_ended",
)
"Why an entry is refused; each ``Refusal.reason`` is one of these."


@dataclass(frozen=True)
class Rule:
    """Who may write a kind, and which body fields must name the author."""

    roles: frozenset[str]
    self_fields: tuple[str, ...] = ()
    "Body fields that must equal the author, for every role."
    customer_fields: tuple[str, ...] = ()
    "Body fields that must equal the author when a customer writes."


_ALL = frozenset({"csr", "assistant", "customer"})
_CSR = CSR_ROLES
_CUSTOMER = frozenset({"customer"})

POLICY: dict[str, Rule] = {
    "session_start": Rule(frozenset({"csr"})),
    "participant": Rule(_ALL, customer_fields=("peer",)),
    "request": Rule(_CSR, self_fields=("csr",)),
    "consent": Rule(_CUSTOMER, self_fields=("customer",)),
    "control": Rule(_CSR, self_fields=("by",)),
    "chat": Rule(_ALL, self_fields=("from",)),
    "note": Rule(_CSR, self_fields=("by",)),
    "file": Rule(_CSR),
    "sysinfo": Rule(_CUSTOMER, self_fields=("customer",)),
    "epoch": Rule(_CSR, self_fields=("sequencer",)),
    "session_end": Rule(_CSR, self_fields=("by",)),
}
"""The policy table. Beyond it: ``session_start`` only at seq 0 by its ``primary``;
a customer's ``participant`` entry is about itself, keeps its role and primary flag,
and only says ``joined`` or ``left``; ``consent`` is the customer's alone (DESIGN:
only the customer's agent creates or revokes a grant)."""


@dataclass(frozen=True)
class Refusal:
    """Why an entry cannot come next."""

    reason: str
    "One of ``REASONS``."
    detail: str
    "A sentence for the person reading a report or a log."


@dataclass(frozen=True)
class Person:
    peer: str
    name: str
    role: str
    primary: bool
    present: bool


@dataclass(frozen=True)
class ControlToken:
    """Who controls, under which token. The token only grows."""

    holder: str | None
    epoch: int
    seq: int

    @property
    def token(self) -> tuple[int, int]:
        return (self.epoch, self.seq)


class LogState:
    """The fold of a log prefix; ``check`` the next entry, then ``apply`` it."""

    def __init__(self) -> None:
        self.count = 0
        "Number of entries folded: the next entry's seq."
        self.head = ZERO_HASH
        "Hash of the last entry folded."
        self.genesis: str | None = None
        "Hash of entry 0: the session's id in proposals."
        self.epoch = -1
        "Epoch of the last entry folded."
        self.sequencer: str | None = None
        self.sequencer_key: bytes | None = None
        self.people: dict[str, Person] = {}
        self.control: ControlToken | None = None
        self.proposals: set[bytes] = set()
        self.ended = False
        self._voters: frozenset[str] | None = frozenset()

    @classmethod
    def replay(cls, entries: Iterable[Entry]) -> LogState:
        """The state after ``entries``, trusted (no checks): our own persisted log."""
        state = cls()
        for entry in entries:
            state.apply(entry)
        return state

    # -- questions

    def voters(self) -> frozenset[str]:
        """Present CSRs and the present primary customer."""
        if self._voters is None:
            self._voters = frozenset(
                p.peer
                for p in self.people.values()
                if p.present and (p.role in CSR_ROLES or p.primary)
            )
        return self._voters

    def is_csr(self, peer: str) -> bool:
        person = self.people.get(peer)
        return person is not None and person.present and person.role in CSR_ROLES

    def present(self) -> list[str]:
        return [p.peer for p in self.people.values() if p.present]

    # -- the next entry

    def check(self, entry: Entry, *, signatures: bool = True) -> Refusal | None:
        """None when ``entry`` may come next, else why not."""
        refusal = self._check_position(entry)
        if refusal is None and signatures:
            refusal = self._check_signatures(entry)
        if refusal is None:
            refusal = self.allowed(entry.author, entry.kind, entry.body, epoch=entry.epoch)
        return refusal

    def _check_position(self, e: Entry) -> Refusal | None:
        if e.seq != self.count:
            if self.count and e.seq > self.count:
                gap = (
                    f"entry {self.count} missing"
                    if e.seq == self.count + 1
                    else f"entries {self.count}..{e.seq - 1} missing"
                )
                return Refusal("bad_seq", f"seq jumps from {self.count - 1} to {e.seq}: {gap}")
            return Refusal("bad_seq", f"seq {e.seq} where {self.count} was expected")
        if e.prev != self.head:
            if self.count == 0:
                return Refusal("broken_chain", "the first entry's prev must be 64 zeros")
            return Refusal("broken_chain", f"prev hash does not match entry {self.count - 1}")
        if e.author != key_id(e.key):
            return Refusal("wrong_author", f"author {e.author} is not the id of the entry's key")
        if self.ended:
            return Refusal("session_ended", "the session already ended")
        if self.count == 0:
            if e.kind != "session_start":
                return Refusal("not_allowed", "a log starts with a session_start entry")
            return None
        if e.epoch < self.epoch:
            return Refusal("old_epoch", f"epoch {e.epoch} after epoch {self.epoch}")
        if e.kind == "epoch":
            if e.epoch <= self.epoch:
                return Refusal("bad_epoch", "an epoch entry must open a newer epoch")
            if e.body["epoch"] != e.epoch:
                return Refusal("bad_epoch", "an epoch entry's body names another epoch")
        elif e.epoch > self.epoch:
            return Refusal("bad_epoch", f"epoch rises to {e.epoch} without an epoch entry")
        return None

    def _check_signatures(self, e: Entry) -> Refusal | None:
        opens = e.kind in ("session_start", "epoch")
        if e.seqsig is None:
            if not opens and e.author != self.sequencer:
                return Refusal(
                    "not_sequencer",
                    f"{e.author} is not the sequencer of epoch {e.epoch} "
                    "and the entry carries no sequencer signature",
                )
            if not e.author_signature_ok():
                return Refusal("bad_signature", "the author's signature does not verify")
            return None
        if opens:
            return Refusal("not_allowed", f"a {e.kind} entry is signed by its author alone")
        if e.session != self.genesis:
            return Refusal("wrong_session", "the proposal was made for another session")
        if not e.author_signature_ok():
            return Refusal("bad_signature", "the author's signature does not verify")
        if self.sequencer_key is None or not e.sequencer_signature_ok(self.sequencer_key):
            return Refusal(
                "bad_signature",
                f"the sequencer's signature does not verify (epoch {e.epoch} "
                f"is sequenced by {self.sequencer})",
            )
        if e.sig in self.proposals:
            return Refusal("duplicate", "this proposal is already in the log")
        return None

    def allowed(
        self, author: str, kind: str, body: dict[str, object], *, epoch: int | None = None
    ) -> Refusal | None:
        """The policy alone: may ``author`` write this ``kind``/``body`` next?"""

        def no(detail: str) -> Refusal:
            return Refusal("not_allowed", detail)

        if self.ended:
            return Refusal("session_ended", "the session already ended")
        if kind == "session_start":
            if self.count:
                return no("a session starts once, at seq 0")
            if body["primary"] != author:
                return no("session_start must be written by the primary it names")
            return None
        person = self.people.get(author)
        if person is None or not person.present:
            return no(f"{author} is not a participant of this session")
        rule = POLICY[kind]
        if person.role not in rule.roles:
            return no(f"a {person.role} may not write {kind} entries")
        fields = rule.self_fields + (rule.customer_fields if person.role == "customer" else ())
        for name in fields:
            if body.get(name) != author:
                return no(f'{kind} entry: "{name}" must be its author {author}')
        if kind == "participant":
            return self._participant_ok(person, body)
        if kind == "control":
            holder = body["holder"]
            if holder is not None and not self.is_csr(str(holder)):
                return no(f"control can only go to a present CSR, not {holder}")
            current = self.control.token if self.control else (max(self.epoch, 0), 0)
            if tuple(body["token"]) != current:  # type: ignore[arg-type]
                return no(
                    f"control entry replaces token {body['token']}, "
                    f"but the current token is {list(current)}"
                )
        if kind == "epoch":
            voters = self.voters()
            raw = body["votes"]
            votes = set(raw) if isinstance(raw, list) else set()
            if author not in voters:
                return no(f"{author} is not a voter and cannot sequence an epoch")
            if author not in votes:
                return no("a new sequencer's own vote is missing from its epoch entry")
            if not votes <= voters:
                return no(f"votes from non-voters: {', '.join(sorted(votes - voters))}")
            if len(votes) * 2 <= len(voters):
                return no(
                    f"epoch {body['epoch']} has {len(votes)} of {len(voters)} votes, not a majority"
                )
        return None

    def _participant_ok(self, person: Person, body: dict[str, object]) -> Refusal | None:
        if person.role != "customer":
            if body["action"] != "joined" and body["peer"] not in self.people:
                return Refusal("not_allowed", f"{body['peer']} never joined this session")
            return None
        if body["action"] not in ("joined", "left"):
            return Refusal("not_allowed", "a customer may only record that it joined or left")
        if body["role"] != "customer" or body["primary"] != person.primary:
            return Refusal("not_allowed", "a customer may not change its own role")
        return None

    # -- folding

    def apply(self, e: Entry) -> bool:
        """Fold ``e`` in (checked or trusted). Returns True when the voters changed."""
        before = self.voters()
        body = e.body
        if e.kind == "session_start":
            self.genesis = e.digest
            self.sequencer, self.sequencer_key = e.author, e.key
            self._set(Person(str(body["primary"]), str(body["name"]), "csr", True, True))
            self.control = ControlToken(None, e.epoch, e.seq)
        elif e.kind == "epoch":
            self.sequencer, self.sequencer_key = e.author, e.key
            self.control = ControlToken(None, e.epoch, e.seq)
        elif e.kind == "participant":
            self._participant(body)
        elif e.kind == "control":
            holder = body["holder"]
            self.control = ControlToken(None if holder is None else str(holder), e.epoch, e.seq)
        elif e.kind == "session_end":
            self.ended = True
        if e.seqsig is not None:
            self.proposals.add(e.sig)
        self.count = e.seq + 1
        self.head = e.digest
        self.epoch = max(self.epoch, e.epoch)
        self._voters = None
        return self.voters() != before

    def changes_voters(self, kind: str, body: dict[str, object]) -> bool:
        """Whether an entry of ``kind``/``body`` appended next would change the voters."""
        return kind == "participant" and self.voters_after(kind, body) != self.voters()

    def voters_after(self, kind: str, body: dict[str, object]) -> frozenset[str]:
        """The voters once an entry of ``kind``/``body`` were appended next."""
        if kind != "participant":
            return self.voters()
        saved = self.people
        self.people = dict(saved)
        self._voters = None
        try:
            self._participant(body)
            return self.voters()
        finally:
            self.people = saved
            self._voters = None

    def _participant(self, body: dict[str, object]) -> None:
        peer, role = str(body["peer"]), str(body["role"])
        if body["action"] in ("left", "lost"):
            old = self.people.get(peer)
            if old is not None:
                self.people[peer] = replace(old, present=False, primary=False)
        else:
            self._set(Person(peer, str(body["name"]), role, bool(body["primary"]), True))

    def _set(self, person: Person) -> None:
        if person.primary:
            customer = person.role == "customer"
            for other in list(self.people.values()):
                if other.primary and (other.role == "customer") == customer:
                    self.people[other.peer] = replace(other, primary=False)
        self.people[person.peer] = person
