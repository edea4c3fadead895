"""How the screen's encoder follows a viewer's link between keyframes.

A still 1080p page of 11 px text is encoded as it is on a limited link: a keyframe
made for 1 Mbit/s (the coarsest ceiling, 180 kB), then the same page again ten times
a second while it refines. After 4 s the link is found twice as fast, after 8 s half
as fast: ``Encoder.retune`` steers the bitrate at the next frame, without a keyframe
(the ceiling and the rest wait for one). Every second it prints what was sent, the
biggest frame and how sharp the page is (PSNR of the decoded picture).

Run: python examples/screen_steer.py
"""

from __future__ import annotations

import av
import numpy as np

from agent.capture.encoder import Encoder
from agent.capture.grab import TIME_BASE, bgra_to_yuv420p
from agent.session.adapt import Quality, ScreenMode, screen_quality
from bench.screen import text_page

W, H = 1920, 1080
FPS = 10


def main() -> None:
    bgra = np.asarray(text_page(W, H).convert("RGBX"))[:, :, [2, 1, 0, 3]]
    page = bgra_to_yuv420p(np.ascontiguousarray(bgra).tobytes(), W, H)
    source = page.to_ndarray()[:H].astype(np.float64)
    encoder = Encoder()
    encoder.retune(screen_quality(1_000_000, ScreenMode.SHARP, full_bitrate=6_000_000))
    decoder = av.CodecContext.create("libvpx", "r")
    links = {0: 1_000_000, 4: 2_000_000, 8: 500_000}
    sent = biggest = 0
    for n in range(12 * FPS):
        second = n // FPS
        if n % FPS == 0 and second in links:
            q = encoder.quality or Quality(links[second], 63, 300)
            encoder.retune(Quality(links[second], q.qmax, q.intra_pct))
        frame = page.reformat(format="yuv420p")  # (the same frame: mark it afresh)
        frame.pts, frame.time_base = n * 90_000 // FPS, TIME_BASE
        frame.pict_type = av.video.frame.PictureType.NONE
        packets = encoder.encode(frame, keyframe=n == 0)
        data = b"".join(bytes(p) for p in packets)
        pictures = decoder.decode(av.Packet(data)) if data else []
        sent += len(data)
        biggest = max(biggest, len(data)) if n else 0
        if n % FPS == FPS - 1 and pictures:
            shown = pictures[-1].to_ndarray()[:H].astype(np.float64)
            psnr = 10 * np.log10(255**2 / max(float(np.mean((shown - source) ** 2)), 1e-9))
            link = links[max(k for k in links if k <= second)]
            print(
                f"{second:2d}-{second + 1:2d} s  link {link / 1e6:.1f} Mbit/s"
                f"  sent {sent * 8 / 1000:5.0f} kbit  biggest {biggest / 1000:5.1f} kB"
                f"  text {psnr:4.1f} dB  keyframes {encoder.keyframes}"
            )
            sent = biggest = 0


if __name__ == "__main__":
    main()
