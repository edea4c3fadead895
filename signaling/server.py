"""The PeerDesk signaling server: rooms, and relays of sealed payloads between them.

Run it with ``python -m signaling --port 8765`` (or ``peerdesk signal``); embed it in
an agent with ``runner, port = await start_server("127.0.0.1", 0)``.

A client opens a WebSocket on ``/ws`` and speaks the wire of
``agent.protocol.signaling``. ``create`` allocates a six-digit room whose host is the
sender; ``join`` enters a room as a joiner with a connection id the server makes;
``send`` relays opaque ``data`` between the host and its joiners; ``close`` ends a
room; ``resume`` makes a new connection the host of its room again (see below). The
server never looks inside ``data`` and never logs it: it cannot read or
forge a join, because the join is a PAKE between the two agents.

The state lives in ``Hub``, which does no I/O: it is fed frames, disconnects and the
time, and answers with a list of actions (``Deliver`` a message to a connection,
``Disconnect`` a connection). The aiohttp handlers below only feed it and carry out
what it answers.

Invariants of the ``Hub``:

- a room id is in ``rooms`` exactly while the room is live (its host connected, or
  away within the grace); ids are never shared between two live rooms;
- ``room.host.hosted`` holds every live room the host owns while connected, at most
  ``max_rooms_per_connection`` of them;
- a connection is the joiner of at most one room, ``conn.joined``, and is then in
  that room's ``joiners`` under its own id;
- every message a client sends costs one token of its bucket; a client with no token
  left gets ``rate_limited``, and one that keeps sending is disconnected (1008);
- a room whose host's connection dropped is *away* (``room.away_since`` set) for at most
  ``resume_grace`` seconds: it is in ``rooms`` but in no connection's ``hosted``, has no
  joiners and admits none (``host_away``); its host comes back with ``resume`` and the
  room's secret, or the room closes (``host_gone``).

Resuming. ``created`` hands the host a resume secret; the hub keeps only its SHA-256
(``Room.secret_hash``, and with Redis the ``resume:<room>`` key). ``resume`` with the
right secret re-attaches a new connection as the host: of an away room on this node
at once; with Redis, of a room whose node died (its heartbeat lapsed) by re-claiming
the room for this node with a compare-and-set (``Reclaim``). Every successful resume
hands out a new secret, so a secret works once. A wrong secret, an unknown room, a
room whose host is still connected (``host_connected``) or whose node is alive
(``owner_alive``) is refused with an ``error``; a connection refused
``max_resume_failures`` times (wrong secret or unknown room) is disconnected (1008).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias
from urllib.parse import quote

from aiohttp import WSCloseCode, WSMsgType, web

import agent
from agent.errors import DecodeError
from agent.protocol.signaling import (
    HOST,
    MAX_MESSAGE_BYTES,
    QUEUE_RE,
    ClientMessage,
    Close,
    Closed,
    Create,
    Created,
    Error,
    Gone,
    Join,
    Joined,
    ListQueue,
    Peer,
    Relay,
    Resume,
    Resumed,
    Send,
    Serve,
    ServerMessage,
    Take,
    Transfer,
    Wait,
    decode_client,
    encode,
)
from signaling import cluster, landing
from signaling.cluster import Cluster
from signaling.logs import configure_logging
from signaling.options import add_arguments
from signaling.queues import Forget, Queues, Recalled, Remember
from signaling.turn import TurnSecret

log = logging.getLogger("peerdesk.signaling")

DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - a signaling server is meant to be reached
DEFAULT_PORT = 8765

#: WebSocket close code for a client that breaks the rate limit or cannot keep up.
CLOSE_POLICY = int(WSCloseCode.POLICY_VIOLATION)  # 1008
#: WebSocket close code sent to every client when the server stops.
CLOSE_GOING_AWAY = int(WSCloseCode.GOING_AWAY)  # 1001
#: WebSocket close code for a client whose room's node died: reconnect, to any node.
CLOSE_SERVICE_RESTART = int(WSCloseCode.SERVICE_RESTART)  # 1012


@dataclass(frozen=True)
class ServerConfig:
    """Limits and timings of one signaling server. Every default is safe for the internet."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    "Largest message answered normally, in UTF-8 bytes (64 KiB); larger gets ``too_large``."
    frame_limit_bytes: int = 2 * MAX_MESSAGE_BYTES
    "Largest WebSocket message aiohttp reads at all (128 KiB); larger closes with 1009."
    rate: float = 20.0
    "Messages per second each connection may send, sustained (token bucket refill)."
    burst: float = 50.0
    "Messages a connection may send at once (token bucket size)."
    rate_limit_close_after: int = 200
    "Over-limit messages a connection may send in its life before it is closed with 1008."
    max_joiners_per_room: int = 16
    "Joiners one room holds at once; the next gets ``room_full``."
    max_rooms_per_connection: int = 4
    "Rooms one connection may host at once; the next ``create`` gets ``too_many_rooms``."
    max_rooms: int = 10_000
    "Live rooms on this server; the next ``create`` gets ``server_full``."
    room_idle_ttl: float = 600.0
    "Seconds a room lives after its creation or its last join; then it closes as ``expired``."
    sweep_interval: float = 1.0
    "Seconds between two checks for expired rooms."
    heartbeat: float = 20.0
    "Seconds between WebSocket pings; a client that does not answer is dropped."
    send_queue_limit: int = 256
    "Messages waiting to be written to one client; a client that lets more pile up is dropped."
    shutdown_timeout: float = 5.0
    "Seconds to wait for clients to acknowledge the close when the server stops."
    drain_timeout: float = 0.0
    """Seconds a stopping server waits for the joins in progress (rooms with a joiner) to
    finish, refusing new connections and rooms (``/healthz`` answers 503 ``draining``),
    before it closes every client with 1001. 0 closes at once."""
    max_connections: int = 20_000
    "WebSockets this server holds at once; the next upgrade gets HTTP 503."
    max_connections_per_ip: int = 64
    "WebSockets one client address holds at once; the next gets HTTP 429."
    connect_rate_per_ip: float = 10.0
    "New WebSockets per second one client address may open, sustained."
    connect_burst_per_ip: float = 40.0
    "New WebSockets one client address may open at once."
    room_rate: float = 200.0
    """Messages per second relayed within one room, all senders together, sustained (a
    cap on the room, below the sum of its members' own limits: 17 x 20/s)."""
    room_burst: float = 1000.0
    """Messages one room may relay at once (every member's burst at once fits); past it
    senders get ``room_rate_limited``."""
    resume_grace: float = 30.0
    """Seconds a room waits for its host to ``resume`` after the host's connection
    dropped; joiners meanwhile get ``host_away``. 0 closes the room at once."""
    max_resume_failures: int = 3
    "Refused resumes (wrong secret, unknown room) a connection may make; then 1008."
    csr_token: str | None = None
    "The team's token a CSR must give to ``serve`` queues; None lets anyone serve (a LAN)."
    clock: Callable[[], float] = field(default=time.monotonic)
    "Monotonic time in seconds; tests inject a fake one to expire rooms without waiting."

    def __post_init__(self) -> None:
        positive = {
            "max_message_bytes": self.max_message_bytes,
            "rate": self.rate,
            "rate_limit_close_after": self.rate_limit_close_after,
            "max_joiners_per_room": self.max_joiners_per_room,
            "max_rooms_per_connection": self.max_rooms_per_connection,
            "max_rooms": self.max_rooms,
            "room_idle_ttl": self.room_idle_ttl,
            "sweep_interval": self.sweep_interval,
            "send_queue_limit": self.send_queue_limit,
            "max_connections": self.max_connections,
            "max_connections_per_ip": self.max_connections_per_ip,
            "connect_rate_per_ip": self.connect_rate_per_ip,
            "room_rate": self.room_rate,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {value!r}")
        for name, value in (
            ("burst", self.burst),
            ("connect_burst_per_ip", self.connect_burst_per_ip),
            ("room_burst", self.room_burst),
        ):
            if value < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1, got {value!r}")
        if self.resume_grace < 0:
            raise ValueError("ServerConfig.resume_grace must not be negative")
        if self.max_resume_failures < 1:
            raise ValueError("ServerConfig.max_resume_failures must be at least 1")
        if self.drain_timeout < 0:
            raise ValueError("ServerConfig.drain_timeout must not be negative")
        if self.frame_limit_bytes < self.max_message_bytes:
            raise ValueError("ServerConfig.frame_limit_bytes must be at least max_message_bytes")


# --------------------------------------------------------------------------- state


@dataclass(eq=False)
class Connection:
    """One WebSocket client, as the hub sees it. Compared and hashed by identity."""

    id: str
    "12 lowercase hex characters; the joiner id peers see."
    tokens: float
    "Rate-limit tokens left."
    refilled: float
    "When ``tokens`` was last refilled (clock seconds)."
    over_limit: int = 0
    "Messages refused by the rate limit so far."
    hosted: dict[str, Room] = field(default_factory=dict)
    "Live rooms this connection hosts, by id."
    joined: Room | None = None
    "The room this connection is a joiner of, if any."
    node: str | None = None
    """With Redis: the node that holds this client's WebSocket, when it is not this one
    (the client joined a room of this node through its own node). None: a local client."""
    claiming: int = 0
    "Room ids being claimed in the shared store for this connection's ``create``."
    resume_failures: int = 0
    "Resumes refused for a wrong secret or an unknown room."


@dataclass(eq=False)
class Room:
    """A live room: its host, its joiners by connection id, and when it was last used."""

    id: str
    host: Connection
    last_used: float
    tokens: float
    "Room rate-limit tokens left (messages relayed within the room)."
    refilled: float
    joiners: dict[str, Connection] = field(default_factory=dict)
    secret_hash: str = ""
    "SHA-256 (hex) of the room's current resume secret; empty: not resumable."
    away_since: float | None = None
    "When the host's connection dropped (clock seconds); None while the host is here."


@dataclass(frozen=True)
class Deliver:
    """Send ``message`` to ``to``."""

    to: Connection
    message: ServerMessage


@dataclass(frozen=True)
class Disconnect:
    """Close ``conn``'s WebSocket with ``code`` and ``reason`` (at most 123 bytes)."""

    conn: Connection
    code: int
    reason: str


@dataclass(frozen=True)
class Claim:
    """With Redis: claim ``room`` for this node (``SET NX EX``), then call ``Hub.claimed``."""

    conn: Connection
    room: str
    attempt: int
    "How many ids were already taken elsewhere for this ``create`` (at most 20 tries)."
    secret: str = ""
    "The resume secret the room gets if the claim wins (its hash goes into the store)."


@dataclass(frozen=True)
class Reclaim:
    """With Redis: take ``room`` over for this node if the store holds ``old_hash`` for it
    and its node is dead (or it is free), storing ``new_hash``; then call ``Hub.reclaimed``
    with ``ok``, ``bad_secret``, ``room_not_found``, ``owner_alive`` or None (store down)."""

    conn: Connection
    room: str
    old_hash: str
    new_secret: str


@dataclass(frozen=True)
class Rekey:
    """With Redis: ``room``'s resume secret changed to the one hashed ``new_hash``."""

    room: str
    new_hash: str


@dataclass(frozen=True)
class Locate:
    """With Redis: find the live node holding ``room``, then call ``Hub.located``."""

    conn: Connection
    room: str


@dataclass(frozen=True)
class Forward:
    """With Redis: ``conn`` is served by ``node`` from now on (it joins a room there, or
    uses the queues, which one node holds); ``frame`` is its message that goes first.

    The hub has forgotten ``conn``; the glue carries its frames to ``node`` and writes
    what ``node`` answers back to its WebSocket.
    """

    conn: Connection
    node: str
    frame: str


@dataclass(frozen=True)
class LocateQueues:
    """With Redis: find the node that holds the queues, then call ``Hub.queues_located``."""

    conn: Connection
    msg: Wait | Serve | ListQueue | Take | Transfer


@dataclass(frozen=True)
class Release:
    """With Redis: ``room`` is gone here; free its id in the shared store."""

    room: str


@dataclass(frozen=True)
class Touch:
    """With Redis: ``room`` was used; extend its claim by the idle TTL."""

    room: str


@dataclass(frozen=True)
class Recall:
    """With Redis: look up the stored place of ``msg.ticket``, then call ``Hub.recalled``."""

    conn: Connection
    msg: Wait


Action: TypeAlias = (
    Deliver
    | Disconnect
    | Claim
    | Reclaim
    | Rekey
    | Locate
    | LocateQueues
    | Forward
    | Release
    | Touch
    | Recall
    | Remember
    | Forget
)

MAX_CLAIM_ATTEMPTS = 20
CLOSED_ROOMS_TTL = 600.0
"Seconds a closed room's id still answers why it closed (burned, expired, ended)."
MAX_CLOSED_ROOMS = 10_000
"Closed rooms remembered at most (the oldest are forgotten first)."


def resume_digest(secret: str) -> str:
    """What the server keeps of a resume secret: its SHA-256, hex (the secret has 256
    random bits, so a fast hash is enough)."""
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


def _new_secret() -> str:
    return secrets.token_hex(32)


def _error(conn: Connection, code: str, message: str) -> list[Action]:
    return [Deliver(conn, Error(code=code, message=_printable(message)))]


def _refill(tokens: float, refilled: float, now: float, rate: float, burst: float) -> float:
    """A token bucket's level at ``now``."""
    return min(burst, tokens + max(0.0, now - refilled) * rate)


def _printable(text: str, limit: int = 500) -> str:
    """``text`` made safe for an ``error`` message: no control characters or lone surrogates."""
    clean = "".join(
        ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else "?" for ch in text
    )
    return clean[:limit]


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class Hub:
    """Every room and connection of one server; no I/O (see the module docstring)."""

    def __init__(self, config: ServerConfig | None = None, *, shared: bool = False) -> None:
        """``shared``: room ids live in a store other nodes share (Redis); the hub then
        answers ``Claim``, ``Locate``, ``Forward``, ``Release`` and ``Touch`` actions."""
        self.config = config if config is not None else ServerConfig()
        self.shared = shared
        self.rooms: dict[str, Room] = {}
        self.connections: dict[str, Connection] = {}
        self.claiming = 0
        "Room ids being claimed right now, over all connections."
        self.draining = False
        "Set when the server stops: existing rooms go on, new ``create`` gets ``draining``."
        self.stopping = False
        "Set by ``shutdown``: hosts' rooms are not kept away (with Redis: left to resume)."
        self.counters: Counter[str] = Counter()
        "Totals for ``/metrics``: messages, relays, refusals by code."
        self.queues = Queues(self.config.csr_token)
        "Support queues (``wait``, ``serve``, ``list``, ``take``, ``transfer``)."
        self.closed: OrderedDict[str, tuple[str, float]] = OrderedDict()
        """Rooms closed lately: id -> (why, when). A join to one is told why (the code
        was burned, it expired, the session ended) instead of "no such room"."""

    # -- connections

    def connect(self, now: float) -> Connection:
        """Register a new client and give it a fresh connection id."""
        conn_id = secrets.token_hex(6)
        while conn_id in self.connections:
            conn_id = secrets.token_hex(6)
        conn = Connection(id=conn_id, tokens=self.config.burst, refilled=now)
        self.connections[conn_id] = conn
        return conn

    def attach(self, conn_id: str, node: str, now: float) -> Connection | None:
        """With Redis: a client of ``node`` joins one of our rooms; None if its id is taken."""
        if conn_id in self.connections:
            return None
        conn = Connection(id=conn_id, tokens=self.config.burst, refilled=now, node=node)
        self.connections[conn_id] = conn
        return conn

    def drop_node(self, node: str, now: float) -> list[Action]:
        """With Redis: ``node`` died; every client it held here is gone."""
        out: list[Action] = []
        for conn in [c for c in self.connections.values() if c.node == node]:
            out.extend(self.disconnect(conn, now))
        return out

    def disconnect(self, conn: Connection, now: float) -> list[Action]:
        """Forget ``conn``: its rooms close, its host and joiners are told it is gone."""
        if self.connections.get(conn.id) is not conn:
            return []
        del self.connections[conn.id]
        out: list[Action] = self._queue_out(self.queues.disconnect(conn, now))
        for room in list(conn.hosted.values()):
            for joiner in room.joiners.values():
                joiner.joined = None
                out.append(Deliver(joiner, Gone(room=room.id, peer=HOST)))
            room.joiners.clear()
            if self.stopping and self.shared:
                # the node stops: keep the claim in the store (with no live node behind
                # it) so that the host can resume the room on another node
                conn.hosted.pop(room.id, None)
                self.rooms.pop(room.id, None)
                _event("room_left_resumable", room=room.id)
            elif self.config.resume_grace > 0 and room.secret_hash and not self.stopping:
                conn.hosted.pop(room.id, None)
                room.away_since = now
                _event("room_away", room=room.id, grace=self.config.resume_grace)
            else:
                out.extend(self._drop(room))
                _event("room_removed", room=room.id, reason="host_gone")
        joined = conn.joined
        if joined is not None:
            joined.joiners.pop(conn.id, None)
            conn.joined = None
            out.append(Deliver(joined.host, Gone(room=joined.id, peer=conn.id)))
            _event("peer_gone", room=joined.id, peer=conn.id, joiners=len(joined.joiners))
        return out

    # -- input

    def receive(self, conn: Connection, frame: str | bytes, now: float) -> list[Action]:
        """Handle one WebSocket message from ``conn``; never raises."""
        try:
            self.counters["messages_in"] += 1
            limited = self._rate_limit(conn, now)
            if limited is not None:
                self.counters["rate_limited"] += 1
                return limited
            if isinstance(frame, bytes):
                return _error(
                    conn, "malformed", "send text frames: signaling messages are JSON text"
                )
            size = _utf8_len(frame)
            if size > self.config.max_message_bytes:
                _event("bad_message", level=logging.DEBUG, peer=conn.id, code="too_large")
                return _error(
                    conn,
                    "too_large",
                    f"message is {size} bytes; the limit is {self.config.max_message_bytes}",
                )
            try:
                msg = decode_client(frame)
            except DecodeError as exc:
                _event("bad_message", level=logging.DEBUG, peer=conn.id, code=exc.code)
                return _error(conn, exc.code, exc.message)
            return self.handle(conn, msg, now)
        except Exception:
            log.exception("internal_error", extra={"fields": {"peer": conn.id}})
            return _error(conn, "internal", "the server failed on this message; it was dropped")

    def handle(self, conn: Connection, msg: ClientMessage, now: float) -> list[Action]:
        """Act on one decoded message from ``conn``."""
        if isinstance(msg, Create):
            return self._create(conn, now)
        if isinstance(msg, Join):
            return self._join(conn, msg.room, now)
        if isinstance(msg, Send):
            return self._send(conn, msg.to, msg.data, now)
        if isinstance(msg, Resume):
            return self._resume(conn, msg, now)
        if isinstance(msg, Wait | Serve | ListQueue | Take | Transfer):
            if self.shared and conn.node is None and not self.queues.involves(conn):
                return [LocateQueues(conn, msg)]
            return self._queue_message(conn, msg, now)
        return self._close(conn, msg, now)

    def expire(self, now: float) -> list[Action]:
        """Close every room unused for ``room_idle_ttl`` seconds."""
        ttl, grace = self.config.room_idle_ttl, self.config.resume_grace
        out: list[Action] = []
        for room in list(self.rooms.values()):
            if room.away_since is not None and now - room.away_since >= grace:
                _event("room_removed", room=room.id, reason="host_gone")
                out.extend(self._close_room(room, "host_gone", now))
            elif now - room.last_used >= ttl:
                if room.away_since is None:
                    out.append(Deliver(room.host, Closed(room=room.id, reason="expired")))
                out.extend(self._close_room(room, "expired", now))
        return out

    def shutdown(self) -> list[Action]:
        """Close every connection with 1001, as the server stops."""
        self.stopping = True
        return [
            Disconnect(conn, CLOSE_GOING_AWAY, "server shutting down")
            for conn in self.connections.values()
        ]

    # -- messages

    def _create(self, conn: Connection, now: float) -> list[Action]:
        cfg = self.config
        if self.draining:
            return _error(
                conn, "draining", "this server is shutting down; open rooms on another one"
            )
        if len(conn.hosted) + conn.claiming >= cfg.max_rooms_per_connection:
            return _error(
                conn,
                "too_many_rooms",
                f"a connection may host at most {cfg.max_rooms_per_connection} rooms at once; "
                "close one first",
            )
        if len(self.rooms) + self.claiming >= cfg.max_rooms:
            _event("server_full", level=logging.WARNING, rooms=len(self.rooms))
            return _error(conn, "server_full", "this server has no free room; try again later")
        room_id = self._new_room_id()
        if room_id is None:
            return _error(conn, "server_full", "this server has no free room; try again later")
        secret = _new_secret()
        if self.shared:
            conn.claiming += 1
            self.claiming += 1
            return [Claim(conn, room_id, 0, secret)]
        return self._open(conn, room_id, now, secret)

    def _open(self, conn: Connection, room_id: str, now: float, secret: str) -> list[Action]:
        cfg = self.config
        room = Room(
            id=room_id,
            host=conn,
            last_used=now,
            tokens=cfg.room_burst,
            refilled=now,
            secret_hash=resume_digest(secret),
        )
        self.rooms[room_id] = room
        self.closed.pop(room_id, None)  # a new room under an old id
        conn.hosted[room_id] = room
        self.counters["rooms_created"] += 1
        _event("room_created", room=room_id, peer=conn.id, rooms=len(self.rooms))
        expires_in = max(0, min(86400, int(cfg.room_idle_ttl)))
        return [Deliver(conn, Created(room=room_id, expires_in=expires_in, resume=secret))]

    def claimed(self, claim: Claim, won: bool | None, now: float) -> list[Action]:
        """The shared store answered ``claim``: ``won`` True (ours), False (taken), None
        (the store is unreachable)."""
        conn, room_id = claim.conn, claim.room
        conn.claiming = max(0, conn.claiming - 1)
        self.claiming = max(0, self.claiming - 1)
        if self.connections.get(conn.id) is not conn:  # the client left meanwhile
            return [Release(room_id)] if won else []
        if won is None:
            return _error(
                conn, "unavailable", "the shared room store is unreachable; try again shortly"
            )
        if won and room_id not in self.rooms:
            return self._open(conn, room_id, now, claim.secret)
        if won:  # ours in the store, yet live here: cannot happen, but never share an id
            return [Release(room_id), *self._retry(claim)]
        return self._retry(claim)

    def _retry(self, claim: Claim) -> list[Action]:
        room_id = self._new_room_id()
        if room_id is None or claim.attempt + 1 >= MAX_CLAIM_ATTEMPTS:
            return _error(claim.conn, "server_full", "no free room id; try again later")
        claim.conn.claiming += 1
        self.claiming += 1
        return [Claim(claim.conn, room_id, claim.attempt + 1, _new_secret())]

    def _new_room_id(self) -> str | None:
        for _ in range(100):
            room_id = f"{secrets.randbelow(10**6):06d}"
            if room_id not in self.rooms:
                return room_id
        return None

    def _join(self, conn: Connection, room_id: str, now: float) -> list[Action]:
        if conn.joined is not None:
            return _error(
                conn,
                "already_joined",
                f"this connection is already in room {conn.joined.id}; "
                "open another connection to join a second room",
            )
        room = self.rooms.get(room_id)
        if room is None and self.shared and conn.node is None:
            return [Locate(conn, room_id)]
        if room is None:
            return self._not_found(conn, room_id, now)
        if room.host is conn:
            return _error(conn, "own_room", f"you host room {room_id}; you cannot also join it")
        if room.away_since is not None:
            return _error(
                conn,
                "host_away",
                f"the host of room {room_id} lost its connection to the server and may come "
                f"back within {self.config.resume_grace:g} s; try again shortly",
            )
        if len(room.joiners) >= self.config.max_joiners_per_room:
            return _error(
                conn,
                "room_full",
                f"room {room_id} already has {self.config.max_joiners_per_room} joiners",
            )
        room.joiners[conn.id] = conn
        room.last_used = now
        conn.joined = room
        _event("room_joined", room=room_id, peer=conn.id, joiners=len(room.joiners))
        out: list[Action] = [
            Deliver(conn, Joined(room=room_id, peer=conn.id)),
            Deliver(room.host, Peer(room=room_id, peer=conn.id)),
        ]
        if self.shared:
            out.append(Touch(room_id))
        return out

    def located(self, locate: Locate, node: str | None, now: float) -> list[Action]:
        """The shared store answered ``locate``: the live node holding the room, or None."""
        conn, room_id = locate.conn, locate.room
        if self.connections.get(conn.id) is not conn:
            return []
        if room_id in self.rooms:  # opened here meanwhile
            return self._join(conn, room_id, now)
        if node is None:
            return self._not_found(conn, room_id, now)
        if conn.hosted or conn.joined is not None or self.queues.involves(conn):
            return _error(
                conn,
                "room_elsewhere",
                f"room {room_id} is served by another node and this connection hosts rooms "
                "or uses queues here; open another connection to join it",
            )
        del self.connections[conn.id]
        _event("forwarded", room=room_id, peer=conn.id, node=node)
        return [Forward(conn, node, encode(Join(room=room_id)))]

    def queues_located(self, locate: LocateQueues, node: str | None, now: float) -> list[Action]:
        """The shared store answered ``locate``: ``""`` (this node holds the queues), the
        live node that does, or None (unknown right now)."""
        conn, msg = locate.conn, locate.msg
        if self.connections.get(conn.id) is not conn:
            return []
        if node == "":
            return self._queue_message(conn, msg, now)
        if node is None:
            return _error(conn, "unavailable", "the queues cannot be reached; try again shortly")
        if conn.hosted or conn.joined is not None:
            return _error(
                conn,
                "queues_elsewhere",
                "another node holds the queues and this connection has rooms here; "
                "use another connection for queues",
            )
        del self.connections[conn.id]
        _event("forwarded", peer=conn.id, node=node, to="queues")
        return [Forward(conn, node, encode(msg))]

    def _queue_message(
        self, conn: Connection, msg: Wait | Serve | ListQueue | Take | Transfer, now: float
    ) -> list[Action]:
        wait_again = isinstance(msg, Wait) and msg.ticket and conn not in self.queues.by_customer
        if self.shared and wait_again and isinstance(msg, Wait):
            return [Recall(conn, msg)]
        return self._queue_out(self.queues.handle(conn, msg, now))

    def _queue_out(self, out: list[tuple[Connection, ServerMessage]]) -> list[Action]:
        actions: list[Action] = [Deliver(c, m) for c, m in out]
        if self.shared:
            actions.extend(self.queues.store)
        self.queues.store.clear()
        return actions

    def recalled(self, recall: Recall, place: Recalled | None, now: float) -> list[Action]:
        """The shared store answered ``recall`` with the ticket's place, or None."""
        conn = recall.conn
        if self.connections.get(conn.id) is not conn:
            return []
        return self._queue_out(self.queues.wait(conn, recall.msg, place, now))

    def _resume(self, conn: Connection, msg: Resume, now: float) -> list[Action]:
        cfg = self.config
        if self.draining:
            return _error(conn, "draining", "this server is shutting down; resume on another one")
        if conn.joined is not None:
            return _error(
                conn, "already_joined", "a joiner's connection cannot host; open another one"
            )
        if len(conn.hosted) + conn.claiming >= cfg.max_rooms_per_connection:
            return _error(
                conn,
                "too_many_rooms",
                f"a connection may host at most {cfg.max_rooms_per_connection} rooms at once",
            )
        room = self.rooms.get(msg.room)
        if room is None:
            if not self.shared or conn.node is not None:
                return self._resume_refused(conn, "room_not_found", msg.room)
            conn.claiming += 1
            self.claiming += 1
            return [Reclaim(conn, msg.room, resume_digest(msg.secret), _new_secret())]
        if room.host is conn:
            return _error(conn, "already_host", f"you already host room {msg.room}")
        if not room.secret_hash or not hmac.compare_digest(
            room.secret_hash, resume_digest(msg.secret)
        ):
            return self._resume_refused(conn, "bad_secret", msg.room)
        if room.away_since is None:
            return _error(
                conn,
                "host_connected",
                f"the host of room {msg.room} is still connected to this server; "
                "try again once that connection has closed",
            )
        room.host = conn
        room.away_since = None
        conn.hosted[room.id] = room
        secret = _new_secret()
        room.secret_hash = resume_digest(secret)
        self.counters["rooms_resumed"] += 1
        _event("room_resumed", room=room.id, peer=conn.id)
        out: list[Action] = [Deliver(conn, Resumed(room=room.id, resume=secret))]
        if self.shared:
            out.append(Rekey(room.id, room.secret_hash))
        return out

    def _resume_refused(self, conn: Connection, code: str, room_id: str) -> list[Action]:
        conn.resume_failures += 1
        self.counters["resume_refused"] += 1
        _event("resume_refused", level=logging.INFO, room=room_id, peer=conn.id, code=code)
        text = (
            f"room {room_id} does not exist, has closed, or waited too long for its host"
            if code == "room_not_found"
            else f"that is not room {room_id}'s resume secret (each secret works once)"
        )
        out = _error(conn, code, text)
        if conn.resume_failures >= self.config.max_resume_failures:
            _event("resume_close", level=logging.WARNING, peer=conn.id)
            out.append(Disconnect(conn, CLOSE_POLICY, "too many refused resumes"))
        return out

    def reclaimed(self, reclaim: Reclaim, result: str | None, now: float) -> list[Action]:
        """The shared store answered ``reclaim``: ``ok`` (the room is this node's now, with
        the new secret stored), ``bad_secret``, ``room_not_found``, ``owner_alive``, or
        None (the store is unreachable)."""
        conn, room_id = reclaim.conn, reclaim.room
        conn.claiming = max(0, conn.claiming - 1)
        self.claiming = max(0, self.claiming - 1)
        if self.connections.get(conn.id) is not conn:  # the client left meanwhile
            return [Release(room_id)] if result == "ok" else []
        if result is None:
            return _error(
                conn, "unavailable", "the shared room store is unreachable; try again shortly"
            )
        if result == "owner_alive":
            return _error(
                conn,
                "owner_alive",
                f"room {room_id} is held by another node that is alive; resume there, or "
                "try again once that node has gone",
            )
        if result != "ok":
            return self._resume_refused(conn, result, room_id)
        if room_id in self.rooms:  # opened here meanwhile: cannot happen (the id was claimed)
            return _error(conn, "room_not_found", f"room {room_id} cannot be resumed here")
        cfg = self.config
        room = Room(
            id=room_id,
            host=conn,
            last_used=now,
            tokens=cfg.room_burst,
            refilled=now,
            secret_hash=resume_digest(reclaim.new_secret),
        )
        self.rooms[room_id] = room
        conn.hosted[room_id] = room
        self.counters["rooms_resumed"] += 1
        _event("room_resumed", room=room_id, peer=conn.id, reclaimed=True)
        return [Deliver(conn, Resumed(room=room_id, resume=reclaim.new_secret))]

    def _room_limited(self, conn: Connection, room: Room, now: float) -> list[Action] | None:
        cfg = self.config
        room.tokens = _refill(room.tokens, room.refilled, now, cfg.room_rate, cfg.room_burst)
        room.refilled = now
        if room.tokens >= 1.0:
            room.tokens -= 1.0
            self.counters["relayed"] += 1
            return None
        self.counters["room_rate_limited"] += 1
        return _error(
            conn,
            "room_rate_limited",
            f"room {room.id} relays at most {cfg.room_rate:g} messages per second; "
            "this one was dropped",
        )

    def _send(self, conn: Connection, to: str, data: str, now: float) -> list[Action]:
        if to == HOST:
            room = conn.joined
            if room is None:
                return _error(conn, "not_in_room", 'join a room before sending to "host"')
            limited = self._room_limited(conn, room, now)
            if limited is not None:
                return limited
            _event(
                "relay", level=logging.DEBUG, room=room.id, peer=conn.id, to=HOST, size=len(data)
            )
            return [Deliver(room.host, Relay(room=room.id, sender=conn.id, data=data))]
        target = self.connections.get(to)
        room = target.joined if target is not None else None
        if target is None or room is None or room.host is not conn:
            return _error(conn, "peer_not_found", f"no joiner {to} in a room you host")
        limited = self._room_limited(conn, room, now)
        if limited is not None:
            return limited
        _event("relay", level=logging.DEBUG, room=room.id, peer=HOST, to=to, size=len(data))
        return [Deliver(target, Relay(room=room.id, sender=HOST, data=data))]

    def _close(self, conn: Connection, msg: Close, now: float) -> list[Action]:
        room = self.rooms.get(msg.room)
        if room is None:
            return _error(conn, "room_not_found", f"room {msg.room} does not exist or has closed")
        if room.host is not conn:
            return _error(conn, "not_host", f"only the host of room {msg.room} can close it")
        return self._close_room(room, msg.reason, now)

    def _not_found(self, conn: Connection, room_id: str, now: float) -> list[Action]:
        """No room ``room_id`` here: say why if it closed lately (``room_burned``,
        ``room_expired``, ``room_ended``), else ``room_not_found``."""
        closed = self.closed.get(room_id)
        if closed is not None and now - closed[1] < CLOSED_ROOMS_TTL:
            why = closed[0]
            text = {
                "burned": f"the code for room {room_id} was burned after too many wrong "
                "attempts; ask the CSR for a new one",
                "expired": f"the code for room {room_id} expired unused; ask for a new one",
            }.get(why, f"the session in room {room_id} has ended")
            code = {"burned": "room_burned", "expired": "room_expired"}.get(why, "room_ended")
            return _error(conn, code, text)
        return _error(conn, "room_not_found", f"room {room_id} does not exist or has closed")

    def _remember_closed(self, room_id: str, reason: str, now: float) -> None:
        self.closed.pop(room_id, None)
        self.closed[room_id] = (reason, now)
        while len(self.closed) > MAX_CLOSED_ROOMS:
            self.closed.popitem(last=False)

    def _close_room(self, room: Room, reason: str, now: float) -> list[Action]:
        """Tell the joiners ``room`` closed, and drop it."""
        if reason in ("burned", "expired", "ended"):
            self._remember_closed(room.id, reason, now)
        out: list[Action] = []
        for joiner in room.joiners.values():
            joiner.joined = None
            out.append(Deliver(joiner, Closed(room=room.id, reason=reason)))
        _event("room_closed", room=room.id, reason=reason, joiners=len(room.joiners))
        room.joiners.clear()
        out.extend(self._drop(room))
        return out

    def _drop(self, room: Room) -> list[Action]:
        if room.host.hosted.get(room.id) is room:
            room.host.hosted.pop(room.id, None)
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
            if self.shared:
                return [Release(room.id)]
        return []

    def _rate_limit(self, conn: Connection, now: float) -> list[Action] | None:
        cfg = self.config
        conn.tokens = _refill(conn.tokens, conn.refilled, now, cfg.rate, cfg.burst)
        conn.refilled = now
        if conn.tokens >= 1.0:
            conn.tokens -= 1.0
            return None
        conn.over_limit += 1
        if conn.over_limit >= cfg.rate_limit_close_after:
            _event(
                "rate_limit_close", level=logging.WARNING, peer=conn.id, over_limit=conn.over_limit
            )
            return [Disconnect(conn, CLOSE_POLICY, "too many messages")]
        if conn.over_limit == 1:
            _event("rate_limited", level=logging.INFO, peer=conn.id)
        return _error(
            conn,
            "rate_limited",
            f"too many messages: at most {cfg.rate:g} per second (bursts of {cfg.burst:g}); "
            "this one was dropped",
        )

    # -- status

    def joining(self) -> int:
        """Rooms with a joiner in them: joins in progress (a drain waits for them)."""
        return sum(1 for room in self.rooms.values() if room.joiners)

    def stats(self) -> dict[str, int]:
        """Counts for ``/healthz``."""
        return {"rooms": len(self.rooms), "connections": len(self.connections)}


@dataclass
class _Address:
    connections: int
    tokens: float
    refilled: float


class Admission:
    """Who may open a WebSocket: caps on connections, per address and in all, and a
    token bucket of new connections per address. No I/O; the glue asks before upgrading."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.total = 0
        self.addresses: dict[str, _Address] = {}
        self.refused: Counter[str] = Counter()

    def admit(self, ip: str, now: float) -> tuple[int, str] | None:
        """None to let ``ip`` in (then call ``release`` when it leaves), else (HTTP status, why)."""
        cfg = self.config
        if self.total >= cfg.max_connections:
            self.refused["server_full"] += 1
            return 503, "this server holds as many connections as it can; try another node"
        addr = self.addresses.get(ip)
        if addr is None:
            addr = self.addresses[ip] = _Address(0, cfg.connect_burst_per_ip, now)
        addr.tokens = _refill(
            addr.tokens, addr.refilled, now, cfg.connect_rate_per_ip, cfg.connect_burst_per_ip
        )
        addr.refilled = now
        if addr.connections >= cfg.max_connections_per_ip:
            self.refused["per_ip_cap"] += 1
            return 429, f"at most {cfg.max_connections_per_ip} connections from one address"
        if addr.tokens < 1.0:
            self.refused["per_ip_rate"] += 1
            return 429, f"at most {cfg.connect_rate_per_ip:g} new connections per second"
        addr.tokens -= 1.0
        addr.connections += 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        """An admitted connection from ``ip`` closed."""
        self.total = max(0, self.total - 1)
        addr = self.addresses.get(ip)
        if addr is None:
            return
        addr.connections -= 1

    def sweep(self, now: float) -> None:
        """Forget addresses with no connection whose bucket has refilled (owed nothing)."""
        cfg = self.config
        for ip in [
            ip
            for ip, a in self.addresses.items()
            if a.connections <= 0
            and _refill(
                a.tokens, a.refilled, now, cfg.connect_rate_per_ip, cfg.connect_burst_per_ip
            )
            >= cfg.connect_burst_per_ip
        ]:
            del self.addresses[ip]


def _event(name: str, *, level: int = logging.INFO, **fields: object) -> None:
    if log.isEnabledFor(level):
        log.log(level, name, extra={"fields": fields})


# --------------------------------------------------------------------------- glue


class _Client:
    """The writing side of one WebSocket: a queue drained by one task, in order."""

    def __init__(
        self, conn: Connection, ws: web.WebSocketResponse, request: web.Request, limit: int
    ) -> None:
        self.conn = conn
        self.ws = ws
        self.request = request
        self.limit = limit
        self.queue: asyncio.Queue[str | Disconnect | None] = asyncio.Queue()
        self.closing = False
        self.slow = False
        self.task = asyncio.create_task(self._write_loop())

    def send(self, text: str) -> None:
        if self.closing:
            return
        if self.queue.qsize() >= self.limit:
            _event("slow_client", level=logging.WARNING, peer=self.conn.id)
            self.slow = True
            self.abort()
            return
        self.queue.put_nowait(text)

    def close(self, action: Disconnect) -> None:
        if not self.closing:
            self.closing = True
            self.queue.put_nowait(action)

    def finish(self) -> None:
        self.closing = True
        self.queue.put_nowait(None)

    def abort(self) -> None:
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        self.task.cancel()

    async def _write_loop(self) -> None:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            try:
                if isinstance(item, Disconnect):
                    await self.ws.close(code=item.code, message=item.reason.encode("utf-8"))
                    return
                await self.ws.send_str(item)
            except (ConnectionError, RuntimeError) as exc:  # the client went away mid-write
                _event(
                    "write_failed", level=logging.DEBUG, peer=self.conn.id, error=type(exc).__name__
                )
                return
            except Exception:  # one bad message must not silence the connection
                log.exception("write_failed", extra={"fields": {"peer": self.conn.id}})


class _State:
    """What one running app holds: the hub, the live clients, admission, the cluster link."""

    def __init__(
        self, config: ServerConfig, cluster: Cluster | None, turn: TurnSecret | None
    ) -> None:
        self.config = config
        self.hub = Hub(config, shared=cluster is not None)
        self.admission = Admission(config)
        self.cluster = cluster
        self.turn = turn
        self.clients: dict[Connection, _Client] = {}
        "Local clients the hub serves."
        self.forwarded: dict[str, tuple[str, _Client]] = {}
        "Local clients served by another node (their room's), by connection id: (node, client)."
        self.draining = False
        self.slow_dropped = 0

    def dispatch(
        self, actions: Iterable[Action]
    ) -> list[Claim | Reclaim | Locate | LocateQueues | Recall | Forward]:
        """Carry out what needs no waiting; return the actions that need Redis."""
        later: list[Claim | Reclaim | Locate | LocateQueues | Recall | Forward] = []
        for action in actions:
            if isinstance(action, Deliver):
                to = action.to
                if to.node is not None:
                    if self.cluster is not None:
                        self.cluster.post(to.node, cluster.OUT, to.id, encode(action.message))
                    continue
                client = self.clients.get(to)
                if client is not None:
                    client.send(encode(action.message))
                    if client.slow:
                        self.slow_dropped += 1
                        client.slow = False
            elif isinstance(action, Disconnect):
                if action.conn.node is not None:
                    if self.cluster is not None:
                        self.cluster.post(
                            action.conn.node,
                            cluster.CLOSE,
                            action.conn.id,
                            f"{action.code} {action.reason}",
                        )
                    continue
                client = self.clients.get(action.conn)
                if client is not None:
                    client.close(action)
            elif isinstance(action, Release):
                if self.cluster is not None:
                    self.cluster.release(action.room)
            elif isinstance(action, Touch):
                if self.cluster is not None:
                    self.cluster.touch(action.room, self.config.room_idle_ttl)
            elif isinstance(action, Rekey):
                if self.cluster is not None:
                    self.cluster.rekey(action.room, action.new_hash, self.config.room_idle_ttl)
            elif isinstance(action, Remember):
                if self.cluster is not None:
                    since_wall = time.time() - (self.config.clock() - action.since)
                    self.cluster.remember(action.ticket, action.queue, since_wall, action.note)
            elif isinstance(action, Forget):
                if self.cluster is not None:
                    self.cluster.forget(action.ticket)
            else:
                later.append(action)
        return later

    async def perform(self, actions: Iterable[Action]) -> None:
        """Carry out ``actions``, awaiting Redis where the hub asked for it, in order."""
        pending = self.dispatch(actions)
        while pending:
            action = pending.pop(0)
            store = self.cluster
            if store is None:  # the hub only asks these of a shared hub
                continue
            if isinstance(action, Claim):
                won = await store.claim(
                    action.room, self.config.room_idle_ttl, resume_digest(action.secret)
                )
                pending += self.dispatch(self.hub.claimed(action, won, self.config.clock()))
            elif isinstance(action, Reclaim):
                result = await store.reclaim(
                    action.room,
                    action.old_hash,
                    resume_digest(action.new_secret),
                    self.config.room_idle_ttl,
                )
                pending += self.dispatch(self.hub.reclaimed(action, result, self.config.clock()))
            elif isinstance(action, Locate):
                node = await store.locate(action.room)
                pending += self.dispatch(self.hub.located(action, node, self.config.clock()))
            elif isinstance(action, Recall):
                stored = await store.recall(action.msg.ticket)
                place = None
                if stored is not None:
                    queue, since_wall, note = stored
                    now = self.config.clock()
                    since = now - max(0.0, time.time() - since_wall)
                    place = Recalled(action.msg.ticket, queue, since, note)
                pending += self.dispatch(self.hub.recalled(action, place, self.config.clock()))
            elif isinstance(action, LocateQueues):
                node = await store.queue_node()
                pending += self.dispatch(self.hub.queues_located(action, node, self.config.clock()))
            else:
                client = self.clients.pop(action.conn, None)
                if client is None:
                    continue
                self.forwarded[action.conn.id] = (action.node, client)
                store.post(action.node, cluster.ATTACH, action.conn.id)
                store.post(action.node, cluster.FRAME, action.conn.id, action.frame)

    async def on_mail(self, mail: cluster.Mail) -> None:
        """Mail from another node (see ``signaling.cluster``)."""
        now = self.config.clock()
        if mail.kind in (cluster.OUT, cluster.CLOSE):
            entry = self.forwarded.get(mail.conn)
            if entry is None or entry[0] != mail.node:
                return
            client = entry[1]
            if mail.kind == cluster.OUT:
                client.send(mail.data)
                return
            code_text, _, reason = mail.data.partition(" ")
            code = int(code_text) if code_text.isdigit() else CLOSE_POLICY
            code = code if 1000 <= code <= 4999 else CLOSE_POLICY
            client.close(Disconnect(client.conn, code, _printable(reason, 120)))
            return
        proxy = self.hub.connections.get(mail.conn)
        if mail.kind == cluster.ATTACH:
            assert self.cluster is not None
            self.cluster.peers.add(mail.node)  # watch its heartbeat from now on
            if proxy is not None or self.hub.attach(mail.conn, mail.node, now) is None:
                self.cluster.post(mail.node, cluster.CLOSE, mail.conn, "1011 connection id clash")
            return
        if proxy is None or proxy.node != mail.node:
            return
        if mail.kind == cluster.FRAME:
            await self.perform(self.hub.receive(proxy, mail.data, now))
        else:  # DETACH
            self.dispatch(self.hub.disconnect(proxy, now))

    def on_node_dead(self, node: str) -> None:
        """``node`` stopped its heartbeat: drop its clients here, close ours served there."""
        self.dispatch(self.hub.drop_node(node, self.config.clock()))
        for _conn_id, (where, client) in list(self.forwarded.items()):
            if where == node:
                client.close(
                    Disconnect(client.conn, CLOSE_SERVICE_RESTART, "room's node went away")
                )

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                now = self.config.clock()
                self.dispatch(self.hub.expire(now))
                self.admission.sweep(now)
            except Exception:
                log.exception("sweep_failed")

    async def drain(self, seconds: float, hard: asyncio.Event) -> None:
        """Refuse newcomers and new rooms; wait up to ``seconds`` for the joins in progress
        (rooms with a joiner) to finish. Hosts waiting for a joiner reconnect elsewhere."""
        self.draining = True
        self.hub.draining = True
        _event("draining", rooms=len(self.hub.rooms), seconds=seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.hub.joining() and loop.time() < deadline and not hard.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hard.wait(), min(0.1, max(0.0, deadline - loop.time())))

    def stats(self) -> dict[str, object]:
        body: dict[str, object] = {
            "status": "draining" if self.draining else "ok",
            **self.hub.stats(),
        }
        if self.cluster is not None:
            body["node"] = self.cluster.node
            body["forwarded"] = len(self.forwarded)
        return body

    def metrics(self) -> str:
        """Prometheus text exposition (version 0.0.4) of this node."""
        hub, c = self.hub, self.hub.counters
        local = sum(1 for conn in hub.connections.values() if conn.node is None)
        lines: list[str] = []

        def metric(name: str, kind: str, text: str, values: dict[str, float]) -> None:
            lines.append(f"# HELP peerdesk_{name} {text}")
            lines.append(f"# TYPE peerdesk_{name} {kind}")
            for labels, value in values.items():
                lines.append(f"peerdesk_{name}{labels} {value:g}")

        metric("up", "gauge", "1 while serving, 0 while draining.", {"": 0 if self.draining else 1})
        metric(
            "connections",
            "gauge",
            "WebSockets on this node, and remote clients served here for their room.",
            {
                '{kind="local"}': local + len(self.forwarded),
                '{kind="remote"}': len(hub.connections) - local,
            },
        )
        metric("rooms", "gauge", "Live rooms held by this node.", {"": len(hub.rooms)})
        metric("rooms_created_total", "counter", "Rooms opened.", {"": c["rooms_created"]})
        metric(
            "rooms_resumed_total",
            "counter",
            "Rooms their host resumed after losing its connection or its node; and refusals.",
            {'{result="ok"}': c["rooms_resumed"], '{result="refused"}': c["resume_refused"]},
        )
        metric(
            "messages_total", "counter", "Messages received from clients.", {"": c["messages_in"]}
        )
        metric("relayed_total", "counter", "Messages relayed in rooms.", {"": c["relayed"]})
        metric(
            "rate_limited_total",
            "counter",
            "Messages refused by a rate limit.",
            {'{scope="connection"}': c["rate_limited"], '{scope="room"}': c["room_rate_limited"]},
        )
        refused = self.admission.refused
        metric(
            "connections_refused_total",
            "counter",
            "WebSocket upgrades refused.",
            {
                f'{{reason="{r}"}}': refused[r]
                for r in ("server_full", "per_ip_cap", "per_ip_rate", "draining")
            },
        )
        queues = hub.queues
        metric(
            "queue_customers",
            "gauge",
            "Customers in the support queues held here: waiting, or taken by a CSR.",
            {
                '{state="waiting"}': sum(len(line) for line in queues.waiting.values()),
                '{state="taken"}': sum(1 for t in queues.tickets.values() if t.holder),
            },
        )
        metric("queue_csrs", "gauge", "CSRs serving queues here.", {"": len(queues.csrs)})
        metric(
            "slow_clients_dropped_total",
            "counter",
            "Clients dropped for not reading.",
            {"": self.slow_dropped},
        )
        if self.cluster is not None:
            metric(
                "cluster_mail_total",
                "counter",
                "Mail between nodes through Redis.",
                {
                    '{direction="posted"}': self.cluster.posted,
                    '{direction="received"}': self.cluster.received,
                },
            )
        return "\n".join(lines) + "\n"


STATE = web.AppKey("peerdesk_signaling_state", _State)


async def _websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    cfg = state.config
    if state.draining:
        state.admission.refused["draining"] += 1
        return web.Response(status=503, text="this server is shutting down; use another node\n")
    ip = request.remote or "unknown"
    refused = state.admission.admit(ip, cfg.clock())
    if refused is not None:
        status, why = refused
        _event("refused", level=logging.DEBUG, ip=ip, why=why)
        return web.Response(status=status, text=why + "\n")
    try:
        return await _serve_websocket(request, state)
    finally:
        state.admission.release(ip)


async def _serve_websocket(request: web.Request, state: _State) -> web.WebSocketResponse:
    cfg = state.config
    ws = web.WebSocketResponse(
        heartbeat=cfg.heartbeat, max_msg_size=cfg.frame_limit_bytes, compress=False
    )
    # Registered before the handshake completes, so that a client that has its 101
    # answer already counts in /healthz.
    conn = state.hub.connect(cfg.clock())
    client = _Client(conn, ws, request, cfg.send_queue_limit)
    state.clients[conn] = client
    try:
        await ws.prepare(request)
        _event("connected", peer=conn.id, connections=len(state.hub.connections))
        async for msg in ws:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                forward = state.forwarded.get(conn.id)
                if forward is not None and state.cluster is not None:
                    if isinstance(msg.data, str):
                        state.cluster.post(forward[0], cluster.FRAME, conn.id, msg.data)
                    else:
                        client.send(
                            encode(Error(code="malformed", message="send text frames: JSON"))
                        )
                else:
                    await state.perform(state.hub.receive(conn, msg.data, cfg.clock()))
                # Let the writers run: a client's queue then only grows while its
                # socket is really backed up, not while this loop reads a burst.
                await asyncio.sleep(0)
            elif msg.type is WSMsgType.ERROR:
                _event("ws_error", peer=conn.id, error=str(ws.exception()))
                break
    finally:
        forward = state.forwarded.pop(conn.id, None)
        if forward is not None:
            if state.cluster is not None:
                state.cluster.post(forward[0], cluster.DETACH, conn.id)
        else:
            state.dispatch(state.hub.disconnect(conn, cfg.clock()))
            state.clients.pop(conn, None)
        client.finish()
        try:
            # asyncio.wait, not wait_for: a writer cancelled by abort() is not our cancellation
            done, _pending = await asyncio.wait({client.task}, timeout=cfg.shutdown_timeout)
        except asyncio.CancelledError:
            client.abort()
            raise
        if not done:
            client.abort()
        if ws.prepared:
            _event(
                "disconnected",
                peer=conn.id,
                code=ws.close_code,
                connections=len(state.hub.connections),
            )
    return ws


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {**state.stats(), "version": agent.__version__}, status=503 if state.draining else 200
    )


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[STATE].metrics(), content_type="text/plain", charset="utf-8"
    )


async def _help(request: web.Request) -> web.Response:
    """``GET /help/<queue>``: the "get help" page for a queue; opens the agent, which waits."""
    queue = request.match_info["queue"]
    if not QUEUE_RE.fullmatch(queue) or queue.startswith("@"):
        return web.Response(status=404, text="no such queue\n")
    scheme = "wss" if request.secure else "ws"
    signal_url = f"{scheme}://{request.host}"
    link = f"peerdesk://help/{queue}?signal={quote(signal_url, safe='')}"
    page = (
        "<!doctype html><meta charset=utf-8><title>PeerDesk: get help</title>"
        f"<h1>Get help: {html.escape(queue)}</h1>"
        f'<p><a href="{html.escape(link)}">Open PeerDesk and wait for a support '
        "representative</a>.</p><p>Without PeerDesk installed, run: <code>peerdesk queue wait "
        f"{html.escape(link)} --name YOUR-NAME</code></p>"
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={"Content-Security-Policy": "default-src 'none'", "Cache-Control": "no-store"},
    )


async def _ice(request: web.Request) -> web.Response:
    """``GET /ice``: ICE servers for agents, with freshly minted TURN credentials."""
    state = request.app[STATE]
    ip = request.remote or "unknown"
    refused = state.admission.admit(ip, state.config.clock())  # same budget as /ws upgrades
    if refused is not None:
        return web.Response(status=refused[0], text=refused[1] + "\n")
    state.admission.release(ip)
    servers = [] if state.turn is None else [state.turn.mint(time.time()).as_json()]
    return web.json_response({"iceServers": servers}, headers={"Cache-Control": "no-store"})


async def _background(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    if state.cluster is not None:
        await state.cluster.start(state.on_mail, state.on_node_dead)
    task = asyncio.create_task(state.sweep_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if state.cluster is not None:
        await state.cluster.stop()


async def _on_shutdown(app: web.Application) -> None:
    state = app[STATE]
    state.draining = True
    clients = list(state.clients.values()) + [c for _, c in state.forwarded.values()]
    _event("shutting_down", connections=len(clients))
    state.dispatch(state.hub.shutdown())
    for _node, client in list(state.forwarded.values()):
        client.close(Disconnect(client.conn, CLOSE_GOING_AWAY, "server shutting down"))
    if clients:
        _done, pending = await asyncio.wait(
            [c.task for c in clients], timeout=state.config.shutdown_timeout
        )
        for client in clients:
            if client.task in pending:
                client.abort()


def create_app(
    config: ServerConfig | None = None,
    *,
    redis_url: str | None = None,
    node: str | None = None,
    turn: TurnSecret | None = None,
) -> web.Application:
    """The signaling server as an aiohttp application: ``/ws``, ``/healthz``, ``/metrics``,
    ``/ice``, ``/help/QUEUE``, ``/j/ROOM``. With ``redis_url`` it is one node of several
    sharing rooms through Redis."""
    app = web.Application()
    link = cluster.Cluster(redis_url, node=node) if redis_url else None
    app[STATE] = _State(config if config is not None else ServerConfig(), link, turn)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _healthz)
    landing.setup(app)  # /j/ROOM (one-click link landing page), /install/OS
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/ice", _ice)
    app.router.add_get("/help/{queue}", _help)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start_server(
    host: str | Sequence[str] = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
    *,
    redis_url: str | None = None,
    node: str | None = None,
    turn: TurnSecret | None = None,
) -> tuple[web.AppRunner, int]:
    """Start a server in the running loop; returns its runner and the port it listens on.

    ``port`` 0 picks a free port; with several hosts (``["0.0.0.0", "::"]``) every one
    listens on the same port. Stop it with ``await runner.cleanup()``. ``redis_url``
    makes it a node sharing rooms with the other nodes on that Redis.
    """
    hosts = [host] if isinstance(host, str) else list(host)
    if not hosts:
        raise ValueError("start_server needs at least one host")
    cfg = config if config is not None else ServerConfig()
    app = create_app(cfg, redis_url=redis_url, node=node, turn=turn)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=cfg.shutdown_timeout)
    await runner.setup()
    try:
        for name in hosts:
            site = web.TCPSite(runner, name, port)
            await site.start()
            if port == 0:
                port = int(runner.addresses[-1][1])
    except BaseException:
        await runner.cleanup()
        raise
    _event("listening", hosts=hosts, port=port)
    return runner, port


def state_of(runner: web.AppRunner) -> _State:
    """The running state of a server started with ``start_server`` (for tests and benches)."""
    return runner.app[STATE]


async def serve(
    host: str | Sequence[str] = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
    *,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    redis_url: str | None = None,
    turn: TurnSecret | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (or until ``stop`` is set), drain, then close every
    client. A second signal while draining stops at once."""
    stop = stop if stop is not None else asyncio.Event()
    hard = asyncio.Event()
    loop = asyncio.get_running_loop()
    cfg = config if config is not None else ServerConfig()
    runner, actual = await start_server(host, port, cfg, redis_url=redis_url, turn=turn)
    handled: list[signal.Signals] = []

    def on_signal() -> None:
        if stop.is_set():
            hard.set()
        stop.set()

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
                pass
        if on_ready is not None:
            on_ready(actual)
        await stop.wait()
        _event("stopping")
        if cfg.drain_timeout > 0:
            await state_of(runner).drain(cfg.drain_timeout, hard)
    finally:
        await runner.cleanup()
        for sig in handled:
            loop.remove_signal_handler(sig)
        _event("stopped")


def run(
    host: str | Sequence[str] = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
    *,
    on_ready: Callable[[int], None] | None = None,
    redis_url: str | None = None,
    turn: TurnSecret | None = None,
) -> None:
    """Run a server until SIGTERM or SIGINT; logs go to stderr as JSON lines."""
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, config, on_ready=on_ready, redis_url=redis_url, turn=turn))


def options(args: argparse.Namespace) -> tuple[ServerConfig, str | None, TurnSecret | None]:
    """The config, Redis URL and TURN secret from parsed ``add_arguments`` options;
    raises ``ValueError`` with a message for the person who typed them."""
    if args.drain < 0 or args.drain > 3600:
        raise ValueError("--drain must be between 0 and 3600 seconds")
    redis_url = args.redis
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("--redis takes a redis://, rediss:// or unix:// URL")
    secret = args.turn_secret or os.environ.get("PEERDESK_TURN_SECRET")
    turn: TurnSecret | None = None
    if args.turn_url or secret:
        if not (args.turn_url and secret):
            raise ValueError("--turn-url and --turn-secret go together")
        turn = TurnSecret(tuple(args.turn_url), secret, args.turn_ttl)
    token = getattr(args, "csr_token", None) or os.environ.get("PEERDESK_CSR_TOKEN") or None
    if token is not None and len(token) < 16:
        raise ValueError("--csr-token must be at least 16 characters")
    for flag in ("max_connections", "max_connections_per_ip"):
        if getattr(args, flag, 1) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
    config = ServerConfig(
        drain_timeout=args.drain,
        csr_token=token,
        max_connections=getattr(args, "max_connections", 20_000),
        max_connections_per_ip=getattr(args, "max_connections_per_ip", 64),
    )
    return config, redis_url, turn


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m signaling``: serve, print ``{"event":"listening","port":N}`` on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m signaling", description="PeerDesk signaling server"
    )
    parser.add_argument(
        "--host",
        action="append",
        help=f"address to listen on; repeat for several (default {DEFAULT_HOST})",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config, redis_url, turn = options(args)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(args.log_level.upper())

    def announce(actual: int) -> None:
        print(json.dumps({"event": "listening", "port": actual}), flush=True)

    try:
        run(
            args.host or [DEFAULT_HOST],
            args.port,
            config,
            on_ready=announce,
            redis_url=redis_url,
            turn=turn,
        )
    except ConnectionError as exc:
        print(f"python -m signaling: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
