"""The join handshake, sans-I/O: SPAKE2 on the session code, key confirmation, sealed SDP.

Driven like aioquic's connection: feed it ``receive(...)`` and ``handle_timer(now)``,
then drain ``messages_to_send()`` and ``next_event()``. Nothing here does I/O or
knows about asyncio, aiortc or the signaling transport.

Invariants (everything that affects these machines lives in this file):

* The secret half of the code never leaves this module except as SPAKE2 input.
* The host counts a failed attempt only when a joiner's key confirmation is wrong:
  SPAKE2 messages reveal nothing about the code, so a joiner that learns nothing
  costs nothing. The third wrong confirmation burns the code; a burned or expired
  code admits nobody.
* The joiner confirms first; the host answers with its own confirmation only after
  checking the joiner's. An SDP is only ever handed out after its sealed box opened
  under the agreed key and the sender's Ed25519 signature over the transcript
  verified, so aiortc sees no fingerprint that did not come authenticated.
* ``reject`` is unauthenticated and can only end a join.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.ed25519_basic import NotOnCurve
from spake2.spake2 import SPAKEError

from agent.errors import (
    CodeBurned,
    DecodeError,
    HandshakeTampered,
    HandshakeTimeout,
    JoinRefused,
    PeerDeskError,
    RemoteProtocolError,
    WrongCode,
)
from agent.protocol import handshake as hs
from agent.protocol.code import SessionCode

MAX_FAILURES = 3
PAKE_ERRORS = (SPAKEError, NotOnCurve, ValueError, AssertionError)
"""What python-spake2 raises for a hostile PAKE message (a point off the curve is its
own ``NotOnCurve``, not a ``ValueError``): a refused join, never a crash."""

CODE_TTL = 600.0
"Seconds a code lives without a successful join."
ATTEMPT_TTL = 30.0
"Seconds the host keeps a half-finished attempt."
DECISION_TTL = 120.0
"Seconds an assistant CSR's join waits for the primary to admit or refuse it."
JOIN_TIMEOUT = 20.0
"Seconds a joiner waits for the whole handshake."
MAX_PENDING = 8
"Attempts a host runs at once; more are told ``busy``."

_NONCE = bytes(12)


# --- key schedule -------------------------------------------------------------


def _ids(room: str, role: str) -> tuple[bytes, bytes]:
    return (f"peerdesk/1 host {room}".encode(), f"peerdesk/1 {role} {room}".encode())


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


@dataclass(frozen=True)
class _Keys:
    transcript: bytes
    confirm_joiner: bytes
    confirm_host: bytes
    seal_joiner: bytes
    seal_host: bytes
    sas: str
    session: bytes

    @classmethod
    def derive(cls, key: bytes, room: str, role: str, msg_a: bytes, msg_b: bytes) -> _Keys:
        id_a, id_b = _ids(room, role)
        transcript = hashlib.sha256(
            _lp(b"peerdesk/1 transcript", id_a, id_b, msg_a, msg_b)
        ).digest()
        okm = HKDF(
            algorithm=hashes.SHA256(), length=32 * 6, salt=transcript, info=b"peerdesk/1 keys"
        ).derive(key)
        k = [okm[i : i + 32] for i in range(0, len(okm), 32)]
        sas_num = int.from_bytes(hmac.digest(k[4], transcript, "sha256")[:8], "big") % 10**6
        return cls(transcript, k[0], k[1], k[2], k[3], f"{sas_num:06d}", k[5])

    def mac(self, key: bytes) -> bytes:
        return hmac.digest(key, self.transcript, "sha256")


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _intro_signed_data(direction: bytes, transcript: bytes, sdp: str) -> bytes:
    return _lp(b"peerdesk/1 intro", direction, transcript, hashlib.sha256(sdp.encode()).digest())


def _seal(
    key: bytes, transcript: bytes, direction: bytes, me: Ed25519PrivateKey, name: str, sdp: str
) -> bytes:
    sig = me.sign(_intro_signed_data(direction, transcript, sdp))
    plain = hs.encode_intro(hs.Intro(name=name, key=_public_bytes(me), sig=sig, sdp=sdp))
    return ChaCha20Poly1305(key).encrypt(_NONCE, plain, transcript + direction)


def _open(key: bytes, transcript: bytes, direction: bytes, sealed: bytes) -> hs.Intro:
    try:
        plain = ChaCha20Poly1305(key).decrypt(_NONCE, sealed, transcript + direction)
    except InvalidTag:
        raise HandshakeTampered(
            "the sealed handshake did not open: the signaling server or the network altered it"
        ) from None
    try:
        intro = hs.decode_intro(plain)
    except DecodeError as exc:
        raise HandshakeTampered(f"the sealed introduction is malformed: {exc.message}") from None
    try:
        Ed25519PublicKey.from_public_bytes(intro.key).verify(
            intro.sig, _intro_signed_data(direction, transcript, intro.sdp)
        )
    except (InvalidSignature, ValueError):
        raise HandshakeTampered("the peer's identity signature does not verify") from None
    return intro


# --- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class JoinRequest:
    """Host side: a joiner proved it knows the code. Answer with ``accept`` or ``refuse``."""

    peer: str
    "Signaling connection id of the joiner."
    role: str
    name: str
    key: bytes
    "The joiner's Ed25519 public key (verified against the transcript)."
    sas: str
    "Six-digit short authentication string both sides can read aloud."
    offer: str
    "The joiner's SDP offer, authenticated."
    session_key: bytes
    "32 bytes both sides share, for later channel keys."


@dataclass(frozen=True)
class AttemptFailed:
    """Host side: a join failed. ``counted`` failures burn the code at MAX_FAILURES."""

    peer: str
    error: PeerDeskError
    failures: int
    remaining: int
    counted: bool


@dataclass(frozen=True)
class CodeClosed:
    """Host side: the code admits nobody any more (``burned`` or ``expired``)."""

    reason: str


@dataclass(frozen=True)
class Admitted:
    """Joiner side: the host proved it knows the code and accepted us."""

    name: str
    key: bytes
    sas: str
    answer: str
    session_key: bytes


@dataclass(frozen=True)
class JoinFailed:
    """Joiner side: the join is over; ``error`` says why, for the person joining."""

    error: PeerDeskError


HostEvent = JoinRequest | AttemptFailed | CodeClosed
JoinerEvent = Admitted | JoinFailed


# --- host -------------------------------------------------------------------------


class AttemptState(enum.Enum):
    AWAIT_CONFIRM = "await_confirm"
    AWAIT_DECISION = "await_decision"


class CodeState(enum.Enum):
    OPEN = "open"
    BURNED = "burned"
    EXPIRED = "expired"


@dataclass
class _Attempt:
    role: str
    state: AttemptState
    started: float
    keys: _Keys
    team_key: bytes | None = None
    "For a join by team roster: the Ed25519 key the joiner's hello named."
    last: str = ""
    "The last message this joiner sent (the same bytes again are ignored)."


class HostHandshake:
    """The host's side of joins for one session code; one instance serves every joiner."""

    def __init__(
        self,
        code: SessionCode,
        identity: Ed25519PrivateKey,
        name: str,
        *,
        now: float,
        roles: tuple[str, ...] = ("customer",),
        csr_secret: str | None = None,
        team: Callable[[bytes], bool] | None = None,
        max_failures: int = MAX_FAILURES,
        code_ttl: float = CODE_TTL,
    ) -> None:
        """``csr_secret``, when given, is the separate secret of the CSR code (same room):
        it admits role ``csr``; the customer code never does."""
        self.code = code
        self._team = team
        self._secrets = {"customer": code.secret}
        if csr_secret is not None:
            self._secrets["csr"] = csr_secret
            roles = (*roles, "csr") if "csr" not in roles else roles
        self._identity = identity
        self._name = name
        self._roles = roles
        self._max_failures = max_failures
        self._code_ttl = code_ttl
        self.state = CodeState.OPEN
        self.failures = 0
        self._last_used = now
        self._attempts: dict[str, _Attempt] = {}
        self._out: deque[tuple[str, str]] = deque()
        self._events: deque[HostEvent] = deque()
        self._spare: tuple[str, SPAKE2_A, bytes] | None = self._new_pake("customer")

    # Precompute the next SPAKE2 start (a scalar multiplication) off the join's path.
    def _new_pake(self, role: str) -> tuple[str, SPAKE2_A, bytes]:
        id_a, id_b = _ids(self.code.room, role)
        secret = self._secrets.get(role, self.code.secret)
        pake = SPAKE2_A(secret.encode(), idA=id_a, idB=id_b)
        return role, pake, pake.start()

    def _take_pake(self, role: str) -> tuple[SPAKE2_A, bytes]:
        spare_role, pake, msg = self._spare if self._spare else self._new_pake(role)
        if spare_role != role:
            _, pake, msg = self._new_pake(role)
        self._spare = None
        return pake, msg

    def refill(self) -> None:
        """Precompute the next SPAKE2 start; call when idle (optional, saves ~3 ms per join)."""
        if self._spare is None and self.state is CodeState.OPEN:
            self._spare = self._new_pake("customer")

    # -- input

    def receive(self, peer: str, data: str, now: float) -> None:
        """Handle one handshake message relayed from joiner ``peer``. The same message
        again (a server that delivers at least once) is ignored: it says nothing new."""
        attempt = self._attempts.get(peer)
        if attempt is not None:
            if data == attempt.last:
                return
            attempt.last = data
        try:
            msg = hs.decode(data)
        except DecodeError as exc:
            self._fail(peer, exc, counted=False, reason="protocol")
            return
        if isinstance(msg, hs.Hello | hs.TeamHello):
            if isinstance(msg, hs.Hello):
                self._on_hello(peer, msg, now)
            else:
                self._on_team_hello(peer, msg, now)
            if (started := self._attempts.get(peer)) is not None and attempt is None:
                started.last = data
        elif isinstance(msg, hs.Confirm):
            self._on_confirm(peer, msg, now)
        else:
            self._fail(
                peer,
                RemoteProtocolError(f'a joiner sent "{msg.type}", which only hosts send'),
                counted=False,
                reason="protocol",
            )

    def _on_hello(self, peer: str, msg: hs.Hello, now: float) -> None:
        if self.state is not CodeState.OPEN:
            self._reject(peer, self.state.value)
            return
        if msg.role not in self._roles:
            self._fail(
                peer,
                JoinRefused(f"this code does not admit a {msg.role}"),
                counted=False,
                reason="role",
            )
            return
        if peer in self._attempts:
            self._fail(
                peer,
                RemoteProtocolError("a second hello in one join"),
                counted=False,
                reason="protocol",
            )
            return
        if len(self._attempts) >= MAX_PENDING:
            self._reject(peer, "busy")
            return
        pake, msg_a = self._take_pake(msg.role)
        try:
            key = pake.finish(msg.pake)
        except PAKE_ERRORS:
            self._fail(
                peer,
                RemoteProtocolError("the joiner's PAKE message is invalid"),
                counted=False,
                reason="protocol",
            )
            return
        keys = _Keys.derive(key, self.code.room, msg.role, msg_a, msg.pake)
        self._attempts[peer] = _Attempt(msg.role, AttemptState.AWAIT_CONFIRM, now, keys)
        self._out.append((peer, hs.encode(hs.Pake(pake=msg_a))))

    def _on_team_hello(self, peer: str, msg: hs.TeamHello, now: float) -> None:
        """A CSR with no code: admitted only if its key is on our team roster."""
        if self._team is None or not self._team(msg.key):
            self._fail(
                peer,
                JoinRefused("a CSR who is not on the team roster tried to join by room id"),
                counted=False,
                reason="not_on_team",
            )
            return
        if peer in self._attempts or len(self._attempts) >= MAX_PENDING:
            self._reject(peer, "busy")
            return
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        try:
            shared = eph.exchange(X25519PublicKey.from_public_bytes(msg.eph))
        except ValueError:
            self._fail(
                peer, RemoteProtocolError("bad ephemeral key"), counted=False, reason="protocol"
            )
            return
        me = _public_bytes(self._identity)
        keys = _Keys.derive(shared, self.code.room, "team", eph_pub + me, msg.eph + msg.key)
        self._attempts[peer] = _Attempt("csr", AttemptState.AWAIT_CONFIRM, now, keys, msg.key)
        sig = self._identity.sign(_lp(b"peerdesk/1 team host", keys.transcript))
        self._out.append((peer, hs.encode(hs.TeamKey(eph=eph_pub, key=me, sig=sig))))

    def _on_confirm(self, peer: str, msg: hs.Confirm, now: float) -> None:
        attempt = self._attempts.get(peer)
        if attempt is None or attempt.state is not AttemptState.AWAIT_CONFIRM:
            self._fail(
                peer, RemoteProtocolError("confirm out of order"), counted=False, reason="protocol"
            )
            return
        keys = attempt.keys
        if not hmac.compare_digest(msg.mac, keys.mac(keys.confirm_joiner)):
            self._fail(
                peer,
                WrongCode("a joiner typed a wrong code (or someone tampered with the join)"),
                counted=True,
                reason="wrong_code",
            )
            return
        try:
            intro = _open(keys.seal_joiner, keys.transcript, b"joiner", msg.sealed)
        except HandshakeTampered as exc:
            self._fail(peer, exc, counted=False, reason="tampered")
            return
        if attempt.team_key is not None and intro.key != attempt.team_key:
            self._fail(
                peer,
                HandshakeTampered("the joiner's identity changed during the join"),
                counted=False,
                reason="tampered",
            )
            return
        attempt.state = AttemptState.AWAIT_DECISION
        self._last_used = now
        self._events.append(
            JoinRequest(
                peer=peer,
                role=attempt.role,
                name=intro.name,
                key=intro.key,
                sas=keys.sas,
                offer=intro.sdp,
                session_key=keys.session,
            )
        )

    def accept(self, peer: str, answer: str, now: float) -> bool:
        """Admit ``peer`` after a ``JoinRequest``, sending our sealed SDP ``answer``.

        Returns False when the join ended meanwhile (the joiner left or misbehaved).
        """
        attempt = self._attempts.pop(peer, None)
        if attempt is None or attempt.state is not AttemptState.AWAIT_DECISION:
            return False
        keys = attempt.keys
        sealed = _seal(keys.seal_host, keys.transcript, b"host", self._identity, self._name, answer)
        self._out.append(
            (peer, hs.encode(hs.Accept(mac=keys.mac(keys.confirm_host), sealed=sealed)))
        )
        self._last_used = now
        return True

    def refuse(self, peer: str) -> None:
        """Turn ``peer`` away after a ``JoinRequest``."""
        if self._attempts.pop(peer, None) is not None:
            self._out.append((peer, hs.encode(hs.Reject(reason="refused"))))

    def peer_gone(self, peer: str) -> None:
        """The joiner's signaling connection went away."""
        self._attempts.pop(peer, None)

    def handle_timer(self, now: float) -> None:
        """Expire the code and stale attempts."""
        for peer, attempt in list(self._attempts.items()):
            if now - attempt.started >= self._ttl(attempt):
                del self._attempts[peer]
        if self.state is CodeState.OPEN and now - self._last_used >= self._code_ttl:
            self._close(CodeState.EXPIRED)

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next run."""
        if self.state is not CodeState.OPEN:
            return None
        deadlines = [a.started + self._ttl(a) for a in self._attempts.values()]
        return min([self._last_used + self._code_ttl, *deadlines])

    @staticmethod
    def _ttl(attempt: _Attempt) -> float:
        # A CSR waits for the primary to admit it; a customer never waits on a person.
        waiting = attempt.state is AttemptState.AWAIT_DECISION and attempt.role == "csr"
        return DECISION_TTL if waiting else ATTEMPT_TTL

    # -- output

    def messages_to_send(self) -> list[tuple[str, str]]:
        """(peer, data) pairs to relay through signaling, in order."""
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> HostEvent | None:
        return self._events.popleft() if self._events else None

    # -- helpers

    def _reject(self, peer: str, reason: str, remaining: int = -1) -> None:
        self._out.append((peer, hs.encode(hs.Reject(reason=reason, remaining=remaining))))

    def _fail(self, peer: str, error: PeerDeskError, *, counted: bool, reason: str) -> None:
        self._attempts.pop(peer, None)
        if counted:
            self.failures += 1
        remaining = max(self._max_failures - self.failures, 0)
        self._events.append(AttemptFailed(peer, error, self.failures, remaining, counted))
        if counted and remaining == 0:
            self._reject(peer, "burned", 0)
            self._close(CodeState.BURNED)
        else:
            self._reject(peer, reason, remaining if counted else -1)

    def _close(self, state: CodeState) -> None:
        self.state = state
        self._spare = None
        for peer in list(self._attempts):
            self._reject(peer, state.value)
        self._attempts.clear()
        self._events.append(CodeClosed(state.value))


# --- joiner -----------------------------------------------------------------------


class JoinerState(enum.Enum):
    START = "start"
    SENT_HELLO = "sent_hello"
    KEYED = "keyed"
    SENT_CONFIRM = "sent_confirm"
    DONE = "done"
    FAILED = "failed"


_REJECT_ERRORS: dict[str, tuple[type[PeerDeskError], str]] = {
    "wrong_code": (WrongCode, "wrong_code"),
    "burned": (CodeBurned, "code_burned"),
    "expired": (CodeBurned, "code_expired"),
    "tampered": (HandshakeTampered, "tampered"),
    "protocol": (RemoteProtocolError, "protocol"),
    "refused": (JoinRefused, "refused"),
    "busy": (JoinRefused, "busy"),
    "role": (JoinRefused, "role_not_offered"),
    "not_on_team": (JoinRefused, "not_on_team"),
}

_REJECT_TEXT = {
    "wrong_code": "wrong code: check the 12 digits with your support representative",
    "burned": "this code was burned after too many wrong attempts; ask for a new one",
    "expired": "this code has expired; ask for a new one",
    "refused": "the support representative declined the join",
    "busy": "the session is busy with other joins; try again in a moment",
    "role": "this code cannot be used to join in that role",
    "not_on_team": "your key is not on this session's team roster: ask the primary CSR "
    "for the CSR code",
    "protocol": "the host could not understand our join (version mismatch or tampering)",
    "tampered": "the host received an altered handshake: "
    "the signaling server or the network tampered with it",
}


class JoinerHandshake:
    """The joiner's side of one join. Call ``start()``, then ``set_offer()`` when ready."""

    def __init__(
        self,
        code: SessionCode,
        role: str,
        identity: Ed25519PrivateKey,
        name: str,
        *,
        now: float,
        timeout: float = JOIN_TIMEOUT,
        team: Callable[[bytes], bool] | None = None,
    ) -> None:
        """A ``code`` without a secret (room id only) joins as a CSR by team roster:
        ``team(host_key)`` must then say the host is on our roster too."""
        if role not in hs.ROLES:
            raise ValueError(f"unknown role {role!r}")
        self._team = team
        self._eph: X25519PrivateKey | None = None
        if not code.secret:
            if role != "csr" or team is None:
                raise ValueError("joining by room id alone is for CSRs with a team roster")
            self._eph = X25519PrivateKey.generate()
        self.code = code
        self.role = role
        self._identity = identity
        self._name = name
        self._started = now
        self._timeout = timeout
        self._last = ""
        self.state = JoinerState.START
        id_a, id_b = _ids(code.room, role)
        self._pake = SPAKE2_B(code.secret.encode(), idA=id_a, idB=id_b)
        self._msg_b = self._pake.start() if self._eph is None else b""
        self._keys: _Keys | None = None
        self._host_key: bytes | None = None
        self._offer: str | None = None
        self._out: deque[str] = deque()
        self._events: deque[JoinerEvent] = deque()

    def start(self) -> None:
        """Queue the ``hello``."""
        if self.state is JoinerState.START:
            if self._eph is not None:
                eph = self._eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                hello: hs.Message = hs.TeamHello(eph=eph, key=_public_bytes(self._identity))
            else:
                hello = hs.Hello(role=self.role, pake=self._msg_b)
            self._out.append(hs.encode(hello))
            self.state = JoinerState.SENT_HELLO

    def set_offer(self, sdp: str) -> None:
        """Our SDP offer is ready; it is sealed and sent once the key is agreed."""
        self._offer = sdp
        self._maybe_confirm()

    def receive(self, data: str, now: float) -> None:
        """Handle one handshake message relayed from the host. The same message again
        (a server that delivers at least once) is ignored: it says nothing new."""
        if self.state in (JoinerState.DONE, JoinerState.FAILED) or data == self._last:
            return
        self._last = data
        try:
            msg = hs.decode(data)
        except DecodeError as exc:
            self._failed(RemoteProtocolError(f"the host sent a malformed handshake: {exc.message}"))
            return
        if isinstance(msg, hs.Reject):
            text = _REJECT_TEXT[msg.reason]
            if msg.reason == "wrong_code" and msg.remaining >= 0:
                text += f" ({msg.remaining} attempt{'s' if msg.remaining != 1 else ''} left)"
            error_class, code = _REJECT_ERRORS[msg.reason]
            self._failed(error_class(text, code=code))
        elif isinstance(msg, hs.Pake) and self.state is JoinerState.SENT_HELLO:
            try:
                key = self._pake.finish(msg.pake)
            except PAKE_ERRORS:
                self._failed(RemoteProtocolError("the host's PAKE message is invalid"))
                return
            self._keys = _Keys.derive(key, self.code.room, self.role, msg.pake, self._msg_b)
            self.state = JoinerState.KEYED
            self._maybe_confirm()
        elif isinstance(msg, hs.TeamKey) and self._eph is not None:
            if self.state is JoinerState.SENT_HELLO:
                self._on_team_key(msg)
            else:
                self._failed(RemoteProtocolError('the host sent "team_key" out of order'))
        elif isinstance(msg, hs.Accept) and self.state is JoinerState.SENT_CONFIRM:
            self._on_accept(msg)
        else:
            self._failed(RemoteProtocolError(f'the host sent "{msg.type}" out of order'))

    def _on_team_key(self, msg: hs.TeamKey) -> None:
        assert self._eph is not None
        assert self._team is not None
        if not self._team(msg.key):
            self._failed(
                JoinRefused(
                    "the session's host is not on your team roster: ask them for the CSR "
                    "code instead, or add their key with peerdesk team add",
                    code="host_not_on_team",
                )
            )
            return
        try:
            shared = self._eph.exchange(X25519PublicKey.from_public_bytes(msg.eph))
        except ValueError:
            self._failed(RemoteProtocolError("the host's ephemeral key is invalid"))
            return
        mine = self._eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        keys = _Keys.derive(
            shared, self.code.room, "team", msg.eph + msg.key, mine + _public_bytes(self._identity)
        )
        try:
            Ed25519PublicKey.from_public_bytes(msg.key).verify(
                msg.sig, _lp(b"peerdesk/1 team host", keys.transcript)
            )
        except (InvalidSignature, ValueError):
            self._failed(
                HandshakeTampered(
                    "the host's signature does not verify: the join was tampered with"
                )
            )
            return
        self._host_key = msg.key
        self._keys = keys
        self.state = JoinerState.KEYED
        self._maybe_confirm()

    def _maybe_confirm(self) -> None:
        if self.state is not JoinerState.KEYED or self._offer is None or self._keys is None:
            return
        keys = self._keys
        sealed = _seal(
            keys.seal_joiner, keys.transcript, b"joiner", self._identity, self._name, self._offer
        )
        self._out.append(hs.encode(hs.Confirm(mac=keys.mac(keys.confirm_joiner), sealed=sealed)))
        self.state = JoinerState.SENT_CONFIRM

    def _on_accept(self, msg: hs.Accept) -> None:
        keys = self._keys
        assert keys is not None
        if not hmac.compare_digest(msg.mac, keys.mac(keys.confirm_host)):
            self._failed(
                HandshakeTampered(
                    "the host's key confirmation is wrong although ours was accepted: "
                    "someone tampered with the join"
                )
            )
            return
        try:
            intro = _open(keys.seal_host, keys.transcript, b"host", msg.sealed)
        except HandshakeTampered as exc:
            self._failed(exc)
            return
        if self._host_key is not None and intro.key != self._host_key:
            self._failed(HandshakeTampered("the host's identity changed during the join"))
            return
        self.state = JoinerState.DONE
        self._events.append(Admitted(intro.name, intro.key, keys.sas, intro.sdp, keys.session))

    @property
    def _deadline(self) -> float:
        """Until our confirmation is sent nothing waits for a person, so the join gets
        ``JOIN_TIMEOUT`` at most; then the whole ``timeout`` (an assistant waits for
        the primary CSR to admit it)."""
        if self.state is JoinerState.SENT_CONFIRM:
            return self._started + self._timeout
        return self._started + min(self._timeout, JOIN_TIMEOUT)

    def handle_timer(self, now: float) -> None:
        if self.state not in (JoinerState.DONE, JoinerState.FAILED) and now >= self._deadline:
            self._failed(HandshakeTimeout("the session host did not answer in time"))

    def get_timer(self) -> float | None:
        if self.state in (JoinerState.DONE, JoinerState.FAILED):
            return None
        return self._deadline

    def messages_to_send(self) -> list[str]:
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> JoinerEvent | None:
        return self._events.popleft() if self._events else None

    def _failed(self, error: PeerDeskError) -> None:
        self.state = JoinerState.FAILED
        self._events.append(JoinFailed(error))
