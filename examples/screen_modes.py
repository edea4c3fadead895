"""What the two screen modes make of a page of text on slow links (real libvpx, no network).

For a 1080p page of 11 px text and a link of 1, 2 and 4 Mbit/s, it asks the adaptation
policy for the keyframe's settings in each mode (``sharp``: the dashboard's Standard,
``smooth``: Screen sampling), encodes the page as the customer's agent would (the
keyframe, then the still page refined over the next frames) and decodes it as the CSR's
agent would. It prints the keyframe's size, the seconds it takes on the link, and how
close the picture is to the page (PSNR of luma) at first and once refined.

Run: python examples/screen_modes.py
"""

from __future__ import annotations

import av
import numpy as np

from agent.capture.encoder import Encoder
from agent.capture.grab import REFINE_FRAMES, TIME_BASE, bgra_to_yuv420p
from agent.session.adapt import ScreenMode, screen_quality
from bench.screen import text_page

W, H = 1920, 1080


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255**2 / mse))


def show(link_bps: int, mode: ScreenMode) -> tuple[int, float, float]:
    """(keyframe bytes, first PSNR, refined PSNR) for the page on this link and mode."""
    bgra = np.asarray(text_page(W, H).convert("RGBX"))[:, :, [2, 1, 0, 3]]
    page = bgra_to_yuv420p(np.ascontiguousarray(bgra).tobytes(), W, H)
    source = page.to_ndarray()[:H]
    encoder = Encoder()
    encoder.retune(screen_quality(link_bps, mode, full_bitrate=encoder.full_bitrate(W, H)))
    decoder = av.CodecContext.create("libvpx", "r")
    frame_s = 1 / 5  # the still page is refined at a few frames a second
    sizes, shown = [], []
    for n in range(1 + REFINE_FRAMES):
        frame = page.reformat(format="yuv420p", width=W, height=H)
        frame.pts, frame.time_base = round(n * frame_s * 90_000), TIME_BASE
        frame.pict_type = av.video.frame.PictureType.NONE  # not left marked as a keyframe
        data = b"".join(bytes(p) for p in encoder.encode(frame, keyframe=n == 0))
        sizes.append(len(data))
        shown += [psnr(source, d.to_ndarray()[:H]) for d in decoder.decode(av.Packet(data))]
    encoder.close()
    return sizes[0], shown[0], shown[-1]


def main() -> None:
    print("link      mode    keyframe  on the link  first look  refined")
    for link_bps in (1_000_000, 2_000_000, 4_000_000):
        for mode in ScreenMode:
            size, first_db, refined_db = show(link_bps, mode)
            seconds = size * 8 / link_bps
            print(
                f"{link_bps / 1e6:.0f} Mbit/s  {mode.value:6}  {size / 1000:5.0f} kB  "
                f"{seconds:6.2f} s     {first_db:5.1f} dB    {refined_db:5.1f} dB"
            )
            assert seconds <= 2.0, f"a keyframe at {link_bps} bit/s took {seconds:.1f} s"
            assert refined_db > first_db, "a still page gets sharper"


if __name__ == "__main__":
    main()
