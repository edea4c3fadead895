"""The control arbiter, sans-I/O: which remote input reaches the customer's desktop.

It lives on the customer's agent, where control takes effect (DESIGN.md "Session
state"). The glue feeds it decoded control events with ``receive(sender, event,
now)`` and the session's decisions with ``transfer``, ``grant``, ``revoke``,
``holder_lost`` and ``set_prompt_pending``; each call returns the actions to inject,
in order, which the glue hands to ``agent.input.Injector``. Nothing here does I/O or
reads a clock: ``now`` is any monotonic time in seconds.

Invariants (everything that affects them lives in this file):

* An event is injected only when control is granted, no consent prompt is pending,
  the sender holds control, the event carries the current token, its ``seq`` is
  above the last one seen from the holder under that token, and the sender's rate
  bucket has room. Any other event is dropped and counted under exactly one reason,
  checked in this order: ``no_grant``, ``prompt_pending``, ``not_holder``,
  ``stale_token``, ``out_of_order``, ``rate_limited``, ``held_limit``.
* The token applied never decreases, and a token that has been released (revoke,
  holder lost, transfer to a newer one) is never applied again: control needs a
  newer token to come back, so events in flight from before a revoke stay dead.
* The arbiter tracks the keys and buttons that injected events left down. Whenever
  input stops or changes hands (``revoke``, ``holder_lost``, a ``transfer``, a
  consent prompt) it emits one release for each of them (buttons first, then keys,
  each in reverse order of pressing) and the held sets are empty afterwards. A
  prompt releases too: a key held through a prompt would auto-repeat into it.
* Releasing a held key or button is never rate limited, so a limit cannot leave a
  key stuck down. At most ``MAX_HELD_KEYS`` keys are down at once.

Rate limit: a token bucket per sender, ``RATE`` events per second with bursts of
``BURST``. A pointer moved at 120 Hz while typing fast stays far below it; a text
event costs one unit per ``TEXT_CHARS_PER_UNIT`` characters (at least one), so
sustained typing through text events is capped near 4,000 characters a second,
which bounds how far the injector's queue can fall behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import LocalProtocolError
from agent.protocol.control import ControlEvent, Key, Pointer, Text, Token, Wheel

RATE = 200.0
"Events per second a sender may sustain."
BURST = 400.0
"Events a sender may send at once after a quiet spell."
TEXT_CHARS_PER_UNIT = 20
"Characters of a text event that cost one event's worth of rate."
MAX_HELD_KEYS = 32
"Keys that may be down at once; further key downs are dropped (``held_limit``)."

DROP_REASONS = (
    "no_grant",
    "prompt_pending",
    "not_holder",
    "stale_token",
    "out_of_order",
    "rate_limited",
    "held_limit",
)


# --------------------------------------------------------------------------- actions
# What the injector does. Coordinates stay normalised: the injector knows the monitor.


@dataclass(frozen=True)
class MoveTo:
    """Move the pointer to a normalised point (0..1, 0..1) of the shared monitor."""

    x: float
    y: float


@dataclass(frozen=True)
class ButtonDown:
    """Press a mouse button (left, middle, right) where the pointer is."""

    button: str


@dataclass(frozen=True)
class ButtonUp:
    """Release a mouse button where the pointer is."""

    button: str


@dataclass(frozen=True)
class Scroll:
    """Scroll by notches: ``dx`` > 0 right, ``dy`` > 0 down (towards the end of a page)."""

    dx: int
    dy: int


@dataclass(frozen=True)
class KeyDown:
    """Press a key by name (``agent.protocol.control.KEY_NAMES`` or one character)."""

    key: str


@dataclass(frozen=True)
class KeyUp:
    """Release a key by name."""

    key: str


@dataclass(frozen=True)
class TypeText:
    """Type a string (newline and tab as Enter and Tab) with the keys currently held."""

    text: str


Action = MoveTo | ButtonDown | ButtonUp | Scroll | KeyDown | KeyUp | TypeText


@dataclass(frozen=True)
class ControlStatus:
    """A snapshot of the arbiter for status displays and logs."""

    holder: str | None
    "Peer id of the CSR holding control, or None."
    token: Token | None
    "The current control token, or None when nobody holds control."
    granted: bool
    "Whether the customer has granted control."
    prompt_pending: bool
    "Whether a consent prompt is shown (input paused)."
    held_keys: tuple[str, ...]
    held_buttons: tuple[str, ...]
    injected: int
    "Events injected since the arbiter was made."
    dropped: tuple[tuple[str, int], ...]
    "Events dropped, per reason in DROP_REASONS order."

    @property
    def controlling(self) -> bool:
        """Whether remote input currently reaches the desktop (what the tray shows)."""
        return self.granted and self.holder is not None and not self.prompt_pending


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class ControlArbiter:
    """Decides, event by event, whether remote input reaches the desktop.

    >>> arb = ControlArbiter()
    >>> arb.transfer("csr-1", (1, 7)) + arb.grant()
    []
    >>> from agent.protocol.control import Key
    >>> arb.receive("csr-1", Key(token=(1, 7), seq=1, action="down", key="shift"), now=0.0)
    [KeyDown(key='shift')]
    >>> arb.revoke()
    [KeyUp(key='shift')]
    """

    def __init__(
        self, *, rate: float = RATE, burst: float = BURST, max_held_keys: int = MAX_HELD_KEYS
    ) -> None:
        if rate <= 0 or burst < 1 or max_held_keys < 1:
            raise LocalProtocolError("rate must be > 0, burst >= 1 and max_held_keys >= 1")
        self._rate = rate
        self._burst = burst
        self._max_held = max_held_keys
        self._holder: str | None = None
        self._token: Token | None = None
        self._floor: Token | None = None
        self._granted = False
        self._prompt = False
        self._last_seq: int | None = None
        self._keys: dict[str, None] = {}  # an ordered set: press order
        self._buttons: dict[str, None] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._injected = 0

    # ------------------------------------------------------------------ state

    @property
    def holder(self) -> str | None:
        """Peer id of the CSR holding control, or None."""
        return self._holder

    @property
    def token(self) -> Token | None:
        """The current control token; None after a revoke or when the holder was lost."""
        return self._token

    @property
    def floor(self) -> Token | None:
        """The highest token ever applied; a transfer needs a newer one."""
        return self._floor

    @property
    def granted(self) -> bool:
        return self._granted

    @property
    def prompt_pending(self) -> bool:
        return self._prompt

    @property
    def held_keys(self) -> tuple[str, ...]:
        """Keys that injected events left down, in the order they were pressed."""
        return tuple(self._keys)

    @property
    def held_buttons(self) -> tuple[str, ...]:
        """Buttons that injected events left down, in the order they were pressed."""
        return tuple(self._buttons)

    @property
    def injected(self) -> int:
        """Events injected so far."""
        return self._injected

    @property
    def dropped(self) -> dict[str, int]:
        """Events dropped so far, by reason (a copy)."""
        return dict(self._dropped)

    def status(self) -> ControlStatus:
        """A frozen snapshot of the arbiter."""
        return ControlStatus(
            holder=self._holder,
            token=self._token,
            granted=self._granted,
            prompt_pending=self._prompt,
            held_keys=self.held_keys,
            held_buttons=self.held_buttons,
            injected=self._injected,
            dropped=tuple(self._dropped.items()),
        )

    # ------------------------------------------------------------------ decisions

    def grant(self) -> list[Action]:
        """The customer granted control. Input flows once someone holds a token."""
        self._granted = True
        return []

    def revoke(self) -> list[Action]:
        """The customer revoked control: release everything, forget the holder and token.

        Takes effect at once, before any log round trip. Control comes back only with
        ``grant()`` and a ``transfer`` to a newer token.
        """
        self._granted = False
        return self._drop_holder()

    def transfer(self, peer: str, token: Token) -> list[Action]:
        """Control now belongs to ``peer`` under ``token`` (from the session log).

        Releases whatever the previous holder left down. Re-applying the current
        holder and token is a no-op; an older token, or the current one for someone
        else or after it was released, raises ``LocalProtocolError`` and changes nothing.
        """
        if not peer:
            raise LocalProtocolError("a control holder needs a peer id")
        if (
            len(token) != 2
            or any(isinstance(part, bool) or not isinstance(part, int) for part in token)
            or min(token) < 0
        ):
            raise LocalProtocolError(f"a control token is two integers >= 0, not {token!r}")
        token = (token[0], token[1])
        if self._floor is not None:
            if token == self._floor and peer == self._holder and token == self._token:
                return []
            if token <= self._floor:
                raise LocalProtocolError(
                    f"control token {list(token)} for {peer} is not newer than"
                    f" {list(self._floor)}, which was already applied"
                )
        releases = self._release()
        self._holder = peer
        self._token = token
        self._floor = token
        self._last_seq = None
        return releases

    def holder_lost(self, peer: str) -> list[Action]:
        """``peer`` left or dropped. If it held control, release everything; control
        stays released until a ``transfer`` to a newer token (the grant is kept)."""
        self._buckets.pop(peer, None)
        if peer != self._holder:
            return []
        return self._drop_holder()

    def set_prompt_pending(self, pending: bool) -> list[Action]:
        """A consent prompt is shown (True) or gone (False); input is paused while shown.

        Showing one releases everything, so nothing held down can act on the prompt.
        """
        self._prompt = pending
        return self._release() if pending else []

    def release_all(self) -> list[Action]:
        """Release every key and button that injected events left down."""
        return self._release()

    # ------------------------------------------------------------------ events

    def receive(self, sender: str, event: ControlEvent, now: float) -> list[Action]:
        """The actions ``event`` from peer ``sender`` causes; [] when it is dropped."""
        if not self._granted:
            return self._drop("no_grant")
        if self._prompt:
            return self._drop("prompt_pending")
        if sender != self._holder:
            return self._drop("not_holder")
        if event.token != self._token:
            return self._drop("stale_token")
        if self._last_seq is not None and event.seq <= self._last_seq:
            return self._drop("out_of_order")
        self._last_seq = event.seq
        if not self._take(sender, self._cost(event), now):
            return self._drop("rate_limited")
        actions = self._actions(event)
        if actions is None:
            return self._drop("held_limit")
        self._injected += 1
        return actions

    # ------------------------------------------------------------------ internals

    def _drop(self, reason: str) -> list[Action]:
        self._dropped[reason] += 1
        return []

    def _drop_holder(self) -> list[Action]:
        releases = self._release()
        self._holder = None
        self._token = None
        self._last_seq = None
        return releases

    def _release(self) -> list[Action]:
        out: list[Action] = [ButtonUp(b) for b in reversed(self._buttons)]
        out += [KeyUp(k) for k in reversed(self._keys)]
        self._buttons.clear()
        self._keys.clear()
        return out

    def _cost(self, event: ControlEvent) -> float:
        if isinstance(event, Text):
            return float(max(1, len(event.text) // TEXT_CHARS_PER_UNIT))
        # Releasing what is held is free: a rate limit must never leave a key down.
        if isinstance(event, Key) and event.action == "up" and event.key in self._keys:
            return 0.0
        if isinstance(event, Pointer) and event.action == "up" and event.button in self._buttons:
            return 0.0
        return 1.0

    def _take(self, sender: str, cost: float, now: float) -> bool:
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = _Bucket(self._burst, now)
        elapsed = now - bucket.stamp
        if elapsed > 0:
            bucket.level = min(self._burst, bucket.level + elapsed * self._rate)
            bucket.stamp = now
        if bucket.level < cost:
            return False
        bucket.level -= cost
        return True

    def _actions(self, event: ControlEvent) -> list[Action] | None:
        if isinstance(event, Pointer):
            move = MoveTo(event.x, event.y)
            button = event.button
            if button is None:
                return [move]
            if event.action == "down":
                self._buttons[button] = None
                return [move, ButtonDown(button)]
            self._buttons.pop(button, None)
            if event.action == "up":
                return [move, ButtonUp(button)]
            return [move, ButtonDown(button), ButtonUp(button)]
        if isinstance(event, Wheel):
            return [MoveTo(event.x, event.y), Scroll(event.dx, event.dy)]
        if isinstance(event, Key):
            key = event.key
            if event.action == "down":
                if key not in self._keys and len(self._keys) >= self._max_held:
                    return None
                self._keys[key] = None
                return [KeyDown(key)]
            self._keys.pop(key, None)
            if event.action == "up":
                return [KeyUp(key)]
            return [KeyDown(key), KeyUp(key)]
        return [TypeText(event.text)]
