"""What liveness rests on: every packet the peer's transport delivers, not only messages.

On a saturated link a dropped SCTP packet holds every later data-channel message for
SCTP's retransmission timeout (1 s, then 2 s) while the peer's other packets still
arrive; the keepalive must count those (``peer.packets_received``), or a 2 Mbit/s
bottleneck full of a scrolling screen ends the session ("peer silent").
"""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection

from agent.net.peer import packets_received, rtc_configuration


async def test_the_transport_counts_what_the_peer_sends() -> None:
    a, b = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    try:
        ca = a.createDataChannel("c", negotiated=True, id=0)
        cb = b.createDataChannel("c", negotiated=True, id=0)
        got: asyncio.Queue[object] = asyncio.Queue()
        cb.on("message", got.put_nowait)
        opened = asyncio.get_running_loop().create_future()
        ca.on("open", lambda: None if opened.done() else opened.set_result(None))
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(opened, 10)
        before = packets_received(b)
        assert before > 0, "aiortc's DTLS transport no longer counts received packets"
        for _ in range(5):
            ca.send("ping")
            await asyncio.wait_for(got.get(), 5)
        assert packets_received(b) >= before + 5
    finally:
        await a.close()
        await b.close()


pytestmark = pytest.mark.timeout(30)
