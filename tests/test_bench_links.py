"""``peerdesk bench links``, short: two real agents through a real 2 Mbit/s bottleneck.

The bench's own case (a 1080p page of 11 px text scrolling 3 px a frame at 20 Hz, tbf
with 300 ms of buffer in a network namespace of its own), cut to a few seconds, so
that the bench cannot rot and a scroll through a slow link stays a moving picture:
before the scroll steps and the reports on RTCP it came at 0.0-0.6 frames a second,
2-3 s late.
"""

from __future__ import annotations

import pytest

from bench.links import _file_kbps, _longest_gap, report, run_one, run_vnc


def test_a_page_scrolling_through_2_mbit_s_keeps_moving_and_clicks_land(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the worker (in the namespace) reads these when it starts
    monkeypatch.setenv("PEERDESK_LINKS_WARMUP_S", "4")
    monkeypatch.setenv("PEERDESK_LINKS_MEASURE_S", "6")
    f = run_one("2mbit", "scroll")
    summary = {k: v for k, v in f.items() if k != "links"}
    # what the customer's agent said of the link every 2 s, for a failure's message
    summary["links"] = [(e.get("kbps"), e.get("fps"), e.get("rtt_ms")) for e in f["links"]]
    why = repr(summary)  # whole in the failure's message (pytest shortens a dict)
    assert f["first_frame_s"] < 5.0, why
    assert f["fps"] >= 1.0, why  # frames whose counter the CSR's agent read, per second
    assert f["p50"] is not None and f["p50"] < 1.5, why  # drawn to decoded
    assert f["clicks_missed"] == 0 and f["click_p50"] < 0.5, why
    assert f["kbps"] < 2100, why  # what crossed the bottleneck


def test_file_goodput_counts_the_window_or_the_whole_transfer() -> None:
    # still coming in the window (it starts at 5 s): 125 kB in 1 s, the bytes before
    # the window left out
    assert _file_kbps([(1.0, 0), (2.0, 1000), (5.0, 2000), (6.0, 126_000)], 0.5, 5.0) == 1000
    # done before the window: 125 kB over the 2 s from the fetch to the last byte
    assert _file_kbps([(1.0, 0), (2.0, 125_000)], 0.0, 5.0) == 500


def test_the_freeze_after_a_keyframe_request_counts_new_counters_only() -> None:
    # the counter 7 shown again (a refinement) is no new picture: the freeze runs from
    # its first showing at 1.2 s to 8 at 3.0 s
    shown = [(6, 0.9), (7, 1.2), (7, 2.0), (-1, 2.5), (8, 3.0), (9, 3.1)]
    assert _longest_gap(shown, 1.0, 4.0) == pytest.approx(1.8)
    # nothing new at all: the whole wait
    assert _longest_gap([(5, 0.5)], 1.0, 4.0) == pytest.approx(3.0)
    row = {"rate": "1mbit", "picture": "key", "first_frame_s": 1.7, "fps": 5.0}
    row |= {"p50": 0.07, "p95": 0.9, "kbps": 700.0, "dropped": 0, "psnr": 42.4}
    row |= {"click_p50": 0.01, "clicks_missed": 0, "file_kbps": None, "key_gap_s": 2.2}
    assert report([row])[-1].endswith("; keyframe asked: longest freeze 2.20 s")


def test_the_x11vnc_anchor_shows_a_still_page_through_2_mbit_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bench's peer anchor (x11vnc, TigerVNC's viewer on a display of its own, the
    counter read off that display) runs, so that its figures cannot rot either."""
    import bench.links

    monkeypatch.setattr(bench.links, "WARMUP_S", 2.0)
    monkeypatch.setattr(bench.links, "MEASURE_S", 4.0)
    f = run_vnc("2mbit", "still")
    assert f["first_frame_s"] < 15.0, f
    assert f["fps"] >= 5.0 and f["p50"] is not None and f["p50"] < 0.5, f
    assert f["kbps"] < 2100, f
