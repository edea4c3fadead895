"""Control transfer: from the primary's ``transfer_control`` to the customer's agent
enforcing the new holder, beside a one-way message on a bare aiortc data channel.

All in one process and event loop, on loopback: a primary CSR, a customer (control
pre-granted) and an assistant CSR admitted with the CSR code; control goes to the
assistant and back ``n`` times. The customer enforces a transfer when its arbiter
holds the new holder and token, which is what ``ControlChanged`` reports.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from agent.services.customer import CustomerOptions
from bench.join import _p95


async def _bare_one_way(n: int) -> list[float]:
    from aiortc import RTCPeerConnection

    from agent.net.peer import rtc_configuration

    a, b = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    ca = a.createDataChannel("c", negotiated=True, id=0)
    cb = b.createDataChannel("c", negotiated=True, id=0)
    got: asyncio.Queue[float] = asyncio.Queue()
    cb.on("message", lambda m: got.put_nowait(time.perf_counter()))
    opened = asyncio.get_running_loop().create_future()
    ca.on("open", lambda: None if opened.done() else opened.set_result(None))
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await asyncio.wait_for(opened, 10)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        ca.send('{"type":"transfer"}')
        out.append(await asyncio.wait_for(got.get(), 5) - t)
        await asyncio.sleep(0.01)
    await a.close()
    await b.close()
    return out


async def measure(n: int = 40) -> dict[str, Any]:
    """Under a private Xvfb: the customer's agent needs a display to be controlled."""
    import os

    from agent.capture.xvfb import Xvfb

    with Xvfb(1280, 800) as screen:
        saved = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = screen.display
        try:
            return await _measure(n)
        finally:
            if saved is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = saved


async def _measure(n: int) -> dict[str, Any]:
    from signaling.server import start_server

    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    changes: asyncio.Queue[tuple[float, str | None]] = asyncio.Queue()
    asks: asyncio.Queue[str] = asyncio.Queue()

    def primary_saw(e: status.Status) -> None:
        if isinstance(e, status.AssistantRequest):
            asks.put_nowait(e.peer)

    def customer_saw(e: status.Status) -> None:
        if isinstance(e, status.ControlChanged):
            changes.put_nowait((time.perf_counter(), e.holder))

    primary = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, primary_saw)
    code = await primary.start()
    customer = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Alice"),
        JoinLink(code, url),
        url,
        customer_saw,
        options=CustomerOptions(accept=frozenset({"control"})),
    )
    await customer.join()
    assistant = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Dan"),
        JoinLink(primary.csr_code, url),
        url,
        lambda e: None,
        role="csr",
        timeout=30,
    )
    joining = asyncio.ensure_future(assistant.join())
    dan = await asyncio.wait_for(asks.get(), 10)
    primary.admit(dan, True)
    await joining
    await asyncio.sleep(0.3)
    primary.services_for(None).request("control")
    await asyncio.wait_for(changes.get(), 10)  # the grant, on the customer's side
    async with asyncio.timeout(10):  # and on the primary's
        while primary.services_for(None).grants.get("control") != "granted":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    times: list[float] = []
    try:
        for i in range(n):
            to = dan if i % 2 == 0 else primary.me
            t = time.perf_counter()
            primary.transfer_control(to)
            while True:
                at, holder = await asyncio.wait_for(changes.get(), 5)
                if holder == to:
                    times.append(at - t)
                    break
            await asyncio.sleep(0.05)
        bare = await _bare_one_way(n)
    finally:
        await primary.end(force=True)
        await runner.cleanup()
    return {
        "n": n,
        "p50": statistics.median(times),
        "p95": _p95(times),
        "bare_p50": statistics.median(bare),
        "ratio": statistics.median(times) / statistics.median(bare),
    }


def report(f: dict[str, Any]) -> list[str]:
    ms = 1000.0
    return [
        f"transfer: {f['n']} control transfers primary <-> assistant, command -> enforced",
        f"  transfer          p50 {f['p50'] * ms:6.2f} ms   p95 {f['p95'] * ms:6.2f} ms"
        "   (goal: p50 <= 100 ms)",
        f"  bare data channel one-way p50 {f['bare_p50'] * ms:6.2f} ms   ratio {f['ratio']:.1f}x",
    ]


def rows(f: dict[str, Any]) -> list[str]:
    ms = 1000.0
    return [
        f"| control transfer p50 / p95 | {f['p50'] * ms:.2f} ms / {f['p95'] * ms:.2f} ms "
        f"| bare data channel one-way {f['bare_p50'] * ms:.2f} ms | **{f['ratio']:.1f}x** "
        f"| {f['n']} transfers |"
    ]


if __name__ == "__main__":
    print("\n".join(report(asyncio.run(measure()))))
