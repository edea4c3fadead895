"""Remote control: the input wire, the arbiter core, the injector, and all three on Xvfb.

Layers, as STYLE.md asks: the wire's codec and the arbiter pumped by hand (with a
Hypothesis state machine for the arbiter), the injector against a fake backend,
then the real thing on an Xvfb display: pynput moving the X pointer, typing into a
Tk window, and the arbiter's revoke releasing what was held down.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from agent.errors import DecodeError, LocalProtocolError, PeerDeskError, UnknownMessage
from agent.input import PYNPUT_KEYS, Injector, Monitor
from agent.protocol import control as ctl
from agent.session.control import (
    BURST,
    DROP_REASONS,
    MAX_HELD_KEYS,
    RATE,
    Action,
    ButtonDown,
    ButtonUp,
    ControlArbiter,
    KeyDown,
    KeyUp,
    MoveTo,
    Scroll,
    TypeText,
)

T = (1, 5)  # a token


def key(action: str, name: str, *, seq: int, token: tuple[int, int] = T) -> ctl.Key:
    return ctl.Key(token=token, seq=seq, action=action, key=name)


def click(x: float, y: float, *, seq: int, token: tuple[int, int] = T) -> ctl.Pointer:
    return ctl.Pointer(token=token, seq=seq, action="click", button="left", x=x, y=y)


# =========================================================================== the wire

EXAMPLES: list[ctl.ControlEvent] = [
    ctl.Pointer(token=(0, 0), seq=0, action="move", x=0.0, y=1.0),
    ctl.Pointer(token=(3, 42), seq=17, action="click", button="left", x=0.25, y=0.5),
    ctl.Pointer(token=(3, 42), seq=18, action="down", button="right", x=1.0, y=0.0),
    ctl.Wheel(token=(3, 42), seq=19, x=0.5, y=0.5, dx=-2, dy=3),
    ctl.Key(token=(3, 42), seq=20, action="press", key="enter"),
    ctl.Key(token=(3, 42), seq=21, action="down", key="é"),
    ctl.Key(token=(3, 42), seq=22, action="up", key="f12"),
    ctl.Text(token=(3, 42), seq=23, text="hello PeerDesk 123\n\tâ€"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_round_trip(event: ctl.ControlEvent) -> None:
    text = ctl.encode(event)
    assert ctl.decode(text) == event
    assert ctl.decode(text.encode()) == event
    assert json.loads(text)["token"] == list(event.token)


def test_wire_format_is_as_documented() -> None:
    assert json.loads(ctl.encode(EXAMPLES[1])) == {
        "type": "pointer",
        "token": [3, 42],
        "seq": 17,
        "action": "click",
        "button": "left",
        "x": 0.25,
        "y": 0.5,
    }
    # What a browser viewer sends: integers for 0 and 1, fields in any order.
    event = ctl.decode('{"x":1,"y":0,"seq":1,"token":[0,1],"action":"move","type":"pointer"}')
    assert event == ctl.Pointer(token=(0, 1), seq=1, action="move", x=1.0, y=0.0)
    assert isinstance(event.x, float)


def _obj(kind: str = "pointer", **fields: Any) -> str:
    """A control message of ``kind`` with valid defaults; ``...`` leaves a field out."""
    base: dict[str, Any] = {"type": kind, "token": [1, 2], "seq": 1}
    base.update(
        {
            "pointer": {"action": "move", "x": 0.5, "y": 0.5},
            "wheel": {"x": 0, "y": 0, "dx": 0, "dy": 1},
            "key": {"action": "down", "key": "a"},
            "text": {"text": "hi"},
        }[kind]
    )
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


BAD = [
    (_obj(x=float("nan")), "not valid JSON"),
    (_obj(x=float("inf")), "not valid JSON"),
    (_obj(x=1.0).replace("1.0", "1e999"), '"x" must be a finite'),
    (_obj(x=1.0000001), '"x" must be between 0 and 1'),
    (_obj(y=-0.1), '"y" must be between 0 and 1'),
    (_obj(x=10**400), '"x" must be between 0 and 1'),
    (_obj(x=True), '"x" must be a number'),
    (_obj(x="0.5"), '"x" must be a number'),
    (_obj(y=...), '"y" is missing'),
    (_obj(token=[1]), '"token" must be a list'),
    (_obj(token=[1, -1]), '"token" must hold two integers'),
    (_obj(token=[1, 2**53]), '"token" must hold two integers'),
    (_obj(token=[1, True]), '"token" must hold two integers'),
    (_obj(token=...), '"token" is missing'),
    (_obj(seq=-1), '"seq" must be between'),
    (_obj(seq=1.5), '"seq" must be an integer'),
    (_obj(action="drag"), '"action" must be one of move, down, up, click, not "drag"'),
    (_obj(button="left"), '"button" is not allowed with action "move"'),
    (_obj(action="click"), '"button" is missing'),
    (_obj(action="click", button="side"), '"button" must be one of left, middle, right'),
    (_obj(colour="red"), 'unknown field "colour"'),
    (_obj("wheel", dy=21), '"dy" must be between -20 and 20'),
    (_obj("wheel", dx=0.5), '"dx" must be an integer'),
    (_obj("key", key="hyper"), 'unknown key "hyper"'),
    (_obj("key", key="ab"), "unknown key"),
    (_obj("key", key="\x07"), "unknown key"),
    (_obj("key", key="\ud800"), "unknown key"),
    (_obj("key", key=""), "unknown key"),
    (_obj("key", action="tap"), '"action" must be one of down, up, press'),
    (_obj("key", key=...), '"key" is missing'),
    (_obj("text", text=""), '"text" must not be empty'),
    (_obj("text", text="a\x1bb"), "control character (U+001B) at 1"),
    (_obj("text", text="a\r"), "control character (U+000D) at 1"),
    (_obj("text", text="a\x00"), "NUL"),
    (_obj("text", text="a" * 1001), "longer than 1000"),
    (_obj("text", text="a" * 9000), "limit is 8192"),
    ("[1,2]", "must be a JSON object"),
    ('{"token":[1,2]}', 'no "type" tag'),
]


@pytest.mark.parametrize(("data", "message"), BAD)
def test_decode_refuses_with_a_clear_message(data: str, message: str) -> None:
    with pytest.raises(DecodeError, match=None) as info:
        ctl.decode(data)
    assert message in info.value.message


def test_unknown_type_is_its_own_error() -> None:
    with pytest.raises(UnknownMessage, match="unknown control message type"):
        ctl.decode('{"type":"gamepad","token":[1,2],"seq":1}')


def test_events_cannot_be_built_invalid_locally() -> None:
    with pytest.raises(LocalProtocolError, match='"x" must be between 0 and 1'):
        ctl.Pointer(token=T, seq=1, action="move", x=2.0, y=0.0)
    with pytest.raises(LocalProtocolError, match="unknown key"):
        ctl.Key(token=T, seq=1, action="down", key="capslock")
    with pytest.raises(LocalProtocolError, match='"token"'):
        ctl.Text(token=(1, -1), seq=1, text="x")
    # A list token is held as a tuple, so events hash and compare alike.
    made = ctl.Key(token=[1, 5], seq=1, action="down", key="a")  # type: ignore[arg-type]
    assert made.token == (1, 5) and hash(made) == hash(key("down", "a", seq=1))


units = st.floats(0, 1, allow_nan=False) | st.sampled_from([0.0, 1.0, 0.5])
tokens = st.tuples(st.integers(0, ctl.MAX_INT), st.integers(0, ctl.MAX_INT))
seqs = st.integers(0, ctl.MAX_INT)
key_names = st.sampled_from(sorted(ctl.KEY_NAMES)) | st.characters().filter(str.isprintable)
texts = st.text(
    st.characters(blacklist_categories=("Cs",)).filter(lambda c: c.isprintable() or c in "\n\t"),
    min_size=1,
    max_size=ctl.MAX_TEXT_CHARS,
)
steps = st.integers(-ctl.MAX_WHEEL_STEPS, ctl.MAX_WHEEL_STEPS)
events = st.one_of(
    st.builds(
        lambda t, s, a, b, x, y: ctl.Pointer(
            token=t, seq=s, action=a, button=None if a == "move" else b, x=x, y=y
        ),
        tokens,
        seqs,
        st.sampled_from(ctl.POINTER_ACTIONS),
        st.sampled_from(ctl.BUTTONS),
        units,
        units,
    ),
    st.builds(
        lambda t, s, x, y, dx, dy: ctl.Wheel(token=t, seq=s, x=x, y=y, dx=dx, dy=dy),
        tokens,
        seqs,
        units,
        units,
        steps,
        steps,
    ),
    st.builds(
        lambda t, s, a, k: ctl.Key(token=t, seq=s, action=a, key=k),
        tokens,
        seqs,
        st.sampled_from(ctl.KEY_ACTIONS),
        key_names,
    ),
    st.builds(lambda t, s, x: ctl.Text(token=t, seq=s, text=x), tokens, seqs, texts),
)


@settings(max_examples=200, deadline=None)
@given(events)
def test_every_valid_event_survives_the_wire(event: ctl.ControlEvent) -> None:
    assert ctl.decode(ctl.encode(event)) == event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["pointer", "wheel", "key", "text", "nope"]),
    st.dictionaries(
        st.sampled_from(
            ["token", "seq", "action", "x", "y", "button", "dx", "dy", "key", "text", "z"]
        ),
        json_values
        | st.sampled_from(["move", "click", "left", "down", "enter", "a"])
        | tokens.map(list),
        max_size=8,
    ),
)
def test_near_valid_input_gives_only_decode_errors(kind: str, fields: dict[str, Any]) -> None:
    try:
        text = json.dumps({"type": kind, **fields})
    except ValueError:
        return
    try:
        event = ctl.decode(text)
    except DecodeError:
        return
    assert ctl.decode(ctl.encode(event)) == event


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_garbage_gives_only_decode_errors(data: str | bytes) -> None:
    with pytest.raises(DecodeError):
        ctl.decode(data)


# =========================================================================== the arbiter


def controlled(**kwargs: Any) -> ControlArbiter:
    arb = ControlArbiter(**kwargs)
    assert arb.transfer("csr-a", T) == []
    arb.grant()
    return arb


def test_holder_events_become_actions() -> None:
    arb = controlled()
    assert arb.receive("csr-a", click(0.25, 0.5, seq=1), 0.0) == [
        MoveTo(0.25, 0.5),
        ButtonDown("left"),
        ButtonUp("left"),
    ]
    assert arb.receive("csr-a", key("press", "enter", seq=2), 0.0) == [
        KeyDown("enter"),
        KeyUp("enter"),
    ]
    wheel = ctl.Wheel(token=T, seq=3, x=0.1, y=0.2, dx=0, dy=-2)
    assert arb.receive("csr-a", wheel, 0.0) == [MoveTo(0.1, 0.2), Scroll(0, -2)]
    text = ctl.Text(token=T, seq=4, text="hi")
    assert arb.receive("csr-a", text, 0.0) == [TypeText("hi")]
    assert arb.injected == 4 and sum(arb.dropped.values()) == 0
    assert arb.status().controlling


@pytest.mark.parametrize(
    ("setup", "sender", "event", "reason"),
    [
        ("revoked", "csr-a", key("down", "a", seq=9), "no_grant"),
        ("prompt", "csr-a", key("down", "a", seq=9), "prompt_pending"),
        ("", "csr-b", key("down", "a", seq=9), "not_holder"),
        ("", "csr-a", key("down", "a", seq=9, token=(1, 4)), "stale_token"),
        ("", "csr-a", key("down", "a", seq=9, token=(1, 6)), "stale_token"),
        ("", "csr-a", key("down", "a", seq=1), "out_of_order"),
        ("", "csr-a", key("down", "a", seq=0), "out_of_order"),
    ],
)
def test_drops_are_counted_by_reason(
    setup: str, sender: str, event: ctl.ControlEvent, reason: str
) -> None:
    arb = controlled()
    assert arb.receive("csr-a", key("press", "x", seq=1), 0.0)
    if setup == "revoked":
        arb.revoke()
    elif setup == "prompt":
        arb.set_prompt_pending(True)
    assert arb.receive(sender, event, 1.0) == []
    assert arb.dropped == {r: int(r == reason) for r in DROP_REASONS}
    assert arb.injected == 1


def test_revoke_releases_exactly_what_is_held_and_stops_input() -> None:
    arb = controlled()
    for seq, name in enumerate(["shift", "ctrl", "a"], start=1):
        arb.receive("csr-a", key("down", name, seq=seq), 0.0)
    arb.receive("csr-a", key("up", "ctrl", seq=4), 0.0)
    arb.receive("csr-a", ctl.Pointer(token=T, seq=5, action="down", button="left", x=0, y=0), 0.0)
    assert arb.held_keys == ("shift", "a") and arb.held_buttons == ("left",)
    assert arb.revoke() == [ButtonUp("left"), KeyUp("a"), KeyUp("shift")]
    assert arb.held_keys == () and arb.held_buttons == () and arb.holder is None
    assert arb.revoke() == []  # nothing left to release
    assert arb.receive("csr-a", key("down", "b", seq=6), 0.0) == []
    arb.grant()  # granted again, but the old token is dead: a transfer must come first
    assert arb.receive("csr-a", key("down", "b", seq=7), 0.0) == []
    assert arb.dropped["no_grant"] == 1 and arb.dropped["not_holder"] == 1
    with pytest.raises(LocalProtocolError, match="not newer"):
        arb.transfer("csr-a", T)
    arb.transfer("csr-a", (1, 6))
    assert arb.receive("csr-a", key("down", "b", seq=1, token=(1, 6)), 0.0) == [KeyDown("b")]


def test_transfer_releases_the_old_holders_keys_and_tokens_only_grow() -> None:
    arb = controlled()
    arb.receive("csr-a", key("down", "shift", seq=1), 0.0)
    assert arb.transfer("csr-a", T) == []  # re-applying the current holder: no-op
    assert arb.held_keys == ("shift",)
    with pytest.raises(LocalProtocolError, match="not newer"):
        arb.transfer("csr-b", T)
    with pytest.raises(LocalProtocolError, match="not newer"):
        arb.transfer("csr-b", (0, 99))
    assert arb.transfer("csr-b", (2, 0)) == [KeyUp("shift")]
    assert (arb.holder, arb.token, arb.floor) == ("csr-b", (2, 0), (2, 0))
    assert arb.receive("csr-a", key("down", "a", seq=2), 0.0) == []
    assert arb.receive("csr-b", key("down", "a", seq=1, token=(2, 0)), 0.0) == [KeyDown("a")]
    with pytest.raises(LocalProtocolError, match="two integers"):
        arb.transfer("csr-a", (3, -1))


def test_holder_lost_releases_and_keeps_the_grant() -> None:
    arb = controlled()
    arb.receive("csr-a", key("down", "alt", seq=1), 0.0)
    assert arb.holder_lost("csr-b") == []
    assert arb.holder_lost("csr-a") == [KeyUp("alt")]
    assert arb.granted and arb.holder is None and arb.token is None and arb.floor == T
    assert arb.receive("csr-a", key("down", "a", seq=2), 0.0) == []
    arb.transfer("csr-b", (2, 1))
    assert arb.receive("csr-b", key("press", "a", seq=1, token=(2, 1)), 0.0)


def test_a_consent_prompt_pauses_input_and_releases() -> None:
    arb = controlled()
    arb.receive("csr-a", key("down", "enter", seq=1), 0.0)
    assert arb.set_prompt_pending(True) == [KeyUp("enter")]
    assert arb.receive("csr-a", click(0.5, 0.5, seq=2), 0.0) == []
    assert arb.set_prompt_pending(False) == []
    assert arb.receive("csr-a", click(0.5, 0.5, seq=3), 0.0)


def test_rate_limit_is_a_token_bucket_per_sender() -> None:
    arb = controlled()
    moves = [ctl.Pointer(token=T, seq=i, action="move", x=0.5, y=0.5) for i in range(1, 1000)]
    passed = [bool(arb.receive("csr-a", m, 10.0)) for m in moves[: int(BURST) + 10]]
    assert passed.count(True) == BURST and arb.dropped["rate_limited"] == 10
    # One second later RATE more fit, and no more.
    later = [bool(arb.receive("csr-a", m, 11.0)) for m in moves[int(BURST) + 10 :]]
    assert later.count(True) == RATE
    # A clock that goes backwards refills nothing and breaks nothing.
    assert arb.receive("csr-a", ctl.Text(token=T, seq=2000, text="x"), 5.0) == []


def test_releases_are_never_rate_limited_and_text_costs_by_length() -> None:
    arb = controlled(rate=1.0, burst=3.0)
    arb.receive("csr-a", key("down", "shift", seq=1), 0.0)
    arb.receive("csr-a", ctl.Pointer(token=T, seq=2, action="down", button="right", x=0, y=0), 0.0)
    assert arb.receive("csr-a", key("down", "a", seq=3), 0.0) == [KeyDown("a")]
    assert arb.receive("csr-a", key("down", "b", seq=4), 0.0) == []  # bucket empty
    assert arb.receive("csr-a", key("up", "shift", seq=5), 0.0) == [KeyUp("shift")]
    up = ctl.Pointer(token=T, seq=6, action="up", button="right", x=1, y=1)
    assert arb.receive("csr-a", up, 0.0) == [MoveTo(1.0, 1.0), ButtonUp("right")]
    assert arb.receive("csr-a", key("up", "z", seq=7), 0.0) == []  # not held: costs
    arb2 = controlled(rate=1.0, burst=60.0)
    assert arb2.receive("csr-a", ctl.Text(token=T, seq=1, text="x" * 1000), 0.0)  # 50 units
    assert arb2.receive("csr-a", ctl.Text(token=T, seq=2, text="x" * 220), 0.0) == []  # 11


def test_held_keys_are_bounded() -> None:
    arb = controlled()
    names = [chr(ord("a") + i) if i < 26 else str(i - 26) for i in range(MAX_HELD_KEYS + 1)]
    for seq, name in enumerate(names, start=1):
        arb.receive("csr-a", key("down", name, seq=seq), 0.0)
    assert len(arb.held_keys) == MAX_HELD_KEYS and arb.dropped["held_limit"] == 1
    assert arb.receive("csr-a", key("down", "a", seq=100), 0.0) == [KeyDown("a")]  # repeat
    assert arb.receive("csr-a", key("press", "enter", seq=101), 0.0)  # does not stay down
    assert len(arb.revoke()) == MAX_HELD_KEYS


# --------------------------------------------------------------------------- state machine

SENDERS = ("csr-a", "csr-b", "csr-c")
SM_KEYS = ("shift", "ctrl", "a", "B", "enter")
small_tokens = st.tuples(st.integers(0, 3), st.integers(0, 4))
sm_events = st.one_of(
    st.tuples(
        st.just("pointer"), st.sampled_from(ctl.POINTER_ACTIONS), st.sampled_from(ctl.BUTTONS)
    ),
    st.tuples(st.just("key"), st.sampled_from(ctl.KEY_ACTIONS), st.sampled_from(SM_KEYS)),
    st.tuples(st.just("text"), st.sampled_from(["x", "y" * 150]), st.none()),
    st.tuples(st.just("wheel"), st.just(""), st.none()),
)


def expected_actions(event: ctl.ControlEvent) -> list[Action]:
    """The arbiter's contract for an injected event, written out independently."""
    if isinstance(event, ctl.Pointer):
        move: list[Action] = [MoveTo(event.x, event.y)]
        b = event.button or ""
        return (
            move
            + {
                "move": [],
                "down": [ButtonDown(b)],
                "up": [ButtonUp(b)],
                "click": [ButtonDown(b), ButtonUp(b)],
            }[event.action]
        )
    if isinstance(event, ctl.Wheel):
        return [MoveTo(event.x, event.y), Scroll(event.dx, event.dy)]
    if isinstance(event, ctl.Key):
        k = event.key
        return {
            "down": [KeyDown(k)],
            "up": [KeyUp(k)],
            "press": [KeyDown(k), KeyUp(k)],
        }[event.action]
    return [TypeText(event.text)]


class ArbiterMachine(RuleBasedStateMachine):
    """Grants, revokes, transfers, prompts, losses and events from several senders."""

    def __init__(self) -> None:
        super().__init__()
        # A small bucket and a small key limit so that both limits are exercised.
        self.arb = ControlArbiter(rate=20.0, burst=4.0, max_held_keys=3)
        self.now = 0.0
        self.granted = False
        self.prompt = False
        self.holder: str | None = None
        self.token: tuple[int, int] | None = None
        self.floor: tuple[int, int] | None = None
        self.keys: dict[str, None] = {}
        self.buttons: dict[str, None] = {}
        self.last_seq: int | None = None
        self.seq = dict.fromkeys(SENDERS, 0)
        self.revoked = False  # revoked and not granted since
        self.injected: list[tuple[str, tuple[int, int]]] = []

    def releases(self) -> list[Action]:
        return [ButtonUp(b) for b in reversed(self.buttons)] + [
            KeyUp(k) for k in reversed(self.keys)
        ]

    def check_release(self, out: list[Action]) -> None:
        held_keys, held_buttons = set(self.keys), set(self.buttons)
        assert out == self.releases()
        ups = [a.key for a in out if isinstance(a, KeyUp)]
        assert sorted(ups) == sorted(held_keys)  # one release per key that was down
        assert {a.button for a in out if isinstance(a, ButtonUp)} == held_buttons
        self.keys.clear()
        self.buttons.clear()
        assert self.arb.held_keys == () and self.arb.held_buttons == ()

    @initialize(start=st.booleans())
    def maybe_start_controlled(self, start: bool) -> None:
        if start:
            self.grant()
            self.transfer(SENDERS[0], (0, 1), current=False)

    @rule()
    def grant(self) -> None:
        assert self.arb.grant() == []
        self.granted = True
        self.revoked = False

    @rule()
    def revoke(self) -> None:
        out = self.arb.revoke()
        self.check_release(out)
        self.granted, self.holder, self.token, self.last_seq = False, None, None, None
        self.revoked = True

    @rule(peer=st.sampled_from(SENDERS), token=small_tokens, current=st.booleans())
    def transfer(self, peer: str, token: tuple[int, int], current: bool) -> None:
        if current and self.token is not None:
            token = self.token
        same = self.floor == token == self.token and peer == self.holder
        if self.floor is not None and token <= self.floor and not same:
            with pytest.raises(LocalProtocolError):
                self.arb.transfer(peer, token)
            return
        out = self.arb.transfer(peer, token)
        if same:
            assert out == []
            return
        self.check_release(out)
        self.holder, self.token, self.floor, self.last_seq = peer, token, token, None

    @rule(peer=st.sampled_from(SENDERS))
    def lose(self, peer: str) -> None:
        out = self.arb.holder_lost(peer)
        if peer != self.holder:
            assert out == []
            return
        self.check_release(out)
        self.holder, self.token, self.last_seq = None, None, None

    @rule(pending=st.booleans())
    def prompt_shown(self, pending: bool) -> None:
        out = self.arb.set_prompt_pending(pending)
        if pending:
            self.check_release(out)
        else:
            assert out == []
        self.prompt = pending

    @rule(dt=st.sampled_from([0.0, 0.01, 0.05, 0.3]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(
        sender=st.sampled_from(SENDERS),
        from_holder=st.integers(0, 3),
        current=st.integers(0, 4),
        other=small_tokens,
        replay=st.integers(0, 5),
        spec=sm_events,
        x=st.sampled_from([0.0, 0.5, 1.0]),
    )
    def send_mostly_valid(
        self,
        sender: str,
        from_holder: int,
        current: int,
        other: tuple[int, int],
        replay: int,
        spec: tuple[str, str, str | None],
        x: float,
    ) -> None:
        """Mostly the holder, with the current token and a fresh seq, so that events land."""
        if from_holder and self.holder is not None:
            sender = self.holder
        self.send(sender, current > 0, other, replay == 0, spec, x)

    def send(
        self,
        sender: str,
        use_current: bool,
        other: tuple[int, int],
        replay: bool,
        spec: tuple[str, str, str | None],
        x: float,
    ) -> None:
        token = self.token if use_current and self.token is not None else other
        if not replay:
            self.seq[sender] += 1
        seq = self.seq[sender]
        kind, a, b = spec
        event: ctl.ControlEvent
        if kind == "pointer":
            event = ctl.Pointer(
                token=token, seq=seq, action=a, button=None if a == "move" else b, x=x, y=x
            )
        elif kind == "key":
            assert b is not None
            event = ctl.Key(token=token, seq=seq, action=a, key=b)
        elif kind == "text":
            event = ctl.Text(token=token, seq=seq, text=a)
        else:
            event = ctl.Wheel(token=token, seq=seq, x=x, y=x, dx=1, dy=-1)
        before = self.arb.dropped
        out = self.arb.receive(sender, event, self.now)
        after = self.arb.dropped
        grew = [r for r in DROP_REASONS if after[r] != before[r]]
        if out:
            assert grew == []
        else:
            assert len(grew) == 1 and after[grew[0]] == before[grew[0]] + 1
        if not self.granted:
            expect = "no_grant"
        elif self.prompt:
            expect = "prompt_pending"
        elif sender != self.holder:
            expect = "not_holder"
        elif token != self.token:
            expect = "stale_token"
        elif self.last_seq is not None and seq <= self.last_seq:
            expect = "out_of_order"
        else:
            expect = ""
            self.last_seq = seq
        if expect:
            assert out == [] and grew == [expect]
            return
        # Authorised: injected, or dropped by a limit.
        releasing = (isinstance(event, ctl.Key) and a == "up" and event.key in self.keys) or (
            isinstance(event, ctl.Pointer) and a == "up" and event.button in self.buttons
        )
        if not out:
            assert grew in (["rate_limited"], ["held_limit"])
            assert not releasing, "a release of a held key or button was limited"
            if grew == ["held_limit"]:
                assert isinstance(event, ctl.Key) and a == "down"
                assert event.key not in self.keys and len(self.keys) == 3
            return
        assert not self.revoked, "input was injected after a revoke, before a new grant"
        assert sender == self.holder and token == self.token
        assert out == expected_actions(event)
        self.injected.append((sender, token))
        for action in out:
            if isinstance(action, KeyDown):
                self.keys[action.key] = None
            elif isinstance(action, KeyUp):
                self.keys.pop(action.key, None)
            elif isinstance(action, ButtonDown):
                self.buttons[action.button] = None
            elif isinstance(action, ButtonUp):
                self.buttons.pop(action.button, None)

    @precondition(lambda self: self.holder is not None)
    @rule()
    def holder_presses_everything(self) -> None:
        """Drive keys down so that releases have something to release."""
        if not (self.granted and not self.prompt):
            return
        assert self.holder is not None and self.token is not None
        for name in SM_KEYS[:4]:
            self.send(self.holder, True, (0, 0), False, ("key", "down", name), 0.5)

    @invariant()
    def model_matches(self) -> None:
        arb = self.arb
        assert (arb.holder, arb.token, arb.floor) == (self.holder, self.token, self.floor)
        assert arb.granted == self.granted and arb.prompt_pending == self.prompt
        assert arb.held_keys == tuple(self.keys)
        assert arb.held_buttons == tuple(self.buttons)
        assert len(arb.held_keys) <= 3
        assert arb.injected == len(self.injected)

    @invariant()
    def tokens_never_decrease(self) -> None:
        floor = self.arb.floor
        last = getattr(self, "_seen_floor", None)
        if last is not None:
            assert floor is not None and floor >= last
        self._seen_floor = floor


ArbiterMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestArbiterMachine = ArbiterMachine.TestCase


# =========================================================================== the injector


class FakeBackend:
    def __init__(self, log: list[tuple[Any, ...]], delay: float = 0.0) -> None:
        self.log = log
        self.delay = delay

    def move(self, px: int, py: int) -> None:
        time.sleep(self.delay)
        self.log.append(("move", px, py, threading.current_thread().name))

    def button(self, name: str, down: bool) -> None:
        self.log.append(("button", name, down))

    def scroll(self, dx: int, dy: int) -> None:
        self.log.append(("scroll", dx, dy))

    def key(self, name: str, down: bool) -> None:
        if name == "boom":
            raise RuntimeError("no such key here")
        self.log.append(("key", name, down))

    def type(self, text: str) -> None:
        self.log.append(("type", text))

    def close(self) -> None:
        self.log.append(("close",))


def test_monitor_mapping() -> None:
    m = Monitor(0, 0, 1280, 800)
    assert m.to_pixels(0.25, 0.5) == (320, 400)
    assert m.to_pixels(0.0, 0.0) == (0, 0)
    assert m.to_pixels(1.0, 1.0) == (1279, 799)
    second = Monitor.from_mss({"left": -1920, "top": 100, "width": 1920, "height": 1080})
    assert second.to_pixels(0.5, 1.0) == (-960, 1179)
    with pytest.raises(LocalProtocolError):
        Monitor(0, 0, 0, 10)


async def test_injector_keeps_order_off_the_loop_and_releases_what_it_holds() -> None:
    log: list[tuple[Any, ...]] = []
    done: list[Action] = []
    inj = Injector(
        Monitor(100, 0, 1000, 500),
        backend=lambda: FakeBackend(log, delay=0.02),
        on_injected=lambda action, t: done.append(action),
    )
    inj.start()
    start = time.perf_counter()
    inj.submit(MoveTo(0.5, 0.5), KeyDown("shift"), KeyDown("boom"), ButtonDown("left"))
    inj.submit(TypeText("A"), Scroll(0, 2), MoveTo(1.0, 0.0))
    assert time.perf_counter() - start < 0.01  # submit never waits for the backend
    await inj.drain()
    assert [e[0] for e in log] == ["move", "key", "button", "type", "scroll", "move"]
    assert log[0] == ("move", 600, 250, "peerdesk-input")
    assert log[-1][:3] == ("move", 1099, 0)
    assert inj.failures == 1 and len(done) == 6
    inj.release_all()
    await inj.drain()
    assert log[-2:] == [("button", "left", False), ("key", "shift", False)]
    inj.release_all()  # nothing is held any more
    inj.submit(KeyUp("shift"), ButtonUp("left"))  # nor is there anything to release
    await inj.drain()
    assert log[-1] == ("key", "shift", False) and inj.failures == 1
    await inj.aclose()
    assert log[-1] == ("close",)
    with pytest.raises(LocalProtocolError, match="closed"):
        inj.submit(MoveTo(0, 0))


async def test_cancel_drops_queued_input_and_stops_typing_then_releases() -> None:
    log: list[tuple[Any, ...]] = []

    class SlowTyping(FakeBackend):
        def type(self, text: str) -> None:
            time.sleep(0.005)
            super().type(text)

    inj = Injector(Monitor(0, 0, 100, 100), backend=lambda: SlowTyping(log))
    inj.start()
    inj.submit(KeyDown("shift"), ButtonDown("left"), TypeText("x" * 1000))
    inj.submit(*[MoveTo(0.5, 0.5)] * 100, KeyDown("ctrl"))
    deadline = time.monotonic() + 5
    while not any(e[0] == "type" for e in log):  # typing has begun
        assert time.monotonic() < deadline
        await asyncio.sleep(0.002)
    inj.cancel()
    inj.submit(KeyUp("shift"), MoveTo(0.0, 0.0))  # after cancel: runs (the KeyUp is a no-op)
    await inj.drain()
    typed = sum(len(e[1]) for e in log if e[0] == "type")
    assert 0 < typed < 1000
    assert ("move", 50, 50, "peerdesk-input") not in log
    assert ("key", "ctrl", True) not in log
    assert [e for e in log if e[0] in ("key", "button")] == [
        ("key", "shift", True),
        ("button", "left", True),
        ("button", "left", False),
        ("key", "shift", False),
    ]
    assert log[-1][:3] == ("move", 0, 0)
    await inj.aclose()


async def test_injector_reports_a_missing_display() -> None:
    def broken() -> FakeBackend:
        raise ImportError("failed to acquire X connection: Bad display name")

    inj = Injector(Monitor(0, 0, 10, 10), backend=broken)
    inj.start()
    inj.submit(MoveTo(0, 0))
    with pytest.raises(PeerDeskError, match="remote control is unavailable") as info:
        await inj.drain()
    assert info.value.code == "input_unavailable"
    await inj.aclose()


# =========================================================================== on Xvfb

WIDTH, HEIGHT = 1280, 800


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """An Xvfb on a free display; DISPLAY points at it for us and our subprocesses."""
    if shutil.which("Xvfb") is None or shutil.which("xdotool") is None:
        pytest.fail("the desktop tests need Xvfb and xdotool (Debian: xvfb xdotool)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{WIDTH}x{HEIGHT}x24",
            "-nolisten",
            "tcp",
            "-noreset",  # a server reset when the last client leaves refuses new ones
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write_fd)
    try:
        buf = b""
        deadline = time.monotonic() + 10
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                pytest.fail("Xvfb did not report a display within 10 s")
            chunk = os.read(read_fd, 64)
            if not chunk:
                pytest.fail(f"Xvfb exited early: {proc.stderr.read() if proc.stderr else ''!r}")
            buf += chunk
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DISPLAY", f":{buf.decode().strip()}")
            yield os.environ["DISPLAY"]
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
async def injector(display: str) -> Any:
    inj = Injector(Monitor(0, 0, WIDTH, HEIGHT))
    inj.start()
    try:
        yield inj
    finally:
        await inj.aclose()


class Customer:
    """The customer's side as the runtime will wire it: decode, arbitrate, inject."""

    def __init__(self, injector: Injector) -> None:
        self.arbiter = ControlArbiter()
        self.injector = injector
        self.token = (1, 1)
        self.seq = 0
        self.arbiter.transfer("csr", self.token)
        self.arbiter.grant()

    def send(self, event: ctl.ControlEvent) -> None:
        self.injector.submit(
            *self.arbiter.receive("csr", ctl.decode(ctl.encode(event)), time.monotonic())
        )

    def next(self) -> dict[str, Any]:
        self.seq += 1
        return {"token": self.token, "seq": self.seq}

    def regrant(self) -> None:
        self.token = (self.token[0], self.token[1] + 1)
        self.seq = 0
        self.arbiter.grant()
        self.injector.submit(*self.arbiter.transfer("csr", self.token))


def pointer() -> tuple[int, int]:
    out = subprocess.run(
        ["xdotool", "getmouselocation", "--shell"], capture_output=True, text=True, timeout=5
    ).stdout
    values = dict(line.split("=", 1) for line in out.split())
    return int(values["X"]), int(values["Y"])


def xlib() -> Any:
    from Xlib import display as xdisplay

    return xdisplay.Display()


async def test_click_lands_on_the_mapped_pixel_and_revoke_stops_clicks(
    injector: Injector,
) -> None:
    me = Customer(injector)
    me.send(ctl.Pointer(action="click", button="left", x=0.25, y=0.5, **me.next()))
    await injector.drain()
    x, y = pointer()
    assert abs(x - 320) <= 1 and abs(y - 400) <= 1
    injector.submit(*me.arbiter.revoke())
    me.send(ctl.Pointer(action="click", button="left", x=0.75, y=0.25, **me.next()))
    me.send(ctl.Pointer(action="move", x=0.9, y=0.9, **me.next()))
    await injector.drain()
    assert pointer() == (x, y)
    assert me.arbiter.dropped["no_grant"] == 2


TK_WINDOW = """
import os, sys, tkinter as tk
out, title = sys.argv[1], sys.argv[2]
root = tk.Tk(); root.title(title); root.geometry("400x200+0+0")
text = tk.Text(root); text.pack(fill="both", expand=True); text.focus_set()
last = [None]
def dump():
    s = text.get("1.0", "end-1c")
    if s != last[0]:
        with open(out + ".tmp", "w") as f: f.write(s)
        os.replace(out + ".tmp", out); last[0] = s
    root.after(20, dump)
dump()
root.mainloop()
"""


@pytest.fixture
def typing_window(display: str, tmp_path: Path) -> Iterator[Path]:
    """A Tk text box at the top-left corner, focused; yields the file mirroring its text."""
    out = tmp_path / "typed.txt"
    script = tmp_path / "window.py"
    script.write_text(TK_WINDOW)
    title = f"peerdesk-typing-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, str(script), str(out), title])
    try:
        deadline = time.monotonic() + 15
        wid = ""
        while not wid:
            assert proc.poll() is None, "the Tk window exited"
            assert time.monotonic() < deadline, "the Tk window did not appear within 15 s"
            found = subprocess.run(
                ["xdotool", "search", "--name", title], capture_output=True, text=True, timeout=5
            )
            wid = found.stdout.split()[0] if found.stdout.split() else ""
            if not wid:
                time.sleep(0.05)
        subprocess.run(["xdotool", "windowfocus", "--sync", wid], check=True, timeout=5)
        wait_for_text(out, "")
        yield out
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for_text(path: Path, expected: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = path.read_text() if path.exists() else None
        if seen == expected:
            return
        time.sleep(0.02)
    raise AssertionError(f"the window holds {seen!r}, expected {expected!r}")


async def test_typed_text_and_keys_arrive_in_a_window(
    injector: Injector, typing_window: Path
) -> None:
    me = Customer(injector)
    me.send(ctl.Text(text="hello PeerDesk 123", **me.next()))
    me.send(ctl.Key(action="press", key="enter", **me.next()))
    me.send(ctl.Key(action="press", key="x", **me.next()))
    me.send(ctl.Key(action="press", key="backspace", **me.next()))
    await injector.drain()
    wait_for_text(typing_window, "hello PeerDesk 123\n")
    assert injector.failures == 0


@pytest.mark.parametrize("cancel", [False, True], ids=["arbiter-releases", "injector-cancel"])
async def test_revoke_releases_held_keys_and_buttons(
    injector: Injector, typing_window: Path, cancel: bool
) -> None:
    x = xlib()
    try:
        shift = x.keysym_to_keycode(0xFFE1)  # Shift_L

        def shift_down() -> bool:
            return bool(x.query_keymap()[shift // 8] & (1 << (shift % 8)))

        def button1_down() -> bool:
            return bool(x.screen().root.query_pointer().mask & (1 << 8))  # Button1Mask

        me = Customer(injector)
        me.send(ctl.Key(action="down", key="shift", **me.next()))
        me.send(ctl.Text(text="abc", **me.next()))
        # Press the left button away from the window (over the bare root window).
        me.send(ctl.Pointer(action="down", button="left", x=0.9, y=0.9, **me.next()))
        await injector.drain()
        wait_for_text(typing_window, "ABC")
        assert shift_down() and button1_down()
        assert me.arbiter.held_keys == ("shift",) and me.arbiter.held_buttons == ("left",)

        released = me.arbiter.revoke()
        assert released == [ButtonUp("left"), KeyUp("shift")]
        if cancel:  # how the runtime wires a revoke: both, in this order
            injector.cancel()
        injector.submit(*released)
        me.send(ctl.Text(text="zzz", **me.next()))  # dropped: no grant
        await injector.drain()
        assert not shift_down() and not button1_down()

        me.regrant()
        me.send(ctl.Text(text="abc", **me.next()))
        await injector.drain()
        wait_for_text(typing_window, "ABCabc")
    finally:
        x.close()


async def test_injector_close_releases_what_is_held(display: str) -> None:
    inj = Injector(Monitor(0, 0, WIDTH, HEIGHT))
    inj.start()
    inj.submit(MoveTo(0.95, 0.95), ButtonDown("middle"), KeyDown("ctrl"))
    await inj.drain()
    x = xlib()
    try:
        ctrl = x.keysym_to_keycode(0xFFE3)  # Control_L
        assert x.query_keymap()[ctrl // 8] & (1 << (ctrl % 8))
        assert x.screen().root.query_pointer().mask & (1 << 9)  # Button2Mask
        await inj.aclose()
        assert not x.query_keymap()[ctrl // 8] & (1 << (ctrl % 8))
        assert not x.screen().root.query_pointer().mask & (1 << 9)
    finally:
        x.close()


def test_pynput_knows_every_key_name(display: str) -> None:
    import pynput.keyboard

    assert set(PYNPUT_KEYS) == ctl.KEY_NAMES
    assert [n for n in PYNPUT_KEYS.values() if not hasattr(pynput.keyboard.Key, n)] == []


async def test_pointer_latency_submit_to_x_server(injector: Injector) -> None:
    """Time from ``submit`` until another X client sees the pointer where we put it."""
    x = xlib()
    root = x.screen().root
    n = 200
    seen: list[float] = []
    try:
        await injector.drain()
        for i in range(n):
            target = (0.1 + 0.8 * (i % 2), 0.3)
            px, py = injector.monitor.to_pixels(*target)
            start = time.perf_counter()
            injector.submit(MoveTo(*target))
            deadline = start + 2
            while True:  # poll from this thread: each query is an X round trip
                where = root.query_pointer()
                if (where.root_x, where.root_y) == (px, py):
                    break
                assert time.perf_counter() < deadline, "the pointer never arrived"
            seen.append(time.perf_counter() - start)
    finally:
        x.close()
    p50 = statistics.median(seen) * 1000
    p99 = sorted(seen)[round(0.99 * (n - 1))] * 1000
    print(f"\nsubmit -> X server sees the pointer: p50 {p50:.3f} ms, p99 {p99:.3f} ms (n={n})")
    assert p50 < 5.0


async def test_the_control_bench_runs(display: str) -> None:
    from bench.control import _measure

    figures = await _measure(40)
    assert figures["dropped"] == 0
    assert 0 < figures["udp_p50_ms"] < figures["control_p50_ms"] < 50
