"""How the customer's agent estimates a viewer's link and paces the screen to it.

The two cores are sans-I/O, so they can be driven by hand: here a screen sender
(a 300 kB keyframe, then 20 kB frames) over a simulated 2 Mbit/s link that drops what
its 300 ms buffer cannot hold, with the viewer's arrival reports coming back every
100 ms through the same queue (one uplink both ways). The pacer also keeps to the
estimator's in-flight window (``may_send``): what was sent and no report has covered
yet. Every second it prints the estimate, the pace and what is in flight.

Run: python examples/link_estimate.py
"""

from __future__ import annotations

import heapq

from agent.session.adapt import Pacing, frame_rate
from agent.session.link import FEEDBACK_INTERVAL, ArrivalRecorder, Feedback, LinkEstimator

LINK_BPS = 2_000_000
BUFFER_S = 0.3
PACKET = 1200


def main() -> None:
    estimator, recorder, pacing = LinkEstimator(), ArrivalRecorder(), Pacing()
    pace = pacing.update(estimator.state())
    now, link_free, tokens, seq, next_frame, dropped = 0.0, 0.0, 0.0, 0, 0.0, 0
    waiting: list[int] = []
    arrivals: list[tuple[float, int]] = []
    reports: list[tuple[float, int, Feedback]] = []
    next_report, next_print = FEEDBACK_INTERVAL, 1.0
    while now < 10.0:
        now = round(now + 0.001, 6)
        if now >= next_frame:  # the encoder: a keyframe first, then inter frames
            waiting += [PACKET] * ((300_000 if seq == 0 else 20_000) // PACKET)
            fps = frame_rate(estimator.target_bps, 20_000 * 8, 30.0) if pace.limited else 30.0
            next_frame = now + 1 / fps
        tokens = min(tokens + pace.rate_bps / 8 * 0.001, float(pace.burst_bytes))
        while waiting and tokens >= waiting[0] and estimator.may_send(now):  # the pacer
            tokens -= waiting.pop(0)
            estimator.on_sent(seq % 65536, PACKET, now)
            if link_free - now > BUFFER_S:
                dropped += 1  # the bottleneck's buffer is full
            else:
                link_free = max(link_free, now) + PACKET * 8 / LINK_BPS
                heapq.heappush(arrivals, (link_free + 0.01, seq % 65536))
            seq += 1
        while arrivals and arrivals[0][0] <= now:  # the viewer
            at, s = heapq.heappop(arrivals)
            recorder.on_packet(s, at)
        if now >= next_report:
            next_report += FEEDBACK_INTERVAL
            if (report := recorder.take(now)) is not None:
                # behind whatever the bottleneck still holds
                heapq.heappush(reports, (max(now, link_free) + 0.01, seq, report))
        while reports and reports[0][0] <= now:  # back at the sender
            estimator.on_feedback(heapq.heappop(reports)[2], now)
            pace = pacing.update(estimator.state())
        estimator.on_timer(now)
        if now >= next_print:
            next_print += 1.0
            s = estimator.state()
            print(
                f"{now:4.1f} s  target {s.target_bps / 1e6:4.2f} Mbit/s  "
                f"queue {s.queue_ms:5.1f} ms  pace {pace.rate_bps / 1e6:5.2f} Mbit/s "
                f"({'limited' if pace.limited else 'probing'})  "
                f"in flight {estimator.in_flight(now) / 1000:4.1f} of "
                f"{estimator.window_bytes / 1000:.0f} kB  dropped {dropped}"
            )
    assert pacing.limited, "the 2 Mbit/s link was found full"
    assert dropped == 0, dropped  # the window held even the first keyframe to the link


if __name__ == "__main__":
    main()
