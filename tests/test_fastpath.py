"""The direct TCP fast path on loopback: bulk bytes, attackers at the port, resume, and
the transfer core driving it with the data channel as fallback.

``pytest -s tests/test_fastpath.py`` prints the measured MB/s (nothing asserts speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
import time
from collections import deque
from pathlib import Path

import pytest

from agent.files import store as fs
from agent.files.errors import FastPathError
from agent.net.fastpath import FRAME_DATA, FastPathSender, derive_keys, receive_file
from agent.session import filetransfer as ft

MiB = 1024 * 1024
TID = "0123456789abcdef"


def random_file(path: Path, mib: int, extra: int = 0) -> fs.FileInfo:
    """A file of fresh random bytes, written in 1 MiB blocks (no sparse holes)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib):
            block = os.urandom(MiB)
            h.update(block)
            f.write(block)
        tail = os.urandom(extra)
        h.update(tail)
        f.write(tail)
    return fs.FileInfo(mib * MiB + extra, h.hexdigest())


def file_sha(path: Path) -> str:
    return fs.describe(path).sha256


async def transfer(
    key: bytes,
    src: Path,
    part: fs.PartialFile,
    *,
    offset: int,
    size: int,
    receiver_key: bytes | None = None,
    cut_at: int | None = None,
) -> tuple[int | BaseException, int | BaseException, FastPathSender]:
    """One fast-path attempt; ``cut_at`` makes the sender drop the connection there."""
    sender = await FastPathSender.open(key, TID, host="127.0.0.1")

    def on_sent(pos: int) -> None:
        if cut_at is not None and pos >= cut_at:
            sender.abort()

    with fs.FileReader(src) as reader:
        results = await asyncio.gather(
            sender.send(reader, offset=offset, size=size, progress=on_sent),
            receive_file(
                "127.0.0.1",
                sender.port,
                session_key=receiver_key or key,
                transfer_id=TID,
                nonce=sender.nonce,
                sink=part,
                offset=offset,
                size=size,
            ),
            return_exceptions=True,
        )
    return results[0], results[1], sender


async def test_200_mb_cross_with_matching_sha256(tmp_path: Path) -> None:
    info = random_file(tmp_path / "big.bin", 200)
    (tmp_path / "down").mkdir()
    store = fs.FileStore(tmp_path / "down")
    key = os.urandom(32)
    part = store.open_partial(TID, "big.bin", info.size, info.sha256)
    start = time.perf_counter()
    sent, got, _ = await transfer(key, tmp_path / "big.bin", part, offset=0, size=info.size)
    elapsed = time.perf_counter() - start
    assert sent == info.size and got == info.size
    assert store.finish(TID) == info.sha256
    name = store.commit(TID, "big.bin")
    finished = time.perf_counter() - start
    assert file_sha(store.directory / name) == info.sha256
    print(
        f"\nfast path: {info.size / MiB:.0f} MiB in {elapsed:.2f} s = "
        f"{info.size / elapsed / 1e6:.0f} MB/s on the wire "
        f"({info.size / finished / 1e6:.0f} MB/s with fsync + rename; SHA-256 on the receiver)"
    )


async def _silent_then_closed(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def _garbage(port: int, payload: bytes) -> float:
    """Send ``payload``; seconds until the listener hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(payload)
    try:
        assert await asyncio.wait_for(reader.read(), 3) == b""
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return time.perf_counter() - start


async def test_attackers_are_dropped_and_the_real_transfer_succeeds(tmp_path: Path) -> None:
    info = random_file(tmp_path / "f.bin", 8, extra=12345)
    store = fs.FileStore(tmp_path)
    key = os.urandom(32)
    part = store.open_partial(TID, "f.out", info.size, info.sha256)
    sender = await FastPathSender.open(key, TID, host="127.0.0.1")
    with fs.FileReader(tmp_path / "f.bin") as reader:
        sending = asyncio.ensure_future(sender.send(reader, offset=0, size=info.size))
        silent = asyncio.ensure_future(_silent_then_closed(sender.port))
        # An HTTP probe, random bytes of exactly a hello's length, and a wrong key.
        assert await _garbage(sender.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") < 1.0
        assert await _garbage(sender.port, struct.pack(">I", 52) + os.urandom(52)) < 1.0
        (tmp_path / "w").mkdir()
        wrong = fs.FileStore(tmp_path / "w")
        with pytest.raises(FastPathError):
            await receive_file(
                "127.0.0.1",
                sender.port,
                session_key=os.urandom(32),
                transfer_id=TID,
                nonce=sender.nonce,
                sink=wrong.open_partial(TID, "x", info.size, info.sha256),
                offset=0,
                size=info.size,
            )
        assert sender.dropped == 3
        got = await receive_file(
            "127.0.0.1",
            sender.port,
            session_key=key,
            transfer_id=TID,
            nonce=sender.nonce,
            sink=part,
            offset=0,
            size=info.size,
        )
        assert await sending == info.size == got
    assert store.finish(TID) == info.sha256
    assert await silent == b""  # the idle connection was closed with the listener
    # One ticket, one connection: the port is gone now.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sender.port), timeout=1).close()


async def test_cut_half_way_and_resume_from_the_verified_offset(tmp_path: Path) -> None:
    info = random_file(tmp_path / "r.bin", 64, extra=777)
    (tmp_path / "down").mkdir()
    store = fs.FileStore(tmp_path / "down", sync_every=8 * MiB)
    key = os.urandom(32)
    part = store.open_partial(TID, "r.bin", info.size, info.sha256)
    sent, got, _ = await transfer(
        key, tmp_path / "r.bin", part, offset=0, size=info.size, cut_at=info.size // 2
    )
    assert isinstance(sent, FastPathError) and isinstance(got, FastPathError)
    print(f"\ncut: sender {sent.message!r}; receiver {got.message!r}")
    written = part.offset
    assert info.size // 2 - 2 * FRAME_DATA <= written < info.size
    assert written % FRAME_DATA == 0  # whole frames only
    # The receiving agent closes the partial file (fsync) and later reopens it.
    store.discard(TID, "r.bin", keep=True)
    part = store.open_partial(TID, "r.bin", info.size, info.sha256)
    assert part.offset == part.verified == written
    sent, got, _ = await transfer(key, tmp_path / "r.bin", part, offset=written, size=info.size)
    assert sent == got == info.size
    assert store.finish(TID) == info.sha256
    assert file_sha(store.directory / store.commit(TID, "r.bin")) == info.sha256


async def test_mismatched_offsets_and_keys_are_refused(tmp_path: Path) -> None:
    info = random_file(tmp_path / "o.bin", 1)
    store = fs.FileStore(tmp_path)
    part = store.open_partial(TID, "o.out", info.size, info.sha256)
    key = os.urandom(32)
    sender = await FastPathSender.open(key, TID, host="127.0.0.1")
    with fs.FileReader(tmp_path / "o.bin") as reader:
        results = await asyncio.gather(
            sender.send(reader, offset=0, size=info.size),
            receive_file(
                "127.0.0.1",
                sender.port,
                session_key=key,
                transfer_id=TID,
                nonce=sender.nonce,
                sink=part,
                offset=5,
                size=info.size,
            ),
            return_exceptions=True,
        )
    assert isinstance(results[0], FastPathError) and "wants bytes 5" in results[0].message
    assert isinstance(results[1], FastPathError)
    with pytest.raises(ValueError, match="32-byte"):
        derive_keys(b"short", TID, bytes(16))
    a, b = derive_keys(key, TID, bytes(16))
    assert a != b and (a, b) != derive_keys(key, TID, bytes(15) + b"\x01")


async def test_nobody_connects_and_cancel(tmp_path: Path) -> None:
    info = random_file(tmp_path / "n.bin", 0, extra=10)
    sender = await FastPathSender.open(os.urandom(32), TID, host="127.0.0.1")
    with fs.FileReader(tmp_path / "n.bin") as reader:
        with pytest.raises(FastPathError, match="did not connect"):
            await sender.send(reader, offset=0, size=info.size, accept_timeout=0.2)
        other = await FastPathSender.open(os.urandom(32), TID, host="127.0.0.1")
        task = asyncio.ensure_future(other.send(reader, offset=0, size=info.size))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        closing = await FastPathSender.open(os.urandom(32), TID, host="127.0.0.1")
        task = asyncio.ensure_future(closing.send(reader, offset=0, size=info.size))
        await asyncio.sleep(0.05)
        closing.close()
        with pytest.raises(FastPathError, match="closed"):
            await task
    with pytest.raises(FastPathError, match="could not reach"):
        await receive_file(
            "127.0.0.1",
            sender.port,
            session_key=os.urandom(32),
            transfer_id=TID,
            nonce=bytes(16),
            sink=None,  # type: ignore[arg-type]
            offset=0,
            size=10,
            connect_timeout=1,
        )


# --------------------------------------------------------------------------- with the core


class Agent:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.core = ft.FileTransfers(auto_accept=True)
        self.store = fs.FileStore(directory)
        self.inbox: deque[str | bytes] = deque()
        self.events: list[ft.Event] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}


async def run_session(
    a: Agent, b: Agent, key: bytes, sources: dict[str, Path], *, break_fast_path: bool
) -> None:
    """What the runtime will do: pump both cores, run disk requests in threads, prefer
    the fast path, fall back to the data channel when it fails."""
    loop = asyncio.get_running_loop()
    tried_fast: set[str] = set()

    async def fast_send(e: ft.SendReady) -> None:
        sender = await FastPathSender.open(key, e.id, host="127.0.0.1")
        start = a.core.offer_fast_path(e.id, sender.port, sender.nonce, ("127.0.0.1",))
        with fs.FileReader(sources[e.id]) as reader:
            try:
                delivered = await sender.send(
                    reader,
                    offset=start,
                    size=e.size,
                    progress=lambda n: a.core.fast_path_progress(e.id, n, loop.time()),
                )
            except FastPathError:
                delivered = 0
        a.core.fast_path_sent(e.id, delivered, loop.time())

    async def fast_receive(e: ft.FastPathOffered) -> None:
        part = b.store.partial(e.id)
        port = 1 if break_fast_path else e.port  # nothing listens on port 1
        with contextlib.suppress(FastPathError):
            await receive_file(
                e.hosts,
                port,
                session_key=key,
                transfer_id=e.id,
                nonce=e.nonce,
                sink=part,
                offset=e.offset,
                size=e.size,
                progress=lambda n: b.core.fast_path_progress(e.id, n, loop.time()),
            )
        b.core.fast_path_received(e.id, part.offset, loop.time())

    deadline = loop.time() + 30
    while loop.time() < deadline:
        for me, other in ((a, b), (b, a)):
            while (req := me.core.next_io()) is not None:
                me.core.io_done(await asyncio.to_thread(me.store.perform, req), loop.time())
            while (e := me.core.next_event()) is not None:
                me.events.append(e)
                if isinstance(e, ft.SendReady):
                    old = a.tasks.pop(e.id, None)
                    if old is not None:
                        old.cancel()  # the receiver moved on: stop that fast path
                    if e.id not in tried_fast:
                        tried_fast.add(e.id)
                        a.tasks[e.id] = asyncio.ensure_future(fast_send(e))
                elif isinstance(e, ft.FastPathOffered):
                    b.tasks[e.id] = asyncio.ensure_future(fast_receive(e))
            other.inbox.extend(me.core.messages_to_send())
            for _ in range(8):  # the data channel, for transfers not on the fast path
                rc = me.core.next_chunk(loop.time())
                if rc is None:
                    break
                with fs.FileReader(rc.source) as reader:
                    other.inbox.append(rc.frame(reader.read(rc.offset, rc.length)))
        for me in (a, b):
            while me.inbox:
                me.core.receive(me.inbox.popleft(), loop.time())
        if len([e for e in a.events if isinstance(e, ft.Completed | ft.Failed)]) == len(sources):
            break
        await asyncio.sleep(0.001)
    for task in [*a.tasks.values(), *b.tasks.values()]:
        task.cancel()


@pytest.mark.parametrize("break_fast_path", [False, True], ids=["fast", "fallback"])
async def test_the_core_drives_the_fast_path(tmp_path: Path, break_fast_path: bool) -> None:
    a, b = Agent(tmp_path / "a"), Agent(tmp_path / "b")
    src = tmp_path / "src"
    src.mkdir()
    info = random_file(src / "video.mp4", 3, extra=4321)
    key = os.urandom(32)
    tid = a.core.send_file("video.mp4", info.size, info.sha256, str(src / "video.mp4"), 0.0)
    await run_session(a, b, key, {tid: src / "video.mp4"}, break_fast_path=break_fast_path)
    done = [e for e in b.events if isinstance(e, ft.Completed)]
    assert done == [ft.Completed(tid, ft.Role.RECEIVE, "video.mp4", info.size, info.sha256)]
    assert [e for e in a.events if isinstance(e, ft.Completed)]
    assert file_sha(tmp_path / "b" / "video.mp4") == info.sha256
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["video.mp4"]
    ready = [e for e in a.events if isinstance(e, ft.SendReady)]
    assert len(ready) == (2 if break_fast_path else 1)


async def test_a_yielding_sender_on_a_lan_is_still_fast_and_shows_its_progress(
    tmp_path: Path,
) -> None:
    """With a screen live, frames shrink to a quarter second of the pace (a slow link's
    progress shows) and the pace doubles from 1 Mbit/s while no queue shows: a LAN's
    file still arrives whole, at its own speed."""
    info = random_file(tmp_path / "f.bin", 24, extra=777)
    store = fs.FileStore(tmp_path)
    key = os.urandom(32)
    part = store.open_partial(TID, "f.out", info.size, info.sha256)
    sender = await FastPathSender.open(key, TID, host="127.0.0.1")
    steps: list[int] = []
    start = time.perf_counter()
    with fs.FileReader(tmp_path / "f.bin") as reader:
        sent, got = await asyncio.wait_for(
            asyncio.gather(
                sender.send(reader, offset=0, size=info.size, yield_to=lambda: True),
                receive_file(
                    "127.0.0.1", sender.port, session_key=key, transfer_id=TID,
                    nonce=sender.nonce, sink=part, offset=0, size=info.size,
                    progress=steps.append,
                ),
            ),
            30,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"\nyielding on loopback: {info.size / elapsed / 1e6:.0f} MB/s in {len(steps)} frames")
    assert sent == got == info.size
    assert store.finish(TID) == info.sha256
    assert steps[0] <= FRAME_DATA // 16  # a quarter second of 1 Mbit/s, not 1 MiB
    assert steps[-1] == info.size
    assert sender.pace.cuts == 0  # loopback never queues
    assert elapsed < 5.0, elapsed  # 24 MiB: at 1 Mbit/s without the doubling, 200 s
