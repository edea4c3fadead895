"""Separate processes on loopback through the headless CLI: server, CSR, two customers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.procs import Proc, start_signal_server


def peerdesk(procs: list[Proc], home: Path, *args: str, name: str) -> Proc:
    p = Proc(["agent", *args], home=home, name=name)
    procs.append(p)
    return p


def test_csr_and_two_customers_chat_leave_and_end(procs: list[Proc], tmp_path: Path) -> None:
    server, url = start_signal_server()
    procs.append(server)
    csr = peerdesk(
        procs,
        tmp_path / "csr",
        "start",
        "--signal",
        url,
        "--headless",
        "--json",
        "--name",
        "Carol",
        name="csr",
    )
    session = csr.expect("session")
    assert session["code"].count("-") == 2 and len(session["code"]) == 14
    assert session["link"].startswith("peerdesk://join/" + session["code"])

    alice = peerdesk(
        procs,
        tmp_path / "alice",
        "join",
        session["code"],
        "--signal",
        url,
        "--headless",
        "--json",
        "--name",
        "Alice",
        name="alice",
    )
    a_joined = alice.expect("joined")
    c_alice = csr.expect("joined", lambda e: e["name"] == "Alice")
    assert a_joined["role"] == "csr" and a_joined["name"] == "Carol"
    assert c_alice["role"] == "customer" and c_alice["primary"] is True
    assert a_joined["sas"] == c_alice["sas"] and len(a_joined["sas"]) == 6
    alice_id = c_alice["peer"]

    # the second customer uses the link (which carries the server), not --signal
    bob = peerdesk(
        procs,
        tmp_path / "bob",
        "join",
        session["link"],
        "--headless",
        "--json",
        "--name",
        "Bob",
        name="bob",
    )
    bob.expect("joined", lambda e: e["role"] == "csr")
    c_bob = csr.expect("joined", lambda e: e["name"] == "Bob")
    assert c_bob["primary"] is False
    bob_id = c_bob["peer"]
    alice.expect("joined", lambda e: e["peer"] == bob_id)

    # chat both ways
    csr.send({"cmd": "chat", "text": "Hello both"})
    assert alice.expect("chat")["text"] == "Hello both"
    assert bob.expect("chat")["text"] == "Hello both"
    alice.send({"cmd": "chat", "text": "Hi from Alice"})
    got = csr.expect("chat")
    assert got == {**got, "from": alice_id, "name": "Alice", "text": "Hi from Alice"}
    assert bob.expect("chat")["text"] == "Hi from Alice"

    # to a chosen recipient only
    csr.send({"cmd": "chat", "text": "only Bob", "to": [bob_id]})
    assert bob.expect("chat", lambda e: e["text"] == "only Bob")["to"] == [bob_id]
    alice.send({"cmd": "chat", "text": "only Carol", "to": [session["me"]]})
    assert csr.expect("chat", lambda e: e["text"] == "only Carol")["from"] == alice_id
    bob.drain(1.0)
    assert not [e for e in bob.events if e.get("text") in ("only Carol",)]
    alice.drain(0.5)
    assert not [e for e in alice.events if e.get("text") == "only Bob"]

    # a customer cannot end, only leave
    alice.send({"cmd": "end"})
    err = alice.expect("error")
    assert "cannot end" in err["reason"]
    alice.send({"cmd": "nonsense"})
    assert "unknown command" in alice.expect("error")["reason"]
    alice.send({"cmd": "leave"})
    assert csr.expect("left")["peer"] == alice_id
    assert alice.wait() == 0
    # Bob is primary now
    roster = csr.expect("roster", lambda e: alice_id not in [p["id"] for p in e["participants"]])
    assert [p["primary"] for p in roster["participants"] if p["id"] == bob_id] == [True]

    csr.send({"cmd": "end"})
    assert bob.expect("ended")["reason"] == "ended"
    csr.expect("ended")
    assert bob.wait() == 0
    assert csr.wait() == 0
    server.proc.terminate()
    assert server.wait() == 0


def test_embedded_server_and_wrong_code(procs: list[Proc], tmp_path: Path) -> None:
    """Without --signal the CSR hosts the server itself; a wrong code fails on both sides."""
    csr = peerdesk(
        procs,
        tmp_path / "csr",
        "start",
        "--headless",
        "--json",
        "--port",
        "0",
        "--no-advertise",
        name="csr",
    )
    session = csr.expect("session")
    digits = session["code"].replace("-", "")
    wrong = digits[:6] + f"{(int(digits[6:]) + 1) % 10**6:06d}"
    signal = session["signal"]
    cust = peerdesk(
        procs,
        tmp_path / "cust",
        "join",
        wrong,
        "--signal",
        signal,
        "--headless",
        "--json",
        name="cust",
    )
    err = cust.expect("error")
    assert err["code"] == "wrong_code" and "wrong code" in err["reason"]
    assert cust.wait() == 1
    failed = csr.expect("join_failed")
    assert failed["remaining"] == 2 and failed["reason"] == "wrong_code"

    ok = peerdesk(
        procs, tmp_path / "ok", "join", session["link"], "--headless", "--json", name="ok"
    )
    ok.expect("joined")
    csr.expect("joined")
    csr.send({"cmd": "end"})
    ok.expect("ended")
    assert csr.wait() == 0 and ok.wait() == 0


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PEERDESK_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        )

    r = run("join", "1234-5678", "--headless", "--json")
    assert r.returncode == 2
    assert "12 digits" in json.loads(r.stdout)["reason"]
    r = run("join", "peerdesk://evil/1234-5678-9012", "--headless", "--json")
    assert "unknown link action" in json.loads(r.stdout)["reason"]
    r = run("join", "peerdesk://join/1234-5678-9012?signal=ws://x&run=calc", "--json")
    assert "unknown parameter" in json.loads(r.stdout)["reason"]
    r = run("join", "1234-5678-9012", "--signal", "ftp://x", "--json")
    assert "signaling URL" in json.loads(r.stdout)["reason"]
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("peerdesk ")
    r = run("id")
    assert r.returncode == 0 and "id:" in r.stdout
    key = tmp_path / "identity.pem"
    assert key.stat().st_mode & 0o777 == 0o600


def test_the_same_customer_joining_again_takes_the_seat_visibly(
    procs: list[Proc], tmp_path: Path
) -> None:
    """Two agents of one participant (the same key): the second takes the seat; the CSR
    sees ``rejoined`` with the new check code, the first agent is told and exits."""
    csr = Proc(["agent", "start", "--headless", "--json", "--port", "0"], home=tmp_path / "c")
    procs.append(csr)
    session = csr.expect("session", timeout=20)
    home = tmp_path / "alice"
    first = Proc(["agent", "join", session["link"], "--headless", "--json"], home=home)
    procs.append(first)
    sas1 = first.expect("joined", timeout=20)["sas"]
    joined = csr.expect("joined")
    assert joined["sas"] == sas1
    second = Proc(["agent", "join", session["link"], "--headless", "--json"], home=home)
    procs.append(second)
    sas2 = second.expect("joined", timeout=20)["sas"]
    again = csr.expect("rejoined", timeout=15)
    assert again["peer"] == joined["peer"] and again["sas"] == sas2 != sas1
    assert first.expect("ended", timeout=15)["reason"] == "replaced"
    assert first.wait(timeout=15) == 0
    roster = csr.expect("roster", lambda e: len(e["participants"]) == 2)
    assert [p["id"] for p in roster["participants"]].count(joined["peer"]) == 1
    second.send({"cmd": "chat", "text": "from my other window"})
    assert csr.expect("chat")["text"] == "from my other window"
    csr.drain(1.0)
    assert not [e for e in csr.events if e.get("event") == "left"], csr.events
    csr.send({"cmd": "end"})
    assert second.expect("ended")["reason"] == "ended"
    assert csr.wait() == 0 and second.wait() == 0
    for p in (csr, first, second):
        p.quiet()
