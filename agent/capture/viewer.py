"""The CSR's side of screen sharing: consume a received video track.

aiortc decodes in its own thread and hands decoded frames to the track; a
``ScreenViewer`` pulls them on the event loop, keeps the newest one, counts them,
and remembers when each arrived. ``snapshot`` converts only on demand (in a thread)
so watching costs nothing beyond aiortc's decode.

Importing this module installs ``jitter.PromptJitterBuffer`` for receivers created
afterwards (frames are shown when their last packet arrives, not one frame later),
as ``agent.net.peer`` installs the prompt ICE connect.

    viewer = ScreenViewer(track)        # from pc.on("track")
    viewer.start()
    await viewer.wait_frame()
    await viewer.snapshot("screen.png")
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from agent.capture import jitter

log = logging.getLogger(__name__)
jitter.install()

HISTORY = 600
"Arrival records kept (20 s at 30 fps)."


@dataclass(frozen=True, slots=True)
class FrameTime:
    """When one decoded frame arrived."""

    pts: float
    "The sender's presentation time in seconds (sender clock, arbitrary origin)."
    received_at: float
    "``time.monotonic()`` when the viewer took it from the track."


class ScreenViewer:
    """Keeps the latest decoded frame of a remote screen track and counts frames."""

    def __init__(
        self,
        track: MediaStreamTrack,
        *,
        on_frame: Callable[[av.VideoFrame, float], None] | None = None,
        history: int = HISTORY,
    ) -> None:
        """``on_frame(frame, received_at)`` runs on the loop for each frame: keep it short."""
        self.track = track
        self.on_frame = on_frame
        "Called as ``on_frame(frame, received_at)`` for each frame; may be set at any time."
        self.latest: av.VideoFrame | None = None
        "The newest decoded frame (yuv420p), or None before the first."
        self.frames = 0
        "Frames received so far."
        self.times: collections.deque[FrameTime] = collections.deque(maxlen=history)
        "Arrival times of the most recent frames, oldest first."
        self.ended = False
        "The track ended (the sender stopped or the connection closed)."
        self._task: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    def start(self) -> None:
        """Start pulling frames (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pull())

    async def stop(self) -> None:
        """Stop pulling frames (the track itself is left alone)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pull(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                if not isinstance(frame, av.VideoFrame):
                    continue
                now = time.monotonic()
                self.latest = frame
                self.frames += 1
                tb = frame.time_base
                pts = float(frame.pts * tb) if frame.pts is not None and tb is not None else 0.0
                self.times.append(FrameTime(pts=pts, received_at=now))
                self._new.set()
                if self.on_frame is not None:
                    self.on_frame(frame, now)
        except MediaStreamError:
            pass
        finally:
            self.ended = True
            self._new.set()

    def fps(self, window: float = 1.0) -> float:
        """Frames per second received over the last ``window`` seconds."""
        now = time.monotonic()
        recent = sum(1 for t in self.times if now - t.received_at <= window)
        return recent / window

    async def wait_frame(self, *, after: int | None = None) -> av.VideoFrame:
        """Wait until frame number ``after + 1`` (default: the next one) has arrived.

        Raises ``EOFError`` if the track ends; bound it with ``asyncio.timeout``.
        """
        target = (self.frames if after is None else after) + 1
        while self.frames < target:
            if self.ended:
                raise EOFError("the screen track ended")
            self._new.clear()
            await self._new.wait()
        assert self.latest is not None
        return self.latest

    async def snapshot(self, path: str | Path) -> Path:
        """Write the latest frame to ``path`` as PNG (needs Pillow); returns the path.

        Raises ``LookupError`` if no frame has arrived yet.
        """
        frame = self.latest
        if frame is None:
            raise LookupError("no frame received yet")
        out = Path(path)
        await asyncio.to_thread(_save_png, frame, out)
        return out


Viewer = ScreenViewer
"The name ``agent.services.csr`` imports."


def _save_png(frame: av.VideoFrame, path: Path) -> None:
    image = frame.to_image()  # type: ignore[no-untyped-call]
    image.save(path, format="PNG")
