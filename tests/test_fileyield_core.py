"""The file's pace while a screen is live (``agent.session.fileyield``), pumped by hand.

A fluid model of one bottleneck stands in for the network: a queue that the screen
(a constant rate) and the file (the core's pace) fill and the link drains, and a
round trip that TCP smooths the way the kernel does (1/8 per ack). Each test checks
what a person would notice: the queue the screen waits behind, and what the file
still gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.session import fileyield as fy
from agent.session.fileyield import FileYield

BASE_RTT = 0.020
STEP = 0.005


@dataclass
class Link:
    capacity: float
    "bits/s"
    screen: float
    "bits/s the screen sends"
    queue_bits: float = 0.0
    srtt: float = BASE_RTT
    file_bits: float = 0.0
    queues: list[float] = field(default_factory=list)

    @property
    def queue_s(self) -> float:
        return self.queue_bits / self.capacity

    def run(self, core: FileYield, start: float, seconds: float, *, live: bool = True) -> float:
        """Pump the core for ``seconds``; returns the file's goodput (bits/s) over them."""
        now, sent_at_start = start, self.file_bits
        while now < start + seconds:
            core.set_live(live, now)
            core.on_rtt(self.srtt, now)
            sent = 0.0
            if core.rate_bps is None:  # unpaced: TCP keeps the bottleneck's buffer full
                room = 0.3 * self.capacity - self.queue_bits
                sent = max(0.0, room + (self.capacity - self.screen) * STEP)
                core.on_sent(int(sent / 8), now)
            while core.rate_bps is not None and core.wait(now) <= 0:
                n = core.slice_bytes()
                core.on_sent(n, now)
                sent += n * 8
            self.file_bits += sent
            self.queue_bits = max(
                0.0, self.queue_bits + (sent + self.screen * STEP) - self.capacity * STEP
            )
            self.queue_bits = min(self.queue_bits, 0.3 * self.capacity)  # tbf's 300 ms
            for _ in range(8):  # acks: the kernel's smoothing
                self.srtt += (BASE_RTT + self.queue_s - self.srtt) / 8
            self.queues.append(self.queue_s)
            now += STEP
        return (self.file_bits - sent_at_start) / seconds


def _p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95)]


def test_without_a_live_screen_there_is_no_limit() -> None:
    core = FileYield()
    core.set_live(False, 0.0)
    assert core.rate_bps is None
    assert core.wait(0.0) == 0.0
    core.on_sent(10**6, 0.0)
    assert core.wait(0.0) == 0.0
    assert core.slice_bytes() == fy.SLICE_MAX


@pytest.mark.parametrize("capacity", [1e6, 2e6, 4e6, 8e6])
def test_the_file_takes_what_the_screen_leaves_and_keeps_the_queue_short(
    capacity: float,
) -> None:
    link = Link(capacity=capacity, screen=0.5 * capacity)
    core = FileYield()
    link.run(core, 0.0, 5.0)  # settle
    link.queues.clear()
    goodput = link.run(core, 5.0, 20.0)
    free = capacity - link.screen
    assert goodput >= 0.5 * free, (goodput, free)
    assert goodput <= free * 1.05
    assert _p95(link.queues) < 0.040  # the screen's estimator backs off at 40 ms
    assert fy.MIN_BPS <= (core.rate_bps or 0) <= fy.MAX_BPS


def test_a_screen_that_goes_live_mid_transfer_gets_its_queue_back_within_a_second() -> None:
    link = Link(capacity=4e6, screen=0.0)
    core = FileYield()
    unpaced = link.run(core, 0.0, 3.0, live=False)
    assert unpaced > 3.5e6
    assert link.queue_s > 0.25  # a file alone fills the bottleneck's buffer
    link.screen = 2e6
    link.queues.clear()
    link.run(core, 3.0, 1.0)
    assert core.rate_bps is not None
    assert max(link.queues[-40:]) < 0.040, max(link.queues[-40:])  # the last 0.2 s
    link.queues.clear()
    goodput = link.run(core, 4.0, 10.0)
    assert max(link.queues) < 0.040
    assert goodput >= 0.5 * (4e6 - 2e6)


def test_when_the_screen_needs_more_the_file_gives_way() -> None:
    link = Link(capacity=4e6, screen=0.5e6)  # a still screen: little to send
    core = FileYield()
    link.run(core, 0.0, 5.0)
    before = core.rate_bps
    assert before is not None and before > 2.5e6
    link.screen = 3.0e6  # scrolling now, at once (the real screen's rate climbs)
    link.queues.clear()
    link.run(core, 5.0, 1.5)
    assert max(link.queues) < 0.120  # the transient: the kernel's round trip lags
    assert link.queue_s < fy.CUT_S
    link.queues.clear()
    goodput = link.run(core, 6.5, 10.0)
    assert _p95(link.queues) < 0.040
    assert 0.5e6 <= goodput <= 1.05e6
    assert core.cuts >= 1


def test_when_the_screen_stops_the_file_grows_back() -> None:
    link = Link(capacity=8e6, screen=6e6)
    core = FileYield()
    link.run(core, 0.0, 5.0)
    slow = link.run(core, 5.0, 5.0)
    link.screen = 0.2e6
    link.run(core, 10.0, 10.0)
    fast = link.run(core, 20.0, 5.0)
    assert slow < 2.2e6
    assert fast >= 0.5 * (8e6 - 0.2e6), fast


def test_the_rate_never_falls_under_the_floor() -> None:
    link = Link(capacity=1e6, screen=1.2e6)  # the screen alone overfills the link
    core = FileYield()
    link.run(core, 0.0, 10.0)
    assert core.rate_bps == fy.MIN_BPS


def test_the_pace_spaces_slices_at_the_rate() -> None:
    core = FileYield()
    core.set_live(True, 0.0)
    rate = core.rate_bps
    assert rate == fy.START_BPS
    now, sent = 0.0, 0
    while now < 2.0:
        if core.wait(now) <= 0:
            n = core.slice_bytes()
            core.on_sent(n, now)
            sent += n
        now += 0.001
    assert sent * 8 / 2.0 == pytest.approx(rate, rel=0.05)


def test_going_live_mid_transfer_starts_at_half_of_what_left() -> None:
    core = FileYield()
    for i in range(100):
        core.on_sent(50_000, i * 0.01)  # 40 Mbit/s
    core.set_live(True, 1.0)
    assert core.rate_bps == pytest.approx(0.5 * 40e6, rel=0.1)


def test_round_trips_that_are_not_samples_change_nothing() -> None:
    core = FileYield()
    core.set_live(True, 0.0)
    core.on_rtt(0.0, 0.1)
    core.on_rtt(-1.0, 0.2)
    assert core.queue_s == 0.0
    assert core.rate_bps == fy.START_BPS


def test_on_a_lan_a_live_screen_costs_the_file_almost_nothing() -> None:
    """The start doubles the rate until a queue shows: a gigabit LAN in half a second."""
    link = Link(capacity=1e9, screen=5e6)
    core = FileYield()
    link.run(core, 0.0, 0.6)
    fast = link.run(core, 0.6, 2.0)
    assert fast >= 0.5e9, fast
    assert _p95(link.queues) < 0.040


def test_a_link_that_is_already_queued_ends_the_start_at_once() -> None:
    link = Link(capacity=2e6, screen=1.5e6)
    core = FileYield()
    link.run(core, 0.0, 1.0)
    assert max(link.queues) < 0.060  # no doubling into a link that was full already
