"""The record names the right person: two customers in turn, asked for the same thing.

Request ids restart with every customer's agent (each says ``r1`` first), so a report
that keyed grants by id alone merged the second customer's answer into the first's
("Alice allowed ..." for a customer who had left, and the real answer missing). Real
processes; the CSR's report is read sentence by sentence.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.procs import Proc


def agent(procs: list[Proc], home: Path, *args: str, name: str) -> Proc:
    p = Proc(["agent", *args, "--headless", "--json", "--name", name], home=home, name=name)
    procs.append(p)
    return p


def test_two_customers_in_turn_get_their_own_grants(procs: list[Proc], tmp_path: Path) -> None:
    carol = agent(procs, tmp_path / "carol", "start", "--port", "0", name="Carol")
    session = carol.expect("session", timeout=20)
    ids: dict[str, str] = {"Carol": session["me"]}
    for name, answer in (("Alice", "grant"), ("Bob", "deny")):
        customer = agent(procs, tmp_path / name, "join", session["link"], name=name)
        ids[name] = customer.expect("joined", timeout=20)["me"]
        carol.expect("joined", lambda e, n=name: e["name"] == n)
        carol.send({"cmd": "request", "cap": "files", "to": ids[name]})
        asked = customer.expect("request", timeout=15)
        assert asked["id"] == "r1"  # every customer's agent starts again at r1
        customer.send({"cmd": answer, "id": asked["id"]})
        state = "granted" if answer == "grant" else "denied"
        carol.expect("consent", lambda e, s=state, p=ids[name]: (e["state"], e["peer"]) == (s, p))
        if name == "Alice":
            customer.send({"cmd": "leave"})
            carol.expect("left", lambda e: e["peer"] == ids["Alice"])
            assert customer.wait(timeout=15) == 0
    carol.send({"cmd": "end"})
    written = carol.expect("report", timeout=20)
    assert carol.wait(timeout=20) == 0
    report = json.loads(Path(written["json"]).read_text(encoding="utf-8"))

    lines = [e["text"] for e in report["timeline"] if e["kind"] in ("consent", "request")]
    assert "Alice allowed file transfer for Carol" in lines, lines
    assert "Bob refused file transfer to Carol" in lines, lines
    assert "Alice refused file transfer to Carol" not in lines
    assert "Bob allowed file transfer for Carol" not in lines
    grants = {(g["customer"], g["cap"]): g for g in report["grants"]}
    assert set(grants) == {(ids["Alice"], "files"), (ids["Bob"], "files")}
    alices = grants[(ids["Alice"], "files")]  # granted, then ended as she left
    assert [h["state"] for h in alices["history"]] == ["pending", "granted", "revoked"]
    assert grants[(ids["Bob"], "files")]["state"] == "denied"
    assert all(g["csr"] == ids["Carol"] and g["id"] == "r1" for g in grants.values())

    people = {p["name"]: p for p in report["participants"]}
    assert people["Alice"]["how_left"] == "left" and people["Alice"]["left"] < report["ended"]
    for present in ("Bob", "Carol"):  # there until the end: the end's time, not null
        assert people[present]["left"] == report["ended"], people[present]
        assert people[present]["how_left"] == "end"


def test_a_grant_that_cannot_be_honoured_says_why(procs: list[Proc], tmp_path: Path) -> None:
    """The customer allows screen viewing on a machine with no display: the CSR is not
    told "revoked" as if the customer had changed their mind, but why, in the event and
    in the record."""
    carol = agent(procs, tmp_path / "carol", "start", "--port", "0", name="Carol")
    session = carol.expect("session", timeout=20)
    alice = Proc(
        ["agent", "join", session["link"], "--headless", "--json", "--name", "Alice"],
        home=tmp_path / "alice",
        name="Alice",
        env={"DISPLAY": "", "WAYLAND_DISPLAY": ""},
    )
    procs.append(alice)
    alice.expect("joined", timeout=20)
    carol.expect("joined")
    carol.send({"cmd": "request", "cap": "view"})
    asked = alice.expect("request", timeout=15)
    alice.send({"cmd": "grant", "id": asked["id"]})
    revoked = carol.expect("consent", lambda e: e["state"] == "revoked", timeout=15)
    assert "no display" in revoked["reason"], revoked
    carol.send({"cmd": "end"})
    written = carol.expect("report", timeout=20)
    report = json.loads(Path(written["json"]).read_text(encoding="utf-8"))
    lines = [e["text"] for e in report["timeline"] if e["kind"] == "consent"]
    assert any("could not be given on Alice's machine" in t and "no display" in t for t in lines)
    assert not any(t == "Alice stopped screen viewing for Carol" for t in lines), lines


def test_the_csr_can_give_a_grant_back(procs: list[Proc], tmp_path: Path) -> None:
    """Stop beside a granted request: the CSR releases it, the customer's agent ends
    the grant (its own consent), both are told, and the record says who stopped."""
    carol = agent(procs, tmp_path / "carol", "start", "--port", "0", name="Carol")
    session = carol.expect("session", timeout=20)
    alice = agent(procs, tmp_path / "alice", "join", session["link"], name="Alice")
    alice.expect("joined", timeout=20)
    carol.expect("joined")
    carol.send({"cmd": "release", "cap": "files"})
    assert carol.expect("error")["code"] == "no_grant"  # nothing to give back yet
    carol.send({"cmd": "request", "cap": "files"})
    asked = alice.expect("request", timeout=15)
    alice.send({"cmd": "grant", "id": asked["id"]})
    carol.expect("consent", lambda e: e["state"] == "granted")
    carol.send({"cmd": "release", "cap": "files"})
    mine = alice.expect("consent", lambda e: e["state"] == "revoked", timeout=15)
    assert mine["reason"] == "released" and mine["cap"] == "files"
    theirs = carol.expect("consent", lambda e: e["state"] == "revoked", timeout=15)
    assert theirs["reason"] == "released"
    carol.send({"cmd": "send_file", "path": str(Path(__file__))})
    assert carol.expect("error")["code"] == "no_grant"  # it is really gone
    carol.send({"cmd": "end"})
    report = json.loads(Path(carol.expect("report", timeout=20)["json"]).read_text())
    lines = [e["text"] for e in report["timeline"] if e["kind"] == "consent"]
    assert "Carol stopped file transfer on Alice's machine" in lines, lines
