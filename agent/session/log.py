"""The replicated session log, sans-I/O: one sequencer per epoch orders, everyone keeps a copy.

Driven like the other cores: feed ``receive(sender, data, now)`` with every message
from the log channel, ``handle_timer(now)`` when ``get_timer()`` says, and
``persisted(request_id, now)`` when the disk finished a ``Persist`` request; drain
``messages_to_send()`` (peer id, JSON text), ``persist_requests()`` (what to write,
in order) and ``next_event()``. With a ``store`` (``agent.store.LogStore``) the core
writes through it synchronously instead, and ``persist_requests()`` stays empty.
``now`` is any monotonic time in seconds; entry timestamps come from ``clock``.

Replication is Raft's (with pre-vote and leadership transfer), over the hash-chained,
signed entries of ``agent.protocol.log``; what may be written is decided by
``agent.session.logstate``.

The glue, in short:

* One ``SessionLog`` per session on every agent that holds the log (CSRs and the
  primary customer). The primary CSR passes itself as ``sequencer`` and calls
  ``start(room, name, now)``; a joiner passes the primary and calls
  ``request_sync(now)`` once the log channel is open (and again after a reconnect).
  After a restart, pass the session's ``LogStore`` (or its ``entries`` and ``vote``).
* Feed every log-channel message to ``receive(peer_id, text, now)`` with the peer id
  the join proved for that channel.
* After every call: send ``messages_to_send()`` to each peer's log channel (drop
  those for peers without one); perform ``persist_requests()`` one at a time, in
  order, off the event loop (``LogStore.apply``), calling ``persisted(request.id,
  now)`` after each; drain ``next_event()``; re-arm one timer at ``get_timer()``.
* Write with ``propose(kind, body, now)`` and show the entry when ``Committed``
  arrives. A deliberate primary transfer is ``hand_over(csr, now)`` on the primary.

Invariants (everything that affects them lives in this file):

* At most one sequencer per epoch: a voter grants at most one vote per epoch, and
  the vote is durable (``Persist.vote``) before the ``vote`` message leaves; a
  candidate needs a majority of the voters of its log (present CSRs plus the
  primary customer) and its own durable vote. A restarted agent never resumes
  sequencing the epoch it was in: it stands for election in a new one.
* A voter grants only to a CSR whose last entry (epoch, seq) is at least its own, so
  a new sequencer's log holds every committed entry.
* An entry is committed when a majority of voters have made it durable and the
  sequencer saw it (acks name the hash they persisted), and only entries of the
  sequencer's own epoch are counted directly (older ones commit under them). A
  follower commits only entries it has made durable and that match the sequencer's
  log. ``Committed`` events come in seq order, each once per run of the core.
* Acks leave only after ``persisted``: an ack never claims what the disk does not hold.
* A follower accepts entries only from the sequencer of its current or a newer epoch;
  older epochs are refused once a newer one is known. Every entry is checked by
  ``LogState.check`` (signatures, chain, author key, epoch, policy) before it is kept.
* Only an uncommitted tail is ever truncated, and only on the word of the current
  sequencer (an entry that conflicts with ours at the same seq and chains on our
  previous entry, or a ``sync`` with ``truncate_from``). Our own entries that a
  truncation drops are proposed again.
* A proposal is kept until it commits, resent to each new sequencer and every
  ``propose_retry`` seconds; the sequencer sequences a proposal (its ``sig``) at most once.
* A sequencer appends an entry that changes the voters only once its epoch entry and
  the previous such change have committed (single-step membership changes).
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import DecodeError, LocalProtocolError
from agent.protocol import log as lw
from agent.protocol.handshake import peer_id
from agent.protocol.log import ZERO_HASH, Entry, Proposal
from agent.session.logstate import ControlToken, LogState, Refusal

HEARTBEAT = 0.2
"Seconds between the sequencer's heartbeats (``commit`` messages)."
ELECTION_TIMEOUT = (0.8, 1.2)
"Seconds of silence from the sequencer before a CSR stands for election (uniform)."
SYNC_RETRY = 1.0
"Seconds before a follower asks again for entries it is missing."
PROPOSE_RETRY = 1.0
"Seconds before an unanswered proposal is sent again."


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    SEQUENCER = "sequencer"


_TRANSITIONS: dict[tuple[Role, str], Role] = {
    (Role.FOLLOWER, "stand"): Role.CANDIDATE,
    (Role.CANDIDATE, "stand"): Role.CANDIDATE,
    (Role.CANDIDATE, "won"): Role.SEQUENCER,
    (Role.FOLLOWER, "newer_epoch"): Role.FOLLOWER,
    (Role.CANDIDATE, "newer_epoch"): Role.FOLLOWER,
    (Role.SEQUENCER, "newer_epoch"): Role.FOLLOWER,
    (Role.FOLLOWER, "sequencer_seen"): Role.FOLLOWER,
    (Role.CANDIDATE, "sequencer_seen"): Role.FOLLOWER,
}


# --- persistence --------------------------------------------------------------------


@dataclass(frozen=True)
class VoteRecord:
    """The epoch this agent knows and whom it voted for in it: durable, like Raft's term."""

    epoch: int
    voted_for: str | None


@dataclass(frozen=True)
class Persist:
    """Write this, in this order, in one transaction; then call ``persisted(id)``.

    First drop every entry with seq >= ``truncate_from`` (if set), then append
    ``entries``, then store ``vote`` (if set).
    """

    id: int
    truncate_from: int | None
    entries: tuple[Entry, ...]
    vote: VoteRecord | None
    last: int
    "Seq of the log's last entry once this is written (-1 for none)."


class Store(Protocol):
    """What the core needs from a disk store (``agent.store.LogStore`` is one)."""

    def load(self) -> list[Entry]: ...

    def load_vote(self) -> VoteRecord | None: ...

    def apply(self, request: Persist) -> None: ...


# --- events -----------------------------------------------------------------------


@dataclass(frozen=True)
class Committed:
    """``entry`` is committed: a majority holds it; it will never change."""

    entry: Entry


@dataclass(frozen=True)
class EpochChanged:
    """``sequencer`` orders the log from now on, in ``epoch``."""

    epoch: int
    sequencer: str


@dataclass(frozen=True)
class Refused:
    """Something was refused and dropped; the log goes on without it."""

    reason: str
    "``LogState`` reasons (bad_signature, broken_chain, old_epoch, wrong_author, "
    "not_allowed, ...) or conflict, malformed, unknown_type."
    detail: str
    peer: str | None = None
    "Who sent it (None for our own proposals refused locally)."
    entry: Entry | None = None
    proposal: Proposal | None = None


@dataclass(frozen=True)
class Truncated:
    """Our uncommitted tail from ``from_seq`` on was dropped (it diverged)."""

    from_seq: int
    entries: tuple[Entry, ...]


LogEvent = Committed | EpochChanged | Refused | Truncated


@dataclass
class _Request:
    """A ``Persist`` still being filled (entries are added one by one within a call)."""

    id: int
    truncate_from: int | None
    entries: list[Entry]
    vote: VoteRecord | None
    last: int

    def frozen(self) -> Persist:
        return Persist(self.id, self.truncate_from, tuple(self.entries), self.vote, self.last)


@dataclass
class _Pending:
    proposal: Proposal
    sent: float


# --- the core -----------------------------------------------------------------------


class SessionLog:
    """One participant's copy of the session log and its part in replicating it.

    ``voters`` and ``sequencer``/``epoch`` bootstrap an empty log (the primary CSR
    passes itself as sequencer and then calls ``start``); once the log has entries,
    the voters are those the log names. ``store`` (optional) is loaded at once and
    written synchronously; without it, restore with ``entries``/``vote`` and run
    ``persist_requests()`` yourself.

    ``solo``: this agent is the log's only holder for now (nothing is replicated):
    entries commit once on its own disk, membership changes are never held back,
    nothing is sent, and after a restart it goes on sequencing its epoch (safe only
    because no one else holds entries of it). The log it writes is the same and
    verifies the same; replication can start from it later.

    ``auto_elect``: stand for election on the core's own timer after ``election_timeout``
    of silence from the sequencer (Raft's way). The runtime passes False and calls
    ``start_election`` itself when its link to the primary is lost, so a busy primary
    that is merely slow for a second is never deposed; voters still check that they
    lost the sequencer too (pre-vote).
    """

    def __init__(
        self,
        me: str,
        key: Ed25519PrivateKey,
        voters: Iterable[str],
        sequencer: str | None,
        epoch: int = 0,
        *,
        store: Store | None = None,
        entries: Sequence[Entry] = (),
        vote: VoteRecord | None = None,
        now: float = 0.0,
        clock: Callable[[], float] = time.time,
        heartbeat: float = HEARTBEAT,
        election_timeout: tuple[float, float] = ELECTION_TIMEOUT,
        sync_retry: float = SYNC_RETRY,
        propose_retry: float = PROPOSE_RETRY,
        rng: random.Random | None = None,
        solo: bool = False,
        auto_elect: bool = True,
    ) -> None:
        if peer_id(lw.public_bytes(key)) != me:
            raise LocalProtocolError("the log's own id must be the peer id of its key")
        self.me = me
        self._key = key
        self._store = store
        if store is not None:
            entries, vote = store.load(), store.load_vote()
        self._log: list[Entry] = list(entries)
        for i, entry in enumerate(self._log):
            if entry.seq != i:
                raise LocalProtocolError(f"restored log has seq {entry.seq} at position {i}")
        self._state = LogState.replay(self._log)
        self._bootstrap = frozenset(voters)
        self._clock = clock
        self._heartbeat = heartbeat
        self._timeout = election_timeout
        self._sync_retry = sync_retry
        self._propose_retry = propose_retry
        self._rng = rng or random.Random()  # noqa: S311 - timer jitter, not secrets
        self._solo = solo
        self._auto_elect = auto_elect

        self._epoch = max(epoch, self._state.epoch, vote.epoch if vote else 0)
        self._voted_for = vote.voted_for if vote and vote.epoch == self._epoch else None
        known: str | None = None
        if self._epoch == epoch and sequencer is not None:
            known = sequencer
        elif self._log and self._epoch == self._state.epoch:
            known = self._state.sequencer
        self.role = Role.FOLLOWER
        if known == me:
            if self._log and not solo:
                known = None  # never resume sequencing after a restart: stand again
            else:
                self.role = Role.SEQUENCER
        self._sequencer = known
        self._epoch_start = 0

        self._commit = -1
        self._hint = -1
        "Highest seq known committed and matching our log (followers)."
        self._durable = len(self._log) - 1
        self._control: ControlToken | None = None
        self._match: dict[str, int] = {}
        self._broadcast_from = len(self._log)
        self._reached: set[str] = set()
        "Peers this sequencer has replicated to in its epoch (a new one gets the log so far)."
        self._config_seq = -1
        self._configs: list[tuple[int, frozenset[str]]] = []
        "The voters after each voter change this sequencer appended: (seq, voters)."
        self._held_changes: deque[tuple[str, Any, Any]] = deque()
        self._votes: set[str] = set()
        self._prevotes: set[str] | None = None
        self._vote_pid: int | None = None
        self._pending: dict[bytes, _Pending] = {}
        self._acked: tuple[int, int] | None = None
        self._sync_at: float | None = None

        self._heard = now
        self._election_at = now + self._election_delay()
        self._heartbeat_at = now

        self._next_pid = 1
        self._queue: list[_Request] = []
        self._inflight: dict[int, Persist] = {}
        self._held: list[tuple[int, str, str]] = []
        self._out: list[tuple[str, str]] = []
        self._events: deque[LogEvent] = deque()

    # -- what the glue reads

    @property
    def epoch(self) -> int:
        """The newest epoch this agent knows."""
        return self._epoch

    @property
    def sequencer(self) -> str | None:
        """Who sequences ``epoch`` (None during an election)."""
        return self._sequencer

    @property
    def entries(self) -> Sequence[Entry]:
        """Every entry held, committed or not (read-only)."""
        return self._log

    @property
    def committed_seq(self) -> int:
        """Seq of the last committed entry, -1 before any."""
        return self._commit

    @property
    def durable_seq(self) -> int:
        """Seq up to which the store holds this log, -1 before any."""
        return self._durable

    @property
    def control(self) -> ControlToken | None:
        """Control as the committed log says: holder and token (epoch, seq), only growing."""
        return self._control

    @property
    def state(self) -> LogState:
        """The derived state of every entry held (uncommitted ones included)."""
        return self._state

    @property
    def voters(self) -> frozenset[str]:
        return self._state.voters() if self._log else self._bootstrap

    @property
    def head(self) -> tuple[int, int, str]:
        """(epoch, seq, hash) of the last entry held; (0, -1, ZERO_HASH) when empty."""
        if not self._log:
            return (0, -1, ZERO_HASH)
        last = self._log[-1]
        return (last.epoch, last.seq, last.digest)

    def messages_to_send(self) -> list[tuple[str, str]]:
        """(peer id, JSON text) pairs for the log channel, in order."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> LogEvent | None:
        return self._events.popleft() if self._events else None

    def persist_requests(self) -> list[Persist]:
        """Disk writes to perform in order; confirm each with ``persisted(request.id)``."""
        out = [request.frozen() for request in self._queue]
        self._queue = []
        for request in out:
            self._inflight[request.id] = request
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next run."""
        deadlines = []
        if self.role is Role.SEQUENCER:
            if not self._solo:
                deadlines.append(self._heartbeat_at)
        elif self._auto_elect and self._can_stand():
            deadlines.append(self._election_at)
        if self._pending:
            deadlines.append(min(p.sent for p in self._pending.values()) + self._propose_retry)
        return min(deadlines) if deadlines else None

    # -- what the glue calls

    def start(self, room: str, name: str, now: float) -> Entry:
        """The primary CSR opens the log with ``session_start``; returns the entry."""
        if self.role is not Role.SEQUENCER or self._log:
            raise LocalProtocolError("only the sequencer of an empty log can start it")
        body = {"room": room, "primary": self.me, "name": name}
        entry = self._make(self._epoch, "session_start", body)
        self._append(entry)
        self._settle(now)
        return entry

    def propose(self, kind: str, body: Mapping[str, Any], now: float) -> None:
        """Write an entry: appended at once by the sequencer, else proposed to it.

        Raises ``LocalProtocolError`` when the body is malformed or the policy forbids it
        as far as this agent can tell; the sequencer has the last word (``Refused``).
        """
        if not self._log:
            raise LocalProtocolError("the session log has not started yet")
        if kind in ("session_start", "epoch"):
            raise LocalProtocolError(f"{kind} entries are written by the log itself")
        try:
            plain = lw.normalize_body(kind, body)
        except DecodeError as exc:
            raise LocalProtocolError(exc.message, code="malformed") from None
        refusal = self._state.allowed(self.me, kind, plain)
        if refusal is not None:
            raise LocalProtocolError(refusal.detail, code=refusal.reason)
        if self.role is Role.SEQUENCER:
            self._write_own(kind, plain, self._clock())
        else:
            self._propose(kind, plain, self._clock(), now)
        self._settle(now)

    def receive(self, sender: str, data: str | bytes | lw.LogMessage, now: float) -> None:
        """Handle one log-channel message from ``sender`` (a peer id proven by the channel)."""
        if isinstance(data, str | bytes):
            try:
                msg = lw.decode(data)
            except DecodeError as exc:
                self._events.append(Refused(exc.code, exc.message, sender))
                return
        else:
            msg = data
        handler = _HANDLERS[type(msg)]
        handler(self, sender, msg, now)
        self._settle(now)

    def persisted(self, request_id: int, now: float) -> None:
        """The store durably holds ``Persist`` ``request_id`` (and every earlier one)."""
        self._confirm(request_id)
        self._settle(now)

    def handle_timer(self, now: float) -> None:
        """Heartbeats, elections and retries that are due."""
        if self.role is Role.SEQUENCER:
            if now >= self._heartbeat_at:
                self._send_heartbeat()
                self._heartbeat_at = now + self._heartbeat
        elif self._auto_elect and self._can_stand() and now >= self._election_at:
            self._campaign(now, transfer=False)
        for pending in self._pending.values():
            if now >= pending.sent + self._propose_retry:
                pending.sent = now
                if pending.proposal.sig not in self._state.proposals:
                    self._send_proposal(pending.proposal)
        self._settle(now)

    def request_sync(self, now: float) -> None:
        """Ask the sequencer for what we missed (after a reconnect or a restart)."""
        self._sync_at = None
        self._request_sync(now)
        self._settle(now)

    def start_election(self, now: float, *, transfer: bool = False) -> None:
        """Stand for sequencer of the next epoch now (a take-over or a role transfer).

        ``transfer`` tells voters that the current sequencer agreed, so they vote even
        while they still hear from it.
        """
        if self.role is Role.SEQUENCER:
            raise LocalProtocolError("this agent already sequences the log")
        if not self._can_stand():
            raise LocalProtocolError("only a present CSR voter can become sequencer")
        self._campaign(now, transfer=transfer)
        self._settle(now)

    def hand_over(self, to: str, now: float) -> None:
        """The sequencer asks CSR ``to`` to take over (deliberate primary transfer)."""
        if self.role is not Role.SEQUENCER:
            raise LocalProtocolError("only the sequencer can hand the log over")
        if to == self.me or not self._state.is_csr(to) or to not in self._state.voters():
            raise LocalProtocolError(f"{to} is not a CSR voter of this session")
        # Bring it up to date first (the channel keeps order), or voters would refuse it.
        for group in lw.batches(self._log[self._match.get(to, -1) + 1 :]):
            self._send(to, lw.Append(self._epoch, self._commit, group))
        self._send(to, lw.HandOver(self._epoch, to))
        self._settle(now)

    # -- writing

    def _make(self, epoch: int, kind: str, body: Mapping[str, Any]) -> Entry:
        return lw.make_entry(
            self._key,
            epoch=epoch,
            seq=self._state.count,
            prev=self._state.head,
            ts=self._clock(),
            kind=kind,
            body=body,
        )

    def _append(self, entry: Entry) -> None:
        self._log.append(entry)
        if self._state.apply(entry):
            self._config_seq = entry.seq
            self._configs.append((entry.seq, self._state.voters()))
        self._queue_persist(entries=(entry,))

    def _config_blocked(self, kind: str = "", body: dict[str, Any] | None = None) -> bool:
        """Whether a voter change must wait: until the epoch entry and the previous
        voter change have committed (single-step changes).

        One exception keeps a session's record going: a change that brings the voters
        back to those of the last committed change (a customer who joined and left, or
        was lost, before acknowledging the entry that made it a voter). Without it
        nothing after could ever commit: two voters, one of them gone. Majorities of a
        committed configuration and of a one-step change of it always overlap, so this
        cannot make two sequencers.
        """
        if self._solo:
            return False
        if self._commit < self._epoch_start:
            return True
        if self._commit >= self._config_seq:
            return False
        if body is None:
            return True
        committed = [voters for seq, voters in self._configs if seq <= self._commit]
        return not committed or self._state.voters_after(kind, body) != committed[-1]

    def _write_own(self, kind: str, body: dict[str, Any], ts: float) -> None:
        if self._state.changes_voters(kind, body) and self._config_blocked(kind, body):
            self._held_changes.append(("own", (kind, body), ts))
            return
        refusal = self._state.allowed(self.me, kind, body)
        if refusal is not None:
            self._events.append(Refused(refusal.reason, refusal.detail, None))
            return
        entry = lw.make_entry(
            self._key,
            epoch=self._epoch,
            seq=self._state.count,
            prev=self._state.head,
            ts=ts,
            kind=kind,
            body=body,
        )
        self._append(entry)

    def _propose(self, kind: str, body: dict[str, Any], ts: float, now: float) -> None:
        assert self._state.genesis is not None
        proposal = lw.make_proposal(
            self._key, session=self._state.genesis, ts=ts, kind=kind, body=body
        )
        self._pending[proposal.sig] = _Pending(proposal, now)
        self._send_proposal(proposal)

    def _send_proposal(self, proposal: Proposal) -> None:
        if self.role is Role.SEQUENCER:
            self._sequence(proposal, self.me)
        elif self._sequencer is not None and self._sequencer != self.me:
            self._send(self._sequencer, lw.Propose(proposal))

    def _proposal_refusal(self, p: Proposal) -> Refusal | None:
        if p.author != peer_id(p.key):
            return Refusal("wrong_author", f"author {p.author} is not the id of the proposal's key")
        if p.session != self._state.genesis:
            return Refusal("wrong_session", "the proposal was made for another session")
        if not p.signature_ok():
            return Refusal("bad_signature", "the author's signature does not verify")
        if p.kind in ("session_start", "epoch"):
            return Refusal("not_allowed", f"a {p.kind} entry cannot be proposed")
        return self._state.allowed(p.author, p.kind, p.body)

    def _sequence(self, p: Proposal, sender: str) -> None:
        if p.sig in self._state.proposals:
            return
        if any(item[0] == "proposal" and item[1].sig == p.sig for item in self._held_changes):
            return
        if self._state.changes_voters(p.kind, p.body) and self._config_blocked(p.kind, p.body):
            self._held_changes.append(("proposal", p, sender))
            return
        refusal = self._proposal_refusal(p)
        if refusal is not None:
            self._events.append(Refused(refusal.reason, refusal.detail, sender, proposal=p))
            if sender != self.me:
                self._send(sender, lw.Reject(p.sig, refusal.reason, refusal.detail[:300]))
            else:
                self._pending.pop(p.sig, None)
            return
        entry = lw.sequence(
            p, self._key, epoch=self._epoch, seq=self._state.count, prev=self._state.head
        )
        self._append(entry)

    def _release_changes(self) -> None:
        while self._held_changes and not self._config_blocked():
            what, item, extra = self._held_changes.popleft()
            if what == "own":
                kind, body = item
                self._write_own(kind, body, extra)
            else:
                self._sequence(item, extra)

    # -- persistence bookkeeping

    def _queue_persist(
        self,
        *,
        truncate_from: int | None = None,
        entries: tuple[Entry, ...] = (),
        vote: VoteRecord | None = None,
    ) -> int:
        last = len(self._log) - 1
        if truncate_from is not None:
            self._durable = min(self._durable, truncate_from - 1)
        if self._queue:  # not handed out yet: merge into it
            request = self._queue[-1]
            if truncate_from is not None:
                request.entries = [e for e in request.entries if e.seq < truncate_from]
                old = request.truncate_from
                request.truncate_from = truncate_from if old is None else min(old, truncate_from)
            request.entries.extend(entries)
            request.vote = vote or request.vote
            request.last = last
            return request.id
        self._queue.append(_Request(self._next_pid, truncate_from, list(entries), vote, last))
        self._next_pid += 1
        return self._next_pid - 1

    def _confirm(self, request_id: int) -> None:
        done = sorted(pid for pid in self._inflight if pid <= request_id)
        if not done:
            return
        last = self._inflight[done[-1]].last
        for pid in done:
            del self._inflight[pid]
        later: list[Persist | _Request] = [*self._inflight.values(), *self._queue]
        clamp = min(
            (r.truncate_from - 1 for r in later if r.truncate_from is not None),
            default=len(self._log) - 1,
        )
        self._durable = min(last, clamp, len(self._log) - 1)
        if self._vote_pid is not None and self._vote_pid <= request_id:
            self._vote_pid = None
        still = []
        for pid, peer, text in self._held:
            if pid <= request_id:
                self._out.append((peer, text))
            else:
                still.append((pid, peer, text))
        self._held = still

    def _settle(self, now: float) -> None:
        """After every call: replicate, write through the store, commit, ack."""
        for _ in range(64):
            self._broadcast()
            if self._store is not None and self._queue:
                for request in self.persist_requests():
                    self._store.apply(request)
                    self._confirm(request.id)
            if self.role is Role.SEQUENCER:
                before = self._commit
                self._advance_sequencer_commit()
                if self._commit > before:  # tell everyone at once; it doubles as a heartbeat
                    self._send_heartbeat()
                    self._heartbeat_at = now + self._heartbeat
            else:
                self._advance_follower_commit()
                self._maybe_ack()
            if self.role is Role.CANDIDATE:
                self._maybe_win(now)
            if self._store is None or not self._queue:
                break

    # -- sending

    def _send(self, peer: str, msg: lw.LogMessage, *, after: int | None = None) -> None:
        text = lw.encode(msg)
        if after is not None and (
            after in self._inflight or any(r.id == after for r in self._queue)
        ):
            self._held.append((after, peer, text))
        else:
            self._out.append((peer, text))

    def _peers(self) -> set[str]:
        if self._solo:
            return set()
        peers = set(self._state.present()) if self._log else set(self._bootstrap)
        peers.discard(self.me)
        return peers

    def _broadcast(self) -> None:
        if self.role is not Role.SEQUENCER:
            return
        present = self._peers()
        for peer in sorted(present - self._reached):
            # Newly present (an admitted assistant, a new customer): the log so far,
            # unasked, ahead of what follows, so that it can vote and stand at once.
            # Its own sync request may have come before it was admitted, and gone.
            start = self._match.get(peer, -1) + 1
            for group in lw.batches(self._log[start : self._broadcast_from]):
                self._out.append((peer, lw.encode(lw.Append(self._epoch, self._commit, group))))
        self._reached = present
        if self._broadcast_from >= len(self._log):
            return
        peers = sorted(present)
        for group in lw.batches(self._log[self._broadcast_from :]):
            text = lw.encode(lw.Append(self._epoch, self._commit, group))
            self._out.extend((peer, text) for peer in peers)
        self._broadcast_from = len(self._log)

    def _send_heartbeat(self) -> None:
        _, last, digest = self.head
        text = lw.encode(lw.Commit(self._epoch, self._commit, last, digest))
        self._out.extend((peer, text) for peer in sorted(self._peers()))

    def _maybe_ack(self) -> None:
        """Tell the sequencer how far our store holds its log (once per change, or when asked)."""
        if self._sequencer is None or self._sequencer == self.me or self._durable < 0:
            return
        if self._acked == (self._epoch, self._durable):
            return
        self._acked = (self._epoch, self._durable)
        digest = self._log[self._durable].digest
        self._send(self._sequencer, lw.Ack(self._epoch, self._durable, digest))

    def _request_sync(self, now: float) -> None:
        target = self._sequencer
        if target is None or target == self.me:
            return
        if self._sync_at is not None and now - self._sync_at < self._sync_retry:
            return
        self._sync_at = now
        epoch, seq, digest = self.head
        self._send(target, lw.SyncRequest(epoch, seq, digest, self._marks()))

    def _marks(self) -> tuple[tuple[int, str], ...]:
        marks: list[tuple[int, str]] = []
        if 0 <= self._commit < len(self._log) - 1:
            marks.append((self._commit, self._log[self._commit].digest))
        for i in range(len(self._log) - 1, 0, -1):
            if self._log[i].epoch != self._log[i - 1].epoch:
                marks.append((i - 1, self._log[i - 1].digest))
                if len(marks) >= lw.MAX_MARKS:
                    break
        return tuple(marks)

    # -- commit

    def _advance_sequencer_commit(self) -> None:
        voters = frozenset({self.me}) if self._solo else self._state.voters()
        if not voters:
            return
        matches = sorted(
            (self._durable if v == self.me else self._match.get(v, -1) for v in voters),
            reverse=True,
        )
        n = matches[len(voters) // 2]
        if self._commit < n < len(self._log) and self._log[n].epoch == self._epoch:
            self._commit_to(n)
            self._release_changes()

    def _advance_follower_commit(self) -> None:
        n = min(self._hint, self._durable)
        if n > self._commit:
            self._commit_to(n)

    def _commit_to(self, n: int) -> None:
        for seq in range(self._commit + 1, n + 1):
            entry = self._log[seq]
            if entry.kind in ("session_start", "epoch", "control"):
                holder = entry.body.get("holder") if entry.kind == "control" else None
                self._control = ControlToken(
                    None if holder is None else str(holder), entry.epoch, entry.seq
                )
            if entry.seqsig is not None:
                self._pending.pop(entry.sig, None)
            self._events.append(Committed(entry))
        self._commit = n

    # -- epochs and elections

    def _election_delay(self) -> float:
        lo, hi = self._timeout
        return self._rng.uniform(lo, hi)

    def _rearm(self, now: float) -> None:
        self._election_at = now + self._election_delay()

    def _heard_from_sequencer(self, now: float) -> None:
        self._heard = now
        self._prevotes = None
        self._rearm(now)

    def _can_stand(self) -> bool:
        if not self._log or self._state.ended or self._solo:
            return False
        return self._state.is_csr(self.me) and self.me in self._state.voters()

    def _to(self, event: str) -> None:
        self.role = _TRANSITIONS[(self.role, event)]

    def _campaign(self, now: float, *, transfer: bool) -> None:
        """Pre-vote first (unless the sequencer agreed): an epoch rises only when a
        majority also lost the sequencer, so a CSR that was cut off cannot depose a
        healthy sequencer with an inflated epoch when it returns."""
        if transfer:
            self._stand(now, transfer=True)
            return
        self._prevotes = {self.me}
        self._rearm(now)
        epoch, seq, digest = self.head
        request = lw.VoteRequest(self._epoch + 1, self.me, (epoch, seq, digest), pre=True)
        for voter in sorted(self._state.voters() - {self.me}):
            self._send(voter, request)
        self._maybe_prevoted(now)

    def _maybe_prevoted(self, now: float) -> None:
        if self._prevotes is None or self.role is Role.SEQUENCER:
            return
        voters = self._state.voters()
        if len(self._prevotes & voters) * 2 > len(voters):
            self._stand(now, transfer=False)

    def _stand(self, now: float, *, transfer: bool) -> None:
        self._prevotes = None
        self._to("stand")
        self._epoch += 1
        self._sequencer = None
        self._voted_for = self.me
        self._votes = {self.me}
        self._vote_pid = self._queue_persist(vote=VoteRecord(self._epoch, self.me))
        self._rearm(now)
        epoch, seq, digest = self.head
        request = lw.VoteRequest(self._epoch, self.me, (epoch, seq, digest), transfer)
        for voter in sorted(self._state.voters() - {self.me}):
            self._send(voter, request, after=self._vote_pid)
        self._maybe_win(now)

    def _maybe_win(self, now: float) -> None:
        if self.role is not Role.CANDIDATE or self._vote_pid is not None:
            return
        voters = self._state.voters()
        votes = self._votes & voters
        if len(votes) * 2 <= len(voters):
            return
        self._to("won")
        self._sequencer = self.me
        self._match = {}
        self._broadcast_from = len(self._log)
        self._reached = self._peers()  # followers: they ask for what they miss
        ordered = tuple(sorted(votes))
        for peer in sorted(self._peers()):
            self._send(peer, lw.NewEpoch(self._epoch, self.me, ordered))
        entry = self._make(
            self._epoch, "epoch", {"epoch": self._epoch, "sequencer": self.me, "votes": ordered}
        )
        self._append(entry)
        self._epoch_start = entry.seq
        self._heartbeat_at = now
        self._events.append(EpochChanged(self._epoch, self.me))
        for pending in list(self._pending.values()):
            self._sequence(pending.proposal, self.me)

    def _newer_epoch(self, epoch: int, sequencer: str | None, now: float) -> None:
        """We learned of ``epoch`` (newer than ours), sequenced by ``sequencer`` if known."""
        was_sequencer = self.role is Role.SEQUENCER
        self._to("newer_epoch")
        self._epoch = epoch
        self._voted_for = None
        self._votes = set()
        self._prevotes = None
        self._sequencer = sequencer
        self._queue_persist(vote=VoteRecord(epoch, None))
        self._heard_from_sequencer(now)
        if was_sequencer:
            self._match = {}
            held, self._held_changes = self._held_changes, deque()
            for what, item, extra in held:
                if what == "own":
                    kind, body = item
                    self._propose(kind, body, extra, now)
        if sequencer is not None:
            self._sequencer_known(now)

    def _sequencer_known(self, now: float) -> None:
        assert self._sequencer is not None
        self._events.append(EpochChanged(self._epoch, self._sequencer))
        self._sync_at = None
        for pending in self._pending.values():
            pending.sent = now
            self._send_proposal(pending.proposal)

    def _may_lead(self, peer: str) -> bool:
        """Whether ``peer`` may act as a sequencer or candidate (a CSR, as far as we know)."""
        return not self._state.people or self._state.is_csr(peer)

    def _from_sequencer(self, sender: str, epoch: int, now: float) -> bool:
        """Whether a sequencer's message of ``epoch`` from ``sender`` is to be followed."""
        if epoch < self._epoch:
            return False
        if not self._may_lead(sender):
            self._events.append(
                Refused("not_allowed", f"{sender} is not a CSR and cannot sequence", sender)
            )
            return False
        if epoch > self._epoch:
            self._newer_epoch(epoch, sender, now)
        elif self._sequencer is None:
            self._to("sequencer_seen")
            self._sequencer = sender
            self._sequencer_known(now)
        elif self._sequencer != sender:
            self._events.append(
                Refused(
                    "not_sequencer",
                    f"{sender} acts as sequencer of epoch {epoch}, which {self._sequencer} holds",
                    sender,
                )
            )
            return False
        self._heard_from_sequencer(now)
        return True

    def _sequencer_alive(self, now: float) -> bool:
        if self.role is Role.SEQUENCER:
            return True
        return (
            self.role is Role.FOLLOWER
            and self._sequencer is not None
            and now - self._heard < self._timeout[0]
        )

    # -- taking entries from the sequencer

    def _take(self, sender: str, entries: Sequence[Entry], epoch: int, now: float) -> int | None:
        """Check and keep entries; returns the last seq known to match the sequencer."""
        matched: int | None = None
        for entry in entries:
            if entry.epoch > epoch:
                self._refuse_entry(
                    sender, entry, Refusal("bad_epoch", "an entry from an epoch not yet begun")
                )
                break
            n = len(self._log)
            if entry.seq < n:
                mine = self._log[entry.seq]
                if mine == entry:
                    matched = entry.seq
                    continue
                before = self._log[entry.seq - 1].digest if entry.seq else ZERO_HASH
                if entry.prev != before:
                    self._request_sync(now)
                    break
                if entry.seq <= max(self._commit, self._hint):
                    self._refuse_entry(
                        sender,
                        entry,
                        Refusal("conflict", f"entry {entry.seq} conflicts with a committed one"),
                    )
                    break
                state = LogState.replay(self._log[: entry.seq])
                refusal = state.check(entry)
                if refusal is not None:
                    self._refuse_entry(sender, entry, refusal)
                    break
                self._truncate(entry.seq, state, now)
                self._keep(entry)
                matched = entry.seq
            elif entry.seq == n:
                refusal = self._state.check(entry)
                if refusal is not None:
                    self._refuse_entry(sender, entry, refusal)
                    if refusal.reason == "broken_chain":
                        self._request_sync(now)
                    break
                self._keep(entry)
                matched = entry.seq
            else:
                self._request_sync(now)
                break
        return matched

    def _keep(self, entry: Entry) -> None:
        self._log.append(entry)
        self._state.apply(entry)
        self._queue_persist(entries=(entry,))

    def _refuse_entry(self, sender: str, entry: Entry, refusal: Refusal) -> None:
        self._events.append(Refused(refusal.reason, refusal.detail, sender, entry=entry))

    def _truncate(self, seq: int, state: LogState | None, now: float) -> None:
        dropped = tuple(self._log[seq:])
        del self._log[seq:]
        self._configs = [(n, voters) for n, voters in self._configs if n < seq]
        self._state = state if state is not None else LogState.replay(self._log)
        self._queue_persist(truncate_from=seq)
        self._events.append(Truncated(seq, dropped))
        for entry in dropped:
            own = entry.author == self.me and entry.seqsig is None
            if own and entry.kind not in ("session_start", "epoch") and self._state.genesis:
                self._propose(entry.kind, entry.body, entry.ts, now)

    def _matched(self, matched: int | None, commit: int) -> None:
        if matched is not None:
            self._hint = max(self._hint, min(commit, matched))
        self._acked = None  # answer every append, so a lost ack is made good

    # -- handlers

    def _on_propose(self, sender: str, msg: lw.Propose, now: float) -> None:
        if self.role is Role.SEQUENCER:
            self._sequence(msg.proposal, sender)

    def _on_reject(self, sender: str, msg: lw.Reject, now: float) -> None:
        pending = self._pending.get(msg.sig)
        if pending is None or sender != self._sequencer:
            return
        del self._pending[msg.sig]
        self._events.append(Refused(msg.reason, msg.detail, sender, proposal=pending.proposal))

    def _stale(self, sender: str, msg_epoch: int, entry: Entry | None) -> None:
        if entry is not None:
            self._events.append(
                Refused(
                    "old_epoch",
                    f"entries of epoch {msg_epoch}, but epoch {self._epoch} has begun",
                    sender,
                    entry=entry,
                )
            )
        digest = self._log[self._durable].digest if self._durable >= 0 else ZERO_HASH
        self._send(sender, lw.Ack(self._epoch, self._durable, digest))

    def _on_append(self, sender: str, msg: lw.Append, now: float) -> None:
        if msg.epoch < self._epoch:
            self._stale(sender, msg.epoch, msg.entries[0])
            return
        if not self._from_sequencer(sender, msg.epoch, now):
            return
        self._matched(self._take(sender, msg.entries, msg.epoch, now), msg.commit)

    def _on_sync(self, sender: str, msg: lw.Sync, now: float) -> None:
        if msg.epoch < self._epoch:
            self._stale(sender, msg.epoch, msg.entries[0] if msg.entries else None)
            return
        if not self._from_sequencer(sender, msg.epoch, now):
            return
        trunc = msg.truncate_from
        if not msg.entries and trunc is not None and trunc < len(self._log):
            if trunc <= max(self._commit, self._hint):
                self._events.append(
                    Refused("conflict", f"asked to drop committed entries from {trunc}", sender)
                )
                return
            self._truncate(trunc, None, now)
            self._matched(trunc - 1 if trunc else None, msg.commit)
        else:
            self._matched(self._take(sender, msg.entries, msg.epoch, now), msg.commit)
        self._sync_at = None

    def _on_commit(self, sender: str, msg: lw.Commit, now: float) -> None:
        if msg.epoch < self._epoch:
            self._stale(sender, msg.epoch, None)
            return
        if not self._from_sequencer(sender, msg.epoch, now):
            return
        n = len(self._log)
        if msg.last == n - 1 and (msg.last < 0 or self._log[msg.last].digest == msg.hash):
            self._hint = max(self._hint, min(msg.seq, msg.last))
            if msg.seq < self._durable:
                self._acked = None  # the sequencer may have missed our ack
        else:
            self._request_sync(now)

    def _on_ack(self, sender: str, msg: lw.Ack, now: float) -> None:
        if msg.epoch > self._epoch:
            if self._may_lead(sender):
                self._newer_epoch(msg.epoch, None, now)
            return
        if self.role is not Role.SEQUENCER or msg.epoch != self._epoch:
            return
        matches = 0 <= msg.seq < len(self._log) and self._log[msg.seq].digest == msg.hash
        if matches and msg.seq > self._match.get(sender, -1):
            self._match[sender] = msg.seq

    def _on_sync_request(self, sender: str, msg: lw.SyncRequest, now: float) -> None:
        if self.role is not Role.SEQUENCER:
            return

        def matches(seq: int, digest: str) -> bool:
            return seq == -1 or (0 <= seq < len(self._log) and self._log[seq].digest == digest)

        if matches(msg.seq, msg.hash):
            point = msg.seq
        else:
            point = max((s for s, h in msg.marks if matches(s, h)), default=-1)
        truncate = point + 1 if msg.seq > point else None
        groups = lw.batches(self._log[point + 1 :])
        if not groups:
            self._send(sender, lw.Sync(self._epoch, self._commit, truncate, ()))
        for i, group in enumerate(groups):
            self._send(
                sender, lw.Sync(self._epoch, self._commit, truncate if i == 0 else None, group)
            )

    def _on_vote_request(self, sender: str, msg: lw.VoteRequest, now: float) -> None:
        if msg.candidate != sender or not self._may_lead(sender):
            self._send(sender, lw.Vote(max(msg.epoch, self._epoch), msg.candidate, False))
            return
        if msg.pre:
            epoch, seq, _ = self.head
            granted = (
                msg.epoch > self._epoch
                and (msg.last[0], msg.last[1]) >= (epoch, seq)
                and not self._sequencer_alive(now)
            )
            # A grant names the epoch asked about; a refusal names ours, so a
            # pre-candidate that is behind learns the newer epoch (as etcd's Raft does).
            answer = msg.epoch if granted else self._epoch
            self._send(sender, lw.Vote(answer, msg.candidate, granted, pre=True))
            return
        if msg.epoch < self._epoch:
            self._send(sender, lw.Vote(self._epoch, msg.candidate, False))
            return
        if msg.epoch > self._epoch:
            if not msg.transfer and self._sequencer_alive(now):
                self._send(sender, lw.Vote(msg.epoch, msg.candidate, False))
                return
            self._newer_epoch(msg.epoch, None, now)
        epoch, seq, _ = self.head
        up_to_date = (msg.last[0], msg.last[1]) >= (epoch, seq)
        if (
            self.role is Role.FOLLOWER
            and self._voted_for in (None, msg.candidate)
            and up_to_date
            and self._sequencer is None
        ):
            self._voted_for = msg.candidate
            pid = self._queue_persist(vote=VoteRecord(self._epoch, msg.candidate))
            self._rearm(now)
            self._send(sender, lw.Vote(self._epoch, msg.candidate, True), after=pid)
        else:
            self._send(sender, lw.Vote(self._epoch, msg.candidate, False))

    def _on_vote(self, sender: str, msg: lw.Vote, now: float) -> None:
        if msg.pre:
            if not msg.granted and msg.epoch > self._epoch and sender in self._state.voters():
                self._newer_epoch(msg.epoch, None, now)
            elif (
                msg.granted
                and self._prevotes is not None
                and msg.epoch == self._epoch + 1
                and msg.candidate == self.me
            ):
                self._prevotes.add(sender)
                self._maybe_prevoted(now)
            return
        if msg.epoch > self._epoch:
            if self._may_lead(sender) or sender in self._state.voters():
                self._newer_epoch(msg.epoch, None, now)
            return
        if (
            self.role is Role.CANDIDATE
            and msg.epoch == self._epoch
            and msg.candidate == self.me
            and msg.granted
        ):
            self._votes.add(sender)
            self._maybe_win(now)

    def _on_new_epoch(self, sender: str, msg: lw.NewEpoch, now: float) -> None:
        if msg.sequencer != sender or msg.epoch < self._epoch:
            return
        self._from_sequencer(sender, msg.epoch, now)

    def _on_hand_over(self, sender: str, msg: lw.HandOver, now: float) -> None:
        if (
            msg.to == self.me
            and msg.epoch == self._epoch
            and sender == self._sequencer
            and self.role is Role.FOLLOWER
            and self._can_stand()
        ):
            self._stand(now, transfer=True)


_HANDLERS: dict[type, Callable[[SessionLog, str, Any, float], None]] = {
    lw.Propose: SessionLog._on_propose,
    lw.Reject: SessionLog._on_reject,
    lw.Append: SessionLog._on_append,
    lw.Ack: SessionLog._on_ack,
    lw.Commit: SessionLog._on_commit,
    lw.SyncRequest: SessionLog._on_sync_request,
    lw.Sync: SessionLog._on_sync,
    lw.VoteRequest: SessionLog._on_vote_request,
    lw.Vote: SessionLog._on_vote,
    lw.NewEpoch: SessionLog._on_new_epoch,
    lw.HandOver: SessionLog._on_hand_over,
}
