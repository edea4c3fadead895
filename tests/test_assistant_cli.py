"""An assistant CSR joins with the CSR code, is admitted by the primary and sees the chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def agent(
    procs: list[Proc], home: Path, *args: str, name: str, env: dict[str, str] | None = None
) -> Proc:
    p = Proc(["agent", *args], home=home, name=name, env=env)
    procs.append(p)
    return p


def test_assistant_joins_with_the_csr_code_after_the_primary_admits(
    procs: list[Proc], tmp_path: Path
) -> None:
    primary = agent(
        procs,
        tmp_path / "p",
        "start",
        "--headless",
        "--json",
        "--port",
        "0",
        "--name",
        "Carol",
        name="primary",
    )
    session = primary.expect("session")
    assert session["csr_code"] and session["csr_code"] != session["code"]
    signal = session["signal"]
    cust = agent(
        procs,
        tmp_path / "c",
        "join",
        session["link"],
        "--headless",
        "--json",
        "--name",
        "Alice",
        name="customer",
    )
    cust.expect("joined")
    primary.expect("joined")
    primary.send({"cmd": "chat", "text": "before the assistant came"})
    cust.expect("chat")

    # the customer's code never makes anyone a CSR
    eve = agent(
        procs,
        tmp_path / "e",
        "join",
        session["code"],
        "--signal",
        signal,
        "--as",
        "assistant",
        "--headless",
        "--json",
        name="eve",
    )
    assert eve.expect("error")["code"] == "wrong_code"
    assert eve.wait() == 1
    primary.expect("join_failed")

    dan = agent(
        procs,
        tmp_path / "d",
        "join",
        session["csr_code"],
        "--signal",
        signal,
        "--as",
        "assistant",
        "--headless",
        "--json",
        "--name",
        "Dan",
        name="assistant",
    )
    asked = primary.expect("assistant_request", timeout=20)
    assert asked["name"] == "Dan" and len(asked["sas"]) == 6
    primary.send({"cmd": "admit", "peer": asked["peer"]})
    joined = dan.expect("joined", lambda e: e["role"] == "csr" and e["peer"] == session["me"])
    assert joined["sas"] == asked["sas"]
    history = dan.expect("chat")
    assert history["text"] == "before the assistant came" and history["history"] is True
    roster = primary.expect("roster", lambda e: len(e["participants"]) == 3)
    assert {p["role"] for p in roster["participants"]} == {"csr", "customer"}
    cust.expect("joined", lambda e: e["peer"] == asked["peer"])

    dan.send({"cmd": "chat", "text": "Dan here, watching"})
    assert primary.expect("chat", lambda e: e["from"] == asked["peer"])["name"] == "Dan"
    assert cust.expect("chat", lambda e: e["text"] == "Dan here, watching")["name"] == "Dan"
    dan.send({"cmd": "end"})
    assert "cannot end" in dan.expect("error")["reason"]

    primary.send({"cmd": "end"})
    dan.expect("ended")
    cust.expect("ended")
    assert primary.wait() == 0
    assert dan.wait() == 0
    assert cust.wait() == 0


def test_primary_refuses_an_assistant(procs: list[Proc], tmp_path: Path) -> None:
    primary = agent(
        procs, tmp_path / "p", "start", "--headless", "--json", "--port", "0", name="primary"
    )
    session = primary.expect("session")
    dan = agent(
        procs,
        tmp_path / "d",
        "join",
        session["csr_code"],
        "--signal",
        session["signal"],
        "--as",
        "assistant",
        "--headless",
        "--json",
        name="assistant",
    )
    asked = primary.expect("assistant_request", timeout=20)
    primary.send({"cmd": "refuse", "peer": asked["peer"]})
    err = dan.expect("error")
    assert err["code"] == "refused" and "declined" in err["reason"]
    assert dan.wait() == 1
    primary.send({"cmd": "admit", "peer": asked["peer"]})
    assert "waiting to join" in primary.expect("error")["reason"]
    primary.send({"cmd": "end"})
    assert primary.wait() == 0


def test_transfer_control_to_the_assistant_and_back(procs: list[Proc], tmp_path: Path) -> None:

    from tests.desktop import wait_pointer, xvfb

    with xvfb(1280, 800) as display:
        primary = agent(
            procs,
            tmp_path / "p",
            "start",
            "--headless",
            "--json",
            "--port",
            "0",
            "--name",
            "Carol",
            name="primary",
        )
        session = primary.expect("session")
        cust = agent(
            procs,
            tmp_path / "c",
            "join",
            session["link"],
            "--headless",
            "--json",
            "--accept",
            "control",
            name="customer",
            env={"DISPLAY": display},
        )
        cust.expect("joined")
        primary.expect("joined")
        dan = agent(
            procs,
            tmp_path / "d",
            "join",
            session["csr_code"],
            "--signal",
            session["signal"],
            "--as",
            "assistant",
            "--headless",
            "--json",
            "--name",
            "Dan",
            name="assistant",
        )
        dan_id = primary.expect("assistant_request", timeout=20)["peer"]
        primary.send({"cmd": "admit", "peer": dan_id})
        dan.expect("joined")
        cust.expect("joined", lambda e: e["peer"] == dan_id)

        # the primary introduces the assistant and the customer: a direct link
        cust_id = dan.expect("joined", lambda e: e["role"] == "customer")["peer"]
        assert dan.expect("direct")["peer"] == cust_id
        assert cust.expect("direct")["peer"] == dan_id

        primary.send({"cmd": "request", "cap": "control"})
        first = primary.expect("control", lambda e: e["holder"] == session["me"])
        primary.send({"cmd": "click", "x": 0.25, "y": 0.5})
        assert wait_pointer(display, (320, 400)) == (320, 400)

        # the assistant cannot act before the transfer
        dan.send({"cmd": "click", "x": 0.5, "y": 0.5})
        assert "do not hold control" in dan.expect("error")["reason"]

        primary.send({"cmd": "transfer_control", "to": dan_id})
        moved = dan.expect("control", lambda e: e["holder"] == dan_id)
        assert moved["token"] > first["token"]
        cust.expect("control", lambda e: e["holder"] == dan_id)
        dan.send({"cmd": "click", "x": 0.75, "y": 0.25})
        assert wait_pointer(display, (960, 200)) == (960, 200)
        # the CSR who gave control keeps observing but cannot act, nor end the session
        primary.send({"cmd": "click", "x": 0.1, "y": 0.1})
        primary.expect("error")
        assert wait_pointer(display, (128, 80), timeout=1.0) == (960, 200)
        primary.send({"cmd": "end"})
        assert (
            "control is with Dan"
            in primary.expect("error", lambda e: "Dan" in e["reason"])["reason"]
        )

        # and back
        dan.send({"cmd": "transfer_control", "to": session["me"]})
        back = primary.expect(
            "control", lambda e: e["holder"] == session["me"] and e["token"] > moved["token"]
        )
        assert back
        dan.expect(
            "control", lambda e: e["holder"] == session["me"] and e["token"] > moved["token"]
        )
        dan.send({"cmd": "click", "x": 0.5, "y": 0.5})
        dan.expect("error", lambda e: "do not hold control" in e["reason"])
        primary.send({"cmd": "click", "x": 0.5, "y": 0.75})
        assert wait_pointer(display, (640, 600)) == (640, 600)

        primary.send({"cmd": "end"})
        cust.expect("ended")
        dan.expect("ended")
        written = primary.expect("report")
        assert primary.wait() == 0
        assert cust.wait() == 0
        assert dan.wait() == 0
        # the record holds each change of hands, with tokens that only grow
        import json

        record = json.loads(Path(written["json"]).read_text())
        holders = [c["holder"] for c in record["control"]]
        assert holders == [session["me"], dan_id, session["me"]]
        tokens = [tuple(c["token"]) for c in record["control"]]
        assert tokens == sorted(tokens)


def test_team_member_joins_by_room_id_alone(procs: list[Proc], tmp_path: Path) -> None:
    import subprocess
    import sys

    def peerdesk(home: Path, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PEERDESK_HOME": str(home), "PATH": "/usr/bin:/bin"},
            check=True,
        ).stdout

    def key_of(home: Path) -> str:
        return next(
            line.split()[1] for line in peerdesk(home, "id").splitlines() if line.startswith("key:")
        )

    p_home, d_home, e_home = tmp_path / "p", tmp_path / "d", tmp_path / "e"
    p_key, d_key = key_of(p_home), key_of(d_home)
    key_of(e_home)
    peerdesk(p_home, "team", "add", d_key, "Dan")
    peerdesk(d_home, "team", "add", p_key, "Carol")

    primary = agent(procs, p_home, "start", "--headless", "--json", "--port", "0", name="primary")
    session = primary.expect("session")
    # not on the team: refused, and told to ask for the CSR code
    eve = agent(
        procs,
        e_home,
        "join",
        session["room"],
        "--as",
        "assistant",
        "--signal",
        session["signal"],
        "--headless",
        "--json",
        name="eve",
    )
    err = eve.expect("error")
    assert err["code"] == "not_on_team" and "CSR code" in err["reason"]
    assert eve.wait() == 1

    dan = agent(
        procs,
        d_home,
        "join",
        session["room"],
        "--as",
        "assistant",
        "--signal",
        session["signal"],
        "--headless",
        "--json",
        "--name",
        "Dan",
        name="dan",
    )
    asked = primary.expect("assistant_request", timeout=20)
    primary.send({"cmd": "admit", "peer": asked["peer"]})
    assert dan.expect("joined")["peer"] == session["me"]
    primary.send({"cmd": "end"})
    ended = dan.expect("ended")
    assert primary.wait() == 0
    assert dan.wait() == 0, (ended, dan.events, "".join(dan.stderr[-20:]))


def test_kill_the_primary_and_the_assistant_carries_on(procs: list[Proc], tmp_path: Path) -> None:
    """kill -9 the primary mid-chat: the assistant takes over with the customer's vote
    over their direct link; control is released until granted again."""

    from tests.desktop import wait_pointer, xvfb

    with xvfb(1280, 800) as display:
        primary = agent(
            procs,
            tmp_path / "p",
            "start",
            "--headless",
            "--json",
            "--port",
            "0",
            "--name",
            "Carol",
            name="primary",
        )
        session = primary.expect("session")
        cust = agent(
            procs,
            tmp_path / "c",
            "join",
            session["link"],
            "--headless",
            "--json",
            "--name",
            "Alice",
            name="customer",
            env={"DISPLAY": display},
        )
        cust.expect("joined")
        primary.expect("joined")
        dan = agent(
            procs,
            tmp_path / "d",
            "join",
            session["csr_code"],
            "--signal",
            session["signal"],
            "--as",
            "assistant",
            "--headless",
            "--json",
            "--name",
            "Dan",
            name="assistant",
        )
        dan_id = primary.expect("assistant_request", timeout=20)["peer"]
        primary.send({"cmd": "admit", "peer": dan_id})
        cust_id = dan.expect("joined", lambda e: e["role"] == "customer")["peer"]
        dan.expect("direct")
        cust.expect("direct")

        # control granted to the primary, then the primary dies mid-chat
        primary.send({"cmd": "request", "cap": "control"})
        prompt = cust.expect("request")
        cust.send({"cmd": "grant", "id": prompt["id"]})
        primary.expect("control", lambda e: e["holder"] == session["me"])
        primary.send({"cmd": "chat", "text": "one moment please"})
        cust.expect("chat", lambda e: e["text"] == "one moment please")
        primary.proc.kill()

        took = dan.expect("failover", timeout=10)
        assert took["primary"] == dan_id and took["lost"] == session["me"]
        seen = cust.expect("failover", timeout=10)
        assert seen["primary"] == dan_id
        assert took["after_ms"] < 4000, took
        # control was released: the assistant asks again, the customer grants again
        dan.send({"cmd": "click", "x": 0.5, "y": 0.5})
        dan.expect("error")
        dan.send({"cmd": "request", "cap": "control"})
        again = cust.expect("request", lambda e: e["from"] == dan_id)
        cust.send({"cmd": "grant", "id": again["id"]})
        dan.expect("control", lambda e: e["holder"] == dan_id)
        dan.send({"cmd": "click", "x": 0.25, "y": 0.5})
        assert wait_pointer(display, (320, 400)) == (320, 400)

        # the conversation goes on between the assistant and the customer
        dan.send({"cmd": "chat", "text": "Dan here, I have taken over"})
        line = cust.expect("chat", lambda e: e["text"] == "Dan here, I have taken over")
        assert line["from"] == dan_id and line["name"] == "Dan"
        cust.send({"cmd": "chat", "text": "thanks Dan"})
        assert dan.expect("chat", lambda e: e["text"] == "thanks Dan")["from"] == cust_id

        dan.send({"cmd": "end"})
        cust.expect("ended")
        assert dan.wait() == 0
        assert cust.wait() == 0
