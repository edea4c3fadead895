"""How the screen follows each viewer's link: pacing, frame rate, keyframe spacing (sans-I/O).

``agent.session.link`` estimates a viewer's link; this core turns that estimate into
what the sender does, and nothing here reads a clock or touches a socket:

- ``Pacing`` (one per viewer) says at what rate and in what bursts that viewer's
  RTP packets leave. Until the link has been found full it *probes*: packets leave at
  twice the best rate the link has delivered without a queue, at least ``PROBE_BPS``
  (so a LAN's 600 kB keyframe leaves in 0.1-0.6 s, and a 2 Mbit/s uplink's buffer
  fills only at the first keyframe, by 100 ms of its rate). Once found full, packets
  leave at the target, with bursts (a keyframe's packets) at ``BURST_SHARE`` of what
  the link delivered while full: a queue never builds at the bottleneck, so control
  and chat, which are not paced, pass it at once. Bursts are ``BURST_S`` of the rate.
- ``frame_rate`` fits the frames to the target on a link found full: frame rate goes
  first (a support session needs legible text before motion), down to
  ``FPS_FLOOR`` for a screen that changes all the time.
- ``keyframe_interval`` spaces keyframes so that each fits the link: a viewer that
  lost a packet and asks again and again cannot fill the link with keyframes.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.session.link import LinkState, Trend

PROBE_BPS = 8_000_000
"Lowest pace (bits/s) while the link has not been found full."
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


def frame_rate(target_bps: float, frame_bits: float, fps_max: float) -> float:
    """Frames per second that fit ``target_bps`` when each costs ``frame_bits``.

    Within [``FPS_FLOOR``, ``fps_max``]; ``fps_max`` when nothing is known of the frames.
    """
    if frame_bits <= 0:
        return fps_max
    return min(max(FRAME_SHARE * target_bps / frame_bits, FPS_FLOOR), fps_max)


def keyframe_interval(target_bps: float, key_bits: float) -> float:
    """Seconds to leave between keyframes so that each takes ``KEY_SHARE`` of the link."""
    if key_bits <= 0 or target_bps <= 0:
        return KEY_INTERVAL_MIN
    return min(max(key_bits / (KEY_SHARE * target_bps), KEY_INTERVAL_MIN), KEY_INTERVAL_MAX)
