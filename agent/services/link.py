"""The link under a viewed screen: feedback from the viewer, the estimate at the sharer.

Thin glue around ``agent.session.link``:

- the CSR's agent (``ViewerFeedback``) notes when each screen packet arrives and
  sends a report every ``FEEDBACK_INTERVAL`` while packets come, as RTCP next to the
  screen's own (``agent.protocol.feedback``: unreliable, so a lost one holds up none
  after it), or as a ``feedback`` message on the session channel before the first
  packet has named the media SSRC;
- the customer's agent (``ViewedLink``, one per viewer) feeds what its sender sends
  and those reports to a ``LinkEstimator``, checks for silent viewers, and sends the
  viewer a ``link`` report every ``REPORT_INTERVAL``, which the CSR's agent emits as
  the ``link`` event with the frame rate it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.errors import DecodeError
from agent.protocol import channel as ch
from agent.protocol import feedback
from agent.session.adapt import Pace, Pacing
from agent.session.link import (
    FEEDBACK_INTERVAL,
    FEEDBACK_TIMEOUT,
    ArrivalRecorder,
    LinkEstimator,
    from_wire,
    to_wire,
)

log = logging.getLogger(__name__)

REPORT_INTERVAL = 2.0
"Seconds between ``link`` reports to the viewer (and ``link`` events there)."


def _logged(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("link task failed", exc_info=task.exception())


class ViewerFeedback:
    """The CSR's side: reports of when the customer's screen packets arrived."""

    def __init__(self, receiver: Any, send: Callable[[ch.ScreenFeedback], object]) -> None:
        from agent.capture.rtc import watch_arrivals

        self.recorder = ArrivalRecorder()
        self._send = send
        self._receiver = receiver
        self._arrived = asyncio.Event()
        self._media = watch_arrivals(receiver, self._on_packet)
        self.sent_rtcp = 0
        "Reports sent as RTCP (the rest went on the session channel)."
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(_logged)

    def _on_packet(self, seq: int, now: float) -> None:
        self.recorder.on_packet(seq, now)
        self._arrived.set()

    async def _run(self) -> None:
        # asleep until packets come: a CSR whose view is not granted wakes for nothing
        while True:
            await self._arrived.wait()
            await asyncio.sleep(FEEDBACK_INTERVAL)
            self._arrived.clear()
            report = self.recorder.take(time.monotonic())
            if report is not None:
                await self._report(to_wire(report))

    async def _report(self, msg: ch.ScreenFeedback) -> None:
        from agent.capture.rtc import send_app_feedback

        if not self._media:
            self._send(msg)
            return
        for fci in feedback.encode(msg):
            await send_app_feedback(self._receiver, self._media[0], fci)
        self.sent_rtcp += 1

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class ViewedLink:
    """The customer's side, one per viewer: the estimate of that viewer's link, and the
    pace of its packets (``agent.session.adapt.Pacing``) after every report."""

    def __init__(
        self,
        sender: Any,
        send: Callable[[ch.Message], object],
        on_estimate: Callable[[], None] = lambda: None,
    ) -> None:
        from agent.capture.rtc import sent_screen_packets, watch_app_feedback

        self.estimator = LinkEstimator()
        self.pacing = Pacing()
        self.pace: Pace = self.pacing.update(self.estimator.state())
        self._send = send
        self._on_estimate = on_estimate
        self.pacer = sent_screen_packets(sender, self.estimator.on_sent)
        self.pacer.window = self.estimator.may_send
        watch_app_feedback(sender, feedback.is_feedback, self._on_fci)
        self._sender = sender
        self._apply()
        self._task = asyncio.ensure_future(self._run())
        self._task.add_done_callback(_logged)

    @property
    def limited(self) -> bool:
        """Whether this viewer's link has been found full (the screen fits it)."""
        return self.pace.limited

    @property
    def target_bps(self) -> int:
        """Bits/s the screen may use on this link."""
        return self.estimator.target_bps

    def on_feedback(self, msg: ch.ScreenFeedback) -> None:
        """A viewer's report, from the session channel or from RTCP."""
        self.estimator.on_feedback(from_wire(msg), time.monotonic())
        self.pacer.wake()
        self._apply()

    def _on_fci(self, fci: bytes) -> None:
        try:
            msg = feedback.decode(fci)
        except DecodeError as exc:
            log.warning("dropped a screen report: %s", exc.message)
            return
        self.on_feedback(msg)

    def _apply(self) -> None:
        self.pace = self.pacing.update(self.estimator.state())
        self.pacer.rate = self.pace.rate_bps / 8
        self.pacer.burst = self.pace.burst_bytes
        self._on_estimate()

    async def _run(self) -> None:
        next_report = time.monotonic() + REPORT_INTERVAL
        while True:
            await asyncio.sleep(FEEDBACK_TIMEOUT / 4)
            now = time.monotonic()
            self.estimator.on_timer(now)
            self._apply()
            if now >= next_report:
                next_report = now + REPORT_INTERVAL
                s = self.estimator.state()
                self._send(
                    ch.LinkReport(
                        kbps=min(s.received_bps // 1000, 10**7),
                        target_kbps=min(s.target_bps // 1000, 10**7),
                        rtt_ms=None if s.rtt_ms is None else min(int(s.rtt_ms), 60000),
                        loss=min(max(s.loss, 0.0), 1.0),
                        queue_ms=min(int(s.queue_ms), 60000),
                    )
                )

    def close(self) -> None:
        """Stop: the sender's pacer no longer reports to this estimate, nor follows it."""
        from agent.capture.rtc import PACE_BURST, PACE_RATE, watch_app_feedback

        self._task.cancel()
        watch_app_feedback(self._sender, feedback.is_feedback, lambda fci: None)
        self.pacer.observe = None
        self.pacer.window = None
        self.pacer.wake()
        self.pacer.rate, self.pacer.burst = PACE_RATE / 8, PACE_BURST
