"""The viewer's link, estimated at the sender from per-packet arrival feedback (sans-I/O).

Both ends are PeerDesk agents, so instead of aiortc's REMB (receiver-side, lagging a
constrained link, and deaf to loss: aiortc issue #170) the viewer reports when each
screen packet arrived, and the sharing side, which knows when it sent each one,
estimates the link itself, as transport-wide feedback does in libwebrtc, str0m and
mediasoup:

- ``ArrivalRecorder`` (viewer) notes ``(seq, arrival)`` of every RTP packet of the
  screen and hands out a ``Feedback`` report every ``FEEDBACK_INTERVAL``: arrival
  times of a run of sequence numbers, ``None`` for each one that did not arrive.
- ``LinkEstimator`` (sender) is told ``on_sent(seq, size, now)`` for every packet and
  ``on_feedback(report, now)`` for every report, ``on_timer(now)`` at least every
  ``FEEDBACK_TIMEOUT / 2``; ``target_bps`` is what the pacer and the encoder may use.

The estimate, two controllers, the lower one wins (draft-ietf-rmcat-gcc's split):

- delay: one-way delay minus its minimum over ``BASE_WINDOW`` is the bottleneck's
  queue (the clocks' offset cancels), taken as the least of the later half of a
  report's packets: a queue delays every packet, while a busy event loop delays
  some; and a queue that grows within a report shows in its later packets (the least
  of all of them is its first, from before: on a 1 Mbit/s link the start's overuse
  was seen 0.2 s later than it could be, after the buffer had overflowed). Above
  ``OVERUSE_MS`` the target drops to ``BACKOFF`` times the rate the viewer actually
  received, at most once per ``DECREASE_HOLD``;
  below ``UNDERUSE_MS`` it grows, ``SLOW_GROWTH`` per second just after a decrease or
  near the capacity last found (``NEAR_CAPACITY``), ``FAST_GROWTH`` otherwise; in
  between it holds. Growth never exceeds ``HEADROOM`` times the
  received rate (plus ``START_BPS``): a still screen that sends little proves nothing
  about the link.
- loss: over the last ``LOSS_WINDOW``, more than ``LOSS_HIGH`` lost cuts the target by
  half the loss fraction; under ``LOSS_LOW`` does not stop growth; between, it holds.
- no report for ``FEEDBACK_TIMEOUT`` since a packet was sent: halve (the link may have
  collapsed, and the reports queue behind the screen there too). Counted from the
  first packet sent after the last report: a pause is not silence (it was, and every
  big frame after a capture had waited halved the target at once).

- window: at most ``window_bytes`` (``WINDOW_S`` of the received rate, at least
  ``WINDOW_MIN``) may be in flight, sent but not yet covered by a report
  (``may_send``). The reports cross the same bottleneck as the screen (a shared
  uplink, or tbf on loopback), so while its queue grows they come late and further
  apart, and the delay controller learns of a queue only once it is most of the
  buffer deep; a sender that waits for them cannot overflow it. At the start, when
  no rate is known, this is what keeps the first keyframe whole: on a 1 Mbit/s
  link with a 20 kB token bucket and 300 ms of buffer, paced at 2 Mbit/s it lost
  10-13 % of its packets and was sent again (first frame 4.3-4.5 s); held to 40 kB
  in flight it lost none (first frame 1.6-1.8 s in 9 runs).

The queue grows by (rate - capacity) / capacity seconds per second: sending 20 %
over the link crosses ``OVERUSE_MS`` within 250 ms, and one report later the target
is below the link. Invariants: ``min_bps <= target_bps <= max_bps``; a report is
used once (a duplicate or older one changes nothing); nothing here reads a clock.
"""

from __future__ import annotations

import collections
import enum
import itertools
from dataclasses import dataclass

from agent.protocol.channel import MAX_FEEDBACK_PACKETS, ScreenFeedback

START_BPS = 2_000_000
"Target before any report (bits/s): a screen's first keyframe goes out at this pace."
MIN_BPS = 150_000
"Lowest target (bits/s): below this a 1080p screen is no longer worth sending."
MAX_BPS = 20_000_000
"Highest target (bits/s)."
FEEDBACK_INTERVAL = 0.1
"Seconds between the viewer's reports."
FEEDBACK_TIMEOUT = 1.0
"Seconds without a report, while sending, after which the target halves."
BASE_WINDOW = 10.0
"Seconds over which the minimum one-way delay is kept (the empty-queue delay)."
OVERUSE_MS = 40.0
"Queueing delay (ms) that means the link is full: back off."
UNDERUSE_MS = 12.0
"Queueing delay (ms) under which the link has room: grow."
BACKOFF = 0.85
"On overuse the target becomes this times the received rate."
DECREASE_HOLD = 0.3
"Seconds after a decrease before another (the queue needs time to drain)."
SLOW_GROWTH = 0.08
"Growth per second just after a decrease (GCC's 8 %)."
FAST_GROWTH = 0.5
"Growth per second once the last decrease is ``CAUTION_S`` ago (a link that came back)."
CAUTION_S = 3.0
"Seconds after a decrease during which growth is slow."
NEAR_CAPACITY = 0.9
"Growth stays slow above this share of the capacity last found (within ``BASE_WINDOW``)."
HEADROOM = 1.5
"Growth is capped at this times the received rate (plus ``START_BPS``)."
RATE_WINDOW = 1.0
"""Seconds of reports (sender's clock) over which the received rate is measured: the
viewer's arrival times bunch when its loop is busy (measured: 3.3 Mbit/s "received"
over 0.5 s of arrival times on a 2 Mbit/s link), the bytes reported per second do not."""
IDLE_GAP = 0.15
"""A pause this long (s, viewer's clock) between one report's last arrival and the next
one's first is the sender having nothing to send; the received rate leaves it out.
(Longer than a busy viewer loop's stalls, which bunch arrivals by up to 0.1 s.)"""
SHORT_WINDOW = 0.3
"Seconds of the latest reports whose rate a back-off also considers (the lower wins)."
LOSS_WINDOW = 1.0
"Seconds of reports over which loss is counted."
LOSS_HIGH = 0.10
"Loss fraction above which the target is cut."
LOSS_LOW = 0.02
"Loss fraction under which loss does not hold growth back."
WINDOW_S = 0.5
"""Seconds of the received rate that may be in flight (sent, not yet reported): the
viewer's reports cross the same bottleneck as the screen, so while its queue grows
they come late, and a sender that waits for them cannot overflow it."""
WINDOW_MIN = 40_000
"""Bytes that may be in flight whatever the rate, and before any rate is known: a
1 Mbit/s uplink's token bucket (20 kB) and 300 ms buffer (37 kB) hold them."""
IN_FLIGHT_S = FEEDBACK_TIMEOUT
"A packet no report has covered for this long no longer counts as in flight."
SENT_KEPT = 4096
"Sent packets remembered for matching reports (about 5 MB of screen)."
MAX_REPORT = MAX_FEEDBACK_PACKETS
"Most sequence numbers one report may cover (what the wire allows)."

_SEQ = 1 << 16


class Trend(enum.Enum):
    """What the last report said about the link."""

    STARTING = "starting"
    "No report yet."
    UNDERUSED = "underused"
    "Room to grow."
    STEADY = "steady"
    "Hold the rate."
    OVERUSED = "overused"
    "Queue building or packets lost: the target went down."


@dataclass(frozen=True)
class Feedback:
    """Viewer to sender: when each of a run of screen packets arrived."""

    base: int
    "Sequence number (RTP, 0-65535) of the first packet covered."
    arrivals: tuple[float | None, ...]
    "Arrival time (viewer's clock, seconds) of ``base + i``; None: not received."
    hold: float = 0.0
    "Seconds between the arrival of the last packet received here and the report leaving."


@dataclass(frozen=True)
class LinkState:
    """What the estimator knows (a snapshot, for the ``link`` event and the policy)."""

    target_bps: int
    received_bps: int
    "Rate the viewer received, from the bytes reported over the last ``RATE_WINDOW``."
    queue_ms: float
    "Queueing delay at the bottleneck, as last measured."
    rtt_ms: float | None
    loss: float
    "Fraction of packets lost over the last ``LOSS_WINDOW``."
    trend: Trend
    capacity_bps: int = 0
    """The bottleneck's rate: what arrived while its queue was building (max over
    ``BASE_WINDOW``); 0: the link was not found full lately."""


class ArrivalRecorder:
    """The viewer's side: record arrivals, hand out ``Feedback`` reports."""

    def __init__(self) -> None:
        self._base: int | None = None  # unwrapped seq of the next report's first packet
        self._highest: int | None = None  # unwrapped
        self._arrivals: dict[int, float] = {}

    def on_packet(self, seq: int, now: float) -> None:
        """A screen RTP packet with sequence number ``seq`` arrived at ``now``."""
        seq = self._unwrap(seq % _SEQ)
        if self._base is None:
            self._base = seq
        if seq < self._base:
            return  # reported missing already: it counts as lost
        if seq - self._base >= SENT_KEPT:  # a jump: start over there
            self._base, self._arrivals = seq, {}
        self._arrivals.setdefault(seq, now)
        self._highest = seq if self._highest is None else max(self._highest, seq)

    def take(self, now: float) -> Feedback | None:
        """The report of everything since the last one, or None if nothing arrived."""
        if self._base is None or self._highest is None or self._highest < self._base:
            return None
        end = min(self._highest + 1, self._base + MAX_REPORT)
        arrivals = tuple(self._arrivals.pop(s, None) for s in range(self._base, end))
        last = next((at for at in reversed(arrivals) if at is not None), now)
        report = Feedback(self._base % _SEQ, arrivals, hold=max(0.0, now - last))
        self._base = end
        return report

    def _unwrap(self, seq: int) -> int:
        if self._highest is None:
            return seq
        ref = self._highest
        delta = (seq - ref) % _SEQ
        if delta >= _SEQ // 2:
            delta -= _SEQ
        return ref + delta


class LinkEstimator:
    """The sender's side: the viewer's link from what was sent and what arrived."""

    def __init__(
        self, *, start_bps: int = START_BPS, min_bps: int = MIN_BPS, max_bps: int = MAX_BPS
    ) -> None:
        if not 0 < min_bps <= start_bps <= max_bps:
            raise ValueError("need 0 < min_bps <= start_bps <= max_bps")
        self.min_bps, self.max_bps = min_bps, max_bps
        self._target = float(start_bps)
        self._sent: collections.OrderedDict[int, tuple[float, int]] = collections.OrderedDict()
        self._sent_since_report = False
        self._unreported_since = 0.0
        self._flight: collections.deque[tuple[int, float, int]] = collections.deque()
        self._flight_bytes = 0
        self._window = WINDOW_MIN
        self._last_report_at: float | None = None
        self._last_timeout_at: float | None = None
        self._last_decrease_at: float | None = None
        self._last_growth_at: float | None = None
        self._reported_upto: int | None = None  # unwrapped: highest seq already reported
        self._highest_sent: int | None = None
        self._base_delays: collections.deque[tuple[float, float]] = collections.deque()
        # per report: (sender's clock at its last arrival, bytes received, the viewer's
        # last and first arrival)
        self._received: collections.deque[tuple[float, int, float, float]] = collections.deque()
        self._outcomes: collections.deque[tuple[float, int, int]] = collections.deque()
        self._queue_ms = 0.0
        self._rtt: float | None = None
        self._trend = Trend.STARTING
        self._capacity: collections.deque[tuple[float, float]] = collections.deque()

    @property
    def target_bps(self) -> int:
        """Bits/s the screen may use now."""
        return int(self._target)

    def state(self) -> LinkState:
        """A snapshot of the estimate."""
        return LinkState(
            target_bps=self.target_bps,
            received_bps=int(self._received_bps()),
            queue_ms=round(self._queue_ms, 1),
            rtt_ms=None if self._rtt is None else round(self._rtt * 1000, 1),
            loss=round(self._loss(), 3),
            trend=self._trend,
            capacity_bps=int(self.capacity_bps),
        )

    @property
    def capacity_bps(self) -> float:
        """What the link delivered while full, lately (0: not found full in ``BASE_WINDOW``)."""
        return self._capacity[0][1] if self._capacity else 0.0

    def expire(self, now: float) -> None:
        """Forget a capacity measured longer than ``BASE_WINDOW`` ago."""
        while self._capacity and self._capacity[0][0] < now - BASE_WINDOW:
            self._capacity.popleft()

    @property
    def window_bytes(self) -> int:
        """Bytes that may be in flight (``WINDOW_S`` of the received rate, ``WINDOW_MIN``
        at least; updated with each report)."""
        return self._window

    def in_flight(self, now: float) -> int:
        """Bytes sent that no report has covered yet (``IN_FLIGHT_S`` at most ago)."""
        flight = self._flight
        while flight and flight[0][1] < now - IN_FLIGHT_S:
            self._flight_bytes -= flight.popleft()[2]
        return self._flight_bytes

    def may_send(self, now: float) -> bool:
        """Whether the next packet fits the window (``in_flight < window_bytes``)."""
        return self.in_flight(now) < self.window_bytes

    @property
    def reported(self) -> bool:
        """Whether any report was used yet."""
        return self._trend is not Trend.STARTING

    def on_sent(self, seq: int, size: int, now: float) -> None:
        """Packet ``seq`` (RTP sequence number) of ``size`` bytes left at ``now``."""
        seq = self._unwrap(seq % _SEQ, self._highest_sent)
        self._highest_sent = seq if self._highest_sent is None else max(self._highest_sent, seq)
        self._sent[seq] = (now, size)
        self._sent.move_to_end(seq)
        while len(self._sent) > SENT_KEPT:
            self._sent.popitem(last=False)
        if self._reported_upto is None or seq > self._reported_upto:
            self._flight.append((seq, now, size))
            self._flight_bytes += size
        if not self._sent_since_report:
            # the timeout counts from the first packet no report has covered yet: after
            # a pause (a still screen, a capture holding) the next packet is no news
            self._unreported_since = now
        self._sent_since_report = True
        if self._last_report_at is None:
            self._last_report_at = now

    def on_feedback(self, report: Feedback, now: float) -> None:
        """A viewer's report arrived at ``now``."""
        if not report.arrivals or self._highest_sent is None:
            return
        base = self._unwrap(report.base % _SEQ, self._highest_sent)
        end = base + len(report.arrivals)
        if self._reported_upto is not None and end - 1 <= self._reported_upto:
            return  # a duplicate or an old report
        start = base if self._reported_upto is None else max(base, self._reported_upto + 1)
        self._reported_upto = end - 1
        flight = self._flight
        while flight and flight[0][0] <= self._reported_upto:
            self._flight_bytes -= flight.popleft()[2]
        self._last_report_at = now
        self._last_timeout_at = None
        self._sent_since_report = False
        got = lost = got_bytes = 0
        delays: list[float] = []
        last_arrival: float | None = None
        first_arrival: float | None = None
        last_sent_at: float | None = None
        for seq in range(start, end):
            arrived = report.arrivals[seq - base]
            sent = self._sent.get(seq)
            if sent is None:
                continue  # not ours, or forgotten
            sent_at, size = sent
            if arrived is None:
                lost += 1
                continue
            got += 1
            delay = arrived - sent_at
            delays.append(delay)
            last_arrival = arrived if last_arrival is None else max(last_arrival, arrived)
            first_arrival = arrived if first_arrival is None else min(first_arrival, arrived)
            got_bytes += size
            last_sent_at = sent_at
        if got + lost == 0:
            return
        self._outcomes.append((now, got, lost))
        if last_arrival is not None and first_arrival is not None:
            # on the sender's clock, when the last packet arrived (not the report's
            # leaving: the one packet a frame ends with can be reported 0.1 s later)
            self._received.append((now - report.hold, got_bytes, last_arrival, first_arrival))
        if last_sent_at is not None:
            rtt = now - last_sent_at - report.hold
            if rtt >= 0:
                self._rtt = rtt if self._rtt is None else 0.8 * self._rtt + 0.2 * rtt
        self._trim(now)
        if delays:
            self._queue_ms = self._observe_delay(delays, now) * 1000
        self._control(now)

    def on_timer(self, now: float) -> None:
        """Call at least every ``FEEDBACK_TIMEOUT / 2``: halves the target when reports stop."""
        if not self._sent_since_report or self._last_report_at is None:
            return
        since = self._last_timeout_at or max(self._last_report_at, self._unreported_since)
        self.expire(now)
        if now - since >= FEEDBACK_TIMEOUT:
            self._set(self._target / 2)
            self._last_timeout_at = now
            self._last_decrease_at = now
            self._trend = Trend.OVERUSED

    # -- internals

    def _control(self, now: float) -> None:
        loss = self._loss()
        received = self._received_bps()
        self._window = int(max(WINDOW_MIN, WINDOW_S * received / 8))
        overused = self._queue_ms > OVERUSE_MS or loss > LOSS_HIGH
        if overused:
            self._trend = Trend.OVERUSED
            if self._queue_ms > OVERUSE_MS and received > 0:
                self._observe_capacity(received, now)  # a full link delivers its rate
            if self._last_decrease_at is None or now - self._last_decrease_at >= DECREASE_HOLD:
                # the last few reports follow a step down at once; the whole window
                # corrects for arrival times that bunched
                now_rate = min(received, self._received_bps(SHORT_WINDOW)) or received
                by_delay = BACKOFF * now_rate if self._queue_ms > OVERUSE_MS else self._target
                by_loss = self._target * (1 - loss / 2) if loss > LOSS_HIGH else self._target
                self._set(min(self._target, by_delay or self._target, by_loss))
                self._last_decrease_at = now
            self._last_growth_at = now
            return
        if self._queue_ms < UNDERUSE_MS and loss < LOSS_LOW:
            self._trend = Trend.UNDERUSED
            last = self._last_growth_at if self._last_growth_at is not None else now
            dt = min(now - last, 1.0)
            # slowly near a limit: just after a decrease, or close to where the link was
            # last found full (a multiplicative probe there overshoots every few seconds)
            careful = (
                self._last_decrease_at is not None and now - self._last_decrease_at < CAUTION_S
            ) or (self.capacity_bps > 0 and self._target >= NEAR_CAPACITY * self.capacity_bps)
            grown = self._target * (1 + (SLOW_GROWTH if careful else FAST_GROWTH) * dt)
            cap = HEADROOM * received + START_BPS
            if grown > self._target:
                self._set(min(grown, max(cap, self._target)))
        else:
            self._trend = Trend.STEADY
        self._last_growth_at = now

    def _observe_delay(self, delays: list[float], now: float) -> float:
        delay = min(delays)
        window = self._base_delays
        while window and window[-1][1] >= delay:
            window.pop()  # a monotonic deque: its head is the window's minimum
        window.append((now, delay))
        while window[0][0] < now - BASE_WINDOW:
            window.popleft()
        return min(delays[len(delays) // 2 :]) - window[0][1]

    def _observe_capacity(self, bps: float, now: float) -> None:
        window = self._capacity
        while window and window[-1][1] <= bps:
            window.pop()  # a monotonic deque: its head is the window's maximum
        window.append((now, bps))
        while window[0][0] < now - BASE_WINDOW:
            window.popleft()

    def _trim(self, now: float) -> None:
        while self._received and self._received[0][0] < now - RATE_WINDOW:
            self._received.popleft()
        while self._outcomes and self._outcomes[0][0] < now - LOSS_WINDOW:
            self._outcomes.popleft()

    def _received_bps(self, window: float = RATE_WINDOW) -> float:
        """Bytes reported over the span of the reports, on the longer of the two clocks.

        Reports bunch on the sender's clock when they queue on the way back, and the
        arrival times bunch on the viewer's when its loop is busy (measured on a
        2 Mbit/s link: 6 Mbit/s "received" per second of reports after a queue drained,
        3.3 Mbit/s per second of arrivals); rarely both at once. Pauses of the sender
        (``IDLE_GAP``) are left out: what a link carries is measured while it carries.
        """
        if not self._received:
            return 0.0
        recent = [r for r in self._received if r[0] >= self._received[-1][0] - window]
        if len(recent) < 2:
            return 0.0
        span = max(recent[-1][0] - recent[0][0], recent[-1][2] - recent[0][2])
        idle = 0.0
        for before, after in itertools.pairwise(recent):
            gap = after[3] - before[2]
            if gap > IDLE_GAP:
                idle += gap
        size = sum(r[1] for r in recent[1:])
        return size * 8 / max(span - idle, FEEDBACK_INTERVAL)

    def _loss(self) -> float:
        got = sum(g for _, g, _ in self._outcomes)
        lost = sum(lo for _, _, lo in self._outcomes)
        return lost / (got + lost) if got + lost else 0.0

    def _set(self, bps: float) -> None:
        self._target = min(max(bps, self.min_bps), self.max_bps)

    @staticmethod
    def _unwrap(seq: int, ref: int | None) -> int:
        if ref is None:
            return seq
        delta = (seq - ref) % _SEQ
        if delta >= _SEQ // 2:
            delta -= _SEQ
        return ref + delta


def to_wire(report: Feedback) -> ScreenFeedback:
    """The channel message for a report (times in whole microseconds)."""
    times = [a for a in report.arrivals if a is not None]
    t0 = min(times) if times else 0.0
    t0_us = max(0, int(t0 * 1_000_000))
    return ScreenFeedback(
        base=report.base,
        t0_us=t0_us,
        at=tuple(
            None if a is None else max(0, min(int(a * 1_000_000) - t0_us, 2**31 - 1))
            for a in report.arrivals
        ),
        hold_us=max(0, min(int(report.hold * 1_000_000), 10**7)),
    )


def from_wire(msg: ScreenFeedback) -> Feedback:
    """A report from its (already decoded) channel message."""
    return Feedback(
        base=msg.base,
        arrivals=tuple(None if a is None else (msg.t0_us + a) / 1_000_000 for a in msg.at),
        hold=msg.hold_us / 1_000_000,
    )
