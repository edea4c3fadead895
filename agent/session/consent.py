"""Consent, sans-I/O: the customer's agent is the only place a grant exists.

A CSR asks for a capability; the customer is asked (or a pre-answer given with
``--accept`` answers); only this core grants, denies or revokes. The rest of the
agent asks ``allows(csr, cap)`` at the moment of use — when an input event is about
to be injected, a frame is about to be sent, a file is about to be served — so a
revoke takes effect on the customer's machine at once, before any message reaches
anyone.

Invariants (everything that affects consent lives here):

* Every capability is denied by default, for every CSR.
* A grant names one CSR and one capability; revoking ``all`` clears every grant.
* While any prompt is pending, ``input_paused`` is true, so remote input cannot
  click "Allow" itself.
* A CSR that leaves loses its grants; a request for something already granted is
  answered at once; a CSR cannot stack more than MAX_PENDING prompts.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from agent.errors import LocalProtocolError, RemoteProtocolError

CAPABILITIES = ("view", "control", "files", "files_advanced", "sysinfo", "record", "clipboard")
"Every capability the wire knows; ``record`` and ``clipboard`` are reserved."
AVAILABLE = ("view", "control", "files", "files_advanced", "sysinfo")
"The capabilities this version can grant."
MAX_PENDING = 8
PROMPT_TTL = 120.0
"Seconds a prompt waits for the customer before it counts as denied."


class State(enum.Enum):
    PENDING = "pending"
    GRANTED = "granted"
    DENIED = "denied"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Change:
    """A request changed state. Both sides report it as a ``consent`` event."""

    id: str
    cap: str
    csr: str
    state: State
    ref: str | None = None
    "The CSR's own reference for the request, echoed back."
    reason: str = ""


@dataclass
class _Request:
    id: str
    cap: str
    csr: str
    ref: str | None
    asked: float


class Consent:
    """The customer's grants, prompts and revocations."""

    def __init__(self, auto_accept: frozenset[str] = frozenset()) -> None:
        unknown = set(auto_accept) - set(AVAILABLE)
        if unknown:
            raise LocalProtocolError(
                f"cannot pre-accept {', '.join(sorted(unknown))}; "
                f"capabilities: {', '.join(AVAILABLE)}"
            )
        self._auto = auto_accept
        self._pending: dict[str, _Request] = {}
        self._grants: dict[tuple[str, str], str] = {}
        "(csr, cap) -> request id of the live grant"
        self._refs: dict[str, str | None] = {}
        self._events: deque[Change] = deque()
        self._counter = 0

    # -- questions asked at the moment of use

    def allows(self, csr: str, cap: str) -> bool:
        """Whether ``csr`` holds a live grant of ``cap`` right now."""
        return (csr, cap) in self._grants

    @property
    def input_paused(self) -> bool:
        """True while a prompt is on screen: remote input must not reach it."""
        return bool(self._pending)

    def granted(self) -> list[tuple[str, str]]:
        """Every live (csr, cap) grant."""
        return list(self._grants)

    def pending(self) -> list[Change]:
        return [Change(r.id, r.cap, r.csr, State.PENDING, r.ref) for r in self._pending.values()]

    # -- input from a CSR (over the wire)

    def request(self, csr: str, cap: str, now: float, ref: str | None = None) -> str:
        """A CSR asks for ``cap``; returns the request id. Raises for unknown caps."""
        if cap not in CAPABILITIES:
            raise RemoteProtocolError(f'unknown capability "{cap[:32]}"', code="unknown_cap")
        if cap not in AVAILABLE:
            raise RemoteProtocolError(
                f'"{cap}" is not available in this version', code="unavailable"
            )
        if (csr, cap) in self._grants:
            rid = self._grants[(csr, cap)]
            self._events.append(Change(rid, cap, csr, State.GRANTED, ref))
            return rid
        for req in self._pending.values():
            if req.csr == csr and req.cap == cap:
                return req.id
        if sum(1 for r in self._pending.values() if r.csr == csr) >= MAX_PENDING:
            raise RemoteProtocolError("too many unanswered requests", code="too_many")
        self._counter += 1
        rid = f"r{self._counter}"
        self._refs[rid] = ref
        if cap in self._auto:
            self._grants[(csr, cap)] = rid
            self._events.append(Change(rid, cap, csr, State.GRANTED, ref, "pre-accepted"))
            return rid
        self._pending[rid] = _Request(rid, cap, csr, ref, now)
        self._events.append(Change(rid, cap, csr, State.PENDING, ref))
        return rid

    def csr_left(self, csr: str) -> None:
        """A CSR left or was lost: its prompts vanish and its grants end."""
        for rid, req in list(self._pending.items()):
            if req.csr == csr:
                del self._pending[rid]
                self._events.append(Change(rid, req.cap, csr, State.DENIED, req.ref, "left"))
        for key, rid in list(self._grants.items()):
            if key[0] == csr:
                del self._grants[key]
                self._events.append(Change(rid, key[1], csr, State.REVOKED, None, "left"))

    # -- the customer's answers (local)

    def grant(self, rid: str) -> Change:
        req = self._take(rid)
        self._grants[(req.csr, req.cap)] = rid
        change = Change(rid, req.cap, req.csr, State.GRANTED, req.ref)
        self._events.append(change)
        return change

    def deny(self, rid: str, reason: str = "") -> Change:
        req = self._take(rid)
        change = Change(rid, req.cap, req.csr, State.DENIED, req.ref, reason)
        self._events.append(change)
        return change

    def revoke(self, cap: str = "all", csr: str | None = None, reason: str = "") -> list[Change]:
        """Revoke ``cap`` (or ``all``) from ``csr`` (or everyone); effective at once.

        Revoking ``all`` ("Stop sharing") also answers every open prompt with no.
        ``reason`` says why when it was not the customer's choice (no display, ...).
        """
        if cap != "all" and cap not in CAPABILITIES:
            raise LocalProtocolError(f'unknown capability "{cap}"; use one of {CAPABILITIES}')
        out = []
        for key, rid in list(self._grants.items()):
            if (cap == "all" or key[1] == cap) and (csr is None or key[0] == csr):
                del self._grants[key]
                change = Change(rid, key[1], key[0], State.REVOKED, reason=reason)
                self._events.append(change)
                out.append(change)
        if cap == "all":
            for rid, req in list(self._pending.items()):
                if csr is None or req.csr == csr:
                    out.append(self.deny(rid, "stopped sharing"))
        return out

    def handle_timer(self, now: float) -> None:
        for rid, req in list(self._pending.items()):
            if now - req.asked >= PROMPT_TTL:
                self.deny(rid, "no answer")

    def get_timer(self) -> float | None:
        if not self._pending:
            return None
        return min(r.asked for r in self._pending.values()) + PROMPT_TTL

    def next_event(self) -> Change | None:
        return self._events.popleft() if self._events else None

    def _take(self, rid: str) -> _Request:
        req = self._pending.pop(rid, None)
        if req is None:
            raise LocalProtocolError(f'no open request "{rid[:16]}"', code="no_such_request")
        return req
