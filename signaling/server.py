"""The PeerDesk signaling server: rooms, and relays of sealed payloads between them.

Run it with ``python -m signaling --port 8765`` (or ``peerdesk signal``); embed it in
an agent with ``runner, port = await start_server("127.0.0.1", 0)``.

A client opens a WebSocket on ``/ws`` and speaks the wire of
``agent.protocol.signaling``. ``create`` allocates a six-digit room whose host is the
sender; ``join`` enters a room as a joiner with a connection id the server makes;
``send`` relays opaque ``data`` between the host and its joiners; ``close`` ends a
room. The server never looks inside ``data`` and never logs it: it cannot read or
forge a join, because the join is a PAKE between the two agents.

The state lives in ``Hub``, which does no I/O: it is fed frames, disconnects and the
time, and answers with a list of actions (``Deliver`` a message to a connection,
``Disconnect`` a connection). The aiohttp handlers below only feed it and carry out
what it answers.

Invariants of the ``Hub``:

- a room id is in ``rooms`` exactly while the room is live; ids are never shared
  between two live rooms;
- ``room.host.hosted`` holds every live room the host owns, at most
  ``max_rooms_per_connection`` of them;
- a connection is the joiner of at most one room, ``conn.joined``, and is then in
  that room's ``joiners`` under its own id;
- every message a client sends costs one token of its bucket; a client with no token
  left gets ``rate_limited``, and one that keeps sending is disconnected (1008).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from aiohttp import WSCloseCode, WSMsgType, web

import agent
from agent.errors import DecodeError
from agent.protocol.signaling import (
    HOST,
    MAX_MESSAGE_BYTES,
    ClientMessage,
    Close,
    Closed,
    Create,
    Created,
    Error,
    Gone,
    Join,
    Joined,
    Peer,
    Relay,
    Send,
    ServerMessage,
    decode_client,
    encode,
)
from signaling import landing
from signaling.logs import configure_logging

log = logging.getLogger("peerdesk.signaling")

DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - a signaling server is meant to be reached
DEFAULT_PORT = 8765

#: WebSocket close code for a client that breaks the rate limit or cannot keep up.
CLOSE_POLICY = int(WSCloseCode.POLICY_VIOLATION)  # 1008
#: WebSocket close code sent to every client when the server stops.
CLOSE_GOING_AWAY = int(WSCloseCode.GOING_AWAY)  # 1001


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
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {value!r}")
        if self.burst < 1:
            raise ValueError(f"ServerConfig.burst must be at least 1, got {self.burst!r}")
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


@dataclass(eq=False)
class Room:
    """A live room: its host, its joiners by connection id, and when it was last used."""

    id: str
    host: Connection
    last_used: float
    joiners: dict[str, Connection] = field(default_factory=dict)


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


Action: TypeAlias = Deliver | Disconnect


def _error(conn: Connection, code: str, message: str) -> list[Action]:
    return [Deliver(conn, Error(code=code, message=_printable(message)))]


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

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self.rooms: dict[str, Room] = {}
        self.connections: dict[str, Connection] = {}

    # -- connections

    def connect(self, now: float) -> Connection:
        """Register a new client and give it a fresh connection id."""
        conn_id = secrets.token_hex(6)
        while conn_id in self.connections:
            conn_id = secrets.token_hex(6)
        conn = Connection(id=conn_id, tokens=self.config.burst, refilled=now)
        self.connections[conn_id] = conn
        return conn

    def disconnect(self, conn: Connection, now: float) -> list[Action]:
        """Forget ``conn``: its rooms close, its host and joiners are told it is gone."""
        if self.connections.get(conn.id) is not conn:
            return []
        del self.connections[conn.id]
        out: list[Action] = []
        for room in list(conn.hosted.values()):
            for joiner in room.joiners.values():
                joiner.joined = None
                out.append(Deliver(joiner, Gone(room=room.id, peer=HOST)))
            room.joiners.clear()
            self._drop(room)
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
            limited = self._rate_limit(conn, now)
            if limited is not None:
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
            return self._send(conn, msg.to, msg.data)
        return self._close(conn, msg)

    def expire(self, now: float) -> list[Action]:
        """Close every room unused for ``room_idle_ttl`` seconds."""
        ttl = self.config.room_idle_ttl
        out: list[Action] = []
        for room in [r for r in self.rooms.values() if now - r.last_used >= ttl]:
            out.append(Deliver(room.host, Closed(room=room.id, reason="expired")))
            out.extend(self._close_room(room, "expired"))
        return out

    def shutdown(self) -> list[Action]:
        """Close every connection with 1001, as the server stops."""
        return [
            Disconnect(conn, CLOSE_GOING_AWAY, "server shutting down")
            for conn in self.connections.values()
        ]

    # -- messages

    def _create(self, conn: Connection, now: float) -> list[Action]:
        cfg = self.config
        if len(conn.hosted) >= cfg.max_rooms_per_connection:
            return _error(
                conn,
                "too_many_rooms",
                f"a connection may host at most {cfg.max_rooms_per_connection} rooms at once; "
                "close one first",
            )
        if len(self.rooms) >= cfg.max_rooms:
            _event("server_full", level=logging.WARNING, rooms=len(self.rooms))
            return _error(conn, "server_full", "this server has no free room; try again later")
        room_id = self._new_room_id()
        if room_id is None:
            return _error(conn, "server_full", "this server has no free room; try again later")
        room = Room(id=room_id, host=conn, last_used=now)
        self.rooms[room_id] = room
        conn.hosted[room_id] = room
        _event("room_created", room=room_id, peer=conn.id, rooms=len(self.rooms))
        expires_in = max(0, min(86400, int(cfg.room_idle_ttl)))
        return [Deliver(conn, Created(room=room_id, expires_in=expires_in))]

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
        if room is None:
            return _error(conn, "room_not_found", f"room {room_id} does not exist or has closed")
        if room.host is conn:
            return _error(conn, "own_room", f"you host room {room_id}; you cannot also join it")
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
        return [
            Deliver(conn, Joined(room=room_id, peer=conn.id)),
            Deliver(room.host, Peer(room=room_id, peer=conn.id)),
        ]

    def _send(self, conn: Connection, to: str, data: str) -> list[Action]:
        if to == HOST:
            room = conn.joined
            if room is None:
                return _error(conn, "not_in_room", 'join a room before sending to "host"')
            _event(
                "relay", level=logging.DEBUG, room=room.id, peer=conn.id, to=HOST, size=len(data)
            )
            return [Deliver(room.host, Relay(room=room.id, sender=conn.id, data=data))]
        target = self.connections.get(to)
        room = target.joined if target is not None else None
        if target is None or room is None or room.host is not conn:
            return _error(conn, "peer_not_found", f"no joiner {to} in a room you host")
        _event("relay", level=logging.DEBUG, room=room.id, peer=HOST, to=to, size=len(data))
        return [Deliver(target, Relay(room=room.id, sender=HOST, data=data))]

    def _close(self, conn: Connection, msg: Close) -> list[Action]:
        room = self.rooms.get(msg.room)
        if room is None:
            return _error(conn, "room_not_found", f"room {msg.room} does not exist or has closed")
        if room.host is not conn:
            return _error(conn, "not_host", f"only the host of room {msg.room} can close it")
        return self._close_room(room, msg.reason)

    def _close_room(self, room: Room, reason: str) -> list[Action]:
        """Tell the joiners ``room`` closed, and drop it."""
        out: list[Action] = []
        for joiner in room.joiners.values():
            joiner.joined = None
            out.append(Deliver(joiner, Closed(room=room.id, reason=reason)))
        _event("room_closed", room=room.id, reason=reason, joiners=len(room.joiners))
        room.joiners.clear()
        self._drop(room)
        return out

    def _drop(self, room: Room) -> None:
        if self.rooms.get(room.id) is room:
            del self.rooms[room.id]
        room.host.hosted.pop(room.id, None)

    def _rate_limit(self, conn: Connection, now: float) -> list[Action] | None:
        cfg = self.config
        elapsed = max(0.0, now - conn.refilled)
        conn.tokens = min(cfg.burst, conn.tokens + elapsed * cfg.rate)
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

    def stats(self) -> dict[str, int]:
        """Counts for ``/healthz``."""
        return {"rooms": len(self.rooms), "connections": len(self.connections)}


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
        self.task = asyncio.create_task(self._write_loop())

    def send(self, text: str) -> None:
        if self.closing:
            return
        if self.queue.qsize() >= self.limit:
            _event("slow_client", level=logging.WARNING, peer=self.conn.id)
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
    """What one running app holds: the hub, the live clients, the expiry task."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.hub = Hub(config)
        self.clients: dict[Connection, _Client] = {}

    def dispatch(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                client = self.clients.get(action.to)
                if client is not None:
                    client.send(encode(action.message))
            else:
                client = self.clients.get(action.conn)
                if client is not None:
                    client.close(action)

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            try:
                self.dispatch(self.hub.expire(self.config.clock()))
            except Exception:
                log.exception("sweep_failed")


STATE = web.AppKey("peerdesk_signaling_state", _State)


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
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
                state.dispatch(state.hub.receive(conn, msg.data, cfg.clock()))
                # Let the writers run: a client's queue then only grows while its
                # socket is really backed up, not while this loop reads a burst.
                await asyncio.sleep(0)
            elif msg.type is WSMsgType.ERROR:
                _event("ws_error", peer=conn.id, error=str(ws.exception()))
                break
    finally:
        state.dispatch(state.hub.disconnect(conn, cfg.clock()))
        del state.clients[conn]
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
    return web.json_response({"status": "ok", **state.hub.stats(), "version": agent.__version__})


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[STATE].sweep_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _on_shutdown(app: web.Application) -> None:
    state = app[STATE]
    clients = list(state.clients.values())
    _event("shutting_down", connections=len(clients))
    state.dispatch(state.hub.shutdown())
    if clients:
        _done, pending = await asyncio.wait(
            [c.task for c in clients], timeout=state.config.shutdown_timeout
        )
        for client in clients:
            if client.task in pending:
                client.abort()


def create_app(config: ServerConfig | None = None) -> web.Application:
    """The signaling server as an aiohttp application: ``/ws``, ``/healthz``, ``/j/ROOM``."""
    app = web.Application()
    app[STATE] = _State(config if config is not None else ServerConfig())
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/healthz", _healthz)
    landing.setup(app)  # /j/ROOM (one-click link landing page), /install/OS
    app.cleanup_ctx.append(_sweeper)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start_server(
    host: str | Sequence[str] = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
) -> tuple[web.AppRunner, int]:
    """Start a server in the running loop; returns its runner and the port it listens on.

    ``port`` 0 picks a free port; with several hosts (``["0.0.0.0", "::"]``) every one
    listens on the same port. Stop it with ``await runner.cleanup()``.
    """
    hosts = [host] if isinstance(host, str) else list(host)
    if not hosts:
        raise ValueError("start_server needs at least one host")
    cfg = config if config is not None else ServerConfig()
    runner = web.AppRunner(create_app(cfg), access_log=None, shutdown_timeout=cfg.shutdown_timeout)
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


async def serve(
    host: str | Sequence[str] = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    config: ServerConfig | None = None,
    *,
    on_ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (or until ``stop`` is set), then close every client."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    runner, actual = await start_server(host, port, config)
    handled: list[signal.Signals] = []
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
            except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
                pass
        if on_ready is not None:
            on_ready(actual)
        await stop.wait()
        _event("stopping")
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
) -> None:
    """Run a server until SIGTERM or SIGINT; logs go to stderr as JSON lines."""
    configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, config, on_ready=on_ready))


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
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())

    def announce(actual: int) -> None:
        print(json.dumps({"event": "listening", "port": actual}), flush=True)

    run(args.host or [DEFAULT_HOST], args.port, on_ready=announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
