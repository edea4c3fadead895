"""One aiortc peer connection and its session data channel.

The SDP that reaches ``answer``/``complete`` has come through the sealed, PAKE-keyed
handshake, so aiortc's own DTLS fingerprint check binds the channel to the person
who knew the code. No STUN or TURN server is configured unless the signaling
server hands some out (``GET /ice``, see ``use_ice_servers``): by default nothing
leaves for any address but the peer's. With a TURN server, relay candidates are
gathered too; ICE prefers direct pairs and uses the relay only when they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidStateError

from agent.errors import DecodeError, LocalProtocolError, PeerDeskError, RemoteProtocolError
from agent.net import ice
from agent.protocol import channel as ch
from agent.protocol.signaling import IceServer

log = logging.getLogger(__name__)
ice.install()

PING_INTERVAL = 0.3
"Seconds between keepalives on an idle channel."
LOST_AFTER = 2.0
"""Seconds of silence after which a peer is considered lost: what a take-over waits
before it starts (a killed agent's connection does not say goodbye)."""


_ice_servers: tuple[IceServer, ...] = ()


def use_ice_servers(servers: tuple[IceServer, ...]) -> None:
    """The TURN/STUN servers (from the signaling server's ``/ice``) that new peer
    connections of this process gather candidates from."""
    global _ice_servers
    _ice_servers = servers


def rtc_configuration() -> RTCConfiguration:
    """Only the ICE servers we were handed; never a public STUN server (aiortc would
    otherwise ask Google's)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in _ice_servers
        ]
    )


def selected_pair(pc: RTCPeerConnection) -> tuple[str, str] | None:
    """The (local, remote) candidate types of the ICE pair in use (``host``, ``srflx``,
    ``relay``), or None before one is chosen."""
    sctp = pc.sctp
    if sctp is None:
        return None
    try:
        nominated = sctp.transport.transport._connection._nominated
        pair = nominated.get(1)
    except AttributeError:
        return None
    if pair is None:
        return None
    return str(pair.local_candidate.type), str(pair.remote_candidate.type)


CHANNELS = {"main": 0, "control": 1, "files": 2, "log": 3}
"""Negotiated data channels, all ordered and reliable: the session wire, input, file bytes,
the replicated session log (``agent.session.log`` messages)."""


class PeerLink:
    """A peer connection with negotiated data channels and, optionally, screen video.

    ``main`` carries ``agent.protocol.channel`` messages to ``on_message``; the other
    channels hand their raw messages to ``on_channel(name, data)``. The customer's
    side passes ``screen_codec`` to offer a sendonly screen line that sends nothing
    until a view grant shares a track on ``video_sender``; the CSR's side gets the
    remote track through ``on_track``.
    """

    def __init__(
        self,
        on_message: Callable[[ch.Message], None],
        on_lost: Callable[[str], None],
        *,
        on_channel: Callable[[str, str | bytes], None] | None = None,
        screen_codec: str | None = None,
        on_track: Callable[[Any], None] | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_channel = on_channel
        self.pc = RTCPeerConnection(rtc_configuration())
        self.channels = {
            name: self.pc.createDataChannel(name, negotiated=True, id=sid)
            for name, sid in CHANNELS.items()
        }
        self.channel = self.channels["main"]
        self.opened = asyncio.get_running_loop().create_future()
        self._last_heard = time.monotonic()
        self._packets_in = 0  # what the DTLS transport had received at the last look
        self._closed = False
        self._keepalive: asyncio.Task[None] | None = None
        self.video_sender: Any = None
        if screen_codec is not None:  # the customer: a sendonly screen line, idle until shared
            from agent.capture.rtc import add_screen_transceiver, park

            codec: Literal["vp8", "h264"] = "h264" if screen_codec == "h264" else "vp8"
            self.video_sender = add_screen_transceiver(self.pc, codec).sender
            park(self.video_sender)
        if on_track is not None:
            self.pc.on("track", on_track)
        self.channel.on("open", self._on_open)
        self.channel.on("message", self._on_raw)
        self.channel.on("close", lambda: self._lost("channel closed"))
        for name, channel in self.channels.items():
            if name != "main":
                channel.on("message", lambda data, name=name: self._on_side(name, data))
        self.pc.on("connectionstatechange", self._on_state)

    async def offer(self) -> str:
        """Create our SDP offer (gathers local candidates)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def answer(self, offer: str) -> str:
        """Take an authenticated offer and create our answer."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except (ValueError, KeyError, IndexError) as exc:
            raise RemoteProtocolError(f"the peer's SDP offer is unusable: {exc}") from None
        except InvalidStateError:  # closed meanwhile (the session ended)
            raise _closed() from None
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except InvalidStateError:
            raise _closed() from None
        sdp: str = self.pc.localDescription.sdp
        return sdp

    async def complete(self, answer: str) -> None:
        """Take the authenticated answer to our offer."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except (ValueError, KeyError, IndexError) as exc:
            raise RemoteProtocolError(f"the peer's SDP answer is unusable: {exc}") from None
        except InvalidStateError:  # closed meanwhile (the peer left, the session ended)
            raise _closed() from None

    def rebind(
        self,
        on_message: Callable[[ch.Message], None],
        on_lost: Callable[[str], None],
        on_channel: Callable[[str, str | bytes], None] | None = None,
    ) -> None:
        """Hand the link's messages to new owners (an assistant that took over a session
        makes its direct link with the customer a member of the session it now hosts)."""
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_channel = on_channel

    def send(self, msg: ch.Message) -> None:
        if self._closed or self.channel.readyState != "open":
            return
        self.channel.send(ch.encode(msg))

    def send_raw(self, name: str, data: str | bytes) -> bool:
        """Send on a side channel; False when the link is not open."""
        channel = self.channels[name]
        if self._closed or channel.readyState != "open":
            return False
        channel.send(data)
        return True

    def buffered(self, name: str) -> int:
        """Bytes queued on a channel and not yet sent (for backpressure)."""
        return int(self.channels[name].bufferedAmount)

    def rtt(self) -> float | None:
        """The data channels' smoothed round trip (s), None before it is known."""
        return sctp_rtt(self.pc)

    async def close(self) -> None:
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        if not self.opened.done():
            self.opened.cancel()
        with contextlib.suppress(Exception):
            await self.pc.close()

    # -- callbacks from aiortc

    def _on_open(self) -> None:
        self._last_heard = time.monotonic()
        if not self.opened.done():
            self.opened.set_result(None)
        self._keepalive = asyncio.ensure_future(self._keep_alive())

    def _on_raw(self, data: Any) -> None:
        self._last_heard = time.monotonic()
        if not isinstance(data, str | bytes):
            return
        try:
            msg = ch.decode(data)
        except DecodeError as exc:
            log.warning("dropped a channel message: %s", exc.message)
            self.send(ch.Refused(code=exc.code, message=exc.message[:500]))
            return
        if not isinstance(msg, ch.Ping):
            self._on_message(msg)

    def _on_side(self, name: str, data: Any) -> None:
        self._last_heard = time.monotonic()
        if self._on_channel is not None and isinstance(data, str | bytes):
            self._on_channel(name, data)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            pair = selected_pair(self.pc)
            if pair is not None:
                log.info("ice_pair local=%s remote=%s", *pair)
        if self.pc.connectionState in ("failed", "closed"):
            self._lost(f"connection {self.pc.connectionState}")

    def _lost(self, why: str) -> None:
        if not self._closed:
            self._closed = True
            if self._keepalive is not None:
                self._keepalive.cancel()
            if not self.opened.done():
                self.opened.set_exception(RemoteProtocolError(f"the connection failed ({why})"))
            self._on_lost(why)

    async def _keep_alive(self) -> None:
        while not self._closed:
            await asyncio.sleep(PING_INTERVAL)
            packets = packets_received(self.pc)
            if packets != self._packets_in:
                # anything from the peer counts: on a saturated link a dropped SCTP
                # packet holds every later message (ordered, retransmitted after 1 s,
                # then 2 s) while its RTCP and SCTP acks still arrive. Before, a 2 Mbit/s
                # bottleneck full of a scrolling screen lost the session ("peer silent").
                self._packets_in = packets
                self._last_heard = time.monotonic()
            if time.monotonic() - self._last_heard > LOST_AFTER:
                self._lost("peer silent")
                return
            self.send(ch.Ping())


def packets_received(pc: RTCPeerConnection) -> int:
    """Packets the connection's (bundled) DTLS transport has received from the peer: SRTP,
    SRTCP and SCTP alike; 0 when it cannot be read (checked against aiortc 1.16)."""
    sctp = pc.sctp
    transport = sctp.transport if sctp is not None else None
    return int(getattr(transport, "_RTCDtlsTransport__rx_packets", 0) or 0)


def sctp_rtt(pc: RTCPeerConnection) -> float | None:
    """The data channels' smoothed round trip (s), as SCTP measures it from its SACKs (one
    per packet received, so a queue at the bottleneck shows in it); None before the first
    (checked against aiortc 1.16: ``RTCSctpTransport._srtt``)."""
    sctp = pc.sctp
    srtt = getattr(sctp, "_srtt", None) if sctp is not None else None
    return float(srtt) if isinstance(srtt, int | float) and srtt > 0 else None


def _closed() -> PeerDeskError:
    return LocalProtocolError("the connection was closed meanwhile", code="connect_failed")
