"""Someone leaves while their link is forming: the close is quiet, on both ends.

aiortc starts a connection's transports in a task of its own that nobody awaits.
Closed while that task waited on ICE or DTLS, it used to fail with "RTCIceTransport is
closed" and asyncio printed "Task exception was never retrieved" and a traceback on
the customer's stderr (CI saw it in test_ways_out's assistant-eof case). Without the
guard in ``agent.net.ice``, the 3 and 6 ms cases below fail every time on loopback.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.exceptions import InvalidStateError

from agent.net import ice
from agent.net.peer import rtc_configuration


@pytest.mark.parametrize("after_ms", [0, 3, 6, 9, 12, 20])
async def test_closing_a_link_as_it_forms_leaves_nothing_unretrieved(after_ms: int) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    a, b = RTCPeerConnection(rtc_configuration()), RTCPeerConnection(rtc_configuration())
    try:
        a.createDataChannel("c", negotiated=True, id=0)
        b.createDataChannel("c", negotiated=True, id=0)
        a.addTrack(VideoStreamTrack())  # a screen: media and data share one transport
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.sleep(after_ms / 1000)
        await b.close()  # the one who left
        await asyncio.sleep(0.3)
    finally:
        await a.close()
        await b.close()
    await asyncio.sleep(0.05)
    gc.collect()  # an unretrieved task exception is reported when the task is freed
    await asyncio.sleep(0)
    loop.set_exception_handler(None)
    assert not unhandled, [str(c.get("exception") or c["message"]) for c in unhandled]


async def test_a_failure_on_a_live_connection_still_surfaces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def failing(_pc: Any) -> None:
        raise InvalidStateError("RTCIceTransport is closed")

    monkeypatch.setattr(ice, "_STOCK_CONNECT", failing)
    pc = RTCPeerConnection(rtc_configuration())
    try:
        with pytest.raises(InvalidStateError):
            await ice._connect_until_closed(pc)  # not closed: not ours to hide
        await pc.close()
        await ice._connect_until_closed(pc)  # closed: the close's own consequence
    finally:
        await pc.close()


async def test_an_answer_for_a_link_closed_meanwhile_is_a_clear_error() -> None:
    """CI: the customer made a direct link to an assistant, the assistant left, and its
    answer arrived after the link was closed: aiortc's InvalidStateError went up as a
    traceback ("Cannot handle answer in signaling state closed")."""
    from agent.errors import PeerDeskError
    from agent.net.peer import PeerLink

    offerer = PeerLink(lambda m: None, lambda why: None)
    answerer = PeerLink(lambda m: None, lambda why: None)
    try:
        answer = await answerer.answer(await offerer.offer())
        await offerer.close()  # the assistant left
        with pytest.raises(PeerDeskError) as caught:
            await offerer.complete(answer)
        assert caught.value.code == "connect_failed"
    finally:
        await offerer.close()
        await answerer.close()


pytestmark = pytest.mark.timeout(30)
