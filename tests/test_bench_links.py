"""``peerdesk bench links``, short: two real agents through a real 2 Mbit/s bottleneck.

The bench's own case (a 1080p page of 11 px text scrolling 3 px a frame at 20 Hz, tbf
with 300 ms of buffer in a network namespace of its own), cut to a few seconds, so
that the bench cannot rot and a scroll through a slow link stays a moving picture:
before the scroll steps and the reports on RTCP it came at 0.0-0.6 frames a second,
2-3 s late.
"""

from __future__ import annotations

import pytest

from bench.links import run_one


def test_a_page_scrolling_through_2_mbit_s_keeps_moving_and_clicks_land(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the worker (in the namespace) reads these when it starts
    monkeypatch.setenv("PEERDESK_LINKS_WARMUP_S", "4")
    monkeypatch.setenv("PEERDESK_LINKS_MEASURE_S", "6")
    f = run_one("2mbit", "scroll")
    summary = {k: v for k, v in f.items() if k != "links"}
    assert f["first_frame_s"] < 5.0, summary
    assert f["fps"] >= 1.0, summary  # frames whose counter the CSR's agent read, per second
    assert f["p50"] is not None and f["p50"] < 1.5, summary  # drawn to decoded
    assert f["clicks_missed"] == 0 and f["click_p50"] < 0.5, summary
    assert f["kbps"] < 2100, summary  # what crossed the bottleneck
