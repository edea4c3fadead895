"""The remote-control wire: input events from the controlling CSR to the customer's agent.

Control travels on its own negotiated data channel (label ``control``), ordered and
reliable, so events arrive in the order the CSR made them. One SCTP message holds
one JSON object with a ``type`` tag; for example::

    {"type":"pointer","token":[3,42],"seq":17,"action":"click","button":"left","x":0.25,"y":0.5}
    {"type":"wheel","token":[3,42],"seq":18,"x":0.25,"y":0.5,"dx":0,"dy":3}
    {"type":"key","token":[3,42],"seq":19,"action":"press","key":"enter"}
    {"type":"text","token":[3,42],"seq":20,"text":"hello PeerDesk 123"}

Every event carries the control token ``[epoch, seq]`` the sender believes it holds
(see DESIGN.md "Session state") and its own sequence number ``seq``, strictly
increasing per sender while one token lasts. Whether an event takes effect is for
the customer's arbiter (``agent.session.control``) to decide; this module only
checks that it is well formed.

Coordinates are normalised to the shared monitor: ``x`` and ``y`` are finite floats
in ``[0, 1]`` (JSON integers 0 and 1 are accepted), ``(0, 0)`` the top-left corner,
``1`` the right or bottom edge. A viewer showing the monitor at ``w`` x ``h`` should
send ``(col + 0.5) / w``; the injector maps ``x`` to pixel ``floor(x * width)``
(clamped to the last pixel). Keys are named, never scancodes: ``KEY_NAMES`` or one
printable character (``"a"``, ``"A"``, ``"é"``, ``"?"``); the customer's keyboard
layout turns a character into whatever key combination types it.

The decoder is strict: unknown types, unknown fields, values of the wrong type,
NaN or infinite numbers, out-of-range values and unknown key names are refused with
a ``DecodeError`` that names the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from agent.errors import DecodeError, LocalProtocolError, UnknownMessage
from agent.protocol import wire
from agent.protocol.handshake import PEER_ID_RE

CHANNEL_LABEL = "control"
"Label of the negotiated data channel that carries this wire."
MAX_CONTROL_BYTES = 8 * 1024
"Largest control message accepted (a 1000-character text event fits with room)."
MAX_TEXT_CHARS = 1000
"Most characters one text event may type."
MAX_WHEEL_STEPS = 20
"Largest wheel movement per event and axis, in notches."
MAX_INT = 2**53 - 1
"Largest token part or sequence number (exact in every JSON implementation)."

Token: TypeAlias = tuple[int, int]
"A control token ``(epoch, seq)``; tokens compare as tuples."

POINTER_ACTIONS = ("move", "down", "up", "click")
KEY_ACTIONS = ("down", "up", "press")
BUTTONS = ("left", "middle", "right")

KEY_NAMES: frozenset[str] = frozenset(
    {
        "enter",
        "tab",
        "escape",
        "backspace",
        "delete",
        "insert",
        "space",
        "shift",
        "ctrl",
        "alt",
        "meta",
        "left",
        "right",
        "up",
        "down",
        "home",
        "end",
        "page_up",
        "page_down",
        "menu",
        *(f"f{i}" for i in range(1, 13)),
    }
)
"Named keys. Any single printable character (letters, digits, punctuation) is a key too."

TEXT_CONTROL_CHARS = "\n\t"
"The only non-printable characters a text event may type (as Enter and Tab)."

_ENVELOPE = ("type", "token", "seq")


@dataclass(frozen=True, kw_only=True)
class Pointer:
    """Move the pointer, or press, release or click a button at a point."""

    type: ClassVar[str] = "pointer"
    token: Token
    "The control token the sender holds."
    seq: int
    "Sender's event number, 0..MAX_INT, strictly increasing while a token lasts."
    action: str
    "One of POINTER_ACTIONS: move, down, up, click."
    x: float
    "Horizontal position, 0.0 (left edge) .. 1.0 (right edge) of the shared monitor."
    y: float
    "Vertical position, 0.0 (top edge) .. 1.0 (bottom edge) of the shared monitor."
    button: str | None = None
    "One of BUTTONS for down/up/click; None (absent on the wire) for move."

    def __post_init__(self) -> None:
        _locally(_check_pointer, self)


@dataclass(frozen=True, kw_only=True)
class Wheel:
    """Scroll at a point, in wheel notches."""

    type: ClassVar[str] = "wheel"
    token: Token
    seq: int
    x: float
    "Where the pointer is when scrolling, 0.0..1.0 like Pointer.x."
    y: float
    "0.0..1.0 like Pointer.y."
    dx: int
    "Notches to the right (negative: left), -MAX_WHEEL_STEPS..MAX_WHEEL_STEPS."
    dy: int
    "Notches down, towards the end of a page (negative: up), like DOM WheelEvent.deltaY."

    def __post_init__(self) -> None:
        _locally(_check_wheel, self)


@dataclass(frozen=True, kw_only=True)
class Key:
    """Press or release one key by name."""

    type: ClassVar[str] = "key"
    token: Token
    seq: int
    action: str
    "One of KEY_ACTIONS: down, up, press (down then up)."
    key: str
    "A name from KEY_NAMES or one printable character."

    def __post_init__(self) -> None:
        _locally(_check_key, self)


@dataclass(frozen=True, kw_only=True)
class Text:
    """Type a string as the customer's keyboard layout allows (a paste, a password)."""

    type: ClassVar[str] = "text"
    token: Token
    seq: int
    text: str
    "1..MAX_TEXT_CHARS printable characters; newline and tab type Enter and Tab."

    def __post_init__(self) -> None:
        _locally(_check_text, self)


ControlEvent: TypeAlias = Pointer | Wheel | Key | Text


def is_key_name(name: str) -> bool:
    """Whether ``name`` is a key this wire knows: a KEY_NAMES entry or one printable char."""
    return name in KEY_NAMES or (len(name) == 1 and name.isprintable())


def encode(event: ControlEvent) -> str:
    """JSON text for one control event."""
    body: dict[str, Any] = {"type": event.type, "token": list(event.token), "seq": event.seq}
    if isinstance(event, Pointer):
        body.update(action=event.action, x=event.x, y=event.y)
        if event.button is not None:
            body["button"] = event.button
    elif isinstance(event, Wheel):
        body.update(x=event.x, y=event.y, dx=event.dx, dy=event.dy)
    elif isinstance(event, Key):
        body.update(action=event.action, key=event.key)
    else:
        body["text"] = event.text
    return wire.dump(body)


def decode(data: str | bytes) -> ControlEvent:
    """Parse one control message; raises ``DecodeError`` naming what was wrong."""
    obj = wire.parse_object(data, max_bytes=MAX_CONTROL_BYTES, what="control message")
    kind = wire.get_type(obj)
    fields = _FIELDS.get(kind)
    if fields is None:
        raise UnknownMessage(f'unknown control message type "{kind[:32]}"')
    try:
        for name in obj:
            if name not in fields:
                shown = f' "{name}"' if _FIELD_RE.fullmatch(name) else ""
                raise DecodeError(f"unknown field{shown}: {kind} takes {', '.join(sorted(fields))}")
        token = _token(obj.get("token"))
        seq = _int(obj, "seq", 0, MAX_INT)
        event: ControlEvent
        if kind == "pointer":
            action = _choice(obj, "action", POINTER_ACTIONS)
            button = obj.get("button")
            if action == "move":
                if "button" in obj:
                    raise DecodeError('field "button" is not allowed with action "move"')
            else:
                button = _choice(obj, "button", BUTTONS)
            event = Pointer(
                token=token,
                seq=seq,
                action=action,
                x=_unit(obj, "x"),
                y=_unit(obj, "y"),
                button=button,
            )
        elif kind == "wheel":
            event = Wheel(
                token=token,
                seq=seq,
                x=_unit(obj, "x"),
                y=_unit(obj, "y"),
                dx=_int(obj, "dx", -MAX_WHEEL_STEPS, MAX_WHEEL_STEPS),
                dy=_int(obj, "dy", -MAX_WHEEL_STEPS, MAX_WHEEL_STEPS),
            )
        elif kind == "key":
            action = _choice(obj, "action", KEY_ACTIONS)
            event = Key(token=token, seq=seq, action=action, key=_key(obj.get("key")))
        else:
            event = Text(token=token, seq=seq, text=_text(obj.get("text")))
    except (DecodeError, LocalProtocolError) as exc:
        raise DecodeError(f"{kind}: {exc.message}") from None
    return event


# --------------------------------------------------------------------------- checks
# Each raises DecodeError naming the field. Decoding applies them to the raw JSON
# values; constructing an event applies them again (as LocalProtocolError) so that
# our own code cannot put an event on the wire that the other side would refuse.

_FIELDS: dict[str, frozenset[str]] = {
    "pointer": frozenset({*_ENVELOPE, "action", "x", "y", "button"}),
    "wheel": frozenset({*_ENVELOPE, "x", "y", "dx", "dy"}),
    "key": frozenset({*_ENVELOPE, "action", "key"}),
    "text": frozenset({*_ENVELOPE, "text"}),
}
_CHOICE_RE = re.compile(r"[a-z_]{1,16}")
_FIELD_RE = re.compile(r"[A-Za-z0-9_]{1,32}")


def _locally(check: Any, event: Any) -> None:
    try:
        check(event)
    except DecodeError as exc:
        raise LocalProtocolError(f"bad {event.type} event: {exc.message}") from None


def _int(obj: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value: int = wire.get_int(obj, name, lo=lo, hi=hi)
    return value


def _unit(obj: Mapping[str, Any], name: str) -> float:
    """A coordinate: a finite number in 0..1 (JSON integers 0 and 1 included)."""
    if name not in obj:
        raise DecodeError(f'field "{name}" is missing')
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f'field "{name}" must be a number')
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError(f'field "{name}" must be a finite number, not {value}')
    if not 0 <= value <= 1:
        raise DecodeError(f'field "{name}" must be between 0 and 1')
    return float(value)


def _token(value: Any) -> Token:
    if value is None:
        raise DecodeError('field "token" is missing')
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise DecodeError('field "token" must be a list [epoch, seq]')
    for part in value:
        if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part <= MAX_INT:
            raise DecodeError(f'field "token" must hold two integers between 0 and {MAX_INT}')
    return (value[0], value[1])


def _choice(obj: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = obj.get(name)
    if value is None:
        raise DecodeError(f'field "{name}" is missing')
    if not isinstance(value, str) or value not in allowed:
        shown = f'"{value}"' if isinstance(value, str) and _CHOICE_RE.fullmatch(value) else "this"
        raise DecodeError(f'field "{name}" must be one of {", ".join(allowed)}, not {shown}')
    return value


def _key(value: Any) -> str:
    if value is None:
        raise DecodeError('field "key" is missing')
    if not isinstance(value, str):
        raise DecodeError('field "key" must be a string')
    if not is_key_name(value):
        shown = f' "{value}"' if _CHOICE_RE.fullmatch(value) else ""
        raise DecodeError(
            f'field "key" names an unknown key{shown}: use a name such as "enter" or "f5",'
            " or one printable character"
        )
    return value


def _text(value: Any) -> str:
    if value is None:
        raise DecodeError('field "text" is missing')
    text: str = wire.get_str({"text": value}, "text", max_len=MAX_TEXT_CHARS, allow_empty=False)
    for i, char in enumerate(text):
        if not (char.isprintable() or char in TEXT_CONTROL_CHARS):
            raise DecodeError(
                f'field "text" holds a control character (U+{ord(char):04X}) at {i};'
                " only newline and tab are typed"
            )
    return text


def _envelope(event: ControlEvent) -> None:
    # Held as a tuple of ints whatever the caller passed, so that events hash.
    object.__setattr__(event, "token", _token(event.token))
    _int({"seq": event.seq}, "seq", 0, MAX_INT)


def _normalise_point(event: Pointer | Wheel) -> None:
    # Integers are accepted (0 and 1 on the wire) but held as floats.
    object.__setattr__(event, "x", float(event.x))
    object.__setattr__(event, "y", float(event.y))


def _check_pointer(event: Pointer) -> None:
    _envelope(event)
    _choice({"action": event.action}, "action", POINTER_ACTIONS)
    _unit({"x": event.x}, "x")
    _unit({"y": event.y}, "y")
    if event.action == "move":
        if event.button is not None:
            raise DecodeError('field "button" is not allowed with action "move"')
    else:
        _choice({"button": event.button}, "button", BUTTONS)
    _normalise_point(event)


def _check_wheel(event: Wheel) -> None:
    _envelope(event)
    _unit({"x": event.x}, "x")
    _unit({"y": event.y}, "y")
    _int({"dx": event.dx}, "dx", -MAX_WHEEL_STEPS, MAX_WHEEL_STEPS)
    _int({"dy": event.dy}, "dy", -MAX_WHEEL_STEPS, MAX_WHEEL_STEPS)
    _normalise_point(event)


def _check_key(event: Key) -> None:
    _envelope(event)
    _choice({"action": event.action}, "action", KEY_ACTIONS)
    _key(event.key)


def _check_text(event: Text) -> None:
    _envelope(event)
    _text(event.text)


# --------------------------------------------------------------------------- relaying
# An assistant CSR's input reaches the customer through the primary CSR's agent, which
# the customer verified in the join: the primary wraps the assistant's event, untouched,
# with the assistant's id. The customer's arbiter then judges it as the assistant's.

RELAYED = "relayed"


def encode_relayed(sender: str, event: str) -> str:
    """Wrap an encoded control event from ``sender`` (a peer id) for the customer."""
    if not PEER_ID_RE.fullmatch(sender):
        raise LocalProtocolError(f"not a peer id: {sender!r}")
    return wire.dump({"type": RELAYED, "from": sender, "event": event})


def decode_any(data: str | bytes) -> tuple[str | None, ControlEvent]:
    """A control event, or a relayed one: ``(sender or None, event)``."""
    obj = wire.parse_object(data, max_bytes=MAX_CONTROL_BYTES * 2, what="control message")
    if obj.get("type") != RELAYED:
        return None, decode(data)
    if set(obj) != {"type", "from", "event"}:
        raise DecodeError("relayed: takes type, from, event")
    sender = wire.get_str(obj, "from", pattern=PEER_ID_RE)
    inner = wire.get_str(obj, "event", max_len=MAX_CONTROL_BYTES)
    return sender, decode(inner)
