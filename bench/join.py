"""Join time: ``join`` to ``joined`` through signaling + PAKE, against a bare aiortc connect.

Both run in this process, on loopback, in the same event loop, interleaved run by run
so that machine noise hits both alike. The baseline is the least a WebRTC join can
cost: two aiortc peers exchanging SDP in memory (no server, no PAKE) until a first
data-channel message arrives.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass

from aiortc import RTCPeerConnection
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity import Identity
from agent.net import ice
from agent.net.peer import rtc_configuration
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession


@dataclass(frozen=True)
class JoinFigures:
    runs: int
    join_p50: float
    join_p95: float
    bare_p50: float
    bare_p95: float
    prompt_p50: float
    "Bare aiortc with our prompt ICE connect (agent.net.ice), for transparency."

    @property
    def ratio(self) -> float:
        return self.join_p50 / self.bare_p50


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def bare_connect(*, prompt_ice: bool = False) -> float:
    """Seconds for two in-memory aiortc peers to pass a first data-channel message."""
    if prompt_ice:
        return await _bare_connect()
    with ice.stock():
        return await _bare_connect()


async def _bare_connect() -> float:
    start = time.perf_counter()
    a = RTCPeerConnection(rtc_configuration())
    b = RTCPeerConnection(rtc_configuration())
    ca = a.createDataChannel("c", negotiated=True, id=0)
    cb = b.createDataChannel("c", negotiated=True, id=0)
    got = asyncio.get_running_loop().create_future()
    cb.on("message", lambda m: None if got.done() else got.set_result(None))
    ca.on("open", lambda: ca.send("hi"))
    try:
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(got, 10)
        return time.perf_counter() - start
    finally:
        await a.close()
        await b.close()


async def peerdesk_join(csr: CsrSession, url: str) -> float:
    """Seconds from starting ``join`` to the customer's ``joined``."""
    assert csr.code is not None
    me = Identity(Ed25519PrivateKey.generate(), "bench customer")
    start = time.perf_counter()
    session = CustomerSession(me, JoinLink(csr.code, url), url, lambda e: None)
    await session.join()
    elapsed = time.perf_counter() - start
    await session.leave()
    return elapsed


async def measure(runs: int = 20) -> JoinFigures:
    from signaling.server import start_server

    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "bench CSR"), url, lambda e: None)
    await csr.start()
    joins: list[float] = []
    bares: list[float] = []
    prompts: list[float] = []
    try:
        await peerdesk_join(csr, url)  # warm-up: imports, first certificates
        await bare_connect()
        for _ in range(runs):
            bares.append(await bare_connect())
            prompts.append(await bare_connect(prompt_ice=True))
            joins.append(await peerdesk_join(csr, url))
            await asyncio.sleep(0.05)
    finally:
        await csr.end()
        await runner.cleanup()
    return JoinFigures(
        runs=runs,
        join_p50=statistics.median(joins),
        join_p95=_p95(joins),
        bare_p50=statistics.median(bares),
        bare_p95=_p95(bares),
        prompt_p50=statistics.median(prompts),
    )
