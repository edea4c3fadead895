"""A signaling server that misbehaves, message by message, against real agents.

For each message type an agent receives from its signaling server, and for each way
a server can get it wrong — a frame that does not parse, is cut short, fails the
decoder's checks, carries a relayed payload that does not verify, comes twice, is
replaced by another message out of order, never comes, or the connection closes
right there — the CSR, the customer and the assistant (real ``peerdesk`` processes)
must each end in an answer: the join either succeeds or fails with one ``error``
whose ``code`` is documented in the README, and exit status 1; the CSR's session
survives any bad join (a second, honest customer joins it afterwards); a CSR whose
room could not be had says why and exits 1. Always within a bounded time, and with
nothing on stderr but log lines: no traceback, no unclosed sessions.

Each row misbehaves once (the first matching frame, or the n-th); after that the
server is honest again.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.protocol.signaling import ServerMessage
from tests.hostile_server import CLOSE, HostileSignaling
from tests.procs import Event, Proc

ROOT = Path(__file__).resolve().parent.parent


def documented_codes() -> set[str]:
    """The error codes the README's headless contract lists (``| `code` | ...`` rows)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Error codes", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"^\| ([^|]*`[^|]*) \|", section, flags=re.MULTILINE)
    return {code for cell in cells for code in re.findall(r"`([a-z_]+)`", cell)}


@dataclass(frozen=True)
class Row:
    who: str
    "Whose frames misbehave: ``csr`` (the host), ``customer`` or ``assistant``."
    type: str
    "The server message type: created, peer, joined, relay, gone, ..."
    kind: str
    """garbage, truncated, invalid, forged, twice, unexpected, gone, closed, error,
    dropped, close."""
    nth: int = 1
    "Which frame of that type to that participant (relays: 1 is the first PAKE step)."
    sender: str = ""
    "For relays to the CSR: from whom (``customer`` or ``assistant``)."

    def __str__(self) -> str:
        tail = f"#{self.nth}" if self.nth != 1 else ""
        src = f"<{self.sender}" if self.sender else ""
        return f"{self.who}-{self.type}{tail}{src}-{self.kind}"


ROWS = [
    # the CSR opening its room
    *(Row("csr", "created", k) for k in ("garbage", "truncated", "invalid", "unexpected")),
    Row("csr", "created", "dropped"),
    Row("csr", "created", "close"),
    # the CSR hearing of a joiner, and the joiner's handshake messages (a relay the CSR
    # cannot read is dropped: that join times out, the session goes on)
    Row("csr", "peer", "garbage"),
    Row("csr", "peer", "twice"),
    Row("csr", "peer", "dropped"),
    # (an unreadable relay is dropped: that join times out after 20 s, the session goes
    # on; "peer garbage" above shows the same survival in a tenth of the time)
    *(Row("csr", "relay", k, sender="customer") for k in ("forged", "twice", "close")),
    Row("csr", "relay", "forged", nth=2, sender="customer"),
    Row("csr", "relay", "forged", sender="assistant"),
    Row("csr", "relay", "close", sender="assistant"),
    # messages a server sends of its own accord, where they make no sense
    Row("csr", "created", "error"),
    Row("customer", "relay", "gone"),
    Row("customer", "relay", "closed"),
    Row("customer", "joined", "error"),
    # the customer joining
    *(Row("customer", "joined", k) for k in ("garbage", "twice", "unexpected", "close")),
    *(Row("customer", "relay", k) for k in ("garbage", "truncated", "invalid", "forged")),
    *(Row("customer", "relay", k) for k in ("twice", "dropped", "close")),
    Row("customer", "relay", "forged", nth=2),
    Row("customer", "relay", "close", nth=2),
    # the assistant joining with the CSR code
    Row("assistant", "joined", "close"),
    Row("assistant", "relay", "forged"),
    Row("assistant", "relay", "twice"),
    Row("assistant", "relay", "forged", nth=2),
    Row("assistant", "relay", "close", nth=2),
]


class Misbehaviour:
    """The ``outgoing`` hook: labels connections and spoils one frame."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.labels: dict[str, str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.fired = threading.Event()
        self.lock = threading.Lock()

    def label(self, conn: Any, msg: ServerMessage) -> str:
        if conn.id not in self.labels:
            if msg.type == "created":
                self.labels[conn.id] = "csr"
            elif msg.type == "joined":
                taken = set(self.labels.values())
                first = "customer" if "customer" not in taken else "assistant"
                self.labels[conn.id] = first if first not in taken else "other"
        return self.labels.get(conn.id, "?")

    def __call__(self, conn: Any, msg: ServerMessage, text: str) -> list[str] | None:
        with self.lock:
            who = self.label(conn, msg)
            row = self.row
            if self.fired.is_set() or who != row.who or msg.type != row.type:
                return None
            if row.sender and self.labels.get(getattr(msg, "sender", "")) != row.sender:
                return None
            key = (who, msg.type)
            self.counts[key] = self.counts.get(key, 0) + 1
            if self.counts[key] != row.nth:
                return None
            self.fired.set()
        return spoil(row.kind, msg, text)


def spoil(kind: str, msg: ServerMessage, text: str) -> list[str]:
    obj = json.loads(text)
    if kind == "garbage":
        return ["{this is not json"]
    if kind == "truncated":
        return [text[: len(text) // 2]]
    if kind == "invalid":  # parses, but fails the decoder's checks
        return [json.dumps({**obj, "room": "not-a-room"})]
    if kind == "forged":  # a relayed payload altered in transit
        data = obj["data"]
        middle = len(data) // 2
        flipped = "A" if data[middle] != "A" else "B"
        return [json.dumps({**obj, "data": data[:middle] + flipped + data[middle + 1 :]})]
    if kind == "twice":
        return [text, text]
    if kind == "unexpected":  # a well-formed message that makes no sense here
        if msg.type == "created":
            return [json.dumps({"type": "joined", "room": obj["room"], "peer": "abcdef012345"})]
        return [json.dumps({"type": "created", "room": "123456", "expires_in": 600})]
    room = obj.get("room", "123456")
    if kind == "gone":  # the server says the other side left, which it did not
        peer = (
            "host"
            if msg.type in ("joined", "relay") and obj.get("sender") == "host"
            else (obj.get("sender") or obj.get("peer") or "host")
        )
        return [json.dumps({"type": "gone", "room": room, "peer": peer})]
    if kind == "closed":  # ... or that the room closed
        return [json.dumps({"type": "closed", "room": room, "reason": "closed"})]
    if kind == "error":  # ... or answers with an error of its own, in our words
        return [json.dumps({"type": "error", "code": "wrong_code", "message": "nope"})]
    if kind == "dropped":
        return []
    if kind == "close":
        return [CLOSE]
    raise AssertionError(kind)


@pytest.fixture
def hostile() -> Iterator[HostileSignaling]:
    """The hostile double on its own event loop in a thread (the test blocks on pipes)."""
    server = HostileSignaling()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def agent(procs: list[Proc], home: Path, *args: str, name: str) -> Proc:
    p = Proc(["agent", *args, "--headless", "--json"], home=home, name=name)
    procs.append(p)
    return p


def outcome(p: Proc, good: str, timeout: float) -> Event:
    """The first of ``good`` or ``error`` that ``p`` says."""
    return p.first_of(good, "error", timeout=timeout)


def admit_or_fail(csr: Proc, assistant: Proc, timeout: float) -> Event:
    """The assistant's ``joined`` or ``error``; the CSR admits it if it is asked to."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in csr.drain(0.2):
            if e.get("event") == "assistant_request" and not e.get("_taken"):
                e["_taken"] = True
                csr.send({"cmd": "admit", "peer": e["peer"]})
        for e in assistant.drain(0.2):
            if e.get("event") in ("joined", "error") and not e.get("_taken"):
                e["_taken"] = True
                return e
    raise AssertionError(f"assistant: neither joined nor failed in {timeout} s: {assistant.events}")


def check_error(p: Proc, event: Event, codes: set[str]) -> None:
    assert event["event"] == "error", event
    assert event["code"] in codes, f"{p.name}: undocumented code {event['code']!r}"
    assert event["reason"], event
    assert p.wait(timeout=15) == 1, f"{p.name}: exit status after {event}"


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_every_misbehaviour_ends_in_an_answer(
    procs: list[Proc], tmp_path: Path, hostile: HostileSignaling, row: Row
) -> None:
    codes = documented_codes()
    spoiler = Misbehaviour(row)
    hostile.outgoing = spoiler
    url = hostile.url
    csr = agent(procs, tmp_path / "csr", "start", "--signal", url, "--name", "Carol", name="csr")
    first = outcome(csr, "session", timeout=25)
    if first["event"] == "error":  # no room: the CSR says why and stops
        check_error(csr, first, codes)
        csr.quiet()
        assert row.type == "created", first
        return
    session = first
    joiners: list[Proc] = []

    def join(label: str, *args: str, home: str) -> tuple[Proc, Event]:
        p = agent(procs, tmp_path / home, "join", *args, "--name", label.title(), name=label)
        joiners.append(p)
        return p, outcome(p, "joined", timeout=45)

    customer, said = join("customer", session["link"], home="cust")
    if said["event"] == "error":
        check_error(customer, said, codes)
    else:
        csr.expect("joined", timeout=15)
    if row.who == "assistant" or row.sender == "assistant":
        assistant = agent(
            procs, tmp_path / "asst", "join", session["csr_code"], "--signal", url,
            "--as", "assistant", "--name", "Dan", name="assistant",
        )  # fmt: skip
        joiners.append(assistant)
        said = admit_or_fail(csr, assistant, timeout=45)
        if said["event"] == "error":
            check_error(assistant, said, codes)

    assert spoiler.fired.is_set(), f"the row never fired: {spoiler.counts}"
    csr.drain(0.5)
    lost = [e for e in csr.events if e.get("event") == "error" and e["code"] == "signal_lost"]
    if row.who == "csr" and row.kind == "close":
        # The server hung up on the CSR, and this one cannot resume rooms: the CSR
        # says nobody new can join; the session goes on for those in it.
        assert lost, csr.events
    else:
        assert not lost, lost
        if any(p.proc.poll() is not None for p in joiners):
            # A join failed, and the CSR's session is intact: an honest customer joins
            # it now and chats.
            late, said = join("late", session["link"], home="late")
            assert said["event"] == "joined", said
            late.send({"cmd": "chat", "text": "hello after the trouble"})
            assert csr.expect("chat", lambda e: e["text"] == "hello after the trouble", timeout=15)
    csr.send({"cmd": "end"})
    assert csr.expect("ended", timeout=20)
    assert csr.wait(timeout=20) == 0
    for p in joiners:
        if p.proc.poll() is None or p.proc.returncode == 0:
            assert p.wait(timeout=20) == 0, p.name
    for p in (csr, *joiners):
        p.quiet()
        for e in p.events:
            if e.get("event") == "error":
                assert e["code"] in codes, f"{p.name}: undocumented code in {e}"
