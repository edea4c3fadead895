"""How fast a file's bytes may leave while a screen is live on the same link (sans-I/O).

A file over the fast path is one TCP connection, and TCP fills whatever queue the
bottleneck has: measured on a 4 Mbit/s tbf link with 300 ms of buffer, an unpaced
transfer holds the round trip at 370-470 ms, and the screen and the clicks that
share the link wait that long. While a screen is live, the sender therefore paces
the file at a rate this core sets, a delay-based controller in the manner of LEDBAT
(RFC 6817): it aims the bottleneck's queue at ``TARGET_S`` and gives way as soon
as the queue grows past it, so the file takes what the screen leaves free and
the screen keeps what it needs.

- The queue is TCP's own smoothed round trip minus the least one seen over
  ``BASE_WINDOW`` (the kernel measures it per ack, ``TCP_INFO`` on Linux): a
  queue at the bottleneck delays every segment of the file.
- ``TARGET_S`` is below the screen estimator's ``UNDERUSE_MS`` (12 ms): with the
  queue the file keeps, the screen's estimate still grows, and when it grows the
  queue rises past the target and the file gives way. Above ``CUT_S`` (under the
  screen's ``OVERUSE_MS``, 40 ms), the rate is cut by ``CUT`` at once, at most
  once per ``CUT_HOLD`` unless the queue grew by half of ``CUT_S`` since the last
  cut (the screen wants more, now): the file backs off before the screen has to; above
  ``DRAIN_S`` it all but stops until the queue has drained. (Tuned on the real
  4 Mbit/s link of ``peerdesk bench links``: aimed at 10 ms and cut at 30 ms, the
  file took 1.8-2.3 Mbit/s and the scrolling screen's p95 rose from 0.5 to 0.9-1.7 s;
  at 5 and 20 ms the screen kept its figures and the file got 0.4-0.8 Mbit/s.)
- It starts as TCP does: doubling every ``START_ROUND`` until the queue reaches
  ``TARGET_S`` (then it steps back by ``CUT``), so that a LAN with a screen live
  still moves a file at its own speed; a link already queued ends the start at once.
- After that, the rate moves smoothly, ``GAIN`` per second times how far the
  queue is off target (-1..1): it doubles in about half a second on an empty link,
  and grows at ``SLOW_GAIN`` near the rate it was last cut from (the queue shows
  nothing until the link is full, so that is where it probes gently; past
  ``PAST_CUT`` of it, the link has room again: a screen that went still).
- It never grows past ``HEADROOM`` times what actually left lately (a sender held
  back by its disk or its peer proves nothing about the link), never falls under
  ``MIN_BPS`` (a file always moves), and when the screen goes live mid-transfer
  it starts at ``START_SHARE`` of what the file was getting.

``live`` false: no limit at all (``rate_bps`` is None, ``wait`` is 0), the fast
path's full speed. Invariant: while live, ``MIN_BPS <= rate_bps <= MAX_BPS``.
Nothing here reads a clock.
"""

from __future__ import annotations

import collections

TARGET_S = 0.005
"Queueing delay (s) the file aims the bottleneck at."
CUT_S = 0.020
"Queueing delay (s) above which the rate is cut at once."
CUT = 0.7
"The rate is multiplied by this on a cut."
CUT_HOLD = 0.25
"""Seconds after a cut before another: the kernel's smoothed round trip takes about
this long (eight acks' worth) to show that the queue drains."""
GAIN = 1.5
"Growth (or decline) per second at a queue 100 % off target."
SLOW_GAIN = 0.15
"Growth per second near the rate last cut from (``NEAR_CUT`` of it, within ``BASE_WINDOW``)."
NEAR_CUT, PAST_CUT = 0.85, 1.3
"""Where growth is slow: between these shares of the rate last cut from (the highest
rate of the last run of cuts: the rate at which the link was found full)."""
EPISODE_S = 1.0
"Cuts less than this apart (s) answer the same full link."
DRAIN_S = 0.100
"""Queueing delay (s) above which the file all but stops (``MIN_BPS``) until it is under
``CUT_S``: what a file sent before the screen went live, a full buffer, drains in
well under a second instead of seconds of cuts."""
BASE_WINDOW = 10.0
"Seconds over which the least round trip is kept (the empty-queue round trip)."
HEADROOM = 2.0
"The rate never exceeds this times what left over the last ``RATE_WINDOW``."
RATE_WINDOW = 1.0
"Seconds over which what left is measured."
MIN_BPS = 100_000
"Lowest rate (bits/s): a file always moves."
MAX_BPS = 10_000_000_000
"Highest rate (bits/s)."
START_BPS = 1_000_000
"Rate (bits/s) when the screen goes live before anything was sent."
START_SHARE = 0.5
"When the screen goes live mid-transfer, the rate starts at this share of what left."
BURST_S = 0.005
"A slice (bytes handed to the socket at once) is this many seconds of the rate."
SLICE_MIN = 1448
"Smallest slice: one TCP segment."
SLICE_MAX = 256 * 1024
"Largest slice."
MAX_STEP = 0.2
"Longest gap (s) between samples used for one step of growth."
START_ROUND = 0.05
"""Until the link is found (a queue of ``TARGET_S``, or a cut), the rate doubles every
this many seconds: from 1 Mbit/s to a LAN's 1 Gbit/s in half a second."""
START_WINDOW = 0.1
"Seconds over which what left caps the doubling (``HEADROOM`` times it)."


class FileYield:
    """The pace of one file transfer's bytes, given the screen's state and TCP's round trip."""

    def __init__(self) -> None:
        self.live = False
        self._rate = float(START_BPS)
        self._rtts: collections.deque[tuple[float, float]] = collections.deque()
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._sent_bytes = 0
        self._next_at: float | None = None
        self._last_step: float | None = None
        self._last_cut: float | None = None
        self._cut_from = 0.0
        self._starting = True
        self._queue_at_cut = 0.0
        self.queue_s = 0.0
        "The bottleneck's queue as last measured (s)."
        self.cuts = 0
        "How many times the rate was cut (for tests and logs)."

    @property
    def rate_bps(self) -> float | None:
        """The file's rate (bits/s), None while no screen is live."""
        return self._rate if self.live else None

    def set_live(self, live: bool, now: float) -> None:
        """Whether a screen is live on this link now; called before each slice."""
        if live == self.live:
            return
        self.live = live
        if live:
            left = self._left_bps(now)
            self._rate = _clamp(START_SHARE * left if left else START_BPS)
            self._next_at = None
            self._last_step = now
            self._starting = True

    def slice_bytes(self) -> int:
        """How many bytes to hand to the socket at once."""
        if not self.live:
            return SLICE_MAX
        return max(SLICE_MIN, min(SLICE_MAX, int(self._rate * BURST_S / 8)))

    def wait(self, now: float) -> float:
        """Seconds to wait before the next slice may leave."""
        if not self.live or self._next_at is None:
            return 0.0
        return max(0.0, self._next_at - now)

    def on_sent(self, nbytes: int, now: float) -> None:
        """``nbytes`` were handed to the socket at ``now``."""
        self._sent.append((now, nbytes))
        self._sent_bytes += nbytes
        while self._sent and self._sent[0][0] < now - RATE_WINDOW:
            self._sent_bytes -= self._sent.popleft()[1]
        if self.live:
            start = now if self._next_at is None else max(self._next_at, now - BURST_S)
            self._next_at = start + nbytes * 8 / self._rate

    def on_rtt(self, srtt: float, now: float, *, min_rtt: float | None = None) -> None:
        """TCP's smoothed round trip (s) at ``now``; ``min_rtt``: the kernel's own least."""
        if srtt <= 0:
            return
        while self._rtts and self._rtts[-1][1] >= srtt:  # a windowed minimum: the
            self._rtts.pop()  # deque holds rising round trips, its head is the least
        self._rtts.append((now, srtt))
        while self._rtts[0][0] < now - BASE_WINDOW:
            self._rtts.popleft()
        base = self._rtts[0][1]
        if min_rtt is not None and 0 < min_rtt < base:
            base = min_rtt
        self.queue_s = max(0.0, srtt - base)
        if not self.live:
            return
        last, self._last_step = self._last_step, now
        if self.queue_s > CUT_S:
            if (
                self._last_cut is None
                or now - self._last_cut >= CUT_HOLD
                or self.queue_s > self._queue_at_cut + CUT_S / 2
            ):
                episode = self._last_cut is not None and now - self._last_cut < EPISODE_S
                self._cut_from = max(self._cut_from, self._rate) if episode else self._rate
                self._last_cut, self._queue_at_cut = now, self.queue_s
                self.cuts += 1
                self._starting = False
                self._rate = MIN_BPS if self.queue_s > DRAIN_S else _clamp(self._rate * CUT)
            return
        dt = 0.0 if last is None else min(MAX_STEP, max(0.0, now - last))
        if self._starting:
            if self.queue_s < TARGET_S:  # nothing queues: double every START_ROUND
                cap = max(self._rate, HEADROOM * self._left_bps(now, START_WINDOW) + MIN_BPS)
                self._rate = _clamp(min(self._rate * 2 ** (dt / START_ROUND), cap))
                return
            self._starting = False  # the link is found: from here on, steer to the target
            self._cut_from, self._last_cut = self._rate, now
            self._rate = _clamp(self._rate * CUT)
            return
        off = max(-1.0, min(1.0, (TARGET_S - self.queue_s) / TARGET_S))
        near = (
            self._last_cut is not None
            and now - self._last_cut < BASE_WINDOW
            and NEAR_CUT * self._cut_from < self._rate < PAST_CUT * self._cut_from
        )
        rate = self._rate * (1.0 + (SLOW_GAIN if near and off > 0 else GAIN) * off * dt)
        if off > 0:
            rate = min(rate, max(self._rate, HEADROOM * self._left_bps(now) + MIN_BPS))
        self._rate = _clamp(rate)

    def _left_bps(self, now: float, window: float = RATE_WINDOW) -> float:
        """Bits/s handed to the socket over the last ``window`` (at most ``RATE_WINDOW``)."""
        if not self._sent:
            return 0.0
        if window >= RATE_WINDOW:
            return self._sent_bytes * 8 / max(now - self._sent[0][0], RATE_WINDOW / 4)
        total, first = 0, now
        for at, n in reversed(self._sent):
            if at < now - window:
                break
            total, first = total + n, at
        return total * 8 / max(now - first, window / 2)


def _clamp(bps: float) -> float:
    return max(float(MIN_BPS), min(float(MAX_BPS), bps))
