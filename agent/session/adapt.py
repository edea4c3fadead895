"""How the screen follows each viewer's link: pacing, frame rate, keyframe spacing (sans-I/O).

``agent.session.link`` estimates a viewer's link; this core turns that estimate into
what the sender does, and nothing here reads a clock or touches a socket:

- ``Pacing`` (one per viewer) says at what rate and in what bursts that viewer's
  RTP packets leave. Until the link has been found full it *probes*: packets leave at
  twice the best rate the link has delivered without a queue, at least ``PROBE_BPS``
  and the estimator's target (which starts at 2 Mbit/s): the first keyframe (180 kB,
  made for ``STARTUP_BPS``) leaves in 0.5 s on a LAN as the pace doubles with each
  report, and does not overflow a 1-2 Mbit/s uplink's buffer (at a floor of 8 Mbit/s
  it did, and the SCTP keepalives dropped with it made the agents lose each other).
  Once found full, packets leave at the target, with bursts (a keyframe's packets)
  at ``BURST_SHARE`` of what the link delivered while full: a queue never builds at
  the bottleneck, so control and chat, which are not paced, pass it at once. Bursts
  are ``BURST_S`` of the rate.
- ``frame_rate`` fits the frames to the target on a link found full: frame rate goes
  first (a support session needs legible text before motion), down to
  ``FPS_FLOOR`` for a screen that changes all the time.
- ``keyframe_interval`` spaces keyframes so that each fits the link: a viewer that
  lost a packet and asks again and again cannot fill the link with keyframes.
- ``screen_quality`` chooses the encoder's bitrate and quantiser ceiling for the next
  keyframe (a keyframe needs no history, so that is when the encoder can be opened
  again with new settings): the keyframe must fit ``KEY_FIT_S`` of the link, and
  what follows it is encoded at the link's rate, which the encoder follows between
  keyframes (``Encoder.retune``; ``Rekey`` says when a keyframe is still worth it).
  The quantiser goes second, after the frame rate: a 1080p page of 11 px text makes
  a 496 kB keyframe at the ceiling of 36 (32.5 dB, reads cleanly), 352 kB at 48
  (27 dB, readable), 180 kB at 63 (19.6 dB, a first look); the frames that follow a
  still screen refine it (the capturer sends the still screen again while it gains
  detail, see ``grab.REFINE_FRAMES``).
- ``split_lanes`` groups the viewers by link: one encode serves every viewer, except
  that a viewer on a link much slower than the fastest gets an encode of its own at
  its rate (the *slow lane*), so that it does not drag the others down to it. At
  most two encodes: on a 2-core machine one 1080p encode takes most of a core, and
  the slow lane's frames are few (its frame rate is its link's), so a second lane
  costs a fraction of the first; a third would not.
- ``ScreenMode``: the seeds' session option, *Standard* (better image, slower) or
  *Screen Sampling* (faster, lower quality): ``SHARP`` (the default, text first)
  and ``SMOOTH`` (motion first: a higher quantiser, smaller keyframes, a higher
  frame-rate floor).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Mapping, Set
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from agent.session.link import LinkState, Trend

PROBE_BPS = 1_200_000
"Lowest pace (bits/s) while the link has not been found full (was 8 Mbit/s)."
PACE_MAX = 40_000_000
"Highest pace (bits/s): a 1080p keyframe leaves in about 0.1 s on a LAN."
BURST_SHARE = 0.85
"On a link found full, bursts leave at this share of what it delivered while full."
BURST_S = 0.01
"A burst (bytes sent back to back) is this many seconds of the pace."
BURST_MIN = 2 * 1300
"Smallest burst: two full packets."
FRAME_SHARE = 0.8
"Share of the target the screen's frames may use (the rest: retransmissions, keyframes)."
FPS_FLOOR = 1.0
"Lowest frame rate the link may impose: a changing screen still updates every second."
KEY_SHARE = 0.5
"A keyframe may take at most this share of the link over the time to the next one."
KEY_INTERVAL_MIN = 0.5
"Seconds between keyframes at least, whatever the link (as the capturer's own limit)."
KEY_INTERVAL_MAX = 8.0
"Seconds between keyframes at most: a viewer that lost one waits no longer."


class ScreenMode(Enum):
    """How the screen spends a slow link (the seeds' "Session options")."""

    SHARP = "sharp"
    "Standard: text first; the frame rate goes down before the picture gets coarse."
    SMOOTH = "smooth"
    "Screen Sampling: motion first; a coarser picture keeps the frame rate up."


@dataclass(frozen=True)
class ModePolicy:
    """What one ``ScreenMode`` allows."""

    qmax_best: int
    "Quantiser ceiling on a link that is not limited (libvpx scale 4-63; lower is sharper)."
    key_fit_s: float
    "A keyframe may take this many seconds of a limited link."
    fps_floor: float
    "Lowest frame rate the link may impose."


POLICIES = {
    ScreenMode.SHARP: ModePolicy(qmax_best=36, key_fit_s=1.5, fps_floor=FPS_FLOOR),
    ScreenMode.SMOOTH: ModePolicy(qmax_best=48, key_fit_s=0.75, fps_floor=5.0),
}
QMAX_WORST = 63
"libvpx's highest quantiser: the smallest keyframe it can make."
QMAX_STEPS = (20, 28, 36, 40, 44, 48, 52, 56, 60, 63)
KEY_SIZE = (1.27, 1.15, 1.0, 0.91, 0.80, 0.71, 0.60, 0.51, 0.42, 0.36)
"""Keyframe size at each of ``QMAX_STEPS`` relative to 36, measured on two 1080p
pages (all text: 632..180 kB; a window of text on a flat desktop: 109..33 kB): the
same curve within 0.02 for both, so one keyframe predicts the next at another ceiling."""
KEY_BYTES_1080P = 496_000
"A 1080p page of 11 px text at the ceiling of 36: the guess before any keyframe was made."
FINER_STEP = 8
"A ceiling this much finer than the current one is worth a keyframe of its own."
REKEY_HOLD_S = 2.0
"Seconds a better picture must stay possible before it gets a keyframe of its own."
REKEY_FIT_S = 0.6
"A finer ceiling gets a keyframe of its own only if it takes at most this many seconds of the link."
STEER_MAX = 16.0
"""The encoder's bitrate follows the link between keyframes up to this many times (and
down to 1/this) the bitrate it was opened at (``Encoder.retune``)."""
STARTUP_BPS = 1_000_000
"""What a new viewer's link is taken to carry until ``STARTUP_S`` have shown more: the
first keyframe is then small enough for a slow link (text: 180 kB, 1.4 s of 1 Mbit/s,
where the full picture's 647 kB took 5 s), and a link not found full by then gets the
full picture at once. A first keyframe on a slow link fills its queue within the
first report or two (0.1-0.3 s)."""
STARTUP_S = 1.5
"Seconds after the screen starts during which a link not yet found full counts as slow."
LIMITED_INTRA_PCT = 300
"""Keyframe cap on a limited link, so that the ceiling sets the keyframe's size: at
1600 (the encoder's default) a 2 Mbit/s encoder at ceiling 63 made a 390 kB keyframe
of the text page, at 300 the ceiling's 180 kB."""
BITRATE_FLOOR = 100_000
"Lowest encoder bitrate (bits/s) on a limited link."
SPLIT_BELOW = 0.5
"""A viewer whose link carries less than this share of the fastest viewer's goes to
the slow lane (an encode of its own, at its rate)."""
REJOIN_ABOVE = 0.7
"""A viewer in the slow lane goes back to the shared encode above this share of the
fastest viewer's rate: a gap between the two keeps an estimate that wanders around
one threshold from moving the viewer back and forth (each move costs it a keyframe)."""

V = TypeVar("V", bound=Hashable)


@dataclass(frozen=True)
class Quality:
    """The encoder's settings for the next keyframe and what follows it."""

    bitrate: int
    "Target bits/s."
    qmax: int
    "Quantiser ceiling (libvpx scale)."
    intra_pct: int | None = None
    "libvpx max-intra-rate (keyframe cap, percent of a frame's share); None: the encoder's."

    @property
    def limited(self) -> bool:
        """Made for a link found limited (``screen_quality``): constant bitrate, capped keyframe."""
        return self.intra_pct is not None


def key_size_ratio(qmax: int) -> float:
    """A keyframe's size at ``qmax`` relative to one at 36 (``KEY_SIZE``, interpolated)."""
    q = min(max(qmax, QMAX_STEPS[0]), QMAX_STEPS[-1])
    i = bisect.bisect_left(QMAX_STEPS, q)
    if QMAX_STEPS[i] == q:
        return KEY_SIZE[i]
    q0, q1 = QMAX_STEPS[i - 1], QMAX_STEPS[i]
    return KEY_SIZE[i - 1] + (KEY_SIZE[i] - KEY_SIZE[i - 1]) * (q - q0) / (q1 - q0)


def key_bytes_at(
    qmax: int, key_bytes: int = 0, key_qmax: int = 0, pixels: int = 1920 * 1080
) -> float:
    """A keyframe's predicted size at ``qmax``, from the last one made (``key_bytes`` at
    ``key_qmax``; 0: none yet, a page of text of ``pixels`` is assumed)."""
    if key_bytes > 0 and key_qmax > 0:
        at_36 = key_bytes / key_size_ratio(key_qmax)
    else:
        at_36 = KEY_BYTES_1080P * pixels / (1920 * 1080)
    return at_36 * key_size_ratio(qmax)


def screen_quality(
    target_bps: float | None,
    mode: ScreenMode,
    *,
    full_bitrate: int,
    key_bytes: int = 0,
    key_qmax: int = 0,
    pixels: int = 1920 * 1080,
) -> Quality:
    """Bitrate and quantiser ceiling for the next keyframe.

    ``target_bps`` is the slowest limited viewer's rate (None: no viewer's link is
    limited, the encoder runs at ``full_bitrate``). ``key_bytes`` at ``key_qmax`` is
    the last keyframe made (0: none yet; a page of text of ``pixels`` is assumed).
    The ceiling is the lowest of ``QMAX_STEPS`` (from the mode's best) whose keyframe
    is predicted to fit ``key_fit_s`` of the link; ``QMAX_WORST`` if none does.
    """
    policy = POLICIES[mode]
    if target_bps is None:
        return Quality(full_bitrate, policy.qmax_best)
    budget = policy.key_fit_s * target_bps / 8
    qmax = QMAX_WORST
    for q in QMAX_STEPS:
        if q >= policy.qmax_best and key_bytes_at(q, key_bytes, key_qmax, pixels) <= budget:
            qmax = q
            break
    bitrate = int(min(max(target_bps, BITRATE_FLOOR), full_bitrate))
    return Quality(bitrate, qmax, LIMITED_INTRA_PCT)


class Rekey:
    """When a better picture is worth a keyframe of its own (one per screen).

    Between keyframes the encoder's bitrate follows the link (``Encoder.retune``
    steers it up to ``STEER_MAX`` times the bitrate it was opened at), so a keyframe,
    and the freeze it costs a slow link (180 kB: 1.4 s of 1 Mbit/s), is asked for only
    for what steering cannot give:

    - the full picture, once the link is no longer found limited;
    - a bitrate beyond ``STEER_MAX`` times the encoder's;
    - a ceiling finer by ``FINER_STEP`` whose keyframe takes at most ``REKEY_FIT_S`` of
      the link (``key_s``): on a 2 Mbit/s link a keyframe at 48 took 1.4 s, and every
      counter drawn meanwhile waited behind it (latency p95 288 ms).

    Each must hold for ``REKEY_HOLD_S`` on end (the estimate wanders by 2x within
    seconds on a busy 1 Mbit/s link; re-keying on every swing took the link's reports
    from 9 in 20 s to 1). Never downward: the next keyframe that comes anyway (a new
    viewer, a lost picture) takes the coarser settings.
    """

    def __init__(self) -> None:
        self._since: float | None = None

    def update(self, current: Quality, wanted: Quality, now: float, key_s: float = 0.0) -> bool:
        """Whether to ask for a keyframe now (``now`` in seconds, any origin; ``key_s``:
        the seconds of the link a keyframe at ``wanted`` would take)."""
        better = (
            (current.limited and not wanted.limited)
            or wanted.bitrate >= STEER_MAX * current.bitrate
            or (wanted.qmax <= current.qmax - FINER_STEP and key_s <= REKEY_FIT_S)
        )
        if not better:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        if now - self._since >= REKEY_HOLD_S:
            self._since = None
            return True
        return False


@dataclass(frozen=True)
class Pace:
    """How one viewer's packets leave."""

    rate_bps: float
    "Rate (bits/s) at which packets leave while some are waiting."
    burst_bytes: int
    "Bytes that may leave back to back."
    limited: bool
    "Whether the link has been found full (the pace follows the estimate)."


class Pacing:
    """One viewer's pace, from the successive estimates of its link."""

    def __init__(self) -> None:
        self._clear_bps = 0.0  # the best rate delivered without a queue
        self._full_bps = 0.0  # what the link delivered while full, last time it was

    @property
    def limited(self) -> bool:
        """Whether the link has been found full (then it stays a link to be careful with)."""
        return self._full_bps > 0

    def update(self, state: LinkState) -> Pace:
        """The pace for the latest estimate."""
        if state.capacity_bps:
            self._full_bps = float(state.capacity_bps)
        elif state.trend is Trend.UNDERUSED:
            self._clear_bps = max(self._clear_bps, float(state.received_bps))
        if self.limited:
            # what leaves on average is the encoder's business (``frame_rate``); the
            # pacer only keeps a keyframe's packets from arriving faster than the link
            rate = max(float(state.target_bps), BURST_SHARE * self._full_bps)
            return Pace(min(rate, PACE_MAX), _burst(rate), limited=True)
        rate = min(max(PROBE_BPS, 2 * self._clear_bps, float(state.target_bps)), PACE_MAX)
        return Pace(rate, _burst(rate), limited=False)


def _burst(rate_bps: float) -> int:
    return max(BURST_MIN, int(rate_bps / 8 * BURST_S))


def frame_rate(
    target_bps: float, frame_bits: float, fps_max: float, floor: float = FPS_FLOOR
) -> float:
    """Frames per second that fit ``target_bps`` when each costs ``frame_bits``.

    Within [``floor``, ``fps_max``]; ``fps_max`` when nothing is known of the frames.
    """
    if frame_bits <= 0:
        return fps_max
    return min(max(FRAME_SHARE * target_bps / frame_bits, floor), fps_max)


def keyframe_interval(target_bps: float, key_bits: float) -> float:
    """Seconds to leave between keyframes so that each takes ``KEY_SHARE`` of the link."""
    if key_bits <= 0 or target_bps <= 0:
        return KEY_INTERVAL_MIN
    return min(max(key_bits / (KEY_SHARE * target_bps), KEY_INTERVAL_MIN), KEY_INTERVAL_MAX)


@dataclass(frozen=True)
class Lanes(Generic[V]):
    """Which encode each viewer gets (``split_lanes``)."""

    fast_bps: float | None
    "The shared encode's rate: its slowest limited viewer's (None: none is limited)."
    slow_bps: float | None
    "The slow lane's rate: its slowest viewer's (None: no slow lane)."
    slow: frozenset[V]
    "The viewers in the slow lane (empty: everyone shares one encode)."


def split_lanes(
    limits: Mapping[V, float | None], full_bps: float, slow: Set[V] = frozenset()
) -> Lanes[V]:
    """Group viewers by link: ``limits`` maps each viewer to its link's rate (bits/s,
    None: not found limited), ``full_bps`` is what the encoder sends on an unlimited
    link, ``slow`` the viewers in the slow lane now (for ``REJOIN_ABOVE``).

    A viewer below ``SPLIT_BELOW`` of the fastest goes to the slow lane; one already
    there stays until it is above ``REJOIN_ABOVE``. An unlimited link counts as
    ``full_bps``, and so does any faster one: a viewer is never split off for being
    slower than what the encoder would not send anyway.
    """
    rates = {v: full_bps if bps is None else min(bps, full_bps) for v, bps in limits.items()}
    if not rates:
        return Lanes(None, None, frozenset())
    top = max(rates.values())
    lane = frozenset(
        v
        for v, r in rates.items()
        if r < SPLIT_BELOW * top or (v in slow and r < REJOIN_ABOVE * top)
    )
    shared = [bps for v, bps in limits.items() if v not in lane and bps is not None]
    return Lanes(
        fast_bps=min(shared) if shared else None,
        slow_bps=min(rates[v] for v in lane) if lane else None,
        slow=lane,
    )
