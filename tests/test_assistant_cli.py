"""An assistant CSR joins with the CSR code, is admitted by the primary and sees the chat."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from agent.protocol.log import Entry
from agent.store.logstore import LogStore
from tests.procs import Event, Proc, run_peerdesk


def shows(csr: Proc, path: Path, rgb: tuple[int, int, int], tries: int = 20) -> bool:
    """Whether the CSR's snapshot shows ``rgb`` (within codec loss)."""
    from PIL import Image

    got: tuple[int, ...] = ()
    for _ in range(tries):
        csr.send({"cmd": "snapshot", "path": str(path)})
        csr.expect("snapshot", timeout=20)
        got = Image.open(path).convert("RGB").getpixel((200, 200))  # not under the pointer
        if all(abs(a - b) <= 24 for a, b in zip(got, rgb, strict=True)):
            return True
        time.sleep(0.25)
    raise AssertionError(f"the snapshot shows {got}, not {rgb}")


def entries(path: Path) -> list[Entry]:
    with LogStore(path) as store:
        return store.load()


def agent(
    procs: list[Proc], home: Path, *args: str, name: str, env: dict[str, str] | None = None
) -> Proc:
    p = Proc(["agent", *args], home=home, name=name, env=env)
    procs.append(p)
    return p


def start_primary(procs: list[Proc], home: Path) -> tuple[Proc, Event]:
    """Carol starts a session with an embedded server; returns her and its ``session`` event."""
    primary = agent(
        procs, home, "start", "--headless", "--json", "--port", "0", "--name", "Carol",
        name="primary",
    )  # fmt: skip
    return primary, primary.expect("session")


def join_as_assistant(
    procs: list[Proc],
    home: Path,
    code: str,
    signal: str,
    name: str = "Dan",
    label: str = "assistant",
) -> Proc:
    """An assistant CSR asks to join with the CSR code (the primary admits or refuses)."""
    return agent(
        procs, home, "join", code, "--signal", signal, "--as", "assistant", "--headless",
        "--json", "--name", name, name=label,
    )  # fmt: skip


def test_assistant_joins_with_the_csr_code_after_the_primary_admits(
    procs: list[Proc], tmp_path: Path
) -> None:
    primary, session = start_primary(procs, tmp_path / "p")
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

    dan = join_as_assistant(procs, tmp_path / "d", session["csr_code"], signal)
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
        primary, session = start_primary(procs, tmp_path / "p")
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
        dan = join_as_assistant(procs, tmp_path / "d", session["csr_code"], session["signal"])
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
        copies = [Path(p.expect("report")["log"]) for p in (dan, cust)]
        assert primary.wait() == 0
        assert cust.wait() == 0
        assert dan.wait() == 0
        # the log was replicated: the assistant's and the customer's copies are the primary's
        mine = [e.digest for e in entries(Path(written["log"]))]
        assert all([e.digest for e in entries(copy)] == mine for copy in copies)
        # the record holds each change of hands, with tokens that only grow
        import json

        record = json.loads(Path(written["json"]).read_text())
        holders = [c["holder"] for c in record["control"]]
        assert holders == [session["me"], dan_id, session["me"]]
        tokens = [tuple(c["token"]) for c in record["control"]]
        assert tokens == sorted(tokens)


def test_team_member_joins_by_room_id_alone(procs: list[Proc], tmp_path: Path) -> None:
    def peerdesk(home: Path, *args: str) -> str:
        done = run_peerdesk(home, *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

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

    from agent.capture.xvfb import Canvas
    from tests.desktop import wait_pointer, xvfb

    (tmp_path / "downloads").mkdir()
    with xvfb(1280, 800) as display:
        primary, session = start_primary(procs, tmp_path / "p")
        cust = agent(
            procs,
            tmp_path / "c",
            "join",
            session["link"],
            "--headless",
            "--json",
            "--name",
            "Alice",
            "--download-dir",
            str(tmp_path / "downloads"),
            name="customer",
            env={"DISPLAY": display},
        )
        cust.expect("joined")
        primary.expect("joined")
        dan = join_as_assistant(procs, tmp_path / "d", session["csr_code"], session["signal"])
        dan_id = primary.expect("assistant_request", timeout=20)["peer"]
        primary.send({"cmd": "admit", "peer": dan_id})
        cust_id = dan.expect("joined", lambda e: e["role"] == "customer")["peer"]
        dan.expect("direct")
        cust.expect("direct")

        # the assistant sees the screen over its direct link, granted to it by name
        canvas = Canvas(display)
        canvas.fill(0, 0, 1280, 800, (30, 180, 40))
        canvas.sync()
        dan.send({"cmd": "request", "cap": "view"})
        asked = cust.expect("request", lambda e: e["cap"] == "view")
        assert asked["from"] == dan_id and asked["name"] == "Dan"
        cust.send({"cmd": "grant", "id": asked["id"]})
        dan.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "granted")
        assert shows(dan, tmp_path / "before.png", (30, 180, 40))

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
        # the session's server was embedded in the primary: Dan hosts one of his own
        again = dan.expect("session", timeout=20)
        assert again["me"] == dan_id and again["signal"] != session["signal"]
        # control was released: the assistant asks again, the customer grants again
        dan.send({"cmd": "click", "x": 0.5, "y": 0.5})
        assert "not granted" in dan.expect("error")["reason"]
        # nothing else went wrong on the assistant's side (requests gave no stray errors)
        stray = [e for e in dan.events if e.get("event") == "error" and not e.get("_taken")]
        assert not stray, stray
        dan.send({"cmd": "request", "cap": "control"})
        again = cust.expect("request", lambda e: e["from"] == dan_id)
        cust.send({"cmd": "grant", "id": again["id"]})
        regained = dan.expect("control", lambda e: e["holder"] == dan_id)
        assert regained["token"][0] == 1  # tokens of the new epoch outrank every older one
        dan.send({"cmd": "click", "x": 0.25, "y": 0.5})
        assert wait_pointer(display, (320, 400)) == (320, 400)

        # the screen goes on too: the view was granted to the assistant itself
        canvas.fill(0, 0, 1280, 800, (40, 60, 220))
        canvas.sync()
        dan.send({"cmd": "keyframe"})
        assert shows(dan, tmp_path / "after.png", (40, 60, 220))
        canvas.close()

        # and files, keyed between the assistant and the customer alone
        src = tmp_path / "fix.bin"
        src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
        dan.send({"cmd": "request", "cap": "files"})
        asked = cust.expect("request", lambda e: e["cap"] == "files")
        cust.send({"cmd": "grant", "id": asked["id"]})
        dan.expect("consent", lambda e: e["cap"] == "files" and e["state"] == "granted")
        dan.send({"cmd": "send_file", "path": str(src)})
        offered = cust.expect("file", lambda e: e["state"] == "offered")
        cust.send({"cmd": "accept_file", "id": offered["id"]})
        got = cust.expect("file", lambda e: e["state"] in ("done", "failed"), timeout=60)
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        assert got["state"] == "done" and got["sha256"] == digest
        assert (
            hashlib.sha256((tmp_path / "downloads" / "fix.bin").read_bytes()).hexdigest() == digest
        )

        # the conversation goes on between the assistant and the customer
        dan.send({"cmd": "chat", "text": "Dan here, I have taken over"})
        line = cust.expect("chat", lambda e: e["text"] == "Dan here, I have taken over")
        assert line["from"] == dan_id and line["name"] == "Dan"
        cust.send({"cmd": "chat", "text": "thanks Dan"})
        assert dan.expect("chat", lambda e: e["text"] == "thanks Dan")["from"] == cust_id

        dan.send({"cmd": "note", "text": "primary lost; took over, customer re-granted"})
        dan.send({"cmd": "end"})
        cust.expect("ended")
        dan_copy = Path(dan.expect("report")["log"])
        cust_copy = Path(cust.expect("report")["log"])
        assert dan.wait() == 0
        assert cust.wait() == 0

    # both surviving copies verify, and they agree on every entry
    for copy, home in ((dan_copy, tmp_path / "d"), (cust_copy, tmp_path / "c")):
        verified = run_peerdesk(home, "log", "verify", str(copy))
        assert verified.returncode == 0, verified.stdout + verified.stderr
    survivors = entries(dan_copy)
    assert [e.digest for e in survivors] == [e.digest for e in entries(cust_copy)]
    kinds = [(e.kind, e.author) for e in survivors]
    assert kinds[0] == ("session_start", session["me"])
    assert kinds[-1] == ("session_end", dan_id)
    # the take-over is an epoch of the log, won with the customer's vote
    (epoch,) = [e for e in survivors if e.kind == "epoch"]
    assert epoch.author == dan_id and sorted(epoch.body["votes"]) == sorted([dan_id, cust_id])
    lost = [e for e in survivors if e.kind == "participant" and e.body["action"] == "lost"]
    assert [e.body["peer"] for e in lost] == [session["me"]]
    # everyone writes what is theirs: the customer its consent answers and chat lines
    chats = [(e.author, e.body["text"]) for e in survivors if e.kind == "chat"]
    assert (session["me"], "one moment please") in chats
    assert (cust_id, "thanks Dan") in chats
    assert (dan_id, "Dan here, I have taken over") in chats
    files = [e for e in survivors if e.kind == "file"]
    assert [(e.author, e.body["name"], e.body["sha256"]) for e in files] == [
        (dan_id, "fix.bin", digest)
    ]
    consents = [e for e in survivors if e.kind == "consent"]
    assert consents and all(e.author == cust_id for e in consents)
    # the killed primary's copy (read after kill -9; it may lack its last entries, which
    # it sends before its own disk has them) agrees with the survivors' wherever both
    # hold an entry of the primary's epoch
    before = [e.digest for e in survivors if e.epoch == 0]
    primary_copy = [e.digest for e in entries(next((tmp_path / "p" / "sessions").glob("*.sqlite")))]
    common = min(len(before), len(primary_copy))
    assert common >= 4 and primary_copy[:common] == before[:common]
    # the note is sealed for the CSRs: the customer's copy holds it unreadable
    (note,) = [e for e in survivors if e.kind == "note"]
    assert "sealed" in note.body and "took over" not in json.dumps(note.body)
    dan_report = json.loads(dan_copy.with_suffix(".json").read_text())
    cust_report = json.loads(cust_copy.with_suffix(".json").read_text())
    assert [n["text"] for n in dan_report["notes"]] == [
        "primary lost; took over, customer re-granted"
    ]
    assert [n["text"] for n in cust_report["notes"]] == [None]


def test_after_a_take_over_the_new_primary_hosts_and_a_new_customer_joins(
    procs: list[Proc], tmp_path: Path
) -> None:
    """kill -9 the primary: the assistant that took over opens a new room on the
    session's server (still up) and shows a new code; a new customer joins with it,
    and the first customer goes on chatting."""
    server = Proc(["signaling", "--host", "127.0.0.1", "--port", "0"], name="signaling")
    procs.append(server)
    signal = f"ws://127.0.0.1:{server.expect('listening', timeout=20)['port']}"
    primary = agent(
        procs, tmp_path / "p", "start", "--signal", signal, "--headless", "--json",
        "--name", "Carol", name="primary",
    )  # fmt: skip
    session = primary.expect("session")
    cust = agent(
        procs, tmp_path / "c", "join", session["link"], "--headless", "--json",
        "--name", "Alice", name="customer",
    )  # fmt: skip
    cust.expect("joined")
    primary.expect("joined")
    dan = join_as_assistant(procs, tmp_path / "d", session["csr_code"], signal)
    dan_id = primary.expect("assistant_request", timeout=20)["peer"]
    primary.send({"cmd": "admit", "peer": dan_id})
    cust_id = dan.expect("joined", lambda e: e["role"] == "customer")["peer"]
    dan.expect("direct")
    cust.expect("direct")
    primary.send({"cmd": "chat", "text": "one moment please"})
    cust.expect("chat", lambda e: e["text"] == "one moment please")
    primary.proc.kill()

    assert dan.expect("failover", timeout=10)["primary"] == dan_id
    cust.expect("failover", timeout=10)
    # the new primary hosts: a new room and new codes on the same server
    again = dan.expect("session", timeout=20)
    assert again["me"] == dan_id and again["signal"] == signal
    assert again["room"] != session["room"] and again["code"] != session["code"]
    assert again["csr_code"] and again["csr_code"] != again["code"]
    # the old code leads nowhere now; the new one does
    bob = agent(
        procs, tmp_path / "b", "join", again["link"], "--headless", "--json",
        "--name", "Bob", name="new customer",
    )  # fmt: skip
    joined = bob.expect("joined", timeout=20)
    assert joined["peer"] == dan_id and joined["name"] == "Dan"
    seen = dan.expect("joined", lambda e: e["name"] == "Bob", timeout=20)
    assert seen["role"] == "customer" and seen["primary"] is False
    bob_id = seen["peer"]
    assert joined["sas"] == seen["sas"]
    cust.expect("joined", lambda e: e["peer"] == bob_id)  # the roster reached Alice too

    dan.send({"cmd": "chat", "text": "welcome Bob"})
    assert bob.expect("chat", lambda e: e["text"] == "welcome Bob")["from"] == dan_id
    assert cust.expect("chat", lambda e: e["text"] == "welcome Bob")["from"] == dan_id
    bob.send({"cmd": "chat", "text": "hello Dan"})
    assert dan.expect("chat", lambda e: e["text"] == "hello Dan")["from"] == bob_id
    cust.send({"cmd": "chat", "text": "still here"})
    assert dan.expect("chat", lambda e: e["text"] == "still here")["from"] == cust_id

    # a second assistant joins with the new CSR code, and gets the log and the chat
    eve = join_as_assistant(procs, tmp_path / "e", again["csr_code"], signal, "Eve", "assistant 2")
    eve_id = dan.expect("assistant_request", timeout=20)["peer"]
    dan.send({"cmd": "admit", "peer": eve_id})
    assert eve.expect("joined", lambda e: e["peer"] == dan_id, timeout=20)["role"] == "csr"
    history = eve.expect("chat", lambda e: e["text"] == "welcome Bob")
    assert history["history"] is True
    eve.expect("direct", timeout=20)
    eve.send({"cmd": "chat", "text": "Eve here"})
    assert cust.expect("chat", lambda e: e["text"] == "Eve here")["from"] == eve_id

    dan.send({"cmd": "end"})
    cust.expect("ended")
    bob.expect("ended")
    eve.expect("ended")
    dan_copy = Path(dan.expect("report")["log"])
    cust_copy = Path(cust.expect("report")["log"])
    eve_copy = Path(eve.expect("report")["log"])
    assert dan.wait() == 0 and cust.wait() == 0 and bob.wait() == 0 and eve.wait() == 0
    cust.drain(0.5)
    said_lost = [e for e in cust.events if e["event"] == "left" and e["peer"] == session["me"]]
    assert len(said_lost) == 1, said_lost  # the old primary's loss is said once

    for copy, home in (
        (dan_copy, tmp_path / "d"),
        (cust_copy, tmp_path / "c"),
        (eve_copy, tmp_path / "e"),
    ):
        verified = run_peerdesk(home, "log", "verify", str(copy))
        assert verified.returncode == 0, verified.stdout + verified.stderr
    survivors = entries(dan_copy)
    assert [e.digest for e in survivors] == [e.digest for e in entries(cust_copy)]
    assert [e.digest for e in survivors] == [e.digest for e in entries(eve_copy)]
    # the new joiner is written by the new sequencer, in the epoch of the take-over
    (epoch,) = [e for e in survivors if e.kind == "epoch"]
    (bob_in,) = [e for e in survivors if e.kind == "participant" and e.body["peer"] == bob_id]
    assert bob_in.author == dan_id and bob_in.epoch == epoch.epoch
    assert bob_in.body["action"] == "joined" and bob_in.body["role"] == "customer"
    chats = [(e.author, e.body["text"]) for e in survivors if e.kind == "chat"]
    assert (dan_id, "welcome Bob") in chats and (cust_id, "still here") in chats
    assert survivors[-1].kind == "session_end" and survivors[-1].author == dan_id
