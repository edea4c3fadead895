"""What a reloaded dashboard page is replayed: everything, but only the newest ``link``."""

from __future__ import annotations

from typing import Any

from agent import status
from tray.hub import Entry, Hub


def _link(peer: str, kbps: int) -> status.Link:
    return status.Link(
        peer=peer, kbps=kbps, target_kbps=kbps, rtt_ms=20, loss=0.0, queue_ms=3, fps=12.0
    )


def test_the_history_keeps_every_event_but_only_the_newest_link_per_viewer() -> None:
    me: Any = None  # the hub only needs an identity to start sessions
    hub = Hub(me, None)
    hub.entries["s1"] = Entry("s1", None)
    hub._emit("s1", status.ChatReceived(from_="a", name="Alice", text="hi", to=None))
    for kbps in (100, 200, 300):  # hours of a viewed screen: one every 2 s
        hub._emit("s1", _link("a", kbps))
    hub._emit("s1", _link("b", 50))
    hub._emit("s1", status.ChatReceived(from_="a", name="Alice", text="still there", to=None))
    kept = [e for _, e in hub.entries["s1"].history]
    assert [type(e).__name__ for e in kept] == ["ChatReceived", "Link", "Link", "ChatReceived"]
    assert [(e.peer, e.kbps) for e in kept if isinstance(e, status.Link)] == [("a", 300), ("b", 50)]
