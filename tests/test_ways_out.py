"""Every way an agent is stopped ends in an answer: each signal and the end of stdin,
for the CSR, the customer and the assistant, as real processes.

A signal (SIGTERM, SIGINT, SIGHUP) makes a customer or an assistant leave and a CSR
end the session for everyone: a ``left`` or ``ended`` event, exit status 0, within a
bounded time. The end of stdin (``< /dev/null``, as cron, nohup and service managers
give it) changes nothing: the agent stays in its session, without commands, unless
``--exit-on-eof`` asks it to leave (or end). In every case nothing but the events
reaches the user: no traceback, no resource warning on stderr (``Proc.quiet``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.procs import Proc

ROLES = ("csr", "customer", "assistant")
WAYS = ("SIGTERM", "SIGINT", "SIGHUP", "eof", "eof-exit")


def agent(procs: list[Proc], home: Path, *args: str, name: str, devnull: bool = False) -> Proc:
    p = Proc(
        ["agent", *args, "--headless", "--json"],
        home=home,
        name=name,
        stdin=subprocess.DEVNULL if devnull else subprocess.PIPE,
    )
    procs.append(p)
    return p


def in_session(target: Proc, other: Proc, other_me: str) -> None:
    """``target`` still takes part: a line from ``other`` reaches it."""
    other.send({"cmd": "chat", "text": "still there?"})
    got = target.expect("chat", lambda e: e["text"] == "still there?", timeout=15)
    assert got["from"] == other_me


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("role", ROLES)
def test_a_stopped_agent_leaves_cleanly(
    procs: list[Proc], tmp_path: Path, role: str, way: str
) -> None:
    eof = way.startswith("eof")
    extra = ("--exit-on-eof",) if way == "eof-exit" else ()
    csr_args = ("start", "--port", "0", "--name", "Carol", *(extra if role == "csr" else ()))
    csr = agent(procs, tmp_path / "csr", *csr_args, name="csr", devnull=eof and role == "csr")
    session = csr.expect("session", timeout=20)
    if role == "csr" and way == "eof-exit":  # nothing to wait for: it ends at once
        assert csr.expect("ended")["reason"] == "stopped"
        assert csr.wait() == 0
        csr.quiet()
        return

    cust_args = ("join", session["link"], "--name", "Alice", *(extra if role == "customer" else ()))
    customer = agent(
        procs, tmp_path / "cust", *cust_args, name="customer", devnull=eof and role == "customer"
    )
    joined = customer.expect("joined", timeout=20)
    csr.expect("joined")
    me = {"csr": joined["peer"], "customer": joined["me"]}
    players = [csr, customer]
    target = {"csr": csr, "customer": customer}.get(role)
    if role == "assistant":
        asst_args = ("join", session["csr_code"], "--signal", session["signal"])
        assistant = agent(
            procs, tmp_path / "asst", *asst_args, "--as", "assistant", *extra, "--name", "Dan",
            name="assistant", devnull=eof,
        )  # fmt: skip
        asked = csr.expect("assistant_request", timeout=20)
        csr.send({"cmd": "admit", "peer": asked["peer"]})
        me["assistant"] = assistant.expect("joined", timeout=20)["me"]
        players.append(assistant)
        target = assistant
    assert target is not None

    if way == "eof":
        # stdin is at its end from the start, and the agent is still in its session
        other, other_me = (customer, me["customer"]) if role == "csr" else (csr, me["csr"])
        in_session(target, other, other_me)
        if role == "csr":
            target.proc.send_signal(signal.SIGTERM)  # its only way out now
        else:
            csr.send({"cmd": "end"})
    elif way != "eof-exit":
        os.kill(target.proc.pid, getattr(signal, way))

    leaving_alone = role != "csr" and way != "eof"
    if leaving_alone:  # a customer or an assistant left; the session goes on
        mine = target.expect("left", lambda e: e["peer"] == me[role], timeout=15)
        assert mine["reason"] == "left"
        assert target.wait(timeout=15) == 0
        assert csr.expect("left", lambda e: e["peer"] == me[role], timeout=15)["reason"] == "left"
        if role == "assistant":  # the customer is still there
            csr.send({"cmd": "chat", "text": "the session goes on"})
            customer.expect("chat", lambda e: e["text"] == "the session goes on")
        csr.send({"cmd": "end"})
    for p in players:  # the session ended for everyone else, and each exits with 0
        if p is target and leaving_alone:
            continue
        assert p.expect("ended", timeout=20)
        assert p.wait(timeout=20) == 0, f"{p.name} exit status"
    for p in players:
        p.quiet()
        errors = [e for e in p.events if e.get("event") == "error"]
        assert not errors, f"{p.name}: {errors}"
