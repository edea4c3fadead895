"""What a scroll costs on a slow link, sent whole and sent as steps (real libvpx, no network).

A 1080p page of 11 px text scrolls 60 px between two captures (a mouse-wheel notch,
or a capture that waited while a slow link drained). libvpx's realtime encoder
follows motion of up to about 8 px, so the frame alone codes the page again. When
the link is limited, the customer's agent finds the region that moved
(``agent.capture.scroll.find_scroll``) and sends the frames in between, 6 px apart
(``steps``), then the real frame. This prints, for quantiser ceilings 36 and 63, the
bytes of four such scrolls both ways, the encoding time, and how close the last
picture the viewer decodes is to the page (PSNR of luma).

Run: python examples/scroll_steps.py
"""

from __future__ import annotations

import time

import av
import numpy as np

from agent.capture.encoder import Encoder
from agent.capture.grab import TIME_BASE
from agent.capture.scroll import Planes, find_scroll, steps
from agent.capture.tracks import frame_of, planes_of
from agent.session.adapt import Quality
from bench.screen import text_page

W, H, SCROLL, SCROLLS = 1920, 1080, 60, 4


def main() -> None:
    page = np.asarray(text_page(W, H + SCROLL * SCROLLS).convert("RGB"))

    def at(row: int) -> tuple[av.VideoFrame, Planes]:
        rgb = np.ascontiguousarray(page[row : row + H])
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        return f, planes_of(f)

    print(f"a {W}x{H} page of text scrolled {SCROLL} px, {SCROLLS} times, at 1.6 Mbit/s")
    print("  ceiling  sent as      bytes   encoding   last picture")
    for qmax in (36, 63):
        for use_steps in (False, True):
            enc, dec = Encoder(), av.CodecContext.create("libvpx", "r")
            enc.retune(Quality(1_600_000, qmax, 300))
            first, prev = at(0)
            first.pts, first.time_base = 0, TIME_BASE
            for p in enc.encode(first, keyframe=True):
                list(dec.decode(av.Packet(bytes(p))))
            total, spent, shown = 0, 0.0, None
            for i in range(1, SCROLLS + 1):
                new, cur = at(SCROLL * i)
                pts = i * 9000
                started = time.perf_counter()
                found = find_scroll(prev[0], cur[0]) if use_steps else None
                mids = steps(prev, cur, found) if found else []
                out = []
                for j, mid in enumerate(mids):
                    out += enc.encode(frame_of(mid, pts - 90 * (len(mids) - j)))
                new.pts, new.time_base = pts, TIME_BASE
                out += enc.encode(new)
                spent += time.perf_counter() - started
                for p in out:
                    total += p.size
                    for d in dec.decode(av.Packet(bytes(p))):
                        shown = d
                prev = cur
            assert shown is not None
            got = shown.to_ndarray()[:H].astype(np.float64)
            mse = float(np.mean((got - prev[0].astype(np.float64)) ** 2))
            psnr = 10 * np.log10(255**2 / mse) if mse else 99.0
            how = "steps" if use_steps else "one frame"
            print(f"  {qmax:>7}  {how:<10} {total / 1000:>7.0f} kB {spent * 1000:>6.0f} ms"
                  f"   {psnr:5.1f} dB")  # fmt: skip


if __name__ == "__main__":
    main()
