"""The join handshake cores pumped into each other by hand (no network, no asyncio)."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import CodeBurned, HandshakeTampered, HandshakeTimeout, JoinRefused, WrongCode
from agent.protocol import handshake as hs
from agent.protocol.code import SessionCode
from agent.session.handshake import (
    CODE_TTL,
    Admitted,
    AttemptFailed,
    CodeClosed,
    HostHandshake,
    JoinerHandshake,
    JoinFailed,
    JoinRequest,
)

CODE = SessionCode(room="482913", secret="075531")
WRONG = SessionCode(room="482913", secret="075532")


def host(now: float = 0.0) -> HostHandshake:
    return HostHandshake(CODE, Ed25519PrivateKey.generate(), "Carol (CSR)", now=now)


def joiner(code: SessionCode = CODE, name: str = "Alice", now: float = 0.0) -> JoinerHandshake:
    return JoinerHandshake(code, "customer", Ed25519PrivateKey.generate(), name, now=now)


def events(core: HostHandshake | JoinerHandshake) -> list[object]:
    out = []
    while (e := core.next_event()) is not None:
        out.append(e)
    return out


def to_host(h: HostHandshake, j: JoinerHandshake, peer: str, now: float = 0.0) -> None:
    for data in j.messages_to_send():
        h.receive(peer, data, now)


def to_joiner(h: HostHandshake, j: JoinerHandshake, peer: str, now: float = 0.0) -> list[str]:
    """Deliver the host's messages for ``peer``; return those for other peers."""
    rest = []
    for to, data in h.messages_to_send():
        if to == peer:
            j.receive(data, now)
        else:
            rest.append((to, data))
    return rest


HOST_LOG: list[object] = []


def run_join(h: HostHandshake, j: JoinerHandshake, peer: str = "aaaaaaaaaaaa") -> list[object]:
    """Run one join to its end; the host's events are left in HOST_LOG."""
    HOST_LOG.clear()
    j.start()
    j.set_offer("v=0 offer " + peer)
    for _ in range(3):
        to_host(h, j, peer)
        for e in events(h):
            HOST_LOG.append(e)
            if isinstance(e, JoinRequest):
                h.accept(e.peer, "v=0 answer", 0.0)
        to_joiner(h, j, peer)
    return events(j)


def test_join_agrees_on_keys_sas_and_identities() -> None:
    h, j = host(), joiner()
    j.start()
    j.set_offer("v=0 offer")
    to_host(h, j, "aaaaaaaaaaaa")
    to_joiner(h, j, "aaaaaaaaaaaa")
    to_host(h, j, "aaaaaaaaaaaa")
    (req,) = events(h)
    assert isinstance(req, JoinRequest)
    assert req.offer == "v=0 offer" and req.name == "Alice" and req.role == "customer"
    h.accept(req.peer, "v=0 answer", 0.0)
    to_joiner(h, j, "aaaaaaaaaaaa")
    (adm,) = events(j)
    assert isinstance(adm, Admitted)
    assert adm.answer == "v=0 answer" and adm.name == "Carol (CSR)"
    assert adm.sas == req.sas and len(adm.sas) == 6 and adm.sas.isdigit()
    assert adm.session_key == req.session_key


@pytest.mark.parametrize("offer_first", [True, False])
def test_offer_before_or_after_key(offer_first: bool) -> None:
    """The offer may be ready before the host's PAKE message arrives, or after."""
    h, j = host(), joiner()
    j.start()
    if offer_first:
        j.set_offer("v=0 early")
    to_host(h, j, "p1p1p1p1p1p1".replace("p", "a"))
    to_joiner(h, j, "a1a1a1a1a1a1")
    assert not any(hs.decode(m).type == "confirm" for m in j.messages_to_send()) or offer_first
    if not offer_first:
        j.set_offer("v=0 late")
        msgs = j.messages_to_send()
        assert [hs.decode(m).type for m in msgs] == ["confirm"]


def test_concurrent_joiners_in_every_interleaving() -> None:
    """Two joiners whose messages reach the host in every possible order both get in."""
    steps = ["a_hello", "a_confirm", "b_hello", "b_confirm"]
    orders = [
        p
        for p in itertools.permutations(steps)
        if p.index("a_hello") < p.index("a_confirm") and p.index("b_hello") < p.index("b_confirm")
    ]
    assert len(orders) == 6
    for order in orders:
        h = host()
        js = {"a": joiner(name="A"), "b": joiner(name="B")}
        peers = {"a": "aaaaaaaaaaaa", "b": "bbbbbbbbbbbb"}
        for who, j in js.items():
            j.start()
            j.set_offer(f"v=0 {who}")
        for step in order:
            who = step[0]
            j = js[who]
            # the joiner's next message goes to the host; the host's replies come back
            data = j.messages_to_send()
            assert len(data) == 1
            h.receive(peers[who], data[0], 0.0)
            for to, reply in h.messages_to_send():
                rev = {v: k for k, v in peers.items()}
                js[rev[to]].receive(reply, 0.0)
        reqs = [e for e in events(h) if isinstance(e, JoinRequest)]
        assert sorted(r.name for r in reqs) == ["A", "B"], order
        for r in reqs:
            h.accept(r.peer, f"v=0 answer {r.name}", 0.0)
        for to, reply in h.messages_to_send():
            js["a" if to == peers["a"] else "b"].receive(reply, 0.0)
        for who, j in js.items():
            (adm,) = events(j)
            assert isinstance(adm, Admitted) and adm.answer == f"v=0 answer {who.upper()}"


def test_messages_out_of_order_fail_cleanly() -> None:
    """Any message delivered out of its place ends that join with a protocol error, no crash."""
    h, j = host(), joiner()
    j.start()
    j.set_offer("v=0")
    (hello,) = j.messages_to_send()
    h.receive("aaaaaaaaaaaa", hello, 0.0)
    (_, pake) = h.messages_to_send()[0]
    j.receive(pake, 0.0)
    (confirm,) = j.messages_to_send()
    # confirm before hello from a fresh peer
    h2 = host()
    h2.receive("cccccccccccc", confirm, 0.0)
    (failed,) = events(h2)
    assert isinstance(failed, AttemptFailed) and not failed.counted
    assert hs.decode(h2.messages_to_send()[0][1]) == hs.Reject(reason="protocol")
    # the same hello again is ignored; another hello in the same join fails it
    h.receive("aaaaaaaaaaaa", hello, 0.0)
    assert events(h) == []
    other = joiner()
    other.start()
    (hello2,) = other.messages_to_send()
    h.receive("aaaaaaaaaaaa", hello2, 0.0)
    assert isinstance(events(h)[0], AttemptFailed)
    # a pake delivered twice to the joiner: the same bytes again say nothing new (a
    # server may deliver at least once), so the copy is ignored...
    j2 = joiner()
    j2.start()
    j2.receive(pake, 0.0)
    j2.receive(pake, 0.0)
    assert events(j2) == []
    # ...but another pake after the first is out of order
    j2.receive(hs.encode(hs.Pake(pake=b"\x01" + bytes(32))), 0.0)
    assert isinstance(events(j2)[-1], JoinFailed)
    # an accept before any pake
    j3 = joiner()
    j3.start()
    j3.receive(hs.encode(hs.Accept(mac=bytes(32), sealed=bytes(40))), 0.0)
    (fail,) = events(j3)
    assert isinstance(fail, JoinFailed) and "out of order" in fail.error.message


def test_wrong_code_fails_on_both_sides_and_three_burn_the_code() -> None:
    h = host()
    for attempt in range(1, 4):
        j = joiner(WRONG)
        peer = f"{attempt:012d}".replace("0", "a")
        (fail,) = run_join(h, j, peer)
        assert isinstance(fail, JoinFailed)
        if attempt < 3:
            assert isinstance(fail.error, WrongCode)
            assert "wrong code" in fail.error.message
            assert f"{3 - attempt} attempt" in fail.error.message
        else:
            assert isinstance(fail.error, CodeBurned)
        host_events = HOST_LOG + events(h)
        failed = [e for e in host_events if isinstance(e, AttemptFailed)]
        assert len(failed) == 1 and failed[0].counted and failed[0].failures == attempt
        assert failed[0].remaining == 3 - attempt
        assert isinstance(failed[0].error, WrongCode)
        if attempt == 3:
            assert CodeClosed("burned") in host_events
    # the right code no longer works
    (fail,) = run_join(h, joiner(), "dddddddddddd")
    assert isinstance(fail, JoinFailed) and isinstance(fail.error, CodeBurned)


def test_right_code_after_a_wrong_one_still_joins() -> None:
    h = host()
    (fail,) = run_join(h, joiner(WRONG), "aaaaaaaaaaaa")
    assert isinstance(fail, JoinFailed)
    events(h)
    (ok,) = run_join(h, joiner(), "bbbbbbbbbbbb")
    assert isinstance(ok, Admitted)


def test_role_is_bound_into_the_pake() -> None:
    """A code issued for customers does not admit a CSR, and the message says so."""
    h = host()
    j = JoinerHandshake(CODE, "csr", Ed25519PrivateKey.generate(), "Eve", now=0.0)
    (fail,) = run_join(h, j)
    assert isinstance(fail, JoinFailed) and isinstance(fail.error, JoinRefused)
    # a host that does admit CSRs still derives different keys for another role
    h2 = HostHandshake(
        CODE, Ed25519PrivateKey.generate(), "Carol", now=0.0, roles=("customer", "csr")
    )
    (ok,) = run_join(h2, JoinerHandshake(CODE, "csr", Ed25519PrivateKey.generate(), "Dan", now=0.0))
    assert isinstance(ok, Admitted)


def test_tampered_sealed_box_is_refused_and_not_counted() -> None:
    h, j = host(), joiner()
    j.start()
    j.set_offer("v=0")
    to_host(h, j, "aaaaaaaaaaaa")
    to_joiner(h, j, "aaaaaaaaaaaa")
    (confirm,) = j.messages_to_send()
    msg = hs.decode(confirm)
    assert isinstance(msg, hs.Confirm)
    flipped = bytes([msg.sealed[0] ^ 1]) + msg.sealed[1:]
    h.receive("aaaaaaaaaaaa", hs.encode(hs.Confirm(mac=msg.mac, sealed=flipped)), 0.0)
    (fail,) = events(h)
    assert isinstance(fail, AttemptFailed) and isinstance(fail.error, HandshakeTampered)
    assert not fail.counted and h.failures == 0
    (_, reject) = h.messages_to_send()[0]
    j.receive(reject, 0.0)
    (jf,) = events(j)
    assert isinstance(jf, JoinFailed) and isinstance(jf.error, HandshakeTampered)


def test_tampered_accept_is_caught_by_the_joiner() -> None:
    h, j = host(), joiner()
    j.start()
    j.set_offer("v=0")
    to_host(h, j, "aaaaaaaaaaaa")
    to_joiner(h, j, "aaaaaaaaaaaa")
    to_host(h, j, "aaaaaaaaaaaa")
    (req,) = events(h)
    h.accept(req.peer, "v=0 answer", 0.0)
    ((_, accept),) = h.messages_to_send()
    msg = hs.decode(accept)
    assert isinstance(msg, hs.Accept)
    j.receive(hs.encode(hs.Accept(mac=msg.mac, sealed=msg.sealed[:-1] + b"\0")), 0.0)
    (jf,) = events(j)
    assert isinstance(jf, JoinFailed) and isinstance(jf.error, HandshakeTampered)


def test_code_expires_unused_and_joins_refresh_it() -> None:
    h = host(now=0.0)
    h.handle_timer(CODE_TTL - 1)
    assert h.state.value == "open"
    (ok,) = run_join(h, joiner())
    assert isinstance(ok, Admitted)
    h.handle_timer(CODE_TTL + 1)  # the join at t=0 does not move the clock; expire now
    assert h.state.value == "expired"
    assert CodeClosed("expired") in events(h)
    (fail,) = run_join(h, joiner(), "bbbbbbbbbbbb")
    assert isinstance(fail, JoinFailed) and isinstance(fail.error, CodeBurned)
    assert "expired" in fail.error.message


def test_joiner_times_out_when_host_is_silent() -> None:
    j = joiner(now=100.0)
    j.start()
    assert j.get_timer() == pytest.approx(120.0)
    j.handle_timer(119.0)
    assert events(j) == []
    j.handle_timer(121.0)
    (fail,) = events(j)
    assert isinstance(fail, JoinFailed) and isinstance(fail.error, HandshakeTimeout)


def test_garbage_from_the_network_never_raises() -> None:
    h, j = host(), joiner()
    j.start()
    for junk in [
        "",
        "{",
        "[]",
        '{"type":"hello"}',
        '{"type":"nope"}',
        "x" * 100_000,
        '{"type":"pake","pake":"!!"}',
    ]:
        h.receive("aaaaaaaaaaaa", junk, 0.0)
        j.receive(junk, 0.0)
    assert all(isinstance(e, AttemptFailed) and not e.counted for e in events(h))
    assert h.failures == 0


def test_pake_points_off_the_curve_are_refused_not_raised() -> None:
    """A hello or a pake whose 33 bytes decode to no curve point: python-spake2 raises
    its own ``NotOnCurve`` (not a ValueError). Anyone who knows a room id could send
    one; it must be a refused join, and the next join must still work."""
    h = host()
    for first in (0x00, 0x7F, 0xFF):
        bad = bytes([0x42]) + bytes([first]) * 32  # SPAKE2 side byte + a bogus point
        h.receive("bbbbbbbbbbbb", hs.encode(hs.Hello(role="customer", pake=bad)), 0.0)
        j = joiner()
        j.start()
        j.receive(hs.encode(hs.Pake(pake=bad)), 0.0)
        (fail,) = events(j)
        assert isinstance(fail, JoinFailed) and "PAKE" in fail.error.message
    assert all(isinstance(e, AttemptFailed) and not e.counted for e in events(h))
    assert h.failures == 0
    (admitted,) = run_join(h, joiner(), peer="cccccccccccc")
    assert isinstance(admitted, Admitted)


def test_csr_code_admits_a_csr_and_the_customer_code_does_not() -> None:
    csr_secret = "424242"
    h = HostHandshake(CODE, Ed25519PrivateKey.generate(), "Carol", now=0.0, csr_secret=csr_secret)
    csr_code = SessionCode(CODE.room, csr_secret)
    (ok,) = run_join(
        h, JoinerHandshake(csr_code, "csr", Ed25519PrivateKey.generate(), "Dan", now=0.0)
    )
    assert isinstance(ok, Admitted)
    # knowing the customer's code never makes anyone a CSR
    j = JoinerHandshake(CODE, "csr", Ed25519PrivateKey.generate(), "Eve", now=0.0)
    (fail,) = run_join(h, j, "bbbbbbbbbbbb")
    assert isinstance(fail, JoinFailed)
    assert isinstance(fail.error, WrongCode)
    # and the CSR code does not admit a customer
    (fail2,) = run_join(h, joiner(csr_code), "cccccccccccc")
    assert isinstance(fail2, JoinFailed)
    assert isinstance(fail2.error, WrongCode)
    # the customer code still works for customers
    (ok2,) = run_join(h, joiner(), "dddddddddddd")
    assert isinstance(ok2, Admitted)


def _pub(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_team_members_join_by_room_id_alone() -> None:
    host_key, dan_key, eve_key = (Ed25519PrivateKey.generate() for _ in range(3))
    team = {_pub(host_key), _pub(dan_key)}
    h = HostHandshake(CODE, host_key, "Carol", now=0.0, team=team.__contains__)
    room_only = SessionCode(CODE.room, "")
    dan = JoinerHandshake(room_only, "csr", dan_key, "Dan", now=0.0, team=team.__contains__)
    (ok,) = run_join(h, dan)
    assert isinstance(ok, Admitted)
    assert ok.key == _pub(host_key) and ok.name == "Carol"
    req = next(e for e in HOST_LOG if isinstance(e, JoinRequest))
    assert req.role == "csr" and req.key == _pub(dan_key) and req.sas == ok.sas

    # not on the host's roster: refused, never counted against the code
    eve = JoinerHandshake(room_only, "csr", eve_key, "Eve", now=0.0, team=lambda k: True)
    (fail,) = run_join(h, eve, "bbbbbbbbbbbb")
    assert isinstance(fail, JoinFailed)
    assert fail.error.code == "not_on_team"
    assert h.failures == 0

    # a host that is not on the joiner's roster (a server impersonating it): refused
    fake_host = HostHandshake(CODE, eve_key, "Mallory", now=0.0, team=lambda k: True)
    dan2 = JoinerHandshake(room_only, "csr", dan_key, "Dan", now=0.0, team=team.__contains__)
    (fail2,) = run_join(fake_host, dan2, "cccccccccccc")
    assert isinstance(fail2, JoinFailed)
    assert fail2.error.code == "host_not_on_team"


def test_team_join_cannot_be_hijacked_by_swapping_keys() -> None:
    """A server that swaps the joiner's identity in the hello cannot prove it later."""
    host_key, dan_key, eve_key = (Ed25519PrivateKey.generate() for _ in range(3))
    team = {_pub(host_key), _pub(dan_key), _pub(eve_key)}
    h = HostHandshake(CODE, host_key, "Carol", now=0.0, team=team.__contains__)
    eve = JoinerHandshake(
        SessionCode(CODE.room, ""), "csr", eve_key, "Eve", now=0.0, team=team.__contains__
    )
    eve.start()
    eve.set_offer("v=0")
    (hello,) = eve.messages_to_send()
    msg = hs.decode(hello)
    assert isinstance(msg, hs.TeamHello)
    # the server claims Dan's key with Eve's ephemeral key
    h.receive("aaaaaaaaaaaa", hs.encode(hs.TeamHello(eph=msg.eph, key=_pub(dan_key))), 0.0)
    to_joiner(h, eve, "aaaaaaaaaaaa")
    to_host(h, eve, "aaaaaaaaaaaa")
    assert not [e for e in events(h) if isinstance(e, JoinRequest)]
