"""Two viewers, one on a slow link: each gets the frames its own link carries.

Run: python examples/viewer_lanes.py

Needs Xvfb (``apt-get install xvfb``). A page of text scrolls on a private 1280x720
screen; the customer's agent's screen encoder (``EncodedScreen``) serves two viewers,
one unlimited and one whose link carries 400 kbit/s (here its packets are taken at
that rate, as its pacer would send them). ``fit`` names each viewer's link, as the
customer's agent does with every report: the slow viewer gets an encode of its own
(``adapt.split_lanes``) and the fast one keeps its frame rate. Then the same with
``limit``, one encode for both fitted to the slower link, as it was before: the
fast viewer is held to the slow one's pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from agent.capture.tracks import EncodedScreen, PacketTrack
from agent.capture.xvfb import Canvas, Xvfb
from bench.screen import text_page

W, H = 1280, 720
SLOW_BPS = 400_000
SECONDS = 3.0


async def take(track: PacketTrack, bps: float | None, frames: list[int]) -> None:
    """Pull ``track``'s packets as a link of ``bps`` would (None: at once)."""
    while True:
        packet = await track.recv()
        frames.append(packet.size)
        if bps is not None:
            await asyncio.sleep(8 * packet.size / bps)


async def scroll_for(canvas: Canvas, seconds: float, report: Callable[[], None]) -> None:
    """Scroll the page; ``report`` stands for the viewers' link reports."""
    page = text_page(W, 3 * H)
    offset, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        offset = (offset + 6) % (2 * H)
        await asyncio.to_thread(canvas.put_image, 0, 0, page.crop((0, offset, W, offset + H)))
        canvas.sync()
        report()
        await asyncio.sleep(1 / 15)


async def run(display: str, canvas: Canvas, *, lanes: bool) -> None:
    screen = EncodedScreen(display=display, heartbeat=60.0)
    fast, slow = screen.track(), screen.track()

    def report() -> None:  # what the customer's agent does with each viewer's link report
        if lanes:
            screen.fit({fast: None, slow: SLOW_BPS})
        else:
            screen.limit(SLOW_BPS)

    report()
    got: dict[str, list[int]] = {"fast": [], "slow": []}
    pulls = [
        asyncio.ensure_future(take(fast, None, got["fast"])),
        asyncio.ensure_future(take(slow, SLOW_BPS, got["slow"])),
    ]
    try:
        await asyncio.sleep(1.0)  # the first keyframes
        for sizes in got.values():
            sizes.clear()
        await scroll_for(canvas, SECONDS, report)
        name = "a lane per link" if lanes else "one encode    "
        print(
            f"{name}: encodes running {screen.stats().lanes}; "
            + "; ".join(
                f"{who} viewer {len(s) / SECONDS:4.1f} frames/s, "
                f"{8 * sum(s) / SECONDS / 1000:5.0f} kbit/s"
                for who, s in got.items()
            )
        )
    finally:
        for task in pulls:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await screen.aclose()


async def main() -> None:
    with Xvfb(W, H) as x, contextlib.closing(Canvas(x.display)) as canvas:
        canvas.put_image(0, 0, text_page(W, H))
        canvas.sync()
        print(
            f"a page scrolling at 90 px/s; the slow viewer's link carries {SLOW_BPS // 1000} kbit/s"
        )
        await run(x.display, canvas, lanes=True)
        await run(x.display, canvas, lanes=False)


if __name__ == "__main__":
    asyncio.run(main())
