"""Scrolling, found between two frames and sent as steps the encoder can follow (numpy).

libvpx's realtime VP8 encoder finds motion of up to about 8 px. A page of 11 px text
scrolled 3 or 6 px between frames costs 8-10 kB a frame at 1080p; scrolled 12 px or
more it finds nothing and codes the whole page again: 485 kB at quantiser ceiling 36,
157 kB at 63, as much as a keyframe (measured with ``bench.screen.text_page``, one
encoder thread, cpu-used 16; cpu-used 6 and ``screen-content-mode`` make no
difference; ``deadline=good`` follows 15 px but not 60 and takes 3x the time).
Steps are told apart only by the 1 ms between them (``Encoder.encode``'s
``elapsed``), and the encoder runs at a fixed speed (``encoder.VP8_SPEED``): either
way round, one step in a few dozen came out as a whole page again.

On a fast link that costs little. On a slow one it is a trap: a frame that overflows
the link makes the capture wait, the next frame has scrolled further, it overflows
again, and a page scrolling at 60 px/s came through an 8 Mbit/s bottleneck at under
one frame a second, 2-3 s late. So when the link is limited, ``find_scroll`` looks for
a region of the new frame that is the old one moved up or down, and ``steps`` makes
the frames in between, at most ``STEP_PX`` apart: 60 px in ten steps costs 91 kB at
ceiling 36 (55 kB at 63) instead of 485 kB (157 kB), in about 23 ms of encoding a
step. The last frame sent is always the real one; the steps only lead up to it.

Everything here works on yuv420p planes as numpy arrays and touches no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_PX = 6
"Largest move between two frames sent (px): libvpx follows 6 px for 9 kB, 8 px for 20 kB."
MAX_SHIFT = 192
"Largest scroll made into steps (px, 16 steps): beyond it the page is mostly new anyway."
MIN_SIDE = 64
"A region smaller than this (px, either side) is not worth the steps."
MIN_ROWS = 16
"Rows of the region that must agree on the scroll (of those that are not plain)."
MIN_SHARE = 0.5
"Share of the region's telling rows that must agree on the scroll."

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
"A yuv420p picture: Y (h x w), U and V (h/2 x w/2), uint8."


@dataclass(frozen=True)
class Scroll:
    """A region of the picture whose content moved up or down."""

    top: int
    "First row of the region (luma px, even)."
    bottom: int
    "Row past the region's last (luma px, even)."
    left: int
    "First column of the region (luma px, even)."
    right: int
    "Column past the region's last (luma px, even)."
    dy: int
    "Rows the content moved up (negative: down), 0 < abs(dy) <= MAX_SHIFT."


_WEIGHTS = np.random.default_rng(20261204).integers(1, 2**63, size=4096, dtype=np.uint64) | 1


def _row_hashes(plane: np.ndarray) -> np.ndarray:
    """One uint64 per row (a weighted sum of its 8-byte words, wrapping)."""
    width = plane.shape[1]
    words = width // 8
    flat = np.ascontiguousarray(plane[:, : words * 8]).view(np.uint64)
    weights = np.resize(_WEIGHTS, words)
    with np.errstate(over="ignore"):
        hashes: np.ndarray = (flat * weights).sum(axis=1, dtype=np.uint64)
    return hashes


def find_scroll(old: np.ndarray, new: np.ndarray) -> Scroll | None:
    """The region of ``new`` (a luma plane) that is ``old`` moved vertically, if any.

    The region is the box around every changed pixel; its rows are compared by hash,
    leaving out rows that occur more than once in it (a blank line matches any
    move). The move most rows agree on wins if enough do (``MIN_ROWS``,
    ``MIN_SHARE``) and it is not 0. None: nothing changed, the box is small, or no
    move explains it.
    """
    if old.shape != new.shape or old.ndim != 2:
        return None
    changed = old != new
    rows = np.flatnonzero(changed.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(changed.any(axis=0))
    height, width = new.shape
    top, bottom = int(rows[0]) & ~1, min(height, (int(rows[-1]) + 2) & ~1)
    left, right = int(cols[0]) & ~1, min(width, (int(cols[-1]) + 2) & ~1)
    if bottom - top < MIN_SIDE or right - left < MIN_SIDE:
        return None
    h_old = _row_hashes(old[top:bottom, left:right])
    h_new = _row_hashes(new[top:bottom, left:right])
    _, index, counts = np.unique(h_new, return_inverse=True, return_counts=True)
    telling = counts[index] == 1
    if int(telling.sum()) < MIN_ROWS:
        return None
    n = bottom - top
    best_dy, best_votes, best_of = 0, 0, 0
    for dy in range(-min(MAX_SHIFT, n - 1), min(MAX_SHIFT, n - 1) + 1):
        # new row y shows old row y + dy
        if dy >= 0:
            a, b, t = h_new[: n - dy], h_old[dy:], telling[: n - dy]
        else:
            a, b, t = h_new[-dy:], h_old[: n + dy], telling[-dy:]
        votes = int(np.count_nonzero((a == b) & t))
        if votes > best_votes:
            best_dy, best_votes, best_of = dy, votes, int(t.sum())
    if best_dy == 0 or best_votes < MIN_ROWS or best_votes < MIN_SHARE * best_of:
        return None
    return Scroll(top, bottom, left, right, best_dy)


Box = tuple[int, int, int, int]


def _moved(old: np.ndarray, new: np.ndarray, box: Box, k: int, s: int) -> np.ndarray:
    """``new`` with the box showing ``old`` moved ``k`` px (a magnitude) of the way to ``s``."""
    top, bottom, left, right = box
    out = new.copy()
    if s > 0:
        out[top : bottom - k, left:right] = old[top + k : bottom, left:right]
        out[bottom - k : bottom, left:right] = new[bottom - s : bottom - s + k, left:right]
    else:
        m = -s
        out[top + k : bottom, left:right] = old[top : bottom - k, left:right]
        out[top : top + k, left:right] = new[top + m - k : top + m, left:right]
    return out


def step_offsets(dy: int, step_px: int = STEP_PX) -> list[int]:
    """The moves (even px, same sign as ``dy``) of the frames between, in order.

    Evenly spaced, none more than ``step_px`` + 1 from the last; empty when ``dy``
    is a step already or larger than ``MAX_SHIFT``.
    """
    m = abs(dy)
    if m <= step_px or m > MAX_SHIFT:
        return []
    n = -(-m // step_px)
    out: list[int] = []
    for i in range(1, n):
        k = 2 * round(i * m / n / 2)
        if 0 < k < m and (not out or k > out[-1]):
            out.append(k)
    return [k if dy > 0 else -k for k in out]


def steps(old: Planes, new: Planes, scroll: Scroll, step_px: int = STEP_PX) -> list[Planes]:
    """The pictures between ``old`` and ``new`` for ``scroll`` (``new`` itself not included)."""
    luma_box = (scroll.top, scroll.bottom, scroll.left, scroll.right)
    chroma_box = (scroll.top // 2, scroll.bottom // 2, scroll.left // 2, scroll.right // 2)
    s = scroll.dy
    s_c = s // 2 if s > 0 else -((-s) // 2)
    out: list[Planes] = []
    for k in step_offsets(s, step_px):
        ka = abs(k)
        y = _moved(old[0], new[0], luma_box, ka, s)
        kc = min(ka // 2, abs(s_c))
        if kc == 0 or s_c == 0:
            u, v = new[1].copy(), new[2].copy()
        else:
            u = _moved(old[1], new[1], chroma_box, kc, s_c)
            v = _moved(old[2], new[2], chroma_box, kc, s_c)
        out.append((y, u, v))
    return out
