"""LAN without cloud: two machines (network namespaces on a veth pair), no server configured.

Agent A runs ``peerdesk start --lan`` in one namespace: it hosts the signaling endpoint
itself and announces the room on the LAN with zeroconf. Agent B, in the other, joins
with the code alone: it finds the session by room id, runs the same PAKE, and chats.
The namespaces have no other interface, so nothing leaves them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import DecodeError
from agent.protocol.lan import LanRecord, decode_txt, encode_txt, signal_urls
from bench.netns import NetnsPair
from tests.procs import Proc, dashboard_page


def agent(procs: list[Proc], ns_exec: list[str], home: Path, *args: str, name: str) -> Proc:
    p = Proc(["agent", *args], home=home, name=name, wrap=ns_exec)
    procs.append(p)
    return p


def discover(ns_exec: list[str], home: Path) -> list[dict[str, object]]:
    r = subprocess.run(
        [*ns_exec, sys.executable, "-m", "agent", "discover", "--json", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PEERDESK_HOME": str(home), "PATH": "/usr/sbin:/usr/bin:/bin", **_pythonpath()},
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def discover_room(ns_exec: list[str], home: Path, room: str) -> list[dict[str, object]]:
    """The sessions of ``room`` that discovery lists, scanning again a few times: the
    announcement is probed first (~1.5 s), and a loaded machine can miss an answer in
    one 2 s scan (CI once found nothing over IPv6 in one)."""
    mine: list[dict[str, object]] = []
    for _ in range(5):
        mine = [s for s in discover(ns_exec, home) if s["room"] == room]
        if mine:
            break
    return mine


def _pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_lan_join_by_code_between_namespaces(
    procs: list[Proc], tmp_path: Path, family: str
) -> None:
    with NetnsPair(ipv4=family == "ipv4", ipv6=True) as lan:
        csr = agent(
            procs,
            lan.a.exec,
            tmp_path / "csr",
            "start",
            "--lan",
            "--port",
            "0",
            "--headless",
            "--json",
            "--name",
            "Carol",
            name="csr",
        )
        session = csr.expect("session", timeout=30)
        room, secret = session["room"], session["code"].replace("-", "")[6:]
        host = urlsplit(session["signal"]).hostname
        assert host == (lan.a.ipv4 if family == "ipv4" else lan.a.ipv6)

        # B sees the session announced, with its room id and never its secret
        mine = discover_room(lan.b.exec, tmp_path / "scan", room)
        assert mine
        assert mine[0]["name"] == "Carol"
        assert secret not in json.dumps(mine[0]).replace(room, "")
        urls = mine[0]["urls"]
        assert isinstance(urls, list)
        hosts = {urlsplit(u).hostname for u in urls}
        assert hosts == {a for a in (lan.a.ipv4, lan.a.ipv6) if a}

        # B joins with the code alone: no --signal, no link
        alice = agent(
            procs,
            lan.b.exec,
            tmp_path / "alice",
            "join",
            session["code"],
            "--headless",
            "--json",
            "--name",
            "Alice",
            name="alice",
        )
        joined = alice.expect("joined", timeout=30)
        c_alice = csr.expect("joined", timeout=30)
        assert joined["name"] == "Carol" and c_alice["name"] == "Alice"
        assert joined["sas"] == c_alice["sas"]

        csr.send({"cmd": "chat", "text": "hello over the LAN"})
        assert alice.expect("chat")["text"] == "hello over the LAN"
        alice.send({"cmd": "chat", "text": "hi back"})
        assert csr.expect("chat")["text"] == "hi back"

        csr.send({"cmd": "end"})
        alice.expect("ended")
        assert csr.wait() == 0 and alice.wait() == 0
        # the announcement is withdrawn when the session ends
        assert not [s for s in discover(lan.b.exec, tmp_path / "scan") if s["room"] == room]


def test_a_dashboard_session_is_found_on_the_lan_by_its_code(
    procs: list[Proc], tmp_path: Path
) -> None:
    """The dashboard hosts sessions the same way as ``peerdesk start``: a session
    started from it (machine A, the page's own websocket API) is announced on the LAN,
    and a customer on machine B joins with the code alone."""
    with NetnsPair(ipv6=False) as lan:
        dash = agent(
            procs, lan.a.exec, tmp_path / "csr", "dashboard", "--no-browser", "--json",
            "--port", "0", "--name", "Carol", name="dashboard",
        )  # fmt: skip
        url = dash.expect("dashboard", timeout=30)["url"]
        page = dashboard_page(url, wrap=lan.a.exec)
        procs.append(page)
        status = page.expect
        session = status("session", timeout=30)
        assert discover_room(lan.b.exec, tmp_path / "scan", session["room"])
        alice = agent(
            procs, lan.b.exec, tmp_path / "alice", "join", session["code"], "--headless",
            "--json", "--name", "Alice", name="alice",
        )  # fmt: skip
        assert alice.expect("joined", timeout=30)["name"] == "Carol"
        assert status("joined")["name"] == "Alice"
        alice.send({"cmd": "chat", "text": "found you on the LAN"})
        assert status("chat")["text"] == "found you on the LAN"
        page.send({"op": "cmd", "session": session["sid"], "cmd": {"cmd": "end"}})
        alice.expect("ended", timeout=20)
        assert alice.wait(timeout=20) == 0
        status("ended")
        # the announcement went with the session; the dashboard goes on
        assert session["room"] not in [s["room"] for s in discover(lan.b.exec, tmp_path / "x")]


def test_a_wrong_code_counts_once_and_a_burned_code_says_so(
    procs: list[Proc], tmp_path: Path
) -> None:
    """On its default port, the CSR's session is reachable two ways from its own
    machine: the LAN announcement and this machine's fallback address. A mistyped code
    costs one attempt, not two; after three, the right code is told it was burned."""
    with NetnsPair(ipv6=False) as lan:
        csr = agent(
            procs, lan.a.exec, tmp_path / "csr", "start", "--headless", "--json",
            "--name", "Carol", name="csr",
        )  # fmt: skip
        session = csr.expect("session", timeout=30)
        assert session["signal"].endswith(":47800")
        right = session["code"]
        wrong = right[:-1] + str((int(right[-1]) + 1) % 10)
        for attempt in (1, 2, 3):
            bad = agent(
                procs, lan.a.exec, tmp_path / f"bad{attempt}", "join", wrong, "--headless",
                "--json", name=f"typo{attempt}",
            )  # fmt: skip
            err = bad.expect("error", timeout=30)
            assert err["code"] == ("wrong_code" if attempt < 3 else "code_burned"), err
            if attempt < 3:
                assert f"{3 - attempt} attempt" in err["reason"], err
            assert bad.wait(timeout=15) == 1
            failed = csr.expect("join_failed", timeout=15)
            assert (failed["failures"], failed["remaining"]) == (attempt, 3 - attempt)
        assert csr.expect("code_closed")["reason"] == "burned"
        late = agent(
            procs, lan.a.exec, tmp_path / "late", "join", right, "--headless", "--json",
            name="late",
        )  # fmt: skip
        err = late.expect("error", timeout=30)
        assert err["code"] == "code_burned" and "burned" in err["reason"], err
        csr.drain(1.0)
        assert len([e for e in csr.events if e.get("event") == "join_failed"]) == 3
        csr.send({"cmd": "end"})
        assert csr.wait(timeout=20) == 0
        for p in procs:
            p.quiet()


def test_after_a_take_over_the_new_primary_advertises(procs: list[Proc], tmp_path: Path) -> None:
    """The primary (machine A) hosts the session's signaling endpoint and dies with it
    (kill -9). The assistant (machine B) takes over, hosts an endpoint of its own and
    announces its new room: from A, ``discover`` lists it and a new customer joins with
    the new code alone; the first customer (on B) goes on chatting."""
    with NetnsPair() as lan:
        carol = agent(
            procs, lan.a.exec, tmp_path / "carol", "start", "--lan", "--port", "0",
            "--headless", "--json", "--name", "Carol", name="primary",
        )  # fmt: skip
        session = carol.expect("session", timeout=30)
        alice = agent(
            procs, lan.b.exec, tmp_path / "alice", "join", session["code"],
            "--headless", "--json", "--name", "Alice", name="alice",
        )  # fmt: skip
        alice.expect("joined", timeout=30)
        carol.expect("joined", timeout=30)
        dan = agent(
            procs, lan.b.exec, tmp_path / "dan", "join", session["csr_code"], "--as",
            "assistant", "--headless", "--json", "--name", "Dan", name="assistant",
        )  # fmt: skip
        dan_id = carol.expect("assistant_request", timeout=30)["peer"]
        carol.send({"cmd": "admit", "peer": dan_id})
        dan.expect("joined", lambda e: e["role"] == "customer", timeout=30)
        dan.expect("direct", timeout=30)
        alice.expect("direct", timeout=30)
        carol.proc.kill()

        assert dan.expect("failover", timeout=15)["primary"] == dan_id
        alice.expect("failover", timeout=15)
        again = dan.expect("session", timeout=30)
        assert again["room"] != session["room"] and again["me"] == dan_id
        assert urlsplit(again["signal"]).hostname == lan.b.ipv4  # Dan's own endpoint

        # found from A by discovery, with the new primary's name, never the secret
        mine = discover_room(lan.a.exec, tmp_path / "scan", again["room"])
        assert mine and mine[0]["name"] == "Dan"
        assert again["code"].replace("-", "")[6:] not in json.dumps(mine[0]).replace(
            again["room"], ""
        )
        # joined from A with the new code alone: no server configured
        bob = agent(
            procs, lan.a.exec, tmp_path / "bob", "join", again["code"],
            "--headless", "--json", "--name", "Bob", name="bob",
        )  # fmt: skip
        assert bob.expect("joined", timeout=30)["peer"] == dan_id
        bob_id = dan.expect("joined", lambda e: e["name"] == "Bob", timeout=30)["peer"]
        dan.send({"cmd": "chat", "text": "welcome Bob"})
        assert bob.expect("chat", lambda e: e["text"] == "welcome Bob")["from"] == dan_id
        assert alice.expect("chat", lambda e: e["text"] == "welcome Bob")["from"] == dan_id
        bob.send({"cmd": "chat", "text": "hello from A"})
        assert dan.expect("chat", lambda e: e["text"] == "hello from A")["from"] == bob_id
        alice.send({"cmd": "chat", "text": "still here"})
        assert dan.expect("chat", lambda e: e["text"] == "still here")

        dan.send({"cmd": "end"})
        alice.expect("ended", timeout=30)
        bob.expect("ended", timeout=30)
        assert dan.wait() == 0 and alice.wait() == 0 and bob.wait() == 0
        # the announcement is withdrawn when the session ends
        listed = discover(lan.a.exec, tmp_path / "scan")
        assert not [s for s in listed if s["room"] == again["room"]]


def test_lan_discovery_is_untrusted_the_pake_still_decides(
    procs: list[Proc], tmp_path: Path
) -> None:
    """Whoever answers for a room id on the LAN still has to know the code."""
    with NetnsPair() as lan:
        csr = agent(
            procs, lan.a.exec, tmp_path / "csr", "start", "--port", "0", "--headless",
            "--json", name="csr",
        )  # fmt: skip
        session = csr.expect("session", timeout=30)
        digits = session["code"].replace("-", "")
        wrong = digits[:6] + f"{(int(digits[6:]) + 1) % 10**6:06d}"
        mallory = agent(
            procs, lan.b.exec, tmp_path / "m", "join", wrong, "--headless", "--json", name="m"
        )
        err = mallory.expect("error", timeout=30)
        assert err["code"] == "wrong_code"
        assert mallory.wait() == 1
        assert csr.expect("join_failed")["remaining"] == 2

        # a room nobody announces: a clear error, after a bounded wait
        absent = f"{(int(digits[:6]) + 1) % 10**6:06d}" + digits[6:]
        lost = agent(
            procs, lan.b.exec, tmp_path / "l", "join", absent, "--headless", "--json", name="l"
        )
        err = lost.expect("error", timeout=30)
        assert "found on the LAN" in err["reason"]
        assert lost.wait() == 1
        csr.send({"cmd": "end"})
        assert csr.wait() == 0


ANNOUNCER = """
import asyncio, json, sys
from agent.net.lan import LanAdvertiser
async def main():
    ads = [LanAdvertiser(room, port, addresses=[addr], instance=instance)
           for instance, room, port, addr in json.loads(sys.argv[1])]
    for ad in ads:
        await ad.start()
    print("announced", flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
"""


def test_lan_answers_that_lead_nowhere_are_skipped(procs: list[Proc], tmp_path: Path) -> None:
    """Someone squats the room's own instance name and points it at a server without
    the room; another answer points at a closed port. The join skips both and reaches
    the session that knows the code (announced here under another name)."""
    with NetnsPair() as lan:
        csr = agent(
            procs, lan.a.exec, tmp_path / "csr", "start", "--port", "0", "--no-advertise",
            "--headless", "--json", name="csr",
        )  # fmt: skip
        session = csr.expect("session", timeout=30)
        room, real_port = session["room"], urlsplit(session["signal"]).port
        decoy = Proc(
            ["signaling", "--host", str(lan.b.ipv4), "--port", "0"], name="decoy", wrap=lan.b.exec
        )
        procs.append(decoy)
        port = decoy.expect("listening", timeout=20)["port"]
        announced = [
            [f"PeerDesk {room}", room, port, lan.b.ipv4],  # the name a joiner asks for first
            ["AAB closed port", room, 9, lan.b.ipv4],
            ["ZZZ the real one", room, real_port, lan.a.ipv4],
        ]
        announcer = subprocess.Popen(
            [*lan.b.exec, sys.executable, "-c", ANNOUNCER, json.dumps(announced)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert announcer.stdout is not None
            assert announcer.stdout.readline().strip() == "announced"
            for _ in range(4):  # a loaded machine can miss an answer in one 2 s scan
                listed = discover(lan.b.exec, tmp_path / "scan")
                if len([s for s in listed if s["room"] == room]) == 3:
                    break
            assert len([s for s in listed if s["room"] == room]) == 3, listed
            alice = agent(
                procs, lan.b.exec, tmp_path / "alice", "-v", "join", session["code"],
                "--headless", "--json", name="alice",
            )  # fmt: skip
            alice.expect("joined", timeout=30)
            csr.expect("joined", timeout=30)
            log = "".join(alice.stderr)
            # Which answer comes first is up to multicast DNS: when the squatter's came
            # first it was tried and skipped; either way the real session was joined.
            decoy = f"ws://{lan.b.ipv4}:{port}/ws"
            if decoy in log:
                assert f"no session {room} at {decoy}" in log
            assert ":9/ws" not in log  # the closed port was never tried
            assert not [e for e in csr.events if e.get("event") == "join_failed"]
            csr.send({"cmd": "end"})
            alice.expect("ended")
            assert csr.wait() == 0 and alice.wait() == 0
        finally:
            announcer.kill()
            announcer.wait(timeout=10)


def test_join_by_code_alone_on_one_machine(procs: list[Proc], tmp_path: Path) -> None:
    """PEERDESK_LAN_INTERFACES=127.0.0.1 (which tests.procs sets): found over loopback."""
    csr = Proc(["agent", "start", "--port", "0", "--headless", "--json"], home=tmp_path / "c")
    procs.append(csr)
    session = csr.expect("session")
    alice = Proc(["agent", "join", session["code"], "--headless", "--json"], home=tmp_path / "a")
    procs.append(alice)
    alice.expect("joined")
    csr.expect("joined")
    csr.send({"cmd": "end"})
    alice.expect("ended")
    assert csr.wait() == 0 and alice.wait() == 0
    bad = Proc(
        ["agent", "join", session["code"], "--headless", "--json"],
        home=tmp_path / "b",
        env={"PEERDESK_LAN_INTERFACES": "eth0"},
    )
    procs.append(bad)
    assert "PEERDESK_LAN_INTERFACES: 'eth0' is not an IP address" in bad.expect("error")["reason"]


def test_no_network_at_all_is_a_clear_error(tmp_path: Path) -> None:
    """A namespace with no interface up: zeroconf cannot listen; we say so, no traceback."""
    ns = f"pdnone{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        env = {"PEERDESK_HOME": str(tmp_path), "PATH": "/usr/sbin:/usr/bin:/bin", **_pythonpath()}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "agent", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )

        r = run("discover", "--timeout", "1")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.startswith("peerdesk: cannot use the LAN for discovery"), r.stderr
        r = run("join", "1234-5678-9012", "--json")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert json.loads(r.stdout)["code"] == "no_such_session"
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20)


def test_no_ipv6_route_starts_quietly(procs: list[Proc], tmp_path: Path) -> None:
    """A namespace whose only IPv6 is loopback's ::1, with no route for multicast, as
    in most VMs and containers. Both agents start with every interface
    (no PEERDESK_LAN_INTERFACES), find each other by the code alone, and print nothing
    on stderr: no zeroconf traceback per packet it cannot send."""
    ns = f"pdv4only{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        wrap = ["ip", "netns", "exec", ns]
        setup = [  # a veth pair gives aiortc a host candidate; IPv6 off on it
            "ip link set lo up",
            "ip link add pdq0 type veth peer name pdq1",
            "sysctl -qw net.ipv6.conf.pdq0.disable_ipv6=1 net.ipv6.conf.pdq1.disable_ipv6=1",
            "ip addr add 10.231.0.1/24 dev pdq0",
            "ip addr add 10.231.0.2/24 dev pdq1",
            "ip link set pdq0 up",
            "ip link set pdq1 up",
        ]
        for line in setup:
            subprocess.run([*wrap, *line.split()], check=True, timeout=20)
        csr = Proc(["agent", "start", "--headless", "--json"], home=tmp_path / "c", wrap=wrap)
        procs.append(csr)
        session = csr.expect("session")
        alice = Proc(
            ["agent", "join", session["code"], "--headless", "--json"],
            home=tmp_path / "a",
            wrap=wrap,
        )
        procs.append(alice)
        alice.expect("joined")
        csr.expect("joined")
        csr.send({"cmd": "end"})
        alice.expect("ended")
        assert csr.wait() == 0 and alice.wait() == 0
        for who in (csr, alice):
            assert "".join(who.stderr) == "", f"{who.name}: {''.join(who.stderr)}"
            assert not [e for e in who.events if e.get("event") == "error"], who.events
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20)


def test_lan_options_are_checked(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PEERDESK_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **_pythonpath()},
        )

    r = run("start", "--lan", "--signal", "ws://127.0.0.1:9", "--json")
    assert r.returncode == 2 and "drop --signal" in json.loads(r.stdout)["reason"]
    r = run("discover", "--timeout", "0")
    assert r.returncode == 2 and "--timeout must be between" in r.stderr


# -- the TXT record, as hostile input ---------------------------------------------------


def test_txt_record_round_trip_carries_no_secret() -> None:
    props = encode_txt(LanRecord(room="482913", name="Carol\x1b[2J"))
    assert set(props) == {"v", "room", "name", "path"}
    raw = {k.encode(): v.encode() for k, v in props.items()}
    assert decode_txt(raw) == LanRecord(room="482913", name="Carol[2J", path="/ws")


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({b"room": b"482913"}, "version"),
        ({b"v": b"2", b"room": b"482913"}, "version"),
        ({b"v": b"1", b"room": b"48291"}, "6 digits"),
        ({b"v": b"1"}, "6 digits"),
        ({b"v": b"1", b"room": b"\xff\xfe"}, "UTF-8"),
        ({b"v": b"1", b"room": b"482913", b"path": b"/../etc"}, "path"),
        ({b"v": b"1", b"room": b"482913", b"path": b"ws://evil/"}, "path"),
        ({b"v": b"1", b"room": b"482913", b"name": b"x" * 2000}, "too large"),
    ],
)
def test_malformed_txt_records_are_refused(props: dict[bytes, bytes | None], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_txt(props)


@given(st.dictionaries(st.binary(max_size=20), st.none() | st.binary(max_size=300), max_size=8))
def test_txt_decoder_never_crashes(props: dict[bytes, bytes | None]) -> None:
    try:
        record = decode_txt(props)
    except DecodeError:
        return
    assert len(record.room) == 6 and record.room.isdigit()
    assert record.path.startswith("/") and ".." not in record.path
    assert len(record.name) <= 64 and record.name.isprintable()


def test_signal_urls_skip_unusable_addresses() -> None:
    urls = signal_urls(
        ["fe80::1%eth0", "0.0.0.0", "224.0.0.251", "nonsense", "fd77::1", "10.0.0.5"], 47800
    )
    assert urls == ("ws://10.0.0.5:47800/ws", "ws://[fd77::1]:47800/ws")
    assert signal_urls(["10.0.0.5"], 0) == ()
