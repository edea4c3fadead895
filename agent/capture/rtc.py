"""Wiring the screen tracks into aiortc peer connections.

The customer's agent makes the offer, so it adds the screen's video m-line up front
with ``add_screen_transceiver`` (sendonly, one codec) before ``createOffer``; the
CSR's answer is recvonly and its ``track`` event fires at once. When the customer
grants "view", ``share(sender, track)`` puts a track on that sender; on revoke,
``unshare(sender)`` takes it off. No SDP renegotiation is needed for either, and
the m-line sends nothing while no track is on it (aiortc's sender checks for a
track every 20 ms).

Per-instance hooks for the link estimate (``agent.session.link``): ``Pacer.observe``
sees every RTP packet as it leaves, and ``watch_arrivals`` every screen packet as it
arrives at the viewer.

Process-wide adjustments of aiortc, each in one named function: the sender's
retransmission history (``enlarge_aiortc_rtp_history``, by
``add_screen_transceiver``), and, for ``ScreenTrack`` only, aiortc's encoder bitrate
caps (``raise_aiortc_bitrate_caps``). The viewer's side needs
``agent.capture.jitter.install()``, which importing ``agent.capture`` does; it must
happen before the CSR's ``RTCPeerConnection`` takes the offer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiortc.rtcrtpsender
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import h264, vpx
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, is_rtcp

from agent.capture.encoder import BITRATE_1080P, BITRATE_MAX, BITRATE_MIN, Codec
from agent.capture.tracks import PacketTrack, ScreenTrack, _released
from agent.session.adapt import BURST_MIN

RTP_HISTORY = 2048
"Sent packets kept for retransmission (aiortc: 128, less than one 1080p keyframe)."


def enlarge_aiortc_rtp_history() -> None:
    """Let aiortc's senders retransmit any packet of the last ``RTP_HISTORY`` (process-wide).

    A 1080p text keyframe is 300-600 packets sent back to back; with aiortc's 128 a
    NACK for one of its first packets arrives after they have left the history, and
    the viewer stays stuck until a PLI. Called by ``add_screen_transceiver``.
    """
    current = getattr(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", 0)
    _set(aiortc.rtcrtpsender, "RTP_HISTORY_SIZE", max(current, RTP_HISTORY))


log = logging.getLogger(__name__)

PACE_RATE = 40_000_000
"Bits/s at which a frame bigger than ``PACE_BURST`` leaves (a 580 kB keyframe: +0.1 s)."
PACE_BURST = 100_000
"Bytes that leave back to back: every P-frame of a 1080p screen at our bitrates."
WINDOW_POLL_S = 0.02
"Seconds between looks at a closed window when no report comes to open it."
RTX_QUEUE_S = 0.3
"""Retransmissions queued beyond this many seconds of the pace are dropped: on a full
2 Mbit/s link the answers to one NACK storm took the queue for 8 s, the screen
behind them, and a retransmission that late is of no use to the viewer."""


class Pacer:
    """A token bucket in front of an ``RTCDtlsTransport._send_rtp``, with one queue.

    aiortc's sender writes all packets of a frame back to back. A 1080p keyframe is
    300-600 packets, more than a receiver's UDP buffer holds (aioice asks for
    256 kB): on loopback between two processes the bench lost 100-250 packets of
    every keyframe, and the NACK/PLI storm that followed froze the picture for
    seconds. Paced at ``PACE_RATE`` beyond a ``PACE_BURST`` they all arrived.

    Packets leave in order from one queue, drained by one task. The media sender's
    own packets (``media_ssrc``, or any packet while it is unknown) wait for their
    turn, which holds the sender's loop back as the link requires; retransmissions
    (RTX, another SSRC) and RTCP do not wait. aiortc sends those from the transport's
    receive loop (a NACK is answered where it is read), and when they waited there
    at a slow link's pace, every datagram behind them waited too: the viewer's
    reports, the data channel, its keepalives (seen at 2 Mbit/s: reports 9 s late).
    Waiting callers also no longer each take the same tokens, which let a frame and
    its retransmissions leave at twice the pace.

    ``window`` (the viewer's link: ``LinkEstimator.may_send``) holds the media packet
    at the head of the queue while too much is in flight; ``wake`` is called when a
    report may have opened it, and a closed window is looked at again every
    ``WINDOW_POLL_S`` (packets leave it by age when reports stop).
    """

    def __init__(
        self,
        send: Callable[[bytes], Awaitable[None]],
        rate_bps: float = PACE_RATE,
        burst: int = PACE_BURST,
    ) -> None:
        self.send = send
        self.rate = rate_bps / 8
        self.burst = burst
        self.media_ssrc: int | None = None
        "SSRC of the packets whose sender waits for them to leave (None: every packet's)."
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._queue: collections.deque[tuple[bytes, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._drain: asyncio.Task[None] | None = None
        self._rtx_bytes = 0  # queued packets nobody waits for
        self.dropped = 0
        "Retransmissions dropped because the queue held ``RTX_QUEUE_S`` of them already."
        self.delayed = 0.0
        "Seconds of sleep added so far (for benches and stats)."
        self.observe: Callable[[bytes, float], None] | None = None
        "Called with each packet and ``time.monotonic()`` as it leaves (RTCP too)."
        self.window: Callable[[float], bool] | None = None
        """Whether a media packet may leave at ``time.monotonic()`` (None: always): the
        link's in-flight window; ``wake`` when it may have opened."""
        self._opened = asyncio.Event()

    def wake(self) -> None:
        """The window may have opened (a report came)."""
        self._opened.set()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def _waits(self, data: bytes) -> bool:
        if self.media_ssrc is None:
            return True
        header = rtp_header(data)
        return header is None or header[1] == self.media_ssrc

    async def __call__(self, data: bytes) -> None:
        if is_rtcp(data):  # aiortc's own test (RFC 5761): small, never paced
            await self.send(data)
            if self.observe is not None:
                self.observe(data, time.monotonic())
            return
        done: asyncio.Future[None] | None = None
        if self._waits(data):
            done = asyncio.get_running_loop().create_future()
        elif self._rtx_bytes + len(data) > max(self.rate * RTX_QUEUE_S, BURST_MIN):
            self.dropped += 1
            return
        else:
            self._rtx_bytes += len(data)
        self._queue.append((data, done))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.ensure_future(self._run())
            self._drain.add_done_callback(_drain_ended)
        if done is not None:
            await done

    async def _run(self) -> None:
        while self._queue:
            data, done = self._queue[0]
            if done is not None and self.window is not None:
                await self._window_open()
            self._refill()
            if self._tokens < len(data):
                wait = (len(data) - self._tokens) / self.rate
                self.delayed += wait
                await asyncio.sleep(wait)
                self._refill()
            self._queue.popleft()
            if done is None:
                self._rtx_bytes -= len(data)
            self._tokens -= len(data)
            try:
                await self.send(data)
            except Exception as exc:  # the transport closed: tell whoever waits
                if done is not None and not done.done():
                    done.set_exception(exc)
                else:
                    log.debug("paced packet not sent: %r", exc)
                continue
            if done is not None and not done.done():
                done.set_result(None)
            if self.observe is not None:
                self.observe(data, time.monotonic())

    async def _window_open(self) -> None:
        while self.window is not None and not self.window(time.monotonic()):
            self._opened.clear()
            # a report opens it; without any, packets leave the window by age
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WINDOW_POLL_S):
                    await self._opened.wait()


def _drain_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the pacer stopped", exc_info=task.exception())


def rtp_header(data: bytes) -> tuple[int, int] | None:
    """``(sequence number, SSRC)`` of an RTP packet; None for RTCP or a runt."""
    if len(data) < 12 or data[0] >> 6 != 2 or 72 <= data[1] & 0x7F <= 79:
        return None  # not version 2, or RTCP (payload types 200-207 with the marker bit)
    return int.from_bytes(data[2:4], "big"), int.from_bytes(data[8:12], "big")


def sent_screen_packets(sender: RTCRtpSender, on_sent: Callable[[int, int, float], None]) -> Pacer:
    """Call ``on_sent(seq, size, now)`` for each media packet ``sender`` sends (not RTX).

    Shares ``sender``'s pacer (see ``pace``); another call replaces the observer.
    """
    pacer = pace(sender)
    ssrc: int = sender._ssrc  # checked against aiortc 1.16: the media SSRC, fixed per sender

    def observe(data: bytes, now: float) -> None:
        header = rtp_header(data)
        if header is not None and header[1] == ssrc:
            on_sent(header[0], len(data), now)

    pacer.observe = observe
    return pacer


def watch_arrivals(receiver: Any, on_packet: Callable[[int, float], None]) -> list[int]:
    """Call ``on_packet(seq, time.monotonic())`` for each media packet ``receiver`` gets.

    Shadows ``RTCRtpReceiver._handle_rtp_packet`` on that instance (checked against
    aiortc 1.16). The media SSRC is the first one seen: retransmissions (RTX, another
    SSRC) only follow media, and are not arrivals of the original packet. Returns a
    list that holds the media SSRC once the first packet came (for ``send_app_feedback``).
    """
    handle = receiver._handle_rtp_packet
    media: list[int] = []

    async def watched(packet: Any, arrival_time_ms: int) -> None:
        if not media:
            media.append(packet.ssrc)
        if packet.ssrc == media[0]:
            on_packet(packet.sequence_number, time.monotonic())
        await handle(packet, arrival_time_ms)

    _set(receiver, "_handle_rtp_packet", watched)
    return media


async def send_app_feedback(receiver: Any, media_ssrc: int, fci: bytes) -> None:
    """Send RTCP application feedback (PSFB, FMT 15) about ``media_ssrc`` from ``receiver``.

    Goes out with the receiver's own RTCP (SRTCP, unordered, never resent); checked
    against aiortc 1.16 (``RTCRtpReceiver._send_rtcp`` and its RTCP SSRC).
    """
    ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None) or 0
    await receiver._send_rtcp(
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=ssrc, media_ssrc=media_ssrc, fci=fci)
    )


class _AppFeedback:
    """``RTCRtpSender._handle_rtcp_packet`` with FMT 15 packets of ours taken out."""

    def __init__(self, handle: Callable[[Any], Awaitable[None]], accept: Callable[[bytes], bool]):
        self.handle = handle
        self.accept = accept
        self.on_fci: Callable[[bytes], None] = lambda fci: None

    async def __call__(self, packet: Any) -> None:
        if (
            isinstance(packet, RtcpPsfbPacket)
            and packet.fmt == RTCP_PSFB_APP
            and self.accept(packet.fci)
        ):
            self.on_fci(packet.fci)
            return
        await self.handle(packet)


def watch_app_feedback(
    sender: Any, accept: Callable[[bytes], bool], on_fci: Callable[[bytes], None]
) -> None:
    """Hand each RTCP FMT 15 FCI about ``sender``'s media that ``accept`` takes to
    ``on_fci`` (the rest goes on to aiortc). Shadows ``RTCRtpSender._handle_rtcp_packet``
    on that instance (checked against aiortc 1.16); another call replaces ``on_fci``."""
    current = vars(sender).get("_handle_rtcp_packet")
    if not isinstance(current, _AppFeedback):
        current = _AppFeedback(sender._handle_rtcp_packet, accept)
        _set(sender, "_handle_rtcp_packet", current)
    current.accept = accept
    current.on_fci = on_fci


def pace(sender: RTCRtpSender, rate_bps: float = PACE_RATE, burst: int = PACE_BURST) -> Pacer:
    """Pace RTP/RTCP leaving through ``sender``'s transport (idempotent); returns the pacer.

    Shadows ``RTCDtlsTransport._send_rtp`` on that transport instance (checked against
    aiortc 1.16); the data channel (``_send_data``) is not paced.
    """
    transport: Any = sender.transport
    current = vars(transport).get("_send_rtp")
    if isinstance(current, Pacer):
        return current
    pacer = Pacer(transport._send_rtp, rate_bps, burst)
    pacer.media_ssrc = sender._ssrc  # checked against aiortc 1.16: fixed per sender
    _set(transport, "_send_rtp", pacer)
    return pacer


def add_screen_transceiver(pc: RTCPeerConnection, codec: Codec = "vp8") -> RTCRtpTransceiver:
    """Add a sendonly video transceiver offering only ``codec`` (and its RTX).

    Call before ``createOffer``. Packets from an ``EncodedScreen`` must match the
    negotiated codec: aiortc's sender packetises them by that codec, unchecked.
    """
    enlarge_aiortc_rtp_history()
    transceiver = pc.addTransceiver("video", direction="sendonly")
    caps = RTCRtpSender.getCapabilities("video").codecs
    mime = f"video/{codec}".lower()
    chosen = [c for c in caps if c.mimeType.lower() == mime]
    if not chosen:
        raise ValueError(f"aiortc cannot send {codec}")
    rtx = [c for c in caps if c.mimeType.lower() == "video/rtx"]
    transceiver.setCodecPreferences(chosen + rtx)
    return transceiver


def share(sender: RTCRtpSender, track: PacketTrack | ScreenTrack) -> None:
    """Send ``track`` on ``sender``, paced (see ``Pacer``), and route the viewer's PLI/FIR to it.

    aiortc only acts on PLI/FIR when it encodes raw frames itself; for pre-encoded
    packets it would ignore them and a viewer that lost a packet would stay frozen.
    ``RTCRtpSender._send_keyframe`` is what its RTCP handler calls, so we shadow it
    on this sender instance (checked against aiortc 1.16).
    """
    pace(sender)
    parked = sender.track
    sender.replaceTrack(track)
    if isinstance(parked, ParkedTrack):
        parked.release()  # the sender's pending recv returns and it moves to ``track``
    if isinstance(track, PacketTrack):
        _set(sender, "_send_keyframe", track.request_keyframe)


def unshare(sender: RTCRtpSender) -> None:
    """Stop sending on ``sender`` (the track ends; the m-line stays for a later ``share``).

    Do not stop a shared track any other way: aiortc's sender ends its RTP loop for
    good when its track ends, and a later ``share`` on that sender would send nothing.
    """
    track: Any = sender.track
    park(sender)
    vars(sender).pop("_send_keyframe", None)
    if track is not None and not isinstance(track, ParkedTrack):
        track.stop()


class ParkedTrack(MediaStreamTrack):
    """Keeps an idle sender waiting without polling.

    With no track, aiortc 1.16's sender checks for one every 20 ms: 50 wake-ups a
    second for every customer whose screen is not shared (measured: an idle customer
    agent used 1.9 % of a core, 0.3 % once parked). A parked sender waits in
    ``recv`` until ``share`` releases it with an empty packet, which sends nothing.
    """

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._wake = asyncio.Event()

    async def recv(self) -> Any:
        await self._wake.wait()
        return _released()

    def release(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._wake.set()
        super().stop()


def park(sender: RTCRtpSender) -> None:
    """Put a ``ParkedTrack`` on an idle sender (the screen line before a view grant)."""
    sender.replaceTrack(ParkedTrack())


def _set(obj: object, name: str, value: object) -> None:
    setattr(obj, name, value)


def raise_aiortc_bitrate_caps() -> None:
    """Give aiortc's own VP8/H.264 encoders our bitrate bounds (process-wide).

    Only matters for ``ScreenTrack`` (aiortc encodes); ``EncodedScreen`` has its own.
    aiortc reads these module constants when an encoder is made and when a REMB
    estimate sets its target, so this must run before the first frame is encoded.
    """
    for module in (vpx, h264):
        _set(module, "MIN_BITRATE", BITRATE_MIN)
        _set(module, "DEFAULT_BITRATE", BITRATE_1080P)
        _set(module, "MAX_BITRATE", BITRATE_MAX)
