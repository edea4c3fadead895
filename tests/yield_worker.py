"""Inside a shaped namespace: a fast-path file and a constant-rate "screen" share the link.

    ip netns exec NS python -m tests.yield_worker yield|full [seconds]

The screen is UDP at ``SCREEN_BPS`` between the namespace's two veth addresses, each
packet stamped with its send time; the file is a real ``FastPathSender`` and
``receive_file`` (TCP, AES-GCM), its bytes a pattern the sink checks. Prints one JSON
line: the file's goodput and the screen's one-way delay p50/p95 and loss, measured
after ``WARMUP_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
import time

from agent.files.errors import FastPathError
from agent.net import fastpath
from agent.net.fastpath import FastPathSender, receive_file

A, B = "10.78.0.1", "10.78.0.2"
SCREEN_BPS = 2_000_000
PACKET = 1200
WARMUP_S = 3.0
SIZE = 200 * 1024 * 1024


def _pattern(offset: int, n: int) -> bytes:
    block = bytes(range(256)) * 4096  # 1 MiB
    start = offset % 256
    out = (block[start:] + block[:start]) * (n // len(block) + 1)
    return out[:n]


class Source:
    def read_into(self, offset: int, buf: memoryview) -> int:
        buf[:] = _pattern(offset, len(buf))
        return len(buf)


class Sink:
    def __init__(self) -> None:
        self.bytes = 0
        self.wrong = 0
        self.writes: list[tuple[float, int]] = []

    def write(self, offset: int, data: memoryview) -> None:
        if bytes(data[:4096]) != _pattern(offset, min(4096, len(data))):
            self.wrong += 1
        self.bytes += len(data)
        self.writes.append((time.monotonic(), self.bytes))

    def goodput(self, since: float) -> float:
        """Bits/s between the first and the last frame written after ``since``."""
        got = [w for w in self.writes if w[0] >= since]
        if len(got) < 2:
            return 0.0
        return (got[-1][1] - got[0][1]) * 8 / (got[-1][0] - got[0][0])


async def _screen(stop: asyncio.Event, delays: list[tuple[float, float]], sent: list[int]) -> None:
    loop = asyncio.get_running_loop()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind((B, 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)

    async def receive() -> None:
        while True:
            data = await loop.sock_recv(rx, 2048)
            now = time.monotonic()
            delays.append((now, now - struct.unpack("!d", data[:8])[0]))

    receiver = asyncio.ensure_future(receive())
    start, n, to = time.monotonic(), 0, rx.getsockname()
    try:
        while not stop.is_set():
            due = int((time.monotonic() - start) * SCREEN_BPS / 8 / PACKET)
            while n < due:
                with contextlib.suppress(BlockingIOError):
                    tx.sendto(struct.pack("!d", time.monotonic()) + bytes(PACKET - 8), to)
                    sent.append(int(time.monotonic() * 1000))
                n += 1
            await asyncio.sleep(0.005)
    finally:
        receiver.cancel()
        rx.close()
        tx.close()


async def main(mode: str, seconds: float) -> None:
    fastpath.FRAME_DATA = 64 * 1024  # finer progress to measure by; the pace is the same
    key, tid = os.urandom(32), "5a" * 8
    sender = FastPathSender.listen(key, tid, host=A)
    sink = Sink()
    stop = asyncio.Event()
    delays: list[tuple[float, float]] = []
    sent: list[int] = []
    screen = asyncio.ensure_future(_screen(stop, delays, sent))
    yield_to = (lambda: True) if mode == "yield" else None
    t0: float | None = None
    n0 = 0
    sending_at = time.monotonic()
    sending = asyncio.ensure_future(sender.send(Source(), offset=0, size=SIZE, yield_to=yield_to))
    receiving = asyncio.ensure_future(
        receive_file([A], sender.port, session_key=key, transfer_id=tid, nonce=sender.nonce,
                     sink=sink, offset=0, size=SIZE)
    )  # fmt: skip
    trace: list[tuple[float, float | None, float, int]] = []
    for _ in range(int((WARMUP_S + seconds) * 4)):
        await asyncio.sleep(0.25)
        if time.monotonic() - sending_at >= WARMUP_S and t0 is None:
            t0, n0 = time.monotonic(), len(sent)
        pace = sender.pace
        mbps = None if pace.rate_bps is None else round(pace.rate_bps / 1e6, 2)
        at = round(time.monotonic() - sending_at, 2)
        trace.append((at, mbps, round(pace.queue_s * 1000, 1), pace.cuts))
    got = [d for at, d in delays if at >= t0]
    stop.set()
    await screen
    for task in (sending, receiving):
        task.cancel()
    for task in (sending, receiving):
        with contextlib.suppress(asyncio.CancelledError, FastPathError):
            await task
    sender.close()
    got.sort()
    print(json.dumps({
        "file_bps": sink.goodput(t0),
        "wrong": sink.wrong,
        "p50": got[len(got) // 2] if got else None,
        "p95": got[int(len(got) * 0.95)] if got else None,
        "screen_sent": len(sent) - n0, "screen_got": len(got),
        "cuts": sender.pace.cuts, "rate": sender.pace.rate_bps, "queue": sender.pace.queue_s,
        "frames": len(sink.writes), "trace": trace,
    }))  # fmt: skip


if __name__ == "__main__":
    import faulthandler

    faulthandler.dump_traceback_later(45, exit=True)  # a hang says where, then ends
    asyncio.run(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 8.0))
