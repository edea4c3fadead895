"""Control latency: a CSR's input event to its injection on the customer's desktop.

    python -m bench.control            (starts its own Xvfb; needs Xvfb installed)

Measured one-way, in one process and one event loop, so both ends read the same
``time.perf_counter()``: from just before the CSR encodes a pointer move and sends it
on a real aiortc data channel (two in-process peers on loopback: DTLS, SCTP,
ordered and reliable, like the control channel), through the customer's decode,
``ControlArbiter.receive`` and ``Injector.submit``, to the moment the pynput call in
the injector's worker thread returns. pynput ends each call with an XSync, so the
X server (an Xvfb this bench starts) has processed the move by then.

Baseline, in the same run and interleaved sample by sample: a raw UDP datagram on
loopback between two asyncio datagram endpoints of the same loop, also one-way
(``sendto`` to ``datagram_received``), no halving of a round trip on either side.

Events are paced 5 ms apart (200 a second, the arbiter's sustained rate; a pointer
moved at 120 Hz sends fewer), so the figures are latencies, not queueing under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from aiortc import RTCPeerConnection

from agent.input import Injector, Monitor
from agent.net.peer import rtc_configuration
from agent.protocol import control as ctl
from agent.session.control import Action, ControlArbiter

INTERVAL = 0.005
"Seconds between samples (200 events a second)."
WIDTH, HEIGHT = 1280, 800


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def xvfb(width: int = WIDTH, height: int = HEIGHT) -> Iterator[str]:
    """Run an Xvfb on a free display and point ``DISPLAY`` at it inside the block."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
            "-noreset",  # a server reset when the last client leaves refuses new ones
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    saved = os.environ.get("DISPLAY")
    try:
        buf = b""
        deadline = time.monotonic() + 10
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                raise RuntimeError("Xvfb did not report a display within 10 s")
            chunk = os.read(read_fd, 64)
            if not chunk:
                raise RuntimeError(f"Xvfb exited ({proc.poll()}) before reporting a display")
            buf += chunk
        display = f":{buf.decode().strip()}"
        os.environ["DISPLAY"] = display
        yield display
    finally:
        os.close(read_fd)
        if saved is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = saved
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[float] | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = time.perf_counter()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(now)


async def _pair() -> tuple[RTCPeerConnection, RTCPeerConnection, Any, Any]:
    csr = RTCPeerConnection(rtc_configuration())
    customer = RTCPeerConnection(rtc_configuration())
    tx = csr.createDataChannel(ctl.CHANNEL_LABEL, negotiated=True, id=2)
    rx = customer.createDataChannel(ctl.CHANNEL_LABEL, negotiated=True, id=2)
    opened = asyncio.get_running_loop().create_future()
    tx.on("open", lambda: None if opened.done() else opened.set_result(None))
    await csr.setLocalDescription(await csr.createOffer())
    await customer.setRemoteDescription(csr.localDescription)
    await customer.setLocalDescription(await customer.createAnswer())
    await csr.setRemoteDescription(customer.localDescription)
    await asyncio.wait_for(opened, 10)
    return csr, customer, tx, rx


async def measure(n: int = 500) -> dict[str, float]:
    """Control latency p50/p99 (ms) beside a raw UDP one-way on loopback, same run.

    Keys: ``n``; ``control_p50_ms``/``control_p99_ms`` (send to injected);
    ``channel_p50_ms`` (send to the customer's on-message); ``inject_p50_ms``
    (on-message to injected: decode, arbiter, queue, thread hop, pynput + XSync);
    ``udp_p50_ms``/``udp_p99_ms``; ``ratio_p50`` (control over UDP); ``dropped``.
    """
    with xvfb():
        return await _measure(n)


async def _measure(n: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[float] | None = None
    received: list[float] = []

    def injected(action: Action, at: float) -> None:  # in the injector's worker thread
        def resolve() -> None:
            if waiter is not None and not waiter.done():
                waiter.set_result(at)

        loop.call_soon_threadsafe(resolve)

    arbiter = ControlArbiter()
    arbiter.transfer("csr", (1, 1))
    arbiter.grant()
    injector = Injector(Monitor(0, 0, WIDTH, HEIGHT), on_injected=injected)
    injector.start()

    def on_message(data: str | bytes) -> None:
        received.append(time.perf_counter())
        event = ctl.decode(data)
        injector.submit(*arbiter.receive("csr", event, time.monotonic()))

    udp_rx, udp = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
    udp_tx, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=udp_rx.get_extra_info("sockname")
    )
    csr, customer, tx, rx = await _pair()
    rx.on("message", on_message)
    total: list[float] = []
    channel: list[float] = []
    inject: list[float] = []
    raw: list[float] = []
    try:
        await injector.drain()  # pynput is up before the first sample
        for i in range(n):
            tick = time.perf_counter()
            # UDP one-way
            waiter = loop.create_future()
            udp.waiter = waiter
            start = time.perf_counter()
            udp_tx.sendto(b"x" * 64)
            raw.append(await asyncio.wait_for(waiter, 5) - start)
            # Control one-way, the same way
            waiter = loop.create_future()
            x = 0.2 + 0.6 * (i % 2)  # alternate, so every move moves
            start = time.perf_counter()
            tx.send(ctl.encode(ctl.Pointer(token=(1, 1), seq=i + 1, action="move", x=x, y=0.5)))
            done = await asyncio.wait_for(waiter, 5)
            total.append(done - start)
            channel.append(received[-1] - start)
            inject.append(done - received[-1])
            await asyncio.sleep(max(0.0, INTERVAL - (time.perf_counter() - tick)))
    finally:
        injector.close()
        udp_tx.close()
        udp_rx.close()
        await csr.close()
        await customer.close()
    ms = 1000.0
    dropped = sum(arbiter.dropped.values())
    return {
        "n": float(n),
        "control_p50_ms": statistics.median(total) * ms,
        "control_p99_ms": _pct(total, 0.99) * ms,
        "channel_p50_ms": statistics.median(channel) * ms,
        "inject_p50_ms": statistics.median(inject) * ms,
        "udp_p50_ms": statistics.median(raw) * ms,
        "udp_p99_ms": _pct(raw, 0.99) * ms,
        "ratio_p50": statistics.median(total) / statistics.median(raw),
        "dropped": float(dropped),
    }


def report(f: dict[str, float]) -> list[str]:
    """Print the figures; return RESULTS.md table rows (the shape bench/run.py records)."""
    print(f"control: {int(f['n'])} pointer moves, CSR send -> injected on Xvfb (one-way)")
    print(
        f"  control event     p50 {f['control_p50_ms']:7.3f} ms   p99 {f['control_p99_ms']:7.3f} ms"
    )
    print(f"    data channel    p50 {f['channel_p50_ms']:7.3f} ms")
    print(f"    decode->inject  p50 {f['inject_p50_ms']:7.3f} ms")
    print(f"  raw UDP one-way   p50 {f['udp_p50_ms']:7.3f} ms   p99 {f['udp_p99_ms']:7.3f} ms")
    print(f"  ratio (p50)       {f['ratio_p50']:.1f}x   (goal: p50 <= 5 ms)")
    return [
        f"| control p50 / p99 | {f['control_p50_ms']:.2f} ms / {f['control_p99_ms']:.2f} ms "
        f"| UDP one-way {f['udp_p50_ms']:.3f} ms / {f['udp_p99_ms']:.3f} ms "
        f"| **{f['ratio_p50']:.1f}x** | {int(f['n'])} events |"
    ]


if __name__ == "__main__":
    report(asyncio.run(measure()))
