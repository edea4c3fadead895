"""How a file gives way to a live screen on a slow link.

While a screen is live on a peer link, the fast path paces a file's bytes with
``agent.session.fileyield.FileYield``, fed with TCP's own round trip; the agents do
this by themselves (``FastPathSender.send(..., yield_to=lambda: screen_is_live)``).
The core is sans-I/O, so here it runs against a simulated 4 Mbit/s link with 300 ms
of buffer: the screen is still (0.3 Mbit/s), then scrolls (3 Mbit/s), then is still
again, and every half second this prints what the file gets and the queue the
screen waits behind. Without the core, the file would keep that queue at 300 ms.

Run: python examples/file_yield.py
"""

from __future__ import annotations

from agent.session.fileyield import FileYield

LINK_BPS = 4_000_000
BASE_RTT = 0.020
STEP = 0.001


def main() -> None:
    core = FileYield()
    queue_bits, srtt, now, file_bits, shown = 0.0, BASE_RTT, 0.0, 0.0, 0.0
    while now < 15.0:
        screen_bps = 3_000_000 if 5.0 <= now < 10.0 else 300_000
        core.set_live(True, now)
        core.on_rtt(srtt, now)
        sent = 0
        while core.wait(now) <= 0:
            n = core.slice_bytes()
            core.on_sent(n, now)
            sent += n * 8
        file_bits += sent
        queue_bits += sent + screen_bps * STEP - LINK_BPS * STEP
        queue_bits = min(max(queue_bits, 0.0), 0.3 * LINK_BPS)
        srtt += (BASE_RTT + queue_bits / LINK_BPS - srtt) / 8  # the kernel's smoothing
        now = round(now + STEP, 6)
        if now - shown >= 0.5:
            print(
                f"{now:5.1f} s  screen {screen_bps / 1e6:3.1f} Mbit/s  "
                f"file {file_bits / (now - shown) / 1e6:4.2f} Mbit/s  "
                f"queue {queue_bits / LINK_BPS * 1000:5.1f} ms"
            )
            shown, file_bits = now, 0.0


if __name__ == "__main__":
    main()
