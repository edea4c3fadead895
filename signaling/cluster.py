"""Signaling nodes that share rooms through Redis (``peerdesk signal --redis URL``).

What lives in Redis, under a key prefix (``peerdesk:`` by default):

- ``room:<id>`` — the node that holds room ``<id>``. A node claims a fresh id with
  ``SET NX EX`` (the TTL is the room idle TTL plus a minute, renewed on every join),
  deletes it when the room closes (only if it still names that node), and the key
  expires by itself when a node dies.
- ``resume:<id>`` — the SHA-256 of room ``<id>``'s resume secret, set with the claim
  (atomically), renewed and deleted with it. A host whose node died sends ``resume``
  with the secret to any node, which takes the room over (``reclaim``) when the hash
  matches and the node named by ``room:<id>`` has no heartbeat: one Lua script checks
  both and sets ``room:<id>`` to itself and the new secret's hash, so two nodes racing
  for one room cannot both win. A node that stops gracefully leaves its rooms' claims
  in place (its heartbeat goes at once), so that their hosts resume them elsewhere.
- ``node:<node>`` — a node's heartbeat, set every second with a 5 s TTL. A node whose
  heartbeat key is missing is dead: its rooms are not found, the clients it forwarded
  to other nodes are dropped there, and clients forwarded to it are closed (1012) so
  that they reconnect.
- ``queues`` — the node that holds the support queues (one node holds them all; they
  are light). Claimed with ``SET NX EX`` on first use and renewed with the holder's
  heartbeat; a client that uses queues through another node is forwarded there like a
  joiner. When the holder dies, the next node to need the queues claims them within
  the heartbeat TTL; the customers who waited reconnect and wait again with their
  ticket, which gives them their place back (see ``ticket:<id>``).
- ``ticket:<id>`` — where a waiting customer stands (queue, first arrival as Unix time,
  transfer note), kept 15 minutes: a customer who lost the queues' node waits again
  with its ticket and gets its place back on the node that holds them next.
- ``mbox:<node>`` — the node's mailbox, a Redis stream (``XADD MAXLEN ~``, read with
  ``XREAD BLOCK`` from the last id seen). A room lives on the node where its host is
  connected. A joiner connected elsewhere is *forwarded*: its own node posts the
  joiner's frames to the room's node, which answers into the joiner's node's mailbox.

Delivery guarantee. While Redis and both nodes are up, mail between two nodes arrives
in the order it was posted, each message exactly once: one writer task per node posts
in order, and the reader resumes from the last stream id it saw (also across a lost
Redis connection), so nothing is skipped while the stream keeps it (the last ~100,000
entries). When the Redis connection fails in the middle of a batch, the writer retries
the batch up to three times, so that batch may arrive twice, or, if Redis stays away,
not at all (a node keeps at most 200,000 operations queued for Redis, then drops new
mail and logs ``redis_backlog_full``). The join is authenticated end to end and is
tested against a server that drops, duplicates and replays its messages
(tests/test_hostile_signaling.py): such a fault can fail or time out a join, never make
a wrong one succeed. Mail for a node that died is lost with that node;
its clients' WebSockets are gone too. Nothing is persisted past Redis itself: rooms are
ephemeral, and a Redis restart loses the rooms waiting for a join, not the sessions,
which are peer to peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("peerdesk.signaling")

HEARTBEAT_EVERY = 1.0
"Seconds between two heartbeats of a node."
HEARTBEAT_TTL = 5
"Seconds after its last heartbeat that a node counts as dead."
STREAM_MAXLEN = 100_000
"Entries a mailbox keeps (approximately); a reader that falls further behind loses the oldest."
STREAM_TTL = 60
"Seconds a mailbox stream outlives its last write (so that a dead node's mailbox goes)."
TICKET_TTL = 900
"Seconds a waiting customer's place is kept for it to come back with its ticket."
BATCH = 512
"Most operations sent to Redis in one pipeline."
MAX_PENDING = 200_000
"Operations waiting for Redis; past this (Redis down for long) new mail is dropped, logged."

# Delete a key only if it still holds our value: a room id that expired and was claimed
# by another node must not be freed by us.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Claim a room id and store its resume secret's hash, both or neither.
_CLAIM = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[3]) then
  redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
# Free a room id and its resume hash, only if the room is still ours.
_RELEASE_ROOM = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1], KEYS[2]) end
return 0
"""
# Store a room's new resume hash and renew its claim, only if the room is still ours.
_REKEY = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('expire', KEYS[1], ARGV[3])
  return redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[3])
end
return 0
"""
# Take a room over with its resume secret: the stored hash must match, and the node
# holding the room (if any) must have no heartbeat. ARGV: old hash, new hash, this
# node, ttl, the heartbeat key prefix. (The owner's heartbeat key is only known inside
# the script; fine on a single Redis, which is what the nodes share.)
_RECLAIM = """
local stored = redis.call('get', KEYS[2])
if not stored then return 'room_not_found' end
if stored ~= ARGV[1] then return 'bad_secret' end
local owner = redis.call('get', KEYS[1])
if owner and owner ~= ARGV[3] and redis.call('exists', ARGV[5] .. owner) == 1 then
  return 'owner_alive'
end
redis.call('set', KEYS[1], ARGV[3], 'EX', ARGV[4])
redis.call('set', KEYS[2], ARGV[2], 'EX', ARGV[4])
return 'ok'
"""
# Renew a key only if it still holds our value.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""

ATTACH = "a"
"To a room's node: client ``conn`` of node ``node`` joins here (data: nothing)."
FRAME = "f"
"To a room's node: a WebSocket text frame of forwarded client ``conn``."
DETACH = "x"
"To a room's node: forwarded client ``conn`` disconnected."
OUT = "o"
"To a client's node: write ``data`` (a server message) to local client ``conn``."
CLOSE = "z"
"To a client's node: close local client ``conn``; ``data`` is ``<code> <reason>``."
KINDS = frozenset({ATTACH, FRAME, DETACH, OUT, CLOSE})


@dataclass(frozen=True)
class Mail:
    """One message between nodes."""

    kind: str
    "One of ATTACH, FRAME, DETACH, OUT, CLOSE."
    node: str
    "The node that posted it."
    conn: str
    "The connection id it is about."
    data: str
    "A frame, a server message, or a close code and reason; empty for ATTACH and DETACH."


def parse_mail(fields: dict[str, str]) -> Mail | None:
    """A mailbox entry, or None when it is not one of ours (never trusted blindly)."""
    kind, node, conn, data = (fields.get(k) for k in ("k", "n", "c", "d"))
    if kind not in KINDS or not node or not conn or data is None:
        return None
    if len(node) > 64 or len(conn) > 64:
        return None
    return Mail(kind, node, conn, data)


class Cluster:
    """This node's link to Redis: room claims, node liveness and mailboxes."""

    def __init__(self, url: str, *, node: str | None = None, prefix: str = "peerdesk:") -> None:
        self.url = url
        self.node = node if node is not None else secrets.token_hex(4)
        self.prefix = prefix
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=10.0
        )
        self.holds_queues = False
        "Whether this node holds the support queues (see ``queue_node``)."
        self.peers: set[str] = set()
        "Nodes we exchange mail with; their heartbeat is checked every second."
        self.posted = 0
        self.received = 0
        self.dropped = 0
        self._ops: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # -- keys

    def room_key(self, room: str) -> str:
        return f"{self.prefix}room:{room}"

    def resume_key(self, room: str) -> str:
        return f"{self.prefix}resume:{room}"

    def node_key(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def ticket_key(self, ticket: str) -> str:
        return f"{self.prefix}ticket:{ticket}"

    def queues_key(self) -> str:
        return f"{self.prefix}queues"

    def mbox_key(self, node: str) -> str:
        return f"{self.prefix}mbox:{node}"

    # -- life

    async def start(
        self,
        on_mail: Callable[[Mail], Awaitable[None]],
        on_node_dead: Callable[[str], None],
    ) -> None:
        """Check Redis answers, announce this node, and start its background tasks."""
        try:
            await self.redis.ping()
            await self.redis.set(self.node_key(self.node), "1", ex=HEARTBEAT_TTL)
        except (RedisError, OSError) as exc:
            await self.redis.aclose()
            raise ConnectionError(f"cannot reach Redis at {redact(self.url)}: {exc}") from None
        self._tasks = [
            asyncio.create_task(self._heartbeat(on_node_dead)),
            asyncio.create_task(self._read(on_mail)),
            asyncio.create_task(self._write()),
        ]
        log.info("cluster_joined", extra={"fields": {"node": self.node, "redis": redact(self.url)}})

    async def stop(self) -> None:
        """Flush what is queued, leave (delete the heartbeat), close the connection."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush_all(), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self.node_key(self.node))
            if self.holds_queues:
                await self.redis.eval(_RELEASE, 1, self.queues_key(), self.node)
        await self.redis.aclose()

    # -- rooms

    async def claim(self, room: str, ttl: float, secret_hash: str) -> bool | None:
        """True if ``room`` is now ours (with ``secret_hash`` stored for resuming it),
        False if another node holds it, None if Redis fails."""
        keys = (self.room_key(room), self.resume_key(room))
        try:
            won = await self.redis.eval(_CLAIM, 2, *keys, self.node, secret_hash, _ttl(ttl))
        except (RedisError, OSError) as exc:
            log.warning("claim_failed", extra={"fields": {"room": room, "error": str(exc)}})
            return None
        return bool(won)

    async def reclaim(self, room: str, old_hash: str, new_hash: str, ttl: float) -> str | None:
        """Take ``room`` over for this node (see ``resume:<id>`` above): ``ok``,
        ``bad_secret``, ``room_not_found``, ``owner_alive``, or None if Redis fails."""
        keys = (self.room_key(room), self.resume_key(room))
        try:
            result = await self.redis.eval(
                _RECLAIM,
                2,
                *keys,
                old_hash,
                new_hash,
                self.node,
                _ttl(ttl),
                f"{self.prefix}node:",
            )
        except (RedisError, OSError) as exc:
            log.warning("reclaim_failed", extra={"fields": {"room": room, "error": str(exc)}})
            return None
        if result not in ("ok", "bad_secret", "room_not_found", "owner_alive"):
            return None
        if result == "ok":
            log.info("room_reclaimed", extra={"fields": {"room": room, "node": self.node}})
        return str(result)

    async def locate(self, room: str) -> str | None:
        """The live node (not this one) that holds ``room``, if any."""
        try:
            node = await self.redis.get(self.room_key(room))
            if not isinstance(node, str) or node == self.node:
                return None
            if not await self.redis.exists(self.node_key(node)):
                return None  # its node died; the claim expires by itself
        except (RedisError, OSError) as exc:
            log.warning("locate_failed", extra={"fields": {"room": room, "error": str(exc)}})
            return None
        self.peers.add(node)
        return node

    async def queue_node(self) -> str | None:
        """``""`` if this node holds the queues (claiming them if nobody does), else the
        live node that holds them, or None if that cannot be known right now."""
        if self.holds_queues:
            return ""
        key = self.queues_key()
        try:
            if await self.redis.set(key, self.node, nx=True, ex=HEARTBEAT_TTL):
                self.holds_queues = True
                log.info("queues_claimed", extra={"fields": {"node": self.node}})
                return ""
            node = await self.redis.get(key)
            if node == self.node:
                self.holds_queues = True
                return ""
            if isinstance(node, str) and await self.redis.exists(self.node_key(node)):
                self.peers.add(node)
                return node
        except (RedisError, OSError) as exc:
            log.warning("queue_node_failed", extra={"fields": {"error": str(exc)}})
        return None

    def remember(self, ticket: str, queue: str, since_wall: float, note: str) -> None:
        """Store where ``ticket`` stands (queued), for ``TICKET_TTL`` seconds."""
        self._queue("remember", ticket, json.dumps([queue, since_wall, note]))

    def forget(self, ticket: str) -> None:
        """``ticket`` was taken (queued)."""
        self._queue("forget", ticket)

    async def recall(self, ticket: str) -> tuple[str, float, str] | None:
        """(queue, first arrival as Unix time, note) stored for ``ticket``, if any."""
        try:
            raw = await self.redis.get(self.ticket_key(ticket))
        except (RedisError, OSError) as exc:
            log.warning("recall_failed", extra={"fields": {"error": str(exc)}})
            return None
        try:
            queue, since, note = json.loads(raw) if isinstance(raw, str) else (None, None, None)
        except (ValueError, TypeError):
            return None
        if not (isinstance(queue, str) and isinstance(since, int | float)):
            return None
        if not isinstance(note, str) or isinstance(since, bool):
            return None
        return queue, float(since), note

    def release(self, room: str) -> None:
        """Free ``room``'s id (queued; in order with the mail)."""
        self._queue("release", room)

    def touch(self, room: str, ttl: float) -> None:
        """Renew ``room``'s claim for ``ttl`` seconds (queued)."""
        self._queue("touch", room, ttl)

    def rekey(self, room: str, secret_hash: str, ttl: float) -> None:
        """Store ``room``'s new resume secret hash, if the room is still ours (queued)."""
        self._queue("rekey", room, secret_hash, ttl)

    # -- mail

    def post(self, node: str, kind: str, conn: str, data: str = "") -> None:
        """Queue mail for ``node``; posted in order by one writer."""
        self.peers.add(node)
        self._queue("post", node, kind, conn, data)

    def _queue(self, op: str, *args: Any) -> None:
        if self._ops.qsize() >= MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning("redis_backlog_full", extra={"fields": {"dropped": self.dropped}})
            return
        self._ops.put_nowait((op, args))

    async def _flush_all(self) -> None:
        await self._ops.join()

    async def _write(self) -> None:
        while True:
            first = await self._ops.get()
            batch = [first]
            while len(batch) < BATCH and not self._ops.empty():
                batch.append(self._ops.get_nowait())
            pipe = self.redis.pipeline(transaction=False)
            streams: set[str] = set()
            for op, args in batch:
                if op == "post":
                    node, kind, conn, data = args
                    key = self.mbox_key(node)
                    streams.add(key)
                    pipe.xadd(
                        key,
                        {"k": kind, "n": self.node, "c": conn, "d": data},
                        maxlen=STREAM_MAXLEN,
                        approximate=True,
                    )
                elif op == "release":
                    room = args[0]
                    keys = (self.room_key(room), self.resume_key(room))
                    pipe.eval(_RELEASE_ROOM, 2, *keys, self.node)
                elif op == "touch":
                    pipe.expire(self.room_key(args[0]), _ttl(args[1]))
                    pipe.expire(self.resume_key(args[0]), _ttl(args[1]))
                elif op == "rekey":
                    room, digest, ttl = args
                    keys = (self.room_key(room), self.resume_key(room))
                    pipe.eval(_REKEY, 2, *keys, self.node, digest, _ttl(ttl))
                elif op == "remember":
                    pipe.set(self.ticket_key(args[0]), args[1], ex=TICKET_TTL)
                elif op == "forget":
                    pipe.delete(self.ticket_key(args[0]))
            for key in streams:
                pipe.expire(key, STREAM_TTL)
            try:
                for attempt in range(3):
                    try:
                        await pipe.execute()
                        self.posted += len(batch)
                        break
                    except (RedisError, OSError) as exc:
                        log.warning(
                            "redis_write_failed",
                            extra={"fields": {"ops": len(batch), "error": str(exc)}},
                        )
                        await asyncio.sleep(0.2 * (attempt + 1))
            finally:
                for _ in batch:
                    self._ops.task_done()

    async def _read(self, on_mail: Callable[[Mail], Awaitable[None]]) -> None:
        key = self.mbox_key(self.node)
        last = "0-0"  # a fresh node id: its stream is new, read it from the start
        while True:
            try:
                answer: Any = await self.redis.xread({key: last}, count=BATCH, block=1000)
            except (RedisError, OSError) as exc:
                log.warning("redis_read_failed", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(0.5)
                continue
            streams: list[tuple[str, list[tuple[str, dict[str, str]]]]] = answer or []
            for _stream, entries in streams:
                for entry_id, fields in entries:
                    last = entry_id
                    mail = parse_mail(fields)
                    if mail is None:
                        log.warning("bad_mail", extra={"fields": {"id": entry_id}})
                        continue
                    self.received += 1
                    try:
                        await on_mail(mail)
                    except Exception:
                        log.exception("mail_failed", extra={"fields": {"kind": mail.kind}})

    async def _heartbeat(self, on_node_dead: Callable[[str], None]) -> None:
        me = self.node_key(self.node)
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            try:
                await self.redis.set(me, "1", ex=HEARTBEAT_TTL)
                if self.holds_queues and not await self.redis.eval(
                    _RENEW, 1, self.queues_key(), self.node, str(HEARTBEAT_TTL)
                ):
                    # lost them (a long Redis outage): whoever claimed them holds them now
                    self.holds_queues = False
                    log.warning("queues_lost", extra={"fields": {"node": self.node}})
                peers = sorted(self.peers)
                if not peers:
                    continue
                alive = await self.redis.exists(*[self.node_key(p) for p in peers])
                if alive == len(peers):
                    continue
                pipe = self.redis.pipeline(transaction=False)
                for p in peers:
                    pipe.exists(self.node_key(p))
                flags = await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("redis_heartbeat_failed", extra={"fields": {"error": str(exc)}})
                continue
            for peer, flag in zip(peers, flags, strict=True):
                if not flag:
                    self.peers.discard(peer)
                    log.warning("node_dead", extra={"fields": {"node": peer}})
                    on_node_dead(peer)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _ttl(seconds: float) -> int:
    return max(1, int(seconds) + 60)
