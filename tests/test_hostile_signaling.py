"""A hostile signaling server can neither hijack nor read a join.

Real aiortc peers (``CsrSession``, ``CustomerSession``) join through
``HostileSignaling`` (``tests/hostile_server.py``), a real WebSocket server on
127.0.0.1 that speaks the signaling wire and lets each test rewrite, drop,
duplicate, swap, replay or answer the relayed handshake messages itself. Every
test asserts what the people involved would see: the customer's error (its
``code`` and message) and the CSR's status events.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import agent.runtime.common
from agent import identity, status
from agent.errors import (
    CodeBurned,
    HandshakeTampered,
    HandshakeTimeout,
    PeerDeskError,
    WrongCode,
)
from agent.identity import Identity
from agent.protocol import handshake as hs
from agent.protocol import wire
from agent.protocol.code import JoinLink, SessionCode
from agent.runtime import CsrSession, CustomerSession
from agent.session import handshake as hsk
from tests.hostile_server import TO_HOST, TO_JOINER, HostileSignaling, until

CSR_NAME = "Sam Support"
CUSTOMER_NAME = "Alice Customer"
JOIN_TIMEOUT = 5.0
"Seconds a customer's handshake may take in these tests."
CHANNEL_OPEN = 2.0
"agent.runtime.common.CHANNEL_OPEN_TIMEOUT during these tests."

TO_HOST_KINDS = ("hello", "confirm")
TO_JOINER_KINDS = ("pake", "accept", "reject")
SDP_MARKERS = ("v=0", "a=fingerprint", "a=ice-ufrag", "a=ice-pwd", "a=candidate", "m=application")

#: An SDP offer the server would like the CSR to accept: its own DTLS fingerprint.
ATTACKER_SDP = (
    "v=0\r\no=- 1 1 IN IP4 203.0.113.7\r\ns=-\r\nt=0 0\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 203.0.113.7\r\n"
    "a=ice-ufrag:evil\r\na=ice-pwd:evilevilevilevilevilevil\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"
    "a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\n"
)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[HostileSignaling]:
    double = HostileSignaling()
    await double.start()
    try:
        yield double
    finally:
        await double.stop()
    assert not double.hook_errors, f"a tamper hook failed: {double.hook_errors!r}"
    # Whatever the test did, honest agents never handed the server anything readable.
    assert_nothing_in_clear(double)


@pytest.fixture(autouse=True)
def quick_channel_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.runtime.common, "CHANNEL_OPEN_TIMEOUT", CHANNEL_OPEN)


class Peers:
    """Makes CSR and customer sessions against the double, and ends them all."""

    def __init__(self, directory: Path, server: HostileSignaling) -> None:
        self._dir = directory
        self._server = server
        self._made = 0
        self.identities: list[Identity] = []
        self.codes: list[SessionCode] = []
        self._csrs: list[CsrSession] = []
        self._customers: list[CustomerSession] = []

    def identity(self, name: str) -> Identity:
        self._made += 1
        me = identity.load(self._dir / f"agent{self._made}").with_name(name)
        self.identities.append(me)
        return me

    async def csr(self) -> tuple[CsrSession, list[status.Status], SessionCode]:
        events: list[status.Status] = []
        csr = CsrSession(self.identity(CSR_NAME), self._server.url, events.append)
        self._csrs.append(csr)
        code = await asyncio.wait_for(csr.start(), 10)
        self.codes.append(code)
        return csr, events, code

    def customer(
        self, code: SessionCode, *, timeout: float = JOIN_TIMEOUT
    ) -> tuple[CustomerSession, list[status.Status]]:
        events: list[status.Status] = []
        cust = CustomerSession(
            self.identity(CUSTOMER_NAME),
            JoinLink(code, None),
            self._server.url,
            events.append,
            timeout=timeout,
        )
        self._customers.append(cust)
        return cust, events

    async def close(self) -> None:
        for cust in self._customers:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(cust.leave(), 5)
        for csr in self._csrs:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(csr.end(), 5)


@pytest.fixture
async def peers(tmp_path: Path, server: HostileSignaling) -> AsyncIterator[Peers]:
    made = Peers(tmp_path, server)
    try:
        yield made
    finally:
        await made.close()
    # No secret, SDP, name or identity key of anyone in the test ever reached the server.
    assert_nothing_in_clear(
        server,
        secrets=tuple(c.secret for c in made.codes),
        people=tuple(made.identities),
    )


# --- helpers ------------------------------------------------------------------------


def of(events: list[status.Status], kind: type[status.Status]) -> list[status.Status]:
    return [e for e in events if isinstance(e, kind)]


def kinds(data: list[str]) -> list[str]:
    return [hs.decode(d).type for d in data]


def wrong(code: SessionCode, k: int = 1) -> SessionCode:
    """The same room with another secret: a mistyped code, or a server's guess."""
    return SessionCode(code.room, f"{(int(code.secret) + k) % 10**6:06d}")


async def join_fails(cust: CustomerSession, timeout: float = 15.0) -> PeerDeskError:
    """Run the join, which must fail; the error the customer would be shown."""
    with pytest.raises(PeerDeskError) as info:
        await asyncio.wait_for(cust.join(), timeout)
    assert cust.host is None, "a failed join must leave no connection to a host"
    return info.value


async def join_ok(cust: CustomerSession, csr_events: list[status.Status], n: int = 1) -> None:
    await asyncio.wait_for(cust.join(), 15)
    await until(lambda: len(of(csr_events, status.Joined)) >= n, 5, "the CSR to see the join")


def says(what: PeerDeskError | str, *phrases: str) -> None:
    """The message shown to the person says each of ``phrases`` (the wording may evolve)."""
    text = what if isinstance(what, str) else what.message
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} missing from the message {text!r}"


def flip(sealed: bytes) -> bytes:
    """One bit changed in the middle of an AEAD box."""
    i = len(sealed) // 2
    return sealed[:i] + bytes([sealed[i] ^ 0x01]) + sealed[i + 1 :]


def forged_box(name: str) -> bytes:
    """The server's own sealed introduction with its own SDP, under a key it made up."""
    me = Ed25519PrivateKey.generate()
    key = me.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    intro = hs.Intro(name=name, key=key, sig=me.sign(ATTACKER_SDP.encode()), sdp=ATTACKER_SDP)
    return ChaCha20Poly1305(os.urandom(32)).encrypt(bytes(12), hs.encode_intro(intro), b"")


def assert_nothing_in_clear(
    server: HostileSignaling,
    *,
    secrets: tuple[str, ...] = (),
    people: tuple[Identity, ...] = (),
) -> None:
    """What honest agents relayed holds only handshake messages, and nothing readable."""
    for item in server.relayed:
        msg = hs.decode(item.data)
        allowed = TO_HOST_KINDS if item.direction == TO_HOST else TO_JOINER_KINDS
        assert msg.type in allowed, f"{item.direction} relayed a {msg.type}"
        for secret in secrets:
            assert secret not in item.data, "the code's secret reached the server"
        # Not even base64-encoded: every bytes field is opaque (a PAKE message, MAC or box).
        blobs = [v for v in vars(msg).values() if isinstance(v, bytes)]
        for blob in blobs:
            for marker in SDP_MARKERS:
                assert marker.encode() not in blob, f"SDP ({marker!r}) reached the server"
            for person in people:
                assert person.name.encode() not in blob, "a display name reached the server"
                assert person.public_bytes not in blob, "an identity key reached the server"
    for _, frame in server.frames:
        for marker in SDP_MARKERS:
            assert marker not in frame, f"SDP ({marker!r}) reached the server in clear"
        for person in people:
            assert person.name not in frame, "a display name reached the server in clear"
            assert wire.b64(person.public_bytes) not in frame, "an identity key reached the server"


# --- 1. the double is a working signaling server ----------------------------------------


async def test_honest_double_admits_a_customer_and_carries_chat(
    server: HostileSignaling, peers: Peers
) -> None:
    csr, csr_events, code = await peers.csr()
    cust, cust_events = peers.customer(code)
    await join_ok(cust, csr_events)
    cust.announce()
    cust.chat("hi from the customer")
    await until(lambda: of(csr_events, status.ChatReceived), 5, "the chat line at the CSR")

    chat = of(csr_events, status.ChatReceived)[0]
    assert isinstance(chat, status.ChatReceived)
    assert (chat.text, chat.name) == ("hi from the customer", CUSTOMER_NAME)
    csr.chat("hello from support")
    await until(lambda: of(cust_events, status.ChatReceived), 5, "the chat line at the customer")

    # Both sides show the same short authentication string.
    csr_joined, cust_joined = of(csr_events, status.Joined)[0], of(cust_events, status.Joined)[0]
    assert isinstance(csr_joined, status.Joined)
    assert isinstance(cust_joined, status.Joined)
    assert csr_joined.sas is not None
    assert csr_joined.sas == cust_joined.sas
    assert (csr_joined.name, cust_joined.name) == (CUSTOMER_NAME, CSR_NAME)
    assert not of(csr_events, status.AttemptFailed)

    # The server relayed exactly the four handshake messages, none of them readable.
    assert kinds(server.relayed_data(TO_HOST)) == ["hello", "confirm"]
    assert kinds(server.relayed_data(TO_JOINER)) == ["pake", "accept"]
    assert_nothing_in_clear(server, secrets=(code.secret,), people=tuple(peers.identities))


# --- 2. rewriting the sealed SDP ----------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "substitute"])
async def test_rewritten_offer_fails_the_join_as_tampered(
    server: HostileSignaling, peers: Peers, how: str
) -> None:
    rewritten: list[str] = []

    def tamper(direction: str, room: str, peer: str, data: str) -> list[str]:
        msg = hs.decode(data)
        if isinstance(msg, hs.Confirm):
            sealed = flip(msg.sealed) if how == "flip" else forged_box(CUSTOMER_NAME)
            data = hs.encode(hs.Confirm(mac=msg.mac, sealed=sealed))
            rewritten.append(data)
        return [data]

    server.tamper = tamper
    csr, csr_events, code = await peers.csr()
    cust, _ = peers.customer(code)
    err = await join_fails(cust)

    assert rewritten, "the server never saw the confirm"
    assert isinstance(err, HandshakeTampered)
    assert err.code == "tampered"
    says(err, "altered handshake", "signaling server")

    # The CSR is told a join was tampered with, and it does not count against the code.
    await until(lambda: of(csr_events, status.AttemptFailed), 5, "the CSR's AttemptFailed")
    (failed,) = of(csr_events, status.AttemptFailed)
    assert isinstance(failed, status.AttemptFailed)
    assert failed.reason == "tampered"
    says(failed.message, "did not open", "signaling server", "altered")
    assert (failed.failures, failed.remaining) == (0, 3)
    assert not of(csr_events, status.Joined)
    assert [p.id for p in csr.roster.snapshot()] == [csr.me]


@pytest.mark.parametrize("how", ["flip", "substitute"])
async def test_rewritten_answer_fails_the_join_as_tampered(
    server: HostileSignaling, peers: Peers, how: str
) -> None:
    rewritten: list[str] = []

    def tamper(direction: str, room: str, peer: str, data: str) -> list[str]:
        msg = hs.decode(data)
        if isinstance(msg, hs.Accept):
            sealed = flip(msg.sealed) if how == "flip" else forged_box(CSR_NAME)
            data = hs.encode(hs.Accept(mac=msg.mac, sealed=sealed))
            rewritten.append(data)
        return [data]

    server.tamper = tamper
    csr, csr_events, code = await peers.csr()
    cust, cust_events = peers.customer(code)
    err = await join_fails(cust)

    assert rewritten, "the server never saw the accept"
    assert isinstance(err, HandshakeTampered)
    assert err.code == "tampered"
    says(err, "did not open", "signaling server", "altered")
    assert not of(cust_events, status.Joined)

    # The CSR had accepted; its channel never opens, so nobody joins.
    await asyncio.sleep(CHANNEL_OPEN + 1.0)
    assert not of(csr_events, status.Joined)
    assert not of(csr_events, status.ChatReceived)
    assert [p.id for p in csr.roster.snapshot()] == [csr.me]


async def test_server_cannot_promote_a_customer_to_csr(
    server: HostileSignaling, peers: Peers
) -> None:
    def tamper(direction: str, room: str, peer: str, data: str) -> list[str]:
        msg = hs.decode(data)
        if isinstance(msg, hs.Hello):
            data = hs.encode(hs.Hello(role="csr", pake=msg.pake, v=msg.v))
        return [data]

    server.tamper = tamper
    csr, csr_events, code = await peers.csr()
    cust, _ = peers.customer(code)
    err = await join_fails(cust)

    # The role is bound into the PAKE: as a "csr" the customer's secret is the wrong
    # code (CSRs have their own), so the join fails and counts as a wrong attempt.
    assert err.code == "wrong_code"
    says(err, "wrong code")
    await until(lambda: of(csr_events, status.AttemptFailed), 5, "the CSR's AttemptFailed")
    (failed,) = of(csr_events, status.AttemptFailed)
    assert isinstance(failed, status.AttemptFailed)
    assert (failed.reason, failed.failures, failed.remaining) == ("wrong_code", 1, 2)
    assert not of(csr_events, status.Joined)
    assert [p.id for p in csr.roster.snapshot()] == [csr.me]


# --- 3. a man in the middle running its own PAKE --------------------------------------


async def test_server_running_its_own_pake_learns_nothing_and_admits_nobody(
    server: HostileSignaling, peers: Peers
) -> None:
    _csr, csr_events, code = await peers.csr()
    guess = wrong(code, 424242)  # the server knows the room, and guesses the secret
    now = time.monotonic()
    # Toward the customer the server poses as the host; toward the CSR, as a joiner.
    as_host = hsk.HostHandshake(guess, Ed25519PrivateKey.generate(), CSR_NAME, now=now)
    as_joiner = hsk.JoinerHandshake(
        guess, "customer", Ed25519PrivateKey.generate(), CUSTOMER_NAME, now=now, timeout=30
    )
    as_joiner.set_offer(ATTACKER_SDP)
    fake = server.add_fake_joiner(code.room)
    host_events: list[object] = []
    joiner_events: list[object] = []

    def pump() -> None:
        for peer, data in as_host.messages_to_send():
            server.to_joiner(code.room, peer, data)
        for data in as_joiner.messages_to_send():
            server.to_host(code.room, fake, data)
        while (event := as_host.next_event()) is not None:
            host_events.append(event)
        while (joiner_event := as_joiner.next_event()) is not None:
            joiner_events.append(joiner_event)

    def tamper(direction: str, room: str, peer: str, data: str) -> list[str]:
        if direction == TO_HOST:  # the customer, talking to the server's host side
            as_host.receive(peer, data, time.monotonic())
        elif peer == fake:  # the CSR, answering the server's joiner side
            as_joiner.receive(data, time.monotonic())
        pump()
        return []

    server.tamper = tamper
    as_joiner.start()
    pump()  # the server's own hello goes to the CSR

    cust, cust_events = peers.customer(code)
    err = await join_fails(cust)

    # The customer: the code "did not work".
    assert isinstance(err, WrongCode)
    assert err.code == "wrong_code"
    says(err, "wrong code", "check the 12 digits")

    # The CSR: one wrong code, counted.
    await until(lambda: of(csr_events, status.AttemptFailed), 5, "the CSR's AttemptFailed")
    (failed,) = of(csr_events, status.AttemptFailed)
    assert isinstance(failed, status.AttemptFailed)
    assert (failed.reason, failed.failures, failed.remaining) == ("wrong_code", 1, 2)
    says(failed.message, "wrong code")
    assert not of(csr_events, status.Joined)

    # The server itself: rejected by the CSR, and never handed the customer's offer.
    await until(lambda: joiner_events, 5, "the CSR's answer to the server's own join")
    (joiner_failed,) = joiner_events
    assert isinstance(joiner_failed, hsk.JoinFailed)
    assert isinstance(joiner_failed.error, WrongCode)
    assert not any(isinstance(e, hsk.JoinRequest) for e in host_events)
    assert any(
        isinstance(e, hsk.AttemptFailed) and isinstance(e.error, WrongCode) for e in host_events
    )
    assert not of(cust_events, status.Joined)


# --- 4. swapping two joiners' PAKE messages -------------------------------------------


@pytest.mark.parametrize("swapped", ["hello", "pake"])
async def test_swapping_two_joiners_pake_messages_fails_both(
    server: HostileSignaling, peers: Peers, swapped: str
) -> None:
    held: dict[str, str] = {}
    direction_of = TO_HOST if swapped == "hello" else TO_JOINER

    def tamper(direction: str, room: str, peer: str, data: str) -> list[str]:
        if direction != direction_of or hs.decode(data).type != swapped:
            return [data]
        held[peer] = data
        if len(held) == 2:  # both are here: deliver each one's message as the other's
            (a, data_a), (b, data_b) = held.items()
            deliver = server.to_host if direction == TO_HOST else server.to_joiner
            deliver(room, a, data_b)
            deliver(room, b, data_a)
        return []

    server.tamper = tamper
    csr, csr_events, code = await peers.csr()
    cust_a, events_a = peers.customer(code)
    cust_b, events_b = peers.customer(code)
    results = await asyncio.wait_for(
        asyncio.gather(cust_a.join(), cust_b.join(), return_exceptions=True), 15
    )

    assert len(held) == 2, f"the server did not get both {swapped} messages"
    for err, cust in zip(results, (cust_a, cust_b), strict=True):
        assert isinstance(err, WrongCode), f"expected a wrong-code failure, got {err!r}"
        assert err.code == "wrong_code"
        says(err, "wrong code", "check the 12 digits")
        assert cust.host is None
    assert not of(events_a, status.Joined)
    assert not of(events_b, status.Joined)

    await until(lambda: len(of(csr_events, status.AttemptFailed)) == 2, 5, "two AttemptFailed")
    failed = of(csr_events, status.AttemptFailed)
    assert [(f.reason, f.failures, f.remaining) for f in failed] == [  # type: ignore[attr-defined]
        ("wrong_code", 1, 2),
        ("wrong_code", 2, 1),
    ]
    assert not of(csr_events, status.Joined)
    assert [p.id for p in csr.roster.snapshot()] == [csr.me]


# --- 5. replaying an old join -----------------------------------------------------------


async def _record_a_join(
    server: HostileSignaling, peers: Peers
) -> tuple[CsrSession, list[status.Status], SessionCode, str, dict[str, str]]:
    """One honest join; returns the CSR, its events, the code, the joiner id and the messages."""
    csr, csr_events, code = await peers.csr()
    cust, _ = peers.customer(code)
    await join_ok(cust, csr_events)
    recorded = {hs.decode(r.data).type: r.data for r in server.relayed}
    assert sorted(recorded) == ["accept", "confirm", "hello", "pake"]
    return csr, csr_events, code, server.relayed[0].peer, recorded


async def test_replayed_joiner_messages_do_not_admit(
    server: HostileSignaling, peers: Peers
) -> None:
    _csr, csr_events, code, joiner, old = await _record_a_join(server, peers)

    # The same session, the same code, even the same joiner id: the replay is refused.
    fake = server.add_fake_joiner(code.room, joiner)
    server.to_host(code.room, fake, old["hello"])
    await until(lambda: server.fake_inbox[fake], 5, "the CSR's pake")
    fresh = hs.decode(server.fake_inbox[fake][0])
    assert isinstance(fresh, hs.Pake)
    assert server.fake_inbox[fake][0] != old["pake"], "the CSR must not reuse its PAKE message"
    server.to_host(code.room, fake, old["confirm"])
    await until(lambda: len(server.fake_inbox[fake]) == 2, 5, "the CSR's answer to the confirm")
    answer = hs.decode(server.fake_inbox[fake][1])
    assert answer == hs.Reject(reason="wrong_code", remaining=2)

    (failed,) = of(csr_events, status.AttemptFailed)
    assert isinstance(failed, status.AttemptFailed)
    assert (failed.reason, failed.failures, failed.remaining) == ("wrong_code", 1, 2)
    assert len(of(csr_events, status.Joined)) == 1  # only the honest join

    # Another session altogether: refused too.
    csr2, csr2_events, code2 = await peers.csr()
    fake2 = server.add_fake_joiner(code2.room, joiner)
    server.to_host(code2.room, fake2, old["hello"])
    await until(lambda: server.fake_inbox[fake2], 5, "the second CSR's pake")
    server.to_host(code2.room, fake2, old["confirm"])
    await until(lambda: len(server.fake_inbox[fake2]) == 2, 5, "the second CSR's answer")
    assert hs.decode(server.fake_inbox[fake2][1]) == hs.Reject(reason="wrong_code", remaining=2)
    await until(lambda: of(csr2_events, status.AttemptFailed), 5, "the second CSR's AttemptFailed")
    assert not of(csr2_events, status.Joined)
    assert [p.id for p in csr2.roster.snapshot()] == [csr2.me]


async def test_replayed_host_messages_do_not_admit(server: HostileSignaling, peers: Peers) -> None:
    _csr, csr_events, code, _, old = await _record_a_join(server, peers)

    # A new customer of the same session is answered with the old join's messages.
    def tamper(direction: str, room: str, peer: str, data: str) -> list[str]:
        if direction == TO_HOST:
            kind = hs.decode(data).type
            server.to_joiner(room, peer, old["pake"] if kind == "hello" else old["accept"])
            return []
        return [data]

    server.tamper = tamper
    cust, cust_events = peers.customer(code)
    err = await join_fails(cust)

    assert isinstance(err, HandshakeTampered)
    assert err.code == "tampered"
    says(err, "key confirmation is wrong", "tampered")
    assert not of(cust_events, status.Joined)
    assert len(of(csr_events, status.Joined)) == 1  # only the honest join
    assert not of(csr_events, status.AttemptFailed)


# --- 6. dropping and duplicating messages ------------------------------------------------


@pytest.mark.parametrize("dropped", ["pake", "confirm", "accept"])
async def test_dropped_message_times_out_the_join(
    server: HostileSignaling, peers: Peers, dropped: str
) -> None:
    timeout = 3.0
    server.tamper = lambda d, room, peer, data: [] if hs.decode(data).type == dropped else [data]
    csr, csr_events, code = await peers.csr()
    cust, cust_events = peers.customer(code, timeout=timeout)
    started = time.monotonic()
    err = await join_fails(cust)
    took = time.monotonic() - started

    assert isinstance(err, HandshakeTimeout)
    assert err.code == "timeout"
    says(err, "did not answer in time")
    assert timeout - 0.5 <= took <= timeout + 2.0, f"the join gave up after {took:.1f} s"
    assert dropped in kinds(server.relayed_data(TO_HOST) + server.relayed_data(TO_JOINER))

    # The CSR (which may have accepted) never lists the customer once its channel times out.
    await asyncio.sleep(CHANNEL_OPEN + 0.5 if dropped == "accept" else 0.2)
    assert not of(csr_events, status.Joined)
    assert [p.id for p in csr.roster.snapshot()] == [csr.me]
    assert not of(cust_events, status.Joined)


async def test_duplicated_handshake_messages_admit_the_customer_once(
    server: HostileSignaling, peers: Peers
) -> None:
    """A server that delivers at least once: every joiner message twice. The copies
    say nothing new and are ignored; the customer is admitted once."""
    server.tamper = lambda d, room, peer, data: [data, data] if d == "to_host" else [data]
    csr, csr_events, code = await peers.csr()
    cust, _ = peers.customer(code)
    await join_ok(cust, csr_events)
    assert not of(csr_events, status.AttemptFailed)
    assert len(of(csr_events, status.Joined)) == 1
    assert len(csr.roster.snapshot()) == 2


async def test_duplicated_answer_admits_the_customer_once(
    server: HostileSignaling, peers: Peers
) -> None:
    server.tamper = lambda d, room, peer, data: (
        [data, data] if hs.decode(data).type == "accept" else [data]
    )
    csr, csr_events, code = await peers.csr()
    cust, _ = peers.customer(code)
    await join_ok(cust, csr_events)
    cust.chat("still here")
    await until(lambda: of(csr_events, status.ChatReceived), 5, "the chat line at the CSR")
    assert len(of(csr_events, status.Joined)) == 1
    assert len(csr.roster.snapshot()) == 2


# --- 7. three wrong codes burn the code ---------------------------------------------------


@pytest.mark.parametrize("honour_close", [True, False], ids=["closes_room", "keeps_room_open"])
async def test_three_wrong_codes_burn_the_code(
    server: HostileSignaling, peers: Peers, honour_close: bool
) -> None:
    server.honour_close = honour_close
    _csr, csr_events, code = await peers.csr()
    errors = []
    for k in (1, 2, 3):
        cust, _ = peers.customer(wrong(code, k))
        errors.append(await join_fails(cust))
        await until(
            lambda k=k: len(of(csr_events, status.AttemptFailed)) == k, 5, f"AttemptFailed #{k}"
        )

    first, second, third = errors
    assert isinstance(first, WrongCode)
    assert isinstance(second, WrongCode)
    assert first.code == second.code == "wrong_code"
    says(first, "wrong code", "check the 12 digits", "(2 attempts left)")
    says(second, "wrong code", "check the 12 digits", "(1 attempt left)")
    assert isinstance(third, CodeBurned)
    assert third.code == "code_burned"
    says(third, "burned", "too many wrong attempts", "ask for a new one")

    failed = of(csr_events, status.AttemptFailed)
    assert [(f.reason, f.failures, f.remaining) for f in failed] == [  # type: ignore[attr-defined]
        ("wrong_code", 1, 2),
        ("wrong_code", 2, 1),
        ("wrong_code", 3, 0),
    ]
    assert of(csr_events, status.CodeClosed) == [status.CodeClosed(reason="burned")]
    told = [e for e in csr_events if isinstance(e, status.AttemptFailed | status.CodeClosed)]
    assert isinstance(told[-1], status.CodeClosed), "the code closes after the third failure"
    await until(lambda: code.room in server.closed_rooms, 5, "the CSR to close the room")
    assert server.closed_rooms[code.room] == "burned"

    # Now even the right code is refused.
    cust, cust_events = peers.customer(code)
    err = await join_fails(cust)
    if honour_close:
        assert err.code == "no_such_session"
        says(err, f"no session {code.room} on {server.url}", "check the code")
    else:  # the server kept the room open, but the CSR's agent still refuses
        assert isinstance(err, CodeBurned)
        says(err, "burned", "too many wrong attempts", "ask for a new one")
    assert not of(csr_events, status.Joined)
    assert not of(cust_events, status.Joined)
    assert len(of(csr_events, status.AttemptFailed)) == 3  # the burned code costs nothing more
