"""A direct, authenticated TCP path for bulk file bytes between two agents.

aiortc's SCTP data channel moves a few MB/s; two agents that can reach each other
directly move a file's bytes over one TCP connection instead, and fall back to the
data channel when they cannot.

How a transfer uses it:

1. The sending agent opens a ``FastPathSender`` (an ephemeral listening port) and
   tells the receiver ``port`` and ``nonce`` in a ``fastpath`` message on the files
   channel, which the PAKE-derived session already authenticates.
2. The receiving agent calls ``receive_file``: it connects and sends a *hello*
   frame sealed under the fast-path key. Anyone can connect to the port; a
   connection whose first frame is not exactly a hello that opens under the key is
   closed at once, and the listener keeps waiting for the real receiver.
3. The sender streams ``[offset, size)`` in frames of up to ``FRAME_DATA`` bytes
   (smaller while it yields to a screen, so that progress shows on a slow link); the
   receiver writes them to its partial file and finally sends a sealed *done*.

Keys: HKDF-SHA256 over the 32-byte session key, salted with the fresh 16-byte
nonce, with the transfer id in ``info``, gives one AES-256-GCM key per direction.
GCM nonces are a 4-byte direction label and a 64-bit frame counter; each listener
takes exactly one authenticated connection, so no key ever sees a counter twice.

Wire: every frame is ``u32 length (big-endian) || AES-GCM ciphertext (with tag)``.
The hello's plaintext is ``b"PDFP/1 hello" || id (8) || offset (u64) || size (u64)``,
the done's ``b"PDFP/1 done" || end offset (u64)``; data frames hold file bytes only.
Hot loops use ``loop.sock_sendall``/``sock_recv_into`` on preallocated buffers, with
disk reads, sealing and opening in a worker thread overlapping the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.files.errors import FastPathError
from agent.protocol.files import NONCE_BYTES, TRANSFER_ID_RE
from agent.session.fileyield import FileYield

log = logging.getLogger(__name__)

FRAME_DATA = 1024 * 1024
"File bytes per frame."
TAG = 16
_LEN = struct.Struct(">I")
_HELLO_MAGIC = b"PDFP/1 hello"
_DONE_MAGIC = b"PDFP/1 done"
_HELLO = struct.Struct(f">{len(_HELLO_MAGIC)}s8sQQ")
_DONE = struct.Struct(f">{len(_DONE_MAGIC)}sQ")
_S2R = b"s2r\x00"
_R2S = b"r2s\x00"
HELLO_TIMEOUT = 5.0
"Seconds a fresh connection has to prove the key."
ACCEPT_TIMEOUT = 15.0
"Seconds the sender waits for the receiver to connect."
CONNECT_TIMEOUT = 5.0
DONE_TIMEOUT = 60.0
"Seconds the sender waits for the receiver's done after the last byte."
IO_TIMEOUT = 30.0
"Seconds without progress after which a connection counts as dead."
# Timeouts are ``asyncio.timeout`` blocks, not ``asyncio.wait_for``: on Python 3.11, a
# task cancelled just as the awaited send or read completes has its cancellation
# swallowed by ``wait_for`` (fixed in 3.12, gh-86296), and a cancelled transfer goes on
# sending, at the yield's pace for minutes (the likely cause of tests/yield_worker.py's
# hang in CI: its loop idle, the worker awaiting the send it had cancelled).
MAX_PENDING = 16
"Unauthenticated connections a listener vets at once; more are closed."
NOTSENT_LOWAT = 64 * 1024
"""Unsent bytes the kernel may hold for us while yielding (Linux ``TCP_NOTSENT_LOWAT``):
without it a grown send buffer holds up to seconds of a slow link's worth of file."""
YIELD_FRAME_S = 0.25
"While yielding, a frame holds this many seconds of the pace: progress a person can see."
YIELD_FRAME_MIN = 16 * 1024
_TCP_NOTSENT_LOWAT = 25
_TCP_INFO = struct.Struct("=68xII72xI")
"Linux ``struct tcp_info``: ``tcpi_rtt``, ``tcpi_rttvar`` (us) at 68, ``tcpi_min_rtt`` at 148."


class Source(Protocol):
    """Where the sender reads the file (``agent.files.store.FileReader``)."""

    def read_into(self, offset: int, buf: memoryview) -> int: ...


class Sink(Protocol):
    """Where the receiver writes it (``agent.files.store.PartialFile``)."""

    def write(self, offset: int, data: memoryview) -> None: ...


Progress = Callable[[int], None]
"Called with the offset reached after each frame."
YieldTo = Callable[[], bool]
"Asked before each slice: whether a screen is live on this link (the file then yields)."


def tcp_rtt(sock: socket.socket) -> tuple[float, float | None] | None:
    """TCP's smoothed round trip and the least it saw (s), or None where the kernel
    does not say (only Linux's ``TCP_INFO`` is read)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except OSError:
        return None
    if len(raw) >= _TCP_INFO.size:
        rtt, _, least = _TCP_INFO.unpack_from(raw)
        return rtt / 1e6, least / 1e6 if least else None
    if len(raw) >= 76:
        return struct.unpack_from("I", raw, 68)[0] / 1e6, None
    return None


def _limit_unsent(sock: socket.socket, limit: bool) -> None:
    """Hold the kernel's unsent bytes to ``NOTSENT_LOWAT`` (or back to its default: on
    loopback the limit cost 10-15 % of the fast path's goodput)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT if limit else 0)


def derive_keys(session_key: bytes, transfer_id: str, nonce: bytes) -> tuple[bytes, bytes]:
    """(sender-to-receiver, receiver-to-sender) AES-256 keys for one fast-path ticket."""
    if len(session_key) != 32 or len(nonce) != NONCE_BYTES:
        raise ValueError("the fast path needs a 32-byte session key and a 16-byte nonce")
    if not TRANSFER_ID_RE.fullmatch(transfer_id):
        raise ValueError("not a transfer id")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64,
        salt=nonce,
        info=b"peerdesk/1 fastpath " + bytes.fromhex(transfer_id),
    ).derive(session_key)
    return okm[:32], okm[32:]


class _Box:
    """AES-256-GCM with a counter nonce for one direction of one connection."""

    def __init__(self, key: bytes, label: bytes) -> None:
        self._aead = AESGCM(key)
        self._label = label
        self._into = hasattr(self._aead, "encrypt_into")

    def nonce(self, counter: int) -> bytes:
        return self._label + counter.to_bytes(8, "big")

    def seal(self, counter: int, plain: bytes) -> bytes:
        ct = self._aead.encrypt(self.nonce(counter), plain, None)
        return _LEN.pack(len(ct)) + ct

    def seal_into(self, counter: int, plain: memoryview, out: memoryview) -> int:
        """Write ``length || ciphertext`` of ``plain`` into ``out``; returns its size."""
        size = len(plain) + TAG
        _LEN.pack_into(out, 0, size)
        if self._into:
            self._aead.encrypt_into(self.nonce(counter), plain, None, out[4 : 4 + size])
        else:  # cryptography < 44
            out[4 : 4 + size] = self._aead.encrypt(self.nonce(counter), plain, None)
        return 4 + size

    def open_into(self, counter: int, sealed: memoryview, out: memoryview) -> int:
        size = len(sealed) - TAG
        try:
            if self._into:
                self._aead.decrypt_into(self.nonce(counter), sealed, None, out[:size])
            else:
                out[:size] = self._aead.decrypt(self.nonce(counter), sealed, None)
        except InvalidTag:
            raise FastPathError("a fast-path frame failed authentication") from None
        return size

    def open(self, counter: int, sealed: bytes | memoryview) -> bytes:
        try:
            return self._aead.decrypt(self.nonce(counter), sealed, None)
        except InvalidTag:
            raise FastPathError("a fast-path frame failed authentication") from None


async def _recv_exactly(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, view: memoryview
) -> None:
    got = 0
    while got < len(view):
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise FastPathError("the fast-path connection closed early")
        got += n


async def _read_frame(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray, max_size: int
) -> memoryview:
    head = memoryview(buf)[:4]
    await _recv_exactly(loop, sock, head)
    (size,) = _LEN.unpack(head)
    if not TAG < size <= max_size:
        raise FastPathError(f"a fast-path frame of {size} bytes is out of range")
    view = memoryview(buf)[4 : 4 + size]
    await _recv_exactly(loop, sock, view)
    return view


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _listen_socket(host: str | None, port: int) -> socket.socket:
    """A non-blocking listening socket; ``None`` means every address, IPv4 and IPv6."""
    if host is None and socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError:
            host = "0.0.0.0"  # noqa: S104 - the peer must reach us; a key guards the port
        else:
            sock.listen(8)
            sock.setblocking(False)
            return sock
    infos = socket.getaddrinfo(
        host or "0.0.0.0",  # noqa: S104
        port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST,
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
        sock.listen(8)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class FastPathSender:
    """The sending end: listens for one transfer's receiver and streams the file to it.

    ``async with await FastPathSender.open(key, tid) as fp:`` then send ``fp.port``
    and ``fp.nonce`` to the receiver and ``await fp.send(reader, offset=, size=)``.
    """

    def __init__(self, listener: socket.socket, session_key: bytes, transfer_id: str) -> None:
        self.nonce = os.urandom(NONCE_BYTES)
        s2r, r2s = derive_keys(session_key, transfer_id, self.nonce)
        self._out_box = _Box(s2r, _S2R)
        self._in_box = _Box(r2s, _R2S)
        self._transfer_id = transfer_id
        self._listener: socket.socket | None = listener
        self.port: int = listener.getsockname()[1]
        self.dropped = 0
        "Connections closed because they did not prove the key."
        self._sock: socket.socket | None = None
        self._vetting: set[asyncio.Task[None]] = set()
        self._acceptor: asyncio.Future[None] | None = None
        self.pace = FileYield()
        "The pace while a screen is live (``send``'s ``yield_to``)."
        self._said = 0.0
        self._limited = False

    @classmethod
    def listen(
        cls, session_key: bytes, transfer_id: str, *, host: str | None = None, port: int = 0
    ) -> FastPathSender:
        """Like ``open``, synchronously (binding a socket does not block)."""
        return cls(_listen_socket(host, port), session_key, transfer_id)

    @classmethod
    async def open(
        cls, session_key: bytes, transfer_id: str, *, host: str | None = None, port: int = 0
    ) -> FastPathSender:
        """Listen on ``host`` (an IP literal; None for all addresses) and ``port`` (0:
        any free one)."""
        return cls(_listen_socket(host, port), session_key, transfer_id)

    async def __aenter__(self) -> FastPathSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening (a running ``send`` ends with ``FastPathError``) and cut any
        connection. To stop a ``send`` cleanly, cancel the task that runs it."""
        if self._acceptor is not None and not self._acceptor.done():
            self._acceptor.cancel()  # _accept closes the listener once the accept is off
        elif self._listener is not None:
            _close(self._listener)
            self._listener = None
        self.abort()

    def abort(self) -> None:
        """Cut the data connection at once (cancelling a transfer; tests use it too)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    async def send(
        self,
        source: Source,
        *,
        offset: int,
        size: int,
        progress: Progress | None = None,
        accept_timeout: float = ACCEPT_TIMEOUT,
        yield_to: YieldTo | None = None,
    ) -> int:
        """Wait for the receiver, stream ``[offset, size)`` from ``source``, wait for its
        done; returns the end offset it confirmed (``size``). Raises ``FastPathError``.

        ``yield_to``: while it says a screen is live on this link, the bytes are paced by
        ``agent.session.fileyield`` from TCP's round trip, so the file takes what the
        screen leaves free (``pace`` shows the controller; Linux only: elsewhere the
        kernel does not tell us the round trip and the file goes at full speed)."""
        loop = asyncio.get_running_loop()
        sock = await self._accept(loop, offset, size, accept_timeout)
        self._sock = sock
        if yield_to is not None and tcp_rtt(sock) is None:
            log.info("fast path: this system does not report TCP's round trip; no yielding")
            yield_to = None
        try:
            await self._stream(loop, sock, source, offset, size, progress, yield_to)
            buf = bytearray(4 + _DONE.size + TAG)
            async with asyncio.timeout(DONE_TIMEOUT):
                sealed = await _read_frame(loop, sock, buf, _DONE.size + TAG)
            magic, end = _DONE.unpack(self._in_box.open(1, sealed))
            if magic != _DONE_MAGIC or end != size:
                raise FastPathError(f"the receiver confirmed {end} of {size} bytes")
            return int(end)
        except TimeoutError:
            raise FastPathError("the fast-path receiver stopped answering") from None
        except OSError as exc:
            raise FastPathError(f"the fast-path connection failed: {exc}") from None
        finally:
            self._sock = None
            _close(sock)

    async def _stream(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        source: Source,
        offset: int,
        size: int,
        progress: Progress | None,
        yield_to: YieldTo | None,
    ) -> None:
        plain = memoryview(bytearray(FRAME_DATA))
        outs = [memoryview(bytearray(4 + FRAME_DATA + TAG)) for _ in range(2)]
        box = self._out_box

        def produce(counter: int, pos: int, out: memoryview, limit: int) -> int:
            n = min(limit, size - pos)
            if source.read_into(pos, plain[:n]) != n:
                raise FastPathError("the file to send got shorter while sending")
            return box.seal_into(counter, plain[:n], out)

        pos, counter = offset, 0

        def frame_limit() -> int:
            rate = None if yield_to is None else self.pace.rate_bps
            if rate is None:
                return FRAME_DATA
            return max(YIELD_FRAME_MIN, min(FRAME_DATA, int(rate / 8 * YIELD_FRAME_S)))

        if yield_to is not None:
            self.pace.set_live(yield_to(), time.monotonic())
        ready = (
            loop.run_in_executor(None, produce, 0, pos, outs[0], frame_limit())
            if pos < size
            else None
        )
        while ready is not None:
            length = await ready
            out = outs[counter % 2]
            sent_to = pos + length - 4 - TAG
            nxt = sent_to if sent_to < size else None
            ready = (
                loop.run_in_executor(
                    None, produce, counter + 1, nxt, outs[(counter + 1) % 2], frame_limit()
                )
                if nxt is not None
                else None
            )
            try:
                if yield_to is None:
                    async with asyncio.timeout(IO_TIMEOUT):
                        await loop.sock_sendall(sock, out[:length])
                else:
                    await self._send_yielding(loop, sock, out[:length], yield_to)
            except BaseException:
                if ready is not None:
                    with contextlib.suppress(BaseException):
                        await ready
                raise
            pos, counter = sent_to, counter + 1
            if progress is not None:
                progress(pos)

    async def _send_yielding(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        data: memoryview,
        yield_to: YieldTo,
    ) -> None:
        """Send ``data`` in slices, each when ``self.pace`` lets it leave."""
        pace, pos = self.pace, 0
        while pos < len(data):
            now = time.monotonic()
            pace.set_live(yield_to(), now)
            if pace.live != self._limited:
                self._limited = pace.live
                _limit_unsent(sock, pace.live)
            if pace.live and now - self._said >= 2.0:
                self._said = now
                log.info(
                    "fast path: yielding to the screen at %.0f kbit/s, queue %.0f ms (%d cuts)",
                    (pace.rate_bps or 0) / 1000,
                    pace.queue_s * 1000,
                    pace.cuts,
                )
            rtt = tcp_rtt(sock)
            if rtt is not None:
                pace.on_rtt(rtt[0], now, min_rtt=rtt[1])
            if (wait := pace.wait(now)) > 0:
                await asyncio.sleep(wait)
            piece = data[pos : pos + pace.slice_bytes()]
            async with asyncio.timeout(IO_TIMEOUT):
                await loop.sock_sendall(sock, piece)
            pace.on_sent(len(piece), time.monotonic())
            pos += len(piece)

    async def _accept(
        self, loop: asyncio.AbstractEventLoop, offset: int, size: int, wait: float
    ) -> socket.socket:
        listener = self._listener
        if listener is None:
            raise FastPathError("this fast-path ticket was used or closed")
        winner: asyncio.Future[tuple[socket.socket, bytes]] = loop.create_future()

        async def vet(conn: socket.socket) -> None:
            keep = False
            try:
                buf = bytearray(4 + _HELLO.size + TAG)
                async with asyncio.timeout(HELLO_TIMEOUT):
                    sealed = await _read_frame(loop, conn, buf, _HELLO.size + TAG)
                if len(sealed) != _HELLO.size + TAG:
                    raise FastPathError("not a hello")
                hello = self._in_box.open(0, sealed)
                if not winner.done():
                    winner.set_result((conn, hello))
                    keep = True
            except (FastPathError, OSError, TimeoutError):
                self.dropped += 1
                log.info("fast path: dropped a connection that did not prove the key")
            finally:
                if not keep:
                    _close(conn)

        async def accept_loop() -> None:
            while True:
                conn, _ = await loop.sock_accept(listener)
                conn.setblocking(False)
                if len(self._vetting) >= MAX_PENDING:
                    self.dropped += 1
                    _close(conn)
                    continue
                task = asyncio.ensure_future(vet(conn))
                self._vetting.add(task)
                task.add_done_callback(self._vetting.discard)

        acceptor = self._acceptor = asyncio.ensure_future(accept_loop())
        acceptor.add_done_callback(lambda f: winner.done() or winner.cancel())
        try:
            async with asyncio.timeout(wait):
                conn, hello = await asyncio.shield(winner)
        except BaseException as exc:
            if winner.done() and not winner.cancelled():
                _close(winner.result()[0])
            winner.cancel()
            if isinstance(exc, TimeoutError):
                raise FastPathError("the receiver did not connect to the fast path") from None
            if isinstance(exc, asyncio.CancelledError) and not _cancelling():
                raise FastPathError("the fast path was closed") from None
            raise
        finally:
            acceptor.cancel()
            for task in list(self._vetting):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acceptor
            self._acceptor = None
            _close(listener)  # one connection per ticket: never reuse the key
            self._listener = None
        magic, raw_id, want_offset, want_size = _HELLO.unpack(hello)
        if magic != _HELLO_MAGIC or raw_id.hex() != self._transfer_id:
            _close(conn)
            raise FastPathError("the fast-path hello is for another transfer")
        if (want_offset, want_size) != (offset, size):
            _close(conn)
            raise FastPathError(
                f"the receiver wants bytes {want_offset}..{want_size}, "
                f"the sender has {offset}..{size}"
            )
        return conn


async def receive_file(
    hosts: str | Sequence[str],
    port: int,
    *,
    session_key: bytes,
    transfer_id: str,
    nonce: bytes,
    sink: Sink,
    offset: int,
    size: int,
    progress: Progress | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> int:
    """Connect to a ``FastPathSender`` and write ``[offset, size)`` into ``sink``.

    Tries each of ``hosts`` in turn. Returns ``size``; raises ``FastPathError`` when
    it could not connect or the stream broke (``sink`` then holds whole frames only,
    up to where it stopped: continue from there).
    """
    s2r, r2s = derive_keys(session_key, transfer_id, nonce)
    in_box, out_box = _Box(s2r, _S2R), _Box(r2s, _R2S)
    loop = asyncio.get_running_loop()
    sock = await _connect(
        loop, [hosts] if isinstance(hosts, str) else list(hosts), port, connect_timeout
    )
    try:
        hello = _HELLO.pack(_HELLO_MAGIC, bytes.fromhex(transfer_id), offset, size)
        await loop.sock_sendall(sock, out_box.seal(0, hello))
        await _receive_stream(loop, sock, in_box, sink, offset, size, progress)
        await loop.sock_sendall(sock, out_box.seal(1, _DONE.pack(_DONE_MAGIC, size)))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        return size
    except TimeoutError:
        raise FastPathError("the fast-path sender stopped sending") from None
    except OSError as exc:
        raise FastPathError(f"the fast-path connection failed: {exc}") from None
    finally:
        _close(sock)


async def _connect(
    loop: asyncio.AbstractEventLoop, hosts: list[str], port: int, wait: float
) -> socket.socket:
    errors = []
    for host in hosts:
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(wait):
                    await loop.sock_connect(sock, address)
            except BaseException:
                sock.close()
                raise
            return sock
        except (OSError, TimeoutError) as exc:
            errors.append(f"{host}: {exc or 'timed out'}")
    raise FastPathError(f"could not reach the fast path ({'; '.join(errors) or 'no address'})")


async def _receive_stream(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    box: _Box,
    sink: Sink,
    offset: int,
    size: int,
    progress: Progress | None,
) -> None:
    frames = [bytearray(4 + FRAME_DATA + TAG) for _ in range(2)]
    plain = memoryview(bytearray(FRAME_DATA))

    def consume(counter: int, sealed: memoryview, pos: int) -> int:
        n = box.open_into(counter, sealed, plain)
        sink.write(pos, plain[:n])
        return pos + n

    pos, counter, arriving = offset, 0, offset
    pending: asyncio.Future[int] | None = None
    try:
        while pos < size or pending is not None:
            sealed = None
            if arriving < size:  # more frames to come, each at most what is left
                most = min(FRAME_DATA, size - arriving) + TAG
                async with asyncio.timeout(IO_TIMEOUT):
                    sealed = await _read_frame(loop, sock, frames[counter % 2], most)
            if pending is not None:
                pos = await pending
                pending = None
                if progress is not None:
                    progress(pos)
            if sealed is not None:
                pending = loop.run_in_executor(None, consume, counter, sealed, arriving)
                arriving += len(sealed) - TAG
                counter += 1
    finally:
        if pending is not None:  # let the last write land so the sink stays consistent
            with contextlib.suppress(BaseException):
                await asyncio.shield(pending)
