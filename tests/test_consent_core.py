"""The consent core: denied by default, only the customer grants, revokes act at once."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.errors import LocalProtocolError, RemoteProtocolError
from agent.session.consent import AVAILABLE, MAX_PENDING, PROMPT_TTL, Consent, State


def drain(c: Consent) -> list[tuple[str, str, State]]:
    out = []
    while (e := c.next_event()) is not None:
        out.append((e.csr, e.cap, e.state))
    return out


def test_everything_is_denied_by_default() -> None:
    c = Consent()
    assert not any(c.allows("csr1", cap) for cap in AVAILABLE)
    assert not c.input_paused


def test_request_prompts_pauses_input_and_grant_allows() -> None:
    c = Consent()
    rid = c.request("csr1", "control", 0.0, ref="x1")
    assert c.input_paused
    assert not c.allows("csr1", "control")
    assert drain(c) == [("csr1", "control", State.PENDING)]
    change = c.grant(rid)
    assert change.ref == "x1"
    assert c.allows("csr1", "control")
    assert not c.allows("csr2", "control")
    assert not c.allows("csr1", "view")
    assert not c.input_paused


def test_deny_and_unknown_ids() -> None:
    c = Consent()
    rid = c.request("csr1", "files", 0.0)
    c.deny(rid)
    assert not c.allows("csr1", "files")
    with pytest.raises(LocalProtocolError, match="no open request"):
        c.grant(rid)
    with pytest.raises(RemoteProtocolError, match="unknown capability"):
        c.request("csr1", "root_shell", 0.0)
    with pytest.raises(RemoteProtocolError, match="not available"):
        c.request("csr1", "clipboard", 0.0)


def test_revoke_one_and_all() -> None:
    c = Consent(frozenset({"view", "control"}))
    c.request("csr1", "view", 0.0)
    c.request("csr1", "control", 0.0)
    c.request("csr2", "view", 0.0)
    pending = c.request("csr2", "sysinfo", 0.0)
    assert c.allows("csr1", "control")
    c.revoke("control")
    assert not c.allows("csr1", "control")
    assert c.allows("csr1", "view")
    drain(c)
    changes = c.revoke("all")
    assert {(x.csr, x.cap, x.state) for x in changes} == {
        ("csr1", "view", State.REVOKED),
        ("csr2", "view", State.REVOKED),
        ("csr2", "sysinfo", State.DENIED),
    }
    assert c.granted() == []
    assert not c.input_paused
    with pytest.raises(LocalProtocolError):
        c.grant(pending)


def test_csr_leaving_loses_grants_and_prompts() -> None:
    c = Consent(frozenset({"view"}))
    c.request("csr1", "view", 0.0)
    c.request("csr1", "control", 0.0)
    c.csr_left("csr1")
    assert not c.allows("csr1", "view")
    assert not c.input_paused


def test_prompt_spam_is_bounded_and_prompts_expire() -> None:
    c = Consent()
    caps = list(AVAILABLE)
    for cap in caps:
        c.request("csr1", cap, 0.0)
    assert c.request("csr1", "view", 0.0) == c.pending()[0].id  # same request, not a new one
    assert len(c.pending()) == len(caps) <= MAX_PENDING
    c.handle_timer(PROMPT_TTL + 1)
    assert c.pending() == []
    assert not c.input_paused


def test_preaccept_rejects_unknown() -> None:
    with pytest.raises(LocalProtocolError, match="cannot pre-accept"):
        Consent(frozenset({"everything"}))


class ConsentMachine(RuleBasedStateMachine):
    """Whatever happens, a capability is allowed only between a grant and its revoke."""

    def __init__(self) -> None:
        super().__init__()
        self.c = Consent()
        self.model: set[tuple[str, str]] = set()
        self.now = 0.0

    @rule(csr=st.sampled_from(["a", "b"]), cap=st.sampled_from(AVAILABLE))
    def request(self, csr: str, cap: str) -> None:
        self.c.request(csr, cap, self.now)

    @precondition(lambda self: self.c.pending())
    @rule(data=st.data(), yes=st.booleans())
    def answer(self, data: st.DataObject, yes: bool) -> None:
        req = data.draw(st.sampled_from(self.c.pending()))
        if yes:
            self.c.grant(req.id)
            self.model.add((req.csr, req.cap))
        else:
            self.c.deny(req.id)

    @rule(cap=st.sampled_from([*AVAILABLE, "all"]), csr=st.sampled_from(["a", "b", None]))
    def revoke(self, cap: str, csr: str | None) -> None:
        self.c.revoke(cap, csr)
        self.model = {
            (k, p)
            for (k, p) in self.model
            if not ((cap == "all" or p == cap) and (csr is None or k == csr))
        }

    @rule(csr=st.sampled_from(["a", "b"]))
    def leave(self, csr: str) -> None:
        self.c.csr_left(csr)
        self.model = {(k, p) for (k, p) in self.model if k != csr}

    @rule()
    def tick(self) -> None:
        self.now += PROMPT_TTL / 3
        self.c.handle_timer(self.now)

    @invariant()
    def grants_match(self) -> None:
        for csr in "ab":
            for cap in AVAILABLE:
                assert self.c.allows(csr, cap) == ((csr, cap) in self.model)
        assert self.c.input_paused == bool(self.c.pending())


TestConsentMachine = ConsentMachine.TestCase
TestConsentMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
