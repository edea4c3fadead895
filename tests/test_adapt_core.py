"""The screen's adaptation policy (``agent.session.adapt``), pumped by hand.

The last tests run the whole sender — frames from an encoder whose frame rate follows
``frame_rate``, packets through a token bucket set by ``Pacing``, the estimator fed by
a viewer's reports — over the simulated tail-drop bottleneck of ``test_link_core``.
"""

from __future__ import annotations

import heapq

import pytest

from agent.session.adapt import (
    BURST_MIN,
    FPS_FLOOR,
    KEY_BYTES_1080P,
    KEY_INTERVAL_MAX,
    KEY_INTERVAL_MIN,
    PACE_MAX,
    POLICIES,
    PROBE_BPS,
    QMAX_WORST,
    REKEY_FIT_S,
    REKEY_HOLD_S,
    STEER_MAX,
    Pacing,
    Quality,
    Rekey,
    ScreenMode,
    frame_rate,
    key_bytes_at,
    key_size_ratio,
    keyframe_interval,
    screen_quality,
)
from agent.session.link import (
    FEEDBACK_INTERVAL,
    ArrivalRecorder,
    LinkEstimator,
    LinkState,
    Trend,
)
from tests.test_link_core import Bottleneck

PACKET = 1200


def state(
    target: float = 2e6,
    received: float = 0.0,
    trend: Trend = Trend.UNDERUSED,
    capacity: float = 0.0,
) -> LinkState:
    return LinkState(
        target_bps=int(target),
        received_bps=int(received),
        queue_ms=0.0,
        rtt_ms=10.0,
        loss=0.0,
        trend=trend,
        capacity_bps=int(capacity),
    )


def test_a_link_never_found_full_is_probed_at_twice_what_it_delivered() -> None:
    p = Pacing()
    first = p.update(state(target=1e6, trend=Trend.STARTING))
    assert first.rate_bps == PROBE_BPS and not first.limited
    # the estimator starts at 2 Mbit/s: a first keyframe leaves at that (a LAN doubles it
    # with each report; at 8 Mbit/s a 2 Mbit/s link's buffer overflowed and the
    # customer's agent found the CSR silent for 2 s: SCTP's pings were dropped too)
    assert p.update(state(trend=Trend.STARTING)).rate_bps == 2e6
    assert p.update(state(received=6e6)).rate_bps == 12e6
    # a LAN: keyframes leave as fast as the pacer goes
    assert p.update(state(received=30e6)).rate_bps == PACE_MAX
    # a quiet moment does not forget what the link did
    assert p.update(state(received=0.1e6)).rate_bps == PACE_MAX
    assert p.update(state(received=0.1e6)).burst_bytes >= 40_000


def test_once_found_full_packets_leave_below_what_the_link_delivered() -> None:
    p = Pacing()
    p.update(state(received=1e6))
    full = p.update(state(target=1.5e6, received=1.9e6, trend=Trend.OVERUSED, capacity=2e6))
    assert full.limited
    assert full.rate_bps == pytest.approx(0.85 * 2e6)
    assert full.burst_bytes == BURST_MIN  # 10 ms of 1.7 Mbit/s is under two packets
    # the capacity left the estimator's window: the link stays one to be careful with
    later = p.update(state(target=1.2e6, received=1.1e6, capacity=0))
    assert later.limited and later.rate_bps == pytest.approx(0.85 * 2e6)
    # the target above what the link did once: the pace follows the target
    assert p.update(state(target=5e6, received=4e6)).rate_bps == 5e6


@pytest.mark.parametrize(
    ("target", "bits", "fps"),
    [
        (2e6, 160_000, 10.0),
        (1e6, 160_000, 5.0),
        (0.2e6, 400_000, FPS_FLOOR),  # a screen changing all over: once a second
        (40e6, 160_000, 30.0),
        (2e6, 0.0, 30.0),  # nothing known of the frames yet
    ],
)
def test_the_frame_rate_fits_the_target(target: float, bits: float, fps: float) -> None:
    assert frame_rate(target, bits, 30.0) == pytest.approx(fps)


FULL = 6_000_000


def test_a_link_that_is_not_limited_gets_the_modes_best_picture() -> None:
    for mode, policy in POLICIES.items():
        q = screen_quality(None, mode, full_bitrate=FULL)
        assert q == Quality(FULL, policy.qmax_best)  # and the encoder's keyframe cap


@pytest.mark.parametrize(
    ("mbps", "qmax"),
    # a page of text (496 kB at 36), 1.5 s of the link: 1 Mbit/s -> 187 kB, 4 -> 750 kB
    [(0.5, QMAX_WORST), (1.0, QMAX_WORST), (2.0, 48), (2.5, 40), (3.0, 36), (8.0, 36)],
)
def test_the_first_keyframe_fits_one_and_a_half_seconds_of_the_link(mbps: float, qmax: int) -> None:
    q = screen_quality(mbps * 1e6, ScreenMode.SHARP, full_bitrate=FULL)
    assert q.qmax == qmax
    assert q.bitrate == min(int(mbps * 1e6), FULL)


def test_the_last_keyframe_predicts_the_next_one() -> None:
    # a light desktop: 86 kB at 36 fits 1.5 s of even 0.5 Mbit/s (94 kB)
    light = screen_quality(
        500_000, ScreenMode.SHARP, full_bitrate=FULL, key_bytes=33_000, key_qmax=63
    )
    assert light.qmax == 36
    # the same link, a page of text made at 48: the coarsest ceiling it has
    text = screen_quality(
        500_000, ScreenMode.SHARP, full_bitrate=FULL, key_bytes=352_000, key_qmax=48
    )
    assert text.qmax == QMAX_WORST
    assert key_size_ratio(36) == 1.0 and key_size_ratio(63) == pytest.approx(0.36)
    assert key_size_ratio(38) == pytest.approx((1.0 + 0.91) / 2)
    assert key_size_ratio(4) == key_size_ratio(20)  # the table's ends hold beyond it


def test_smooth_mode_takes_coarser_smaller_keyframes_and_keeps_more_frames() -> None:
    sharp = screen_quality(4e6, ScreenMode.SHARP, full_bitrate=FULL)
    smooth = screen_quality(4e6, ScreenMode.SMOOTH, full_bitrate=FULL)
    assert smooth.qmax > sharp.qmax
    # a 40 kB frame on 1 Mbit/s: sharp lets the rate fall to 2.5 fps, smooth holds 5
    assert frame_rate(1e6, 320_000, 30, POLICIES[ScreenMode.SHARP].fps_floor) == 2.5
    assert frame_rate(1e6, 320_000, 30, POLICIES[ScreenMode.SMOOTH].fps_floor) == 5.0


def test_only_a_lasting_better_picture_is_worth_a_keyframe_of_its_own() -> None:
    now = Quality(1_000_000, 63, 300)  # made for a limited link
    rekey = Rekey()
    # the estimate wanders, the link falls, the link doubles: the bitrate is steered
    for t, wanted in enumerate([Quality(1_300_000, 63, 300), Quality(300_000, 63, 300)] * 3):
        assert not rekey.update(now, wanted, float(t))
    assert not any(rekey.update(now, Quality(4_000_000, 63, 300), 10.0 + t) for t in range(5))
    # no longer limited, but only for a second: no keyframe
    assert not rekey.update(now, Quality(6_000_000, 36), 20.0)
    assert not rekey.update(now, Quality(6_000_000, 36), 21.0)
    assert not rekey.update(now, Quality(1_000_000, 63, 300), 21.5)
    # the link came back and stays: the full picture REKEY_HOLD_S later, once
    ups = [rekey.update(now, Quality(6_000_000, 36), 30.0 + t / 10) for t in range(25)]
    assert ups.index(True) == round(REKEY_HOLD_S * 10) and ups.count(True) == 1
    # a bitrate beyond what steering reaches
    far = Quality(int(STEER_MAX * 1_000_000), 63, 300)
    assert not rekey.update(now, now, 39.0)
    assert not rekey.update(now, far, 40.0) and rekey.update(now, far, 40.0 + REKEY_HOLD_S)
    # a ceiling finer by FINER_STEP, if its keyframe takes little of the link
    finer = Quality(1_000_000, 52, 300)
    assert not rekey.update(now, Quality(1_000_000, 56, 300), 50.0, key_s=0.1)
    assert not rekey.update(now, finer, 50.0, key_s=REKEY_FIT_S * 2)
    assert not rekey.update(now, finer, 50.0 + REKEY_HOLD_S, key_s=REKEY_FIT_S * 2)
    assert not rekey.update(now, finer, 60.0, key_s=REKEY_FIT_S)
    assert rekey.update(now, finer, 60.0 + REKEY_HOLD_S, key_s=REKEY_FIT_S)
    # never downward: an unlimited encoder on a link found limited is steered
    full = Quality(6_000_000, 36)
    assert not any(rekey.update(full, Quality(900_000, 63, 300), 70.0 + t) for t in range(5))


def test_a_keyframe_is_predicted_from_the_last_one_at_its_ceiling() -> None:
    assert key_bytes_at(36) == KEY_BYTES_1080P
    assert key_bytes_at(63, 200_000, 36) == pytest.approx(200_000 * 0.36)
    assert key_bytes_at(36, 180_000, 63) == pytest.approx(500_000)
    assert key_bytes_at(36, pixels=1920 * 1080 // 4) == KEY_BYTES_1080P / 4


def test_keyframes_are_spaced_so_that_each_fits_the_link() -> None:
    assert keyframe_interval(40e6, 4_000_000) == KEY_INTERVAL_MIN  # a LAN: as before
    assert keyframe_interval(2e6, 2_400_000) == pytest.approx(2.4)  # 300 kB at 2 Mbit/s
    assert keyframe_interval(0.15e6, 4_000_000) == KEY_INTERVAL_MAX
    assert keyframe_interval(2e6, 0) == KEY_INTERVAL_MIN


class Sender:
    """A screen sender: keyframe first, then inter frames at the policy's frame rate."""

    def __init__(self, link: Bottleneck, key_bytes: int, frame_bytes: int) -> None:
        self.link = link
        self.key_bytes, self.frame_bytes = key_bytes, frame_bytes
        self.est = LinkEstimator()
        self.rec = ArrivalRecorder()
        self.pacing = Pacing()
        self.pace = self.pacing.update(self.est.state())
        self.now = 0.0
        self.seq = 0
        self.waiting: list[int] = []  # packet sizes queued at the pacer
        self.tokens = 0.0
        self.next_frame = 0.0
        self.key_due = True
        self.arrivals: list[tuple[float, int]] = []
        self.reports: list[tuple[float, int, object]] = []
        self.next_report = FEEDBACK_INTERVAL
        self.queues: list[tuple[float, float]] = []
        self.frames_sent = 0
        self.key_out: float | None = None
        "When the first keyframe's last packet left."

    def run(self, seconds: float) -> None:
        step = 0.001
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            fps = 30.0
            if self.pace.limited:
                fps = frame_rate(self.est.target_bps, self.frame_bytes * 8, 30.0)
            if self.now >= self.next_frame:
                size = self.key_bytes if self.key_due else self.frame_bytes
                self.key_due = False
                self.waiting += [PACKET] * (size // PACKET)
                self.frames_sent += 1
                self.next_frame = self.now + 1 / fps
            self.tokens = min(
                self.tokens + self.pace.rate_bps / 8 * step, float(self.pace.burst_bytes)
            )
            while self.waiting and self.tokens >= self.waiting[0]:
                size = self.waiting.pop(0)
                self.tokens -= size
                seq = self.seq % 65536
                self.seq += 1
                self.est.on_sent(seq, size, self.now)
                if self.key_out is None and self.seq == self.key_bytes // PACKET:
                    self.key_out = self.now
                at = self.link.send(size, self.now)
                if at is not None:
                    heapq.heappush(self.arrivals, (at, seq))
            while self.arrivals and self.arrivals[0][0] <= self.now:
                at, seq = heapq.heappop(self.arrivals)
                self.rec.on_packet(seq, at)
            if self.now >= self.next_report:
                self.next_report += FEEDBACK_INTERVAL
                report = self.rec.take(self.now)
                if report is not None:
                    heapq.heappush(self.reports, (self.now + self.link.prop, self.seq, report))
            while self.reports and self.reports[0][0] <= self.now:
                _, _, report = heapq.heappop(self.reports)
                self.est.on_feedback(report, self.now)  # type: ignore[arg-type]
                self.pace = self.pacing.update(self.est.state())
            self.est.on_timer(self.now)
            self.queues.append((self.now, self.link.queue_s(self.now)))

    def queue_p95(self, start: float) -> float:
        qs = sorted(q for at, q in self.queues if at >= start)
        return qs[int(0.95 * (len(qs) - 1))]


@pytest.mark.parametrize("mbps", [1, 2, 4])
def test_a_screen_on_a_slow_link_keeps_the_bottleneck_queue_short(mbps: float) -> None:
    """A 300 kB keyframe, then 20 kB frames: the queue fills once, then stays short."""
    s = Sender(Bottleneck(mbps * 1e6), key_bytes=300_000, frame_bytes=20_000)
    s.run(20)
    assert s.pace.limited
    assert s.queue_p95(5) < 0.060, s.queue_p95(5)
    dropped_early = s.link.dropped
    s.run(10)
    assert s.link.dropped == dropped_early  # no drop once the link is known
    # and the link is used: frames at the rate the link carries
    carried = s.frames_sent * 20_000 * 8 / 30
    assert carried >= 0.4 * mbps * 1e6, (carried, mbps)


def test_a_lan_keeps_its_full_frame_rate_and_fast_keyframes() -> None:
    # the first keyframe is made for adapt.STARTUP_BPS: 180 kB for a 1080p page of text
    s = Sender(Bottleneck(100e6), key_bytes=180_000, frame_bytes=20_000)
    s.run(10)
    assert not s.pace.limited
    # it is probed out (1.2, then 2.4, 4.8, ... Mbit/s as reports come back)
    assert s.key_out is not None and s.key_out < 0.6, s.key_out
    assert s.pace.rate_bps >= 2 * 0.95 * 30 * 20_000 * 8
    assert s.frames_sent >= 0.95 * 30 * 10
    assert s.link.dropped == 0


FULL = 6_000_000  # what the encoder sends at 1080p on an unlimited link


def test_viewers_on_alike_links_share_one_encode() -> None:
    from agent.session.adapt import split_lanes

    assert split_lanes({}, FULL).slow == frozenset()
    one = split_lanes({"a": 1_000_000}, FULL)  # alone, however slow: one encode
    assert (one.fast_bps, one.slow_bps, one.slow) == (1_000_000, None, frozenset())
    alike = split_lanes({"a": 4_000_000, "b": 2_500_000}, FULL)
    assert alike.slow == frozenset() and alike.fast_bps == 2_500_000  # 2.5 >= 0.5 x 4
    # beside an unlimited viewer (the encoder's 6 Mbit/s), 2.5 Mbit/s is a slow link
    assert split_lanes({"a": None, "b": 2_500_000}, FULL).slow == {"b"}
    free = split_lanes({"a": None, "b": None}, FULL)
    assert (free.fast_bps, free.slow_bps) == (None, None)


def test_a_slow_viewer_gets_its_own_encode_and_the_others_keep_their_rate() -> None:
    from agent.session.adapt import split_lanes

    lanes = split_lanes({"fast": None, "slow": 1_000_000}, FULL)
    assert lanes.slow == {"slow"} and lanes.slow_bps == 1_000_000
    assert lanes.fast_bps is None  # the fast viewer is not held to 1 Mbit/s
    three = split_lanes({"lan": 20_000_000, "dsl": 4_000_000, "phone": 800_000}, FULL)
    # a link faster than the encoder's full rate counts as that rate (6 Mbit/s): the
    # 4 Mbit/s viewer is alike, the 0.8 Mbit/s one is not
    assert three.slow == {"phone"} and three.fast_bps == 4_000_000
    assert three.slow_bps == 800_000
    two_slow = split_lanes({"lan": None, "a": 1_500_000, "b": 700_000}, FULL)
    assert two_slow.slow == {"a", "b"} and two_slow.slow_bps == 700_000  # at most two lanes


def test_a_viewer_leaves_the_slow_lane_only_well_above_the_split() -> None:
    from agent.session.adapt import REJOIN_ABOVE, SPLIT_BELOW, split_lanes

    def lane_at(bps: float, now: frozenset[str]) -> frozenset[str]:
        return split_lanes({"fast": None, "v": bps}, FULL, now).slow

    below, between, above = (
        0.9 * SPLIT_BELOW * FULL,
        (SPLIT_BELOW + REJOIN_ABOVE) / 2 * FULL,
        1.1 * REJOIN_ABOVE * FULL,
    )
    assert lane_at(below, frozenset()) == {"v"}
    assert lane_at(between, frozenset()) == frozenset()  # not split off on the way down
    assert lane_at(between, frozenset({"v"})) == {"v"}  # nor back on the way up
    assert lane_at(above, frozenset({"v"})) == frozenset()
    # the viewer that was fastest leaving: the one left alone shares again
    assert split_lanes({"v": below}, FULL, frozenset({"v"})).slow == frozenset()
