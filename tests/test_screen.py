"""Screen sharing on a real X server (Xvfb) through real aiortc peers on loopback.

The customer's side captures a pattern drawn on a private Xvfb screen; the CSR's
side decodes it and saves a PNG; we compare the quadrant colours. Also: unchanged
screens are not re-encoded, two viewers share one encode, keyframes on request and
on the viewer's PLI, revoke and re-grant on the same sender, the prompt jitter buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mss")
PIL = pytest.importorskip("PIL")
from aiortc import RTCPeerConnection  # noqa: E402
from aiortc.codecs import h264, vpx  # noqa: E402
from aiortc.mediastreams import MediaStreamTrack  # noqa: E402
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket, RtpPacket  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from agent.capture import (  # noqa: E402
    EncodedScreen,
    EncoderSettings,
    PacketTrack,
    ScreenTrack,
    ScreenViewer,
    add_screen_transceiver,
    monitors,
    raise_aiortc_bitrate_caps,
    share,
    unshare,
)
from agent.capture.encoder import Codec  # noqa: E402
from agent.capture.grab import REFINE_FRAMES  # noqa: E402
from agent.capture.jitter import PromptJitterBuffer  # noqa: E402
from agent.capture.rtc import PACE_BURST, PACE_RATE, Pacer, pace  # noqa: E402
from agent.capture.tracks import HOLD_QUEUE, REFINE_MAX, REFINED_BYTES  # noqa: E402
from agent.capture.xvfb import Canvas, Xvfb  # noqa: E402
from agent.net.peer import rtc_configuration  # noqa: E402
from bench.screen import text_page  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")

W, H = 1920, 1080
QUADRANTS = {
    "top-left": ((0, 0), (220, 40, 40)),
    "top-right": ((W // 2, 0), (40, 180, 60)),
    "bottom-left": ((0, H // 2), (40, 60, 200)),
    "bottom-right": ((W // 2, H // 2), (230, 200, 40)),
}
STEP = 5.0
"Seconds any single wait in these tests may take."


LOOP_STALL = 0.5
"""Longest the event loop may go without running a 10 ms ticker (blocking work belongs in
threads). It catches gross blocking: aiortc itself packetizes and encrypts each frame on
the loop, and a 1080p keyframe to two viewers took 362 ms once on a busy 2-core CI run."""


@pytest.fixture(autouse=True)
async def loop_not_blocked() -> AsyncIterator[None]:
    """Fail a test during which the event loop was blocked for more than LOOP_STALL."""
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - before - 0.01)

    ticker = asyncio.ensure_future(tick())
    yield
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    assert worst <= LOOP_STALL, f"the event loop was blocked for {worst * 1000:.0f} ms"


@pytest.fixture(scope="module")
def xvfb() -> Iterator[Xvfb]:
    with Xvfb(W, H) as server:
        yield server


@pytest.fixture
def display(xvfb: Xvfb, monkeypatch: pytest.MonkeyPatch) -> str:
    """DISPLAY set to the private Xvfb for this test."""
    monkeypatch.setenv("DISPLAY", xvfb.display)
    return xvfb.display


@pytest.fixture
def canvas(display: str) -> Iterator[Canvas]:
    """A full-screen window showing the test pattern."""
    with Canvas(display) as c:
        draw_pattern(c)
        yield c


def draw_pattern(c: Canvas) -> None:
    for (x, y), rgb in QUADRANTS.values():
        c.fill(x, y, W // 2, H // 2, rgb)
    band = Image.new("RGB", (W, 64), "white")
    font = ImageFont.truetype("DejaVuSans.ttf", 12) if _has_dejavu() else None
    ImageDraw.Draw(band).text(
        (16, 20),
        "PeerDesk screen test: The quick brown fox 0123456789 " * 5,
        fill="black",
        font=font,
    )
    c.put_image(0, H // 2 - 32, band)
    c.sync()


def _has_dejavu() -> bool:
    try:
        ImageFont.truetype("DejaVuSans.ttf", 12)
    except OSError:
        return False
    return True


async def exchange(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    """Offer/answer in memory (the customer offers, as in PeerDesk's join)."""
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


class Pair:
    """A customer peer with a screen transceiver and a CSR peer viewing it."""

    def __init__(self, codec: str = "vp8") -> None:
        self.customer = RTCPeerConnection(rtc_configuration())
        self.csr = RTCPeerConnection(rtc_configuration())
        self.transceiver = add_screen_transceiver(self.customer, codec)  # type: ignore[arg-type]
        self._track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self.csr.on("track", self._on_track)
        self.viewer: ScreenViewer | None = None

    def _on_track(self, track: MediaStreamTrack) -> None:
        if not self._track.done():
            self._track.set_result(track)

    async def connect(self) -> ScreenViewer:
        await exchange(self.customer, self.csr)
        async with asyncio.timeout(STEP):
            track = await self._track
        self.viewer = ScreenViewer(track)
        self.viewer.start()
        return self.viewer

    async def close(self) -> None:
        if self.viewer is not None:
            await self.viewer.stop()
        await self.customer.close()
        await self.csr.close()


@contextlib.asynccontextmanager
async def pairs(n: int, codec: str = "vp8") -> AsyncIterator[list[Pair]]:
    made = [Pair(codec) for _ in range(n)]
    try:
        yield made
    finally:
        for p in made:
            await p.close()


@contextlib.asynccontextmanager
async def encoded(display: str, **kwargs: Any) -> AsyncIterator[EncodedScreen]:
    screen = EncodedScreen(display=display, **kwargs)
    try:
        yield screen
    finally:
        await screen.aclose()


async def frames_after(viewer: ScreenViewer, count: int) -> None:
    async with asyncio.timeout(STEP):
        while viewer.frames < count:
            await viewer.wait_frame()


async def until(cond: Any, what: str, timeout: float = STEP) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def quadrant_means(png: Path) -> dict[str, tuple[float, float, float]]:
    img = Image.open(png).convert("RGB")
    assert img.size == (W, H)
    out = {}
    for name, ((x, y), _) in QUADRANTS.items():
        # the middle of each quadrant, away from edges, the text band and the cursor
        box = img.crop((x + 120, y + (60 if y == 0 else 120), x + W // 2 - 120, y + H // 2 - 120))
        r, g, b = np.asarray(box, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        out[name] = (float(r), float(g), float(b))
    return out


def assert_pattern(png: Path) -> None:
    means = quadrant_means(png)
    for name, (_, want) in QUADRANTS.items():
        got = means[name]
        # yuv420p + lossy coding: flat colours come back within a few levels
        assert all(abs(g - w) <= 12 for g, w in zip(got, want, strict=True)), (name, got, want)


# -- monitors


def test_monitors_under_xvfb(display: str) -> None:
    assert monitors() == [{"index": 1, "x": 0, "y": 0, "width": W, "height": H, "primary": True}]


# -- the CSR sees the customer's screen


@pytest.mark.parametrize("how", ["shared-vp8", "shared-h264", "aiortc-encoder"], ids=lambda s: s)
async def test_csr_sees_the_pattern(
    canvas: Canvas, display: str, tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec: Codec = "h264" if how == "shared-h264" else "vp8"
    if how == "aiortc-encoder":
        # aiortc's own 500 kb/s start blurs even flat colours; restore its caps afterwards
        for module in (vpx, h264):
            for name in ("MIN_BITRATE", "DEFAULT_BITRATE", "MAX_BITRATE"):
                monkeypatch.setattr(module, name, getattr(module, name))
        raise_aiortc_bitrate_caps()
    async with pairs(1, codec) as (pair,):
        viewer = await pair.connect()
        if how == "aiortc-encoder":
            track: PacketTrack | ScreenTrack = ScreenTrack(display=display)
            share(pair.transceiver.sender, track)
            await frames_after(viewer, 1)
            track.stop()
        else:
            async with encoded(display, settings=EncoderSettings(codec=codec)) as screen:
                share(pair.transceiver.sender, screen.track())
                await frames_after(viewer, 1)
                assert screen.stats().keyframes >= 1
        frame = viewer.latest
        assert frame is not None and (frame.width, frame.height) == (W, H)
        png = await viewer.snapshot(tmp_path / "csr.png")
        assert_pattern(png)
        assert viewer.times[-1].received_at <= time.monotonic()


# -- change detection and heartbeat (no network needed)


async def test_a_still_page_on_a_slow_link_is_sent_again_while_it_gains_detail(
    canvas: Canvas, display: str
) -> None:
    # at a constant 1 Mbit/s libvpx refines a page of text a strip at a time: the
    # REFINE_FRAMES re-sends that suit a fast link would leave it at about 21 dB
    canvas.put_image(0, 0, text_page(W, H))
    canvas.sync()
    async with encoded(display, heartbeat=60.0) as screen:
        track = screen.track()
        screen.limit(1_000_000)  # (fits the viewers there are)
        got: list[Any] = []

        async def view() -> None:
            while True:
                got.append(await track.recv())

        viewer = asyncio.ensure_future(view())
        try:
            await until(lambda: bool(got), "the first frame")
            assert got[0].is_keyframe
            deadline = time.monotonic() + 40.0
            while True:  # until nothing more comes for a second
                count = len(got)
                await asyncio.sleep(1.0)
                if len(got) == count:
                    break
                assert time.monotonic() < deadline, f"still refining after {len(got)} frames"
        finally:
            viewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await viewer
    sizes = [p.size for p in got[1:]]
    assert REFINE_FRAMES < len(sizes) <= REFINE_MAX, (got[0].size, sizes)
    assert sizes[REFINE_FRAMES - 1] > REFINED_BYTES, "there was detail left to send"
    assert sizes[-1] <= REFINED_BYTES or len(sizes) == REFINE_MAX, sizes
    # and the lumps libvpx made when it saved up bits are gone: each frame fits 0.5 s
    assert max(sizes) * 8 <= 0.5 * 1_000_000, sizes


async def test_unchanged_screen_is_not_reencoded(canvas: Canvas, display: str) -> None:
    # after a change the still screen is sent REFINE_FRAMES times more (the encoder
    # spends them on detail), then left alone
    async with encoded(display, heartbeat=60.0) as screen:
        track = screen.track()
        got: list[Any] = []

        async def view() -> None:  # a viewer takes every frame as it comes
            while True:
                got.append(await track.recv())

        viewer = asyncio.ensure_future(view())
        try:
            async with asyncio.timeout(STEP):
                while not got:
                    await asyncio.sleep(0.01)
            assert got[0].is_keyframe
            await asyncio.sleep(1.0)
            grabs = screen.stats().grabs
            assert screen.stats().encodes == 1 + REFINE_FRAMES
            await asyncio.sleep(0.5)
            s = screen.stats()
            assert s.grabs >= grabs + 4, "the capturer kept grabbing"
            assert s.encodes == 1 + REFINE_FRAMES, "identical grabs were encoded again"
            assert len(got) == 1 + REFINE_FRAMES

            canvas.fill(100, 100, 64, 64, (0, 0, 0))
            canvas.sync()
            async with asyncio.timeout(STEP):
                while len(got) == 1 + REFINE_FRAMES:
                    await asyncio.sleep(0.01)
            assert not got[1 + REFINE_FRAMES].is_keyframe
            await asyncio.sleep(1.0)
            assert screen.stats().encodes == 2 + 2 * REFINE_FRAMES
        finally:
            viewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await viewer


async def test_a_viewer_still_sending_holds_the_capture_and_no_change_is_lost(
    canvas: Canvas, display: str
) -> None:
    """A viewer whose sender is still on earlier frames (a slow link's pacer on a
    keyframe) holds the capture: frames do not pile up into a keyframe request, and
    the change made meanwhile is sent once the viewer is ready."""
    async with encoded(display, heartbeat=60.0, refine_frames=0) as screen:
        track = screen.track()
        async with asyncio.timeout(STEP):
            assert (await track.recv()).is_keyframe
        for i in range(12):  # a screen changing at 30 Hz that nobody takes
            canvas.fill(10 * i, 10, 8, 8, (0, 0, 0))
            canvas.sync()
            await asyncio.sleep(1 / 30)
        s = screen.stats()
        assert s.encodes <= 1 + HOLD_QUEUE + 1, s  # held once two frames were waiting
        assert s.keyframes == 1 and track.dropped == 0, (s, track.dropped)
        canvas.fill(600, 300, 64, 64, (255, 0, 0))  # the last change, while held
        canvas.sync()
        for _ in range(HOLD_QUEUE):
            assert not (await track.recv()).is_keyframe
        async with asyncio.timeout(STEP):
            last = await track.recv()  # the capture resumed and saw the change made meanwhile
        assert not last.is_keyframe
        assert screen.stats().keyframes == 1
        track.stop()


async def test_heartbeat_resends_a_static_screen(canvas: Canvas, display: str) -> None:
    async with encoded(display, heartbeat=0.2) as screen:
        track = screen.track()
        started = time.monotonic()
        async with asyncio.timeout(STEP):
            for _ in range(1 + REFINE_FRAMES + 3):
                await track.recv()
        # one keyframe and its refinements, then a heartbeat every 0.2 s
        assert 0.5 <= time.monotonic() - started <= 2.0
        assert screen.stats().keyframes == 1
        track.stop()


# -- two viewers, one encode


async def test_two_viewers_get_frames_from_one_encode(canvas: Canvas, display: str) -> None:
    async with pairs(2) as both, encoded(display, heartbeat=60.0, refine_frames=0) as screen:
        viewers = [await p.connect() for p in both]
        tracks = [screen.track() for _ in both]
        for p, t in zip(both, tracks, strict=True):
            share(p.transceiver.sender, t)
        for v in viewers:
            await frames_after(v, 1)
        await until(lambda: all(t.delivered >= 1 for t in tracks), "both tracks to start")
        await asyncio.sleep(0.6)  # let the keyframe rate limit and any second keyframe pass
        base_encodes = screen.stats().encodes
        base_frames = [v.frames for v in viewers]

        changes = 10
        for i in range(changes):
            canvas.fill(200 + 40 * i, 300, 32, 32, (0, 0, 0))
            canvas.sync()
            await asyncio.sleep(0.08)
        await until(
            lambda: (
                all(
                    v.frames - b >= screen.stats().encodes - base_encodes
                    for v, b in zip(viewers, base_frames, strict=True)
                )
                and screen.stats().encodes - base_encodes >= changes // 2
            ),
            "both viewers to receive every encoded frame",
        )
        encodes = screen.stats().encodes - base_encodes
        got = [v.frames - b for v, b in zip(viewers, base_frames, strict=True)]
        assert changes // 2 <= encodes <= changes + 1
        assert got == [encodes, encodes], "each encoded frame reaches each viewer exactly once"
        assert screen.stats().viewers == 2


def _luma_psnr(frame: Any, want: np.ndarray) -> float:
    got = frame.to_ndarray(format="gray").astype(np.float64)
    mse = float(np.mean((got - want) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255**2 / mse))


async def test_a_viewer_on_a_slow_link_gets_its_own_encode_and_the_fast_one_keeps_its_rate(
    canvas: Canvas, display: str
) -> None:
    """One viewer unlimited, one on 300 kbit/s: the slow one gets an encode of its own
    (small keyframes, few frames), the fast one every frame at full quality; both end
    on the real page, and when the slow link recovers they share one encode again."""
    page = text_page(W, 2 * H)
    canvas.put_image(0, 0, page.crop((0, 0, W, H)))  # (keyframe sizes are predicted from it)
    canvas.sync()
    async with pairs(2) as both, encoded(display, heartbeat=60.0) as screen:
        viewers = [await p.connect() for p in both]
        fast, slow = tracks = [screen.track() for _ in both]
        for p, t in zip(both, tracks, strict=True):
            share(p.transceiver.sender, t)
        for v in viewers:
            await frames_after(v, 1)
        slow_link = pace(both[1].transceiver.sender)  # as its estimate would pace it
        slow_link.rate, slow_link.burst = 300_000 / 8, 3_000
        links = {fast: None, slow: 300_000}
        screen.fit(links)
        assert screen.stats().lanes == 2
        await until(lambda: slow.delivered >= 1 and slow._lane is screen._lanes[1], "the move")
        base = [v.frames for v in viewers]
        sent = [t.delivered_bytes for t in tracks]
        started = time.monotonic()
        offset = 0
        for _ in range(30):  # a page scrolling 8 px at 15 Hz: every frame costs
            offset += 8
            canvas.put_image(0, 0, page.crop((0, offset, W, offset + H)))
            canvas.sync()
            await asyncio.sleep(1 / 15)
            screen.fit(links)  # as each viewer's reports come in
        took = time.monotonic() - started
        got = [v.frames - b for v, b in zip(viewers, base, strict=True)]
        kbps = [
            8 * (t.delivered_bytes - b) / took / 1000 for t, b in zip(tracks, sent, strict=True)
        ]
        assert got[0] >= 15, (got, kbps)  # the fast viewer is not held to the slow one's rate
        assert kbps[1] < 2 * 300, (got, kbps)  # the slow one's stream waits for its link
        assert kbps[0] > 5 * kbps[1], (got, kbps)
        own = screen._lanes[1].encoder  # keyframes for its link: the page's 180 kB at 63
        assert own.key_qmax >= 56 and own.key_bits // 8 < 250_000, (own.key_qmax, own.key_bits)
        want = np.asarray(page.crop((0, offset, W, offset + H)).convert("L"), dtype=np.float64)
        for v in viewers:  # each ends on the real page (the slow one at its own quality)
            await until(
                lambda v=v: v.latest is not None and _luma_psnr(v.latest, want) > 18,
                "the last picture",
                timeout=3 * STEP,
            )

        slow_link.rate, slow_link.burst = PACE_RATE / 8, PACE_BURST
        screen.fit({fast: None, slow: None})  # the slow link recovered
        assert screen.stats().lanes == 1
        canvas.fill(0, 0, W, H, (255, 255, 255))
        canvas.sync()
        for v in viewers:
            await until(
                lambda v=v: (
                    v.latest is not None and float(v.latest.to_ndarray(format="gray").mean()) > 245
                ),
                "the white page on both",
            )
        assert slow._lane is fast._lane is screen._lanes[0]


# -- keyframes


async def test_keyframe_on_request(canvas: Canvas, display: str) -> None:
    async with encoded(display, heartbeat=60.0, refine_frames=0) as screen:
        track = screen.track()
        async with asyncio.timeout(STEP):
            assert (await track.recv()).is_keyframe
        await asyncio.sleep(0.6)  # past the keyframe rate limit
        # an unchanged screen, yet a request produces a keyframe at once
        track.request_keyframe()
        async with asyncio.timeout(STEP):
            again = await track.recv()
        assert again.is_keyframe
        assert screen.stats().keyframes == 2
        track.stop()


async def test_a_lost_first_keyframe_is_sent_again_soon_later_ones_keep_their_spacing(
    canvas: Canvas, display: str
) -> None:
    """On a slow link keyframes are spaced so that each fits (8 s at most), but a viewer
    whose first keyframe was lost has nothing on screen: measured on a real 1 Mbit/s
    link, the first keyframe (sent before the link was known) lost 11 % of its packets,
    and the viewer's request waited out the spacing: the first frame came after 7.7-10 s
    (4.4-4.5 s once the second keyframe may follow the first at once)."""
    async with encoded(display, heartbeat=60.0, refine_frames=0) as screen:
        track = screen.track()
        screen.capturer.key_interval = 8.0  # what a 1 Mbit/s link's spacing comes to
        async with asyncio.timeout(STEP):
            assert (await track.recv()).is_keyframe
        track.request_keyframe()  # the viewer lost it
        async with asyncio.timeout(1.5):  # the minimum spacing, 0.5 s
            assert (await track.recv()).is_keyframe
        track.request_keyframe()  # lost again: now the spacing holds
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.0):
                await track.recv()
        assert screen.stats().keyframes == 2
        track.stop()


async def test_viewer_pli_reaches_the_shared_encoder(canvas: Canvas, display: str) -> None:
    async with pairs(1) as (pair,), encoded(display, heartbeat=60.0) as screen:
        viewer = await pair.connect()
        sender = pair.transceiver.sender
        share(sender, screen.track())
        await frames_after(viewer, 1)
        await asyncio.sleep(0.6)
        keys = screen.stats().keyframes
        seen = viewer.frames
        # what aiortc's receiver sends when it cannot decode (RFC 4585 PLI)
        pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1234, media_ssrc=sender._ssrc)
        await sender._handle_rtcp_packet(pli)
        await until(lambda: screen.stats().keyframes == keys + 1, "a keyframe after the PLI")
        await frames_after(viewer, seen + 1)


# -- revoke and grant again on the same sender (no renegotiation)


async def test_unshare_stops_frames_and_share_resumes(canvas: Canvas, display: str) -> None:
    async with pairs(1) as (pair,), encoded(display, heartbeat=0.2) as screen:
        viewer = await pair.connect()
        sender = pair.transceiver.sender
        first = screen.track()
        share(sender, first)
        await frames_after(viewer, 2)

        unshare(sender)
        assert first.readyState == "ended"
        await asyncio.sleep(0.3)
        frozen = viewer.frames
        await asyncio.sleep(0.6)  # three heartbeats would have come
        assert viewer.frames == frozen, "frames kept coming after the revoke"
        assert not screen.capturer.running or screen.stats().viewers == 0

        share(sender, screen.track())
        await frames_after(viewer, frozen + 2)


# -- the prompt jitter buffer (receiver side)


def _rtp(seq: int, ts: int, marker: bool, data: bytes = b"x") -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=int(marker))
    p._data = data  # type: ignore[attr-defined]
    return p


def test_prompt_jitter_buffer_completes_frames_at_the_marker() -> None:
    jb = PromptJitterBuffer(capacity=128, is_video=True)
    assert jb.capacity >= 2048
    assert jb.add(_rtp(100, 9000, False, b"a")) == (False, None)
    _, frame = jb.add(_rtp(101, 9000, True, b"b"))
    assert frame is not None and frame.data == b"ab" and frame.timestamp == 9000

    # a lost middle packet holds the frame until its retransmission arrives
    jb.add(_rtp(102, 12000, False, b"c"))
    assert jb.add(_rtp(104, 12000, True, b"e")) == (False, None)
    _, frame = jb.add(_rtp(103, 12000, False, b"d"))
    assert frame is not None and frame.data == b"cde"

    # without a marker bit, aiortc's rule still applies: a new timestamp closes it
    jb.add(_rtp(105, 15000, False, b"f"))
    _, frame = jb.add(_rtp(106, 18000, False, b"g"))
    assert frame is not None and frame.data == b"f" and frame.timestamp == 15000


def test_prompt_jitter_buffer_gives_up_on_a_lost_packet_for_a_pli() -> None:
    jb = PromptJitterBuffer(capacity=128, is_video=True)
    jb.add(_rtp(200, 0, False, b"a"))  # 201 is lost for good
    assert jb.add(_rtp(202, 0, True, b"c")) == (False, None)
    # a frame 0.1 s later waits (a retransmission may still come) ...
    assert jb.add(_rtp(203, 9000, True, b"d")) == (False, None)
    # ... one 0.6 s later is shown, and the viewer asks for a keyframe
    pli, frame = jb.add(_rtp(204, 54000, True, b"e"))
    assert pli
    assert frame is not None and frame.data == b"e" and frame.timestamp == 54000


async def test_pacer_lets_small_frames_through_and_spreads_big_ones() -> None:
    sent: list[tuple[float, int]] = []

    async def send(data: bytes) -> None:
        sent.append((time.monotonic(), len(data)))

    pacer = Pacer(send, rate_bps=8_000_000, burst=20_000)  # 1 MB/s beyond 20 kB
    start = time.monotonic()
    for _ in range(15):  # a 19.5 kB P-frame: no delay
        await pacer(bytes(1300))
    assert time.monotonic() - start < 0.005
    for _ in range(77):  # a 100 kB keyframe right after: about 0.1 s
        await pacer(bytes(1300))
    took = sent[-1][0] - start
    assert 0.08 <= took <= 0.5, took


def _rtp_bytes(seq: int, ssrc: int, size: int = 1200) -> bytes:
    head = bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")
    return head + bytes(size - len(head))


async def test_pacer_never_holds_back_a_retransmission_or_rtcp_caller() -> None:
    """aiortc answers a NACK inside the transport's receive loop: if that send waited
    at a slow link's pace, every datagram behind it would wait too."""
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    pacer = Pacer(send, rate_bps=800_000, burst=2_600)  # 100 kB/s beyond two packets
    pacer.media_ssrc = 1111
    media = asyncio.ensure_future(asyncio.gather(*(pacer(_rtp_bytes(i, 1111)) for i in range(20))))
    await asyncio.sleep(0)
    start = time.monotonic()
    await pacer(_rtp_bytes(500, 2222))  # a retransmission (RTX SSRC): queued, not waited for
    rtcp = bytes([0x80, 206]) + bytes(10)
    await pacer(rtcp)  # RTCP: out at once, ahead of the queue
    assert time.monotonic() - start < 0.01
    assert rtcp in sent and len(sent) < 10
    async with asyncio.timeout(5):
        await media  # the media sender waited for its packets: 24 kB at 100 kB/s
    assert time.monotonic() - start >= 0.15
    await until(lambda: _rtp_bytes(500, 2222) in sent, "the retransmission to leave")
    # in order: the retransmission left behind the media packets queued before it
    assert sent.index(_rtp_bytes(500, 2222)) > sent.index(_rtp_bytes(19, 1111))


async def test_pacer_drops_retransmissions_beyond_a_short_queue() -> None:
    from agent.capture.rtc import RTX_QUEUE_S

    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    pacer = Pacer(send, rate_bps=800_000, burst=1_200)
    pacer.media_ssrc = 1111
    for i in range(200):  # a NACK storm: 240 kB of answers into 100 kB/s
        await pacer(_rtp_bytes(i, 2222))
    kept = 200 - pacer.dropped
    assert kept * 1200 <= 100_000 * RTX_QUEUE_S + 2 * 1200, kept
    assert pacer.dropped > 150
    await until(lambda: len(sent) == kept, "the kept ones to leave", timeout=5)


async def test_pacer_holds_media_while_the_links_window_is_full_and_a_report_opens_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The link's in-flight window (``LinkEstimator.may_send``): media waits for it, a
    retransmission at the head of the queue does not, and ``wake`` (a report came)
    lets the media go at once, not at the next poll."""
    import agent.capture.rtc as rtc

    monkeypatch.setattr(rtc, "WINDOW_POLL_S", 1.0)
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    pacer = Pacer(send, rate_bps=40_000_000, burst=100_000)
    pacer.media_ssrc = 1111
    room = [0]
    pacer.window = lambda now: room[0] > 0
    await pacer(_rtp_bytes(900, 2222))  # a retransmission: not held by the window
    await until(lambda: _rtp_bytes(900, 2222) in sent, "the retransmission to leave")
    media = asyncio.ensure_future(pacer(_rtp_bytes(1, 1111)))
    await asyncio.sleep(0.1)
    assert not media.done() and _rtp_bytes(1, 1111) not in sent
    room[0] = 1
    opened = time.monotonic()
    pacer.wake()
    async with asyncio.timeout(5):
        await media
    assert time.monotonic() - opened < 0.2  # woken, not polled (the next poll: ~0.9 s)
    assert sent[-1] == _rtp_bytes(1, 1111)
    pacer.window = None  # the link closed: nothing holds the sender any more
    await pacer(_rtp_bytes(2, 1111))
    assert sent[-1] == _rtp_bytes(2, 1111)


async def test_a_capture_on_its_way_to_the_viewers_holds_the_next_grab() -> None:
    """The capture thread encodes and hands the packets to the loop, which queues them
    for each viewer later: until then the queues look empty, and a grab that looked
    only at them went ahead (a scroll's 13 steps then met the next frame, the viewer
    overflowed and dropped to a keyframe). The hold counts what is on its way."""
    import av

    from agent.capture.grab import Capture
    from agent.capture.tracks import EncodedScreen

    screen = EncodedScreen(display=":0")  # nothing here starts its capture
    track = screen.track()
    track._receiving = True  # as if its sender had asked for frames
    screen._receiving = 1
    frame = av.VideoFrame(320, 240, "yuv420p")
    frame.pts = 0
    cap = Capture(frame, changed=True, keyframe=True, grabbed_at=0.0, grab_s=0.0, convert_s=0.0)
    screen._on_capture(cap)  # as the capture thread does; the loop has not run since
    assert not track._queue
    assert screen._backed_up()  # on its way: the next grab waits
    await asyncio.sleep(0)  # the loop queues it for the viewer
    assert len(track._queue) == 1
    assert not screen._backed_up()  # one frame waiting is the one its sender is on
    screen.close()
