"""A signaling server test double that can be hostile.

It speaks the wire of ``agent.protocol.signaling`` on ``/ws`` (JSON text frames),
and behaves like the real server: ``create`` gets ``created`` with a six-digit
room, ``join`` gets ``joined`` (and the host a ``peer``), ``send`` is relayed,
``close`` closes the room, and a disconnect tells the other side ``gone``.

What makes it hostile: every ``data`` string a client asks it to relay first goes
through ``tamper(direction, room, peer, data)``, which returns the data strings to
actually deliver to the original destination (``[data]`` is honest, ``[]`` drops,
``[data, data]`` duplicates, anything else rewrites). ``direction`` is ``to_host``
(``peer`` is the sending joiner) or ``to_joiner`` (``peer`` is the addressee). A
tamper hook can also inject with ``to_host``/``to_joiner`` (those bypass the hook),
invent joiners with ``add_fake_joiner`` (what the host sends them lands in
``fake_inbox``), and ``honour_close = False`` keeps closed rooms open.

Below the relay, ``outgoing(conn, msg, text)`` sees every frame the server is about
to send (``conn.hosted`` tells a host from a joiner) and returns the raw frames to
send instead: ``None`` keeps it, ``[]`` drops it, ``[CLOSE]`` closes the connection
there, anything else goes out as written (garbage, truncated JSON, other messages).

Everything clients asked to relay is logged in ``relayed`` (before tampering),
everything delivered in ``delivered``, and every raw frame in ``frames``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from agent.errors import DecodeError
from agent.protocol.signaling import (
    HOST,
    MAX_MESSAGE_BYTES,
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

TO_HOST = "to_host"
TO_JOINER = "to_joiner"

Tamper = Callable[[str, str, str, str], list[str]]
"(direction, room, peer, data) -> the data strings to deliver instead."

CLOSE = "\x00close"
"A frame an ``outgoing`` hook returns to close the connection at that point."


@dataclass(frozen=True)
class Relayed:
    """One ``data`` string on its way between a host and a joiner."""

    direction: str
    "``to_host`` or ``to_joiner``."
    room: str
    peer: str
    "The joiner: sender of a ``to_host``, addressee of a ``to_joiner``."
    data: str


@dataclass(eq=False)
class _Conn:
    id: str
    ws: web.WebSocketResponse
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    writer: asyncio.Task[None] | None = None
    hosted: set[str] = field(default_factory=set)
    joined: str | None = None


@dataclass(eq=False)
class _Room:
    id: str
    host: _Conn
    joiners: dict[str, _Conn] = field(default_factory=dict)
    fakes: set[str] = field(default_factory=set)


class HostileSignaling:
    """The double; ``await start()`` returns its ``ws://127.0.0.1:PORT`` URL."""

    def __init__(self) -> None:
        self.tamper: Tamper | None = None
        self.outgoing: Callable[[_Conn, ServerMessage, str], list[str] | None] | None = None
        self.honour_close = True
        self.relayed: list[Relayed] = []
        self.delivered: list[Relayed] = []
        self.frames: list[tuple[str, str]] = []
        "(``in`` or ``out``, raw text) for every frame, in order."
        self.fake_inbox: dict[str, list[str]] = {}
        self.closed_rooms: dict[str, str] = {}
        "Rooms a host asked to close, with the reason (even when not honoured)."
        self.hook_errors: list[BaseException] = []
        self.rooms: dict[str, _Room] = {}
        self._conns: dict[str, _Conn] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        port = int(self._runner.addresses[0][1])
        self.url = f"ws://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.ws.close(), 1.0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what a tamper hook (or a test) may do

    def to_host(self, room: str, sender: str, data: str) -> None:
        """Deliver ``data`` to ``room``'s host as if ``sender`` had sent it."""
        r = self.rooms.get(room)
        if r is None:
            return
        self.delivered.append(Relayed(TO_HOST, room, sender, data))
        self._send(r.host, Relay(room=room, sender=sender, data=data))

    def to_joiner(self, room: str, peer: str, data: str) -> None:
        """Deliver ``data`` to joiner ``peer`` as if the host had sent it."""
        r = self.rooms.get(room)
        if r is None:
            return
        self.delivered.append(Relayed(TO_JOINER, room, peer, data))
        if peer in r.fakes:
            self.fake_inbox.setdefault(peer, []).append(data)
        elif (target := r.joiners.get(peer)) is not None:
            self._send(target, Relay(room=room, sender=HOST, data=data))

    def add_fake_joiner(self, room: str, peer: str | None = None) -> str:
        """Invent a joiner of ``room`` (the host is told with ``peer``); returns its id."""
        fake = peer if peer is not None else secrets.token_hex(6)
        r = self.rooms[room]
        r.fakes.add(fake)
        self.fake_inbox.setdefault(fake, [])
        self._send(r.host, Peer(room=room, peer=fake))
        return fake

    def relayed_data(self, direction: str) -> list[str]:
        return [r.data for r in self.relayed if r.direction == direction]

    # -- the wire

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=2 * MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        conn = _Conn(secrets.token_hex(6), ws)
        conn.writer = asyncio.create_task(self._write_loop(conn))
        self._conns[conn.id] = conn
        try:
            async for frame in ws:
                if frame.type is WSMsgType.TEXT:
                    self.frames.append(("in", frame.data))
                    self._receive(conn, frame.data)
        finally:
            self._disconnect(conn)
            conn.queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.writer, 1.0)
        return ws

    async def _write_loop(self, conn: _Conn) -> None:
        while (text := await conn.queue.get()) is not None:
            try:
                if text == CLOSE:
                    await conn.ws.close()
                    return
                await conn.ws.send_str(text)
            except Exception:  # the client went away mid-write
                return

    def _send(self, conn: _Conn, msg: ServerMessage) -> None:
        text = encode(msg)
        frames: list[str] | None = None
        if self.outgoing is not None:
            try:
                frames = self.outgoing(conn, msg, text)
            except Exception as exc:  # surfaced by the test
                self.hook_errors.append(exc)
        for frame in [text] if frames is None else frames:
            self.frames.append(("out", frame))
            conn.queue.put_nowait(frame)

    def _receive(self, conn: _Conn, text: str) -> None:
        try:
            msg = decode_client(text)
        except DecodeError as exc:
            self._send(conn, Error(code=exc.code, message=exc.message[:500]))
            return
        if isinstance(msg, Create):
            room = f"{secrets.randbelow(10**6):06d}"
            while room in self.rooms:
                room = f"{secrets.randbelow(10**6):06d}"
            self.rooms[room] = _Room(room, conn)
            conn.hosted.add(room)
            self._send(conn, Created(room=room, expires_in=600))
        elif isinstance(msg, Join):
            r = self.rooms.get(msg.room)
            if r is None:
                text = f"room {msg.room} does not exist or has closed"
                self._send(conn, Error(code="room_not_found", message=text))
                return
            r.joiners[conn.id] = conn
            conn.joined = msg.room
            self._send(conn, Joined(room=msg.room, peer=conn.id))
            self._send(r.host, Peer(room=msg.room, peer=conn.id))
        elif isinstance(msg, Send):
            self._relay(conn, msg)
        elif isinstance(msg, Close):
            r = self.rooms.get(msg.room)
            if r is None or r.host is not conn:
                text = f"no room {msg.room} of yours"
                self._send(conn, Error(code="room_not_found", message=text))
                return
            self.closed_rooms[msg.room] = msg.reason
            if self.honour_close:
                self._close_room(r, msg.reason)

    def _relay(self, conn: _Conn, msg: Send) -> None:
        if msg.to == HOST:
            room = conn.joined
            if room is None:
                self._send(conn, Error(code="not_in_room", message="join a room first"))
                return
            direction, peer = TO_HOST, conn.id
        else:
            room = next(
                (
                    r.id
                    for r in self.rooms.values()
                    if r.host is conn and (msg.to in r.joiners or msg.to in r.fakes)
                ),
                None,
            )
            if room is None:
                self._send(conn, Error(code="peer_not_found", message=f"no joiner {msg.to}"))
                return
            direction, peer = TO_JOINER, msg.to
        self.relayed.append(Relayed(direction, room, peer, msg.data))
        out = [msg.data]
        if self.tamper is not None:
            try:
                out = self.tamper(direction, room, peer, msg.data)
            except Exception as exc:  # surfaced by the test fixture
                self.hook_errors.append(exc)
                out = []
        for data in out:
            if direction == TO_HOST:
                self.to_host(room, peer, data)
            else:
                self.to_joiner(room, peer, data)

    def _close_room(self, r: _Room, reason: str) -> None:
        for joiner in r.joiners.values():
            joiner.joined = None
            self._send(joiner, Closed(room=r.id, reason=reason))
        r.joiners.clear()
        r.host.hosted.discard(r.id)
        self.rooms.pop(r.id, None)

    def _disconnect(self, conn: _Conn) -> None:
        self._conns.pop(conn.id, None)
        for room in list(conn.hosted):
            r = self.rooms.pop(room, None)
            if r is None:
                continue
            for joiner in r.joiners.values():
                joiner.joined = None
                self._send(joiner, Gone(room=room, peer=HOST))
        conn.hosted.clear()
        if conn.joined is not None and (r := self.rooms.get(conn.joined)) is not None:
            r.joiners.pop(conn.id, None)
            self._send(r.host, Gone(room=r.id, peer=conn.id))
        conn.joined = None


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true, or fail the test saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)
