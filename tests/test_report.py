"""Activity reports from a session log: the model, JSON, HTML, text, files and CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import report as rp
from agent.errors import LocalProtocolError
from agent.protocol.handshake import peer_id

T0 = datetime(2025, 3, 4, 10, 15, 2, tzinfo=UTC).timestamp()
KEYS = {name: hashlib.sha256(name.encode()).digest() for name in ("carol", "dave", "alice", "bob")}
ID = {name: peer_id(key) for name, key in KEYS.items()}
CAROL, DAVE, ALICE, BOB = ID["carol"], ID["dave"], ID["alice"], ID["bob"]
HOSTILE = '<script>alert("x")</script>'


class LogWriter:
    """Builds entries shaped as the session log writes them (fake hashes and sigs)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.epoch = 1
        self.seq = 0
        self.prev = "00" * 32

    def add(self, t: float, author: str, kind: str, **body: Any) -> dict[str, Any]:
        self.seq += 1
        name = next(n for n, i in ID.items() if i == author)
        entry = {
            "v": 1,
            "epoch": self.epoch,
            "seq": self.seq,
            "prev": self.prev,
            "author": author,
            "key": base64.b64encode(KEYS[name]).decode(),
            "ts": T0 + t,
            "kind": kind,
            "body": body,
            "sig": base64.b64encode(os.urandom(64)).decode(),
            "x_future_field": {"ignored": True},
        }
        self.prev = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
        self.entries.append(entry)
        return entry


def make_log(
    *, finished: bool = True, failover: bool = True, names: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """A realistic session of ~40 entries touching every kind.

    Carol (primary CSR) helps Alice; Dave assists; Bob watches and is made primary
    customer; Carol's agent vanishes, Dave takes over in epoch 2 and Carol rejoins.
    """
    n = {CAROL: "Carol", DAVE: "Dave", ALICE: "Alice", BOB: "Bob"}
    n.update({ID[k]: v for k, v in (names or {}).items()})
    log = LogWriter()
    a = log.add

    def person(t: float, author: str, peer: str, role: str, primary: bool, action: str) -> None:
        a(
            t,
            author,
            "participant",
            peer=peer,
            name=n[peer],
            role=role,
            primary=primary,
            action=action,
        )

    def chat(t: float, sender: str, text: str, to: list[str] | None = None) -> None:
        a(t, sender, "chat", **{"from": sender, "name": n[sender], "text": text, "to": to})

    def ask(t: float, rid: str, cap: str, *states: str) -> None:
        a(t, CAROL, "request", id=rid, cap=cap, csr=CAROL, customer=ALICE)
        for k, state in enumerate(states, start=1):
            a(t + k * 2, ALICE, "consent", id=rid, cap=cap, state=state, csr=CAROL, customer=ALICE)

    def file(t: float, fid: str, name: str, size: int, direction: str, state: str) -> None:
        a(
            t,
            CAROL,
            "file",
            id=fid,
            name=name,
            size=size,
            sha256=(fid * 32)[:64],
            direction=direction,
            by=CAROL,
            state=state,
        )

    a(0, CAROL, "session_start", room="482913", primary=CAROL, name=n[CAROL])
    person(5, CAROL, ALICE, "customer", True, "joined")
    chat(9, ALICE, "Hi, my printer is broken")
    chat(15, CAROL, "Hello! Let me take a look.")
    ask(20, "r1", "view", "pending", "granted")
    person(60, CAROL, DAVE, "assistant", False, "joined")
    chat(62, DAVE, "I know this model.", to=[CAROL])
    ask(70, "r2", "control", "granted")
    a(75, CAROL, "control", holder=CAROL, token=[1, 12], by=CAROL)
    a(90, CAROL, "note", text="Driver v3 is outdated; updating to v5", by=CAROL)
    ask(100, "r3", "sysinfo", "granted")
    a(104, ALICE, "sysinfo", customer=ALICE, data=SYSINFO)
    ask(110, "r4", "files")
    a(114, ALICE, "consent", id="r4", cap="files", state="granted", csr=CAROL, customer=ALICE)
    file(120, "f1", "driver-v5.exe", 3 * 2**20, "to_customer", "offered")
    file(150, "f1", "driver-v5.exe", 3 * 2**20, "to_customer", "done")
    file(160, "f2", "spooler.log", 2048, "from_customer", "done")
    a(170, CAROL, "control", holder=DAVE, token=[1, 22], by=CAROL)
    person(180, CAROL, BOB, "customer", False, "joined")
    chat(185, BOB, "Can I watch?\nI'm her colleague.")
    person(190, CAROL, BOB, "customer", True, "promoted")
    a(200, DAVE, "control", holder=CAROL, token=[1, 27], by=DAVE)
    a(210, CAROL, "note", sealed=base64.b64encode(b"\x00secret").decode(), by=CAROL)
    if failover:
        person(240, DAVE, CAROL, "csr", True, "lost")
        log.epoch = 2
        a(250, DAVE, "epoch", epoch=2, sequencer=DAVE, votes=[DAVE, ALICE])
        a(251, DAVE, "control", holder=None, token=[2, 1], by=DAVE)
        chat(255, DAVE, "Carol dropped; I'm on it.")
        person(300, DAVE, CAROL, "csr", False, "joined")
    a(320, ALICE, "consent", id="r2", cap="control", state="revoked", csr=CAROL, customer=ALICE)
    ask(330, "r5", "clipboard")
    a(335, ALICE, "consent", id="r5", cap="clipboard", state="denied", csr=CAROL, customer=ALICE)
    chat(340, ALICE, "It prints now, thanks!")
    chat(345, BOB, "Great")
    person(350, CAROL, BOB, "customer", False, "left")
    a(352, CAROL, "note", text="Resolved. Follow up next week.", by=CAROL)
    if finished:
        end_by = DAVE if failover else CAROL
        a(360, end_by, "session_end", by=end_by, reason="resolved")
    return log.entries


SYSINFO = {
    "os": {
        "system": "Windows",
        "release": "11",
        "machine": "AMD64",
        "hostname": "ALICE-PC",
        "uptime_s": 7200,
    },
    "cpu": {"model": "Intel i5", "logical": 8, "load_percent": 12.5},
    "memory": {"total": 16 * 2**30, "available": 9 * 2**30, "percent": 43.0},
    "disks": [{"mount": "C:\\", "fs": "NTFS", "total": 500 * 2**30, "free": 120 * 2**30}],
    "displays": [{"index": 1, "x": 0, "y": 0, "width": 1920, "height": 1080}],
    "network": [
        {"name": "Ethernet", "up": True, "addresses": ["192.168.1.20"]},
        {"name": "lo", "up": True, "addresses": ["127.0.0.1"]},
    ],
    "agent": {"version": "0.1.0", "python": "3.11.9"},
    "printer": {"model": "LaserJet"},
}


@pytest.fixture(scope="module")
def report() -> rp.Report:
    return rp.build(make_log())


# --- the model --------------------------------------------------------------------


def test_fixture_covers_every_kind() -> None:
    entries = make_log()
    kinds = {e["kind"] for e in entries}
    assert kinds == {
        "session_start",
        "participant",
        "request",
        "consent",
        "control",
        "chat",
        "note",
        "file",
        "sysinfo",
        "epoch",
        "session_end",
    }
    assert 35 <= len(entries) <= 45


def test_header_facts(report: rp.Report) -> None:
    assert report.session_id == "20250304-101502-482913"
    assert report.room == "482913"
    assert report.title == "Support session 482913: Carol with Alice, Bob"
    assert report.started == datetime.fromtimestamp(T0, UTC)
    assert report.ended == datetime.fromtimestamp(T0 + 360, UTC)
    assert report.duration_s == 360
    assert report.finished
    assert report.end_reason == "resolved"
    assert report.ended_by == DAVE
    assert report.primary_csr == DAVE
    assert report.entries == len(make_log())
    assert report.warnings == ()


def test_participants_with_stints_and_roles(report: rp.Report) -> None:
    people = {p.id: p for p in report.participants}
    assert [p.name for p in report.participants] == ["Carol", "Alice", "Dave", "Bob"]
    carol = people[CAROL]
    assert carol.role == "csr"
    assert [(s.how) for s in carol.stints] == ["lost", "end"]
    assert carol.stints[0].left == datetime.fromtimestamp(T0 + 240, UTC)
    assert carol.stints[1].joined == datetime.fromtimestamp(T0 + 300, UTC)
    assert carol.left == report.ended  # present at the end: she gets its time
    assert not carol.primary
    assert people[DAVE].role == "csr" and people[DAVE].primary  # took over
    assert people[BOB].primary and not people[ALICE].primary  # promoted, then left
    assert people[BOB].how_left == "left"
    assert [p.name for p in report.customers] == ["Bob", "Alice"]
    assert report.csrs[0].name == "Dave"


def test_grants_timeline(report: rp.Report) -> None:
    grants = {g.id: g for g in report.grants}
    assert [c.state for c in grants["r1"].history] == ["requested", "pending", "granted"]
    assert grants["r2"].state == "revoked"
    assert grants["r2"].cap == "control"
    assert grants["r5"].state == "denied"
    assert grants["r1"].requested == datetime.fromtimestamp(T0 + 20, UTC)


def test_control_files_notes_sysinfo(report: rp.Report) -> None:
    assert [c.holder for c in report.control] == [CAROL, DAVE, CAROL, None]
    assert report.control[1].by == CAROL and report.control[1].token == (1, 22)
    files = {f.id: f for f in report.files}
    assert files["f1"].state == "done" and files["f1"].size == 3 * 2**20
    assert files["f1"].first == datetime.fromtimestamp(T0 + 120, UTC)
    assert files["f1"].last == datetime.fromtimestamp(T0 + 150, UTC)
    assert files["f2"].direction == "from_customer"
    assert [(n.sealed, n.text) for n in report.notes] == [
        (False, "Driver v3 is outdated; updating to v5"),
        (True, None),
        (False, "Resolved. Follow up next week."),
    ]
    (info,) = report.sysinfo
    items = dict(info.items)
    assert items["Operating system"] == "Windows 11 (AMD64)"
    assert items["Memory"].startswith("16.0 GiB")
    assert items["Displays"] == "1920x1080"
    assert "LaserJet" in items["printer"]


def test_chat_transcript_in_order(report: rp.Report) -> None:
    assert [c.name for c in report.chat] == [
        "Alice",
        "Carol",
        "Dave",
        "Bob",
        "Dave",
        "Alice",
        "Bob",
    ]
    assert report.chat[2].to == (CAROL,)
    assert report.chat[0].to is None
    assert report.chat[3].text == "Can I watch?\nI'm her colleague."


def test_failover_epoch_is_shown(report: rp.Report) -> None:
    (ep,) = report.epochs
    assert ep.epoch == 2 and ep.sequencer == DAVE and ep.takeover
    assert ep.votes == (DAVE, ALICE)
    text = next(e.text for e in report.timeline if e.kind == "epoch")
    assert "Dave took over" in text and "failover" in text
    page = rp.to_html(report, tz=UTC)
    assert "Epochs and failovers" in page and "failover (take-over)" in page
    assert "epoch 2: Dave (failover)" in rp.to_text(report, tz=UTC)


def test_no_failover_has_no_epoch_section() -> None:
    r = rp.build(make_log(failover=False))
    assert r.epochs == () and r.primary_csr == CAROL
    assert "Epochs and failovers" not in rp.to_html(r, tz=UTC)


def test_sealed_note_opened_by_caller() -> None:
    def open_note(entry: Any) -> str | None:
        return "the plaintext" if entry["body"].get("sealed") else None

    r = rp.build(make_log(), open_note=open_note)
    assert [n.text for n in r.notes][1] == "the plaintext"
    assert "the plaintext" in rp.to_html(r, tz=UTC)
    plain = rp.to_html(rp.build(make_log()), tz=UTC)
    assert "(encrypted note)" in plain


def test_note_opener_failure_keeps_it_sealed() -> None:
    def broken(entry: Any) -> str | None:
        raise ValueError("bad tag")

    r = rp.build(make_log(), open_note=broken)
    assert r.notes[1].text is None
    assert any("could not be opened" in w for w in r.warnings)


def test_unfinished_session() -> None:
    r = rp.build(make_log(finished=False))
    assert r.ended is None and not r.finished and r.duration_s is None
    assert r.last_activity == datetime.fromtimestamp(T0 + 352, UTC)
    text = rp.to_text(r, tz=UTC)
    assert re.search(r"ended:\s+unknown \(unfinished", text)
    assert "duration:  unknown" in text
    page = rp.to_html(r, tz=UTC)
    assert "<dt>Ended</dt><dd>unknown (unfinished" in page
    assert json.loads(rp.to_json(r))["ended"] is None


def test_durations_render() -> None:
    assert rp._duration(360) == "0:06:00"
    assert rp._duration(3725.4) == "1:02:05"
    assert rp._duration(90000) == "1 d 1:00:00"
    assert rp._duration(None) == "unknown"
    r = rp.build(make_log())
    assert "duration:  0:06:00" in rp.to_text(r, tz=UTC)
    assert "<dt>Duration</dt><dd>0:06:00</dd>" in rp.to_html(r, tz=UTC)


def test_empty_log_is_an_error() -> None:
    with pytest.raises(LocalProtocolError, match="empty"):
        rp.build([])


def test_malformed_entries_are_left_out_with_warnings() -> None:
    entries: list[Any] = [
        *make_log()[:5],
        "not an entry",
        {"kind": "chat"},
        {"kind": 5, "body": {}},
        {"kind": "chat", "body": {"from": ALICE}, "ts": "yesterday"},
        {"kind": "consent", "body": {"id": "r1", "state": "maybe"}, "ts": T0 + 1},
        {"kind": "mystery", "body": {}, "ts": T0 + 2},
        {"kind": "mystery", "body": {}, "ts": T0 + 3},
    ]
    r = rp.build(entries)
    assert len(r.chat) == 2  # the two in the first five entries
    joined = "\n".join(r.warnings)
    assert "entry 6 is not an object" in joined
    assert "entry 7 (chat) has no body" in joined
    assert "entry 8 has no kind" in joined
    assert "entry 9 (chat): no text" in joined
    assert "unknown state" in joined
    assert "2 entries of unknown kind 'mystery'" in joined


def test_log_without_session_start() -> None:
    r = rp.build(make_log()[1:])
    assert r.room == "" and r.session_id == "20250304-101507-room"
    assert any("no session_start" in w for w in r.warnings)


def test_explicit_session_id_is_checked() -> None:
    assert rp.build(make_log(), session_id="abc_1").session_id == "abc_1"
    with pytest.raises(LocalProtocolError):
        rp.build(make_log(), session_id="../escape")


# --- JSON -------------------------------------------------------------------------


def test_json_schema(report: rp.Report) -> None:
    data = json.loads(rp.to_json(report))
    assert list(data)[:4] == ["peerdesk_report", "session_id", "room", "title"]
    assert data["peerdesk_report"] == 1
    for key in (
        "started",
        "ended",
        "last_activity",
        "end_reason",
        "ended_by",
        "primary_csr",
        "entries",
        "names",
        "participants",
        "timeline",
        "grants",
        "control",
        "files",
        "chat",
        "notes",
        "sysinfo",
        "epochs",
        "warnings",
        "duration_s",
        "finished",
    ):
        assert key in data, key
    assert data["started"] == "2025-03-04T10:15:02.000Z"
    assert data["duration_s"] == 360
    assert data["names"][ALICE] == "Alice"
    carol = data["participants"][0]
    assert set(carol) == {"id", "name", "role", "primary", "stints", "joined", "left", "how_left"}
    assert carol["stints"][0] == {
        "joined": "2025-03-04T10:15:02.000Z",
        "left": "2025-03-04T10:19:02.000Z",
        "how": "lost",
    }
    assert data["chat"][2] == {
        "at": "2025-03-04T10:16:04.000Z",
        "sender": DAVE,
        "name": "Dave",
        "text": "I know this model.",
        "to": [CAROL],
    }
    assert data["control"][0]["token"] == [1, 12]
    assert data["epochs"][0]["takeover"] is True
    assert data["grants"][0]["history"][0] == {
        "at": "2025-03-04T10:15:22.000Z",
        "state": "requested",
    }
    assert data["sysinfo"][0]["items"][0] == ["Operating system", "Windows 11 (AMD64)"]


def test_json_is_stable_and_round_trips(report: rp.Report) -> None:
    text = rp.to_json(report)
    assert rp.to_json(rp.build(make_log())) == text
    assert rp.from_json(text) == report
    assert rp.from_json(rp.to_json(rp.build(make_log(finished=False)))).ended is None


def test_milliseconds_round_trip() -> None:
    entries = make_log()
    entries[0]["ts"] = T0 + 0.1237
    r = rp.build(entries)
    assert r.started is not None and r.started.microsecond == 124000
    assert rp.from_json(rp.to_json(r)) == r


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "not a PeerDesk session report"),
        ('{"peerdesk_report": 2}', "version 2"),
        ('{"peerdesk_report": true}', "version True"),
        ('{"peerdesk_report": 1}', "session_id is missing"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ],
    ids=["truncated", "list", "version", "bool-version", "empty", "deep"],
)
def test_from_json_rejects_garbage(text: str, problem: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(problem)):
        rp.from_json(text)


def test_from_json_names_the_bad_field(report: rp.Report) -> None:
    data = json.loads(rp.to_json(report))
    data["chat"][1]["at"] = "noon"
    with pytest.raises(LocalProtocolError, match=r"report\.chat\[1\]\.at is not an ISO 8601 time"):
        rp.from_json(json.dumps(data))
    data = json.loads(rp.to_json(report))
    data["control"][0]["token"] = [1]
    with pytest.raises(LocalProtocolError, match=r"token must have 2 items"):
        rp.from_json(json.dumps(data))
    data = json.loads(rp.to_json(report))
    data["session_id"] = "../../x"
    with pytest.raises(LocalProtocolError, match="session id"):
        rp.from_json(json.dumps(data))


# --- HTML and text ----------------------------------------------------------------


def test_html_is_self_contained_and_has_every_section(report: rp.Report) -> None:
    page = rp.to_html(report, tz=UTC)
    assert page.startswith("<!DOCTYPE html>")
    assert "<style>" in page and "@media print" in page
    assert "Content-Security-Policy" in page
    for attr in ("src=", "href=", "url(", "@import", "<link", "<script", "<iframe"):
        assert attr not in page.lower(), attr
    for title in (
        "Participants",
        "Timeline",
        "Permissions",
        "Chat transcript",
        "Files",
        "Notes",
        "System information",
    ):
        assert f"<h2>{title}</h2>" in page
    assert "Alice" in page and "Carol" in page
    assert "2025-03-04 10:15:02 UTC" in page
    assert "driver-v5.exe" in page and "3.0 MiB" in page
    assert "private to Carol" in page
    carol_row = page[page.index("<td>Carol") : page.index("</tr>", page.index("<td>Carol"))]
    assert "10:15:02 to 10:19:02 (connection lost)<br>10:20:02 to the end" in carol_row


def test_html_transcript_in_order(report: rp.Report) -> None:
    page = rp.to_html(report, tz=UTC)
    chat = page[page.index('id="chat"') : page.index('id="files"')]
    positions = [chat.index(c.text.replace("'", "&#x27;").split("\n")[0]) for c in report.chat]
    assert positions == sorted(positions)
    timeline = page[page.index('id="timeline"') : page.index('id="permissions"')]
    assert timeline.index("Session started by Carol") < timeline.index("Session ended by Dave")


def test_hostile_strings_are_escaped() -> None:
    evil = {
        "carol": HOSTILE,
        "alice": '"><img src=x onerror=alert(1)>',
        "bob": "Bob\x1b[31m\u202eevil",
    }
    entries = make_log(names=evil)
    entries[2]["body"]["text"] = f"</td></tr></table>{HOSTILE}<SCRIPT>x</SCRIPT>"
    entries[0]["body"]["room"] = "<b>482913</b>"
    files = [e for e in entries if e["kind"] == "file"]
    files[0]["body"]["name"] = "<script src=//evil>.exe"
    entries[-1]["body"]["reason"] = "</title><script>1</script>"
    notes = [e for e in entries if e["kind"] == "note"]
    notes[0]["body"]["text"] = "<ScRiPt>bad()</sCrIpT>"
    r = rp.build(entries)
    page = rp.to_html(r, tz=UTC)
    assert "<script" not in page.lower()
    assert "<img" not in page.lower() and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;" in page
    assert "\x1b" not in page and "\u202e" not in page
    assert rp.from_json(rp.to_json(r)) == r
    text = rp.to_text(r, tz=UTC)
    assert "\x1b" not in text and "\u202e" not in text
    assert "Bob[31mevil" in text


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([HOSTILE, "<SCRIPT", "\x1b[2J", "\u202e", "\ud800", "1e400", ALICE, CAROL]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KIND = st.sampled_from(
    [
        "session_start",
        "participant",
        "request",
        "consent",
        "control",
        "chat",
        "note",
        "file",
        "sysinfo",
        "epoch",
        "session_end",
        "other",
    ]
)
FIELDS = st.sampled_from(
    [
        "room",
        "primary",
        "name",
        "peer",
        "role",
        "primary",
        "action",
        "id",
        "cap",
        "csr",
        "customer",
        "state",
        "holder",
        "token",
        "by",
        "from",
        "text",
        "to",
        "sealed",
        "size",
        "sha256",
        "direction",
        "data",
        "epoch",
        "sequencer",
        "votes",
        "reason",
    ]
)
ENTRY = st.fixed_dictionaries(
    {"kind": KIND, "body": st.dictionaries(FIELDS, JSONISH, max_size=8)},
    optional={
        "ts": st.floats(allow_nan=True) | st.integers() | st.text(max_size=3),
        "author": JSONISH,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY | JSONISH, min_size=1, max_size=12))
def test_any_log_builds_renders_and_round_trips(entries: list[Any]) -> None:
    r = rp.build(entries)
    page = rp.to_html(r, tz=UTC)
    assert "<script" not in page.lower()
    text = rp.to_json(r)
    assert rp.from_json(text) == r
    assert "\x1b" not in rp.to_text(r, tz=UTC)
    for out in (page, text, rp.to_text(r, tz=UTC)):
        out.encode("utf-8")  # no lone surrogates survive


def test_absurd_numbers_do_not_break_the_report() -> None:
    entries = make_log()
    files = [e for e in entries if e["kind"] == "file"]
    files[0]["body"]["size"] = 10**5000
    info = next(e for e in entries if e["kind"] == "sysinfo")
    info["body"]["data"] = {
        "memory": {"total": float("inf"), "available": float("nan")},
        "os": {"uptime_s": 10**4000, "system": 1e308},
        "cpu": {"logical": -1},
        "weird": 10**4000,
    }
    entries[3]["ts"] = float("inf")
    r = rp.build(entries)
    assert rp.from_json(rp.to_json(r)) == r
    assert "size unknown" in rp.to_html(r, tz=UTC)


def test_from_json_refuses_control_characters(report: rp.Report) -> None:
    data = json.loads(rp.to_json(report))
    data["chat"][0]["text"] = "\x1b[2Jgotcha"
    with pytest.raises(LocalProtocolError, match=r"report\.chat\[0\]\.text holds control"):
        rp.from_json(json.dumps(data))


def test_text_rendering(report: rp.Report) -> None:
    text = rp.to_text(report, tz=UTC)
    assert text.startswith("Support session 482913: Carol with Alice, Bob\n")
    assert "customer:  Bob (primary customer), Alice (customer)" in text
    assert "started:   2025-03-04 10:15:02 UTC" in text
    assert "ended by:  Dave: resolved" in text
    assert "10:16:04  Dave → Carol: I know this model." in text
    assert "(encrypted note)" in text


def test_local_time_zone_is_used_when_asked(report: rp.Report) -> None:
    plus2 = timezone(timedelta(hours=2), "CEST-ish")
    assert "2025-03-04 12:15:02 CEST-ish" in rp.to_html(report, tz=plus2)


# --- files and CLI ----------------------------------------------------------------


def test_write_reports_atomic_and_private(tmp_path: Path) -> None:
    json_path, html_path = rp.write_reports(make_log(), tmp_path / "sessions", tz=UTC)
    assert json_path.name == "20250304-101502-482913.json"
    assert html_path.name == "20250304-101502-482913.html"
    assert json_path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "sessions").stat().st_mode & 0o777 == 0o700
    assert rp.load_report(json_path) == rp.build(make_log())
    assert "<h1>" in html_path.read_text()
    assert [p.name for p in (tmp_path / "sessions").iterdir() if p.name.startswith(".")] == []


def write_session(directory: Path, start_offset: float, room: str, finished: bool = True) -> str:
    entries = make_log(finished=finished)
    for e in entries:
        e["ts"] += start_offset
    entries[0]["body"]["room"] = room
    json_path, _ = rp.write_reports(entries, directory, tz=UTC)
    return json_path.stem


def test_list_sessions(tmp_path: Path) -> None:
    d = tmp_path / "sessions"
    older = write_session(d, 0, "111111")
    newer = write_session(d, 86400, "222222", finished=False)
    (d / "garbage.json").write_text("{not json")
    (d / "notes.txt").write_text("ignored")
    (d / "..hidden.json").write_text("{}")
    problems: list[str] = []
    sessions = rp.list_sessions(d, problems)
    assert [s.id for s in sessions] == [newer, older]
    assert sessions[0].room == "222222" and sessions[0].ended is None
    assert sessions[1].ended is not None
    assert sessions[1].participants == ("Dave", "Carol", "Bob", "Alice")
    assert problems == ["skipped garbage.json: " + problems[0].split(": ", 1)[1]]
    assert "not valid JSON" in problems[0]
    assert rp.list_sessions(tmp_path / "missing") == []


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEERDESK_HOME", str(tmp_path))
    return tmp_path


def test_cmd_sessions(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rp.cmd_sessions([]) == 0
    assert "no session reports yet" in capsys.readouterr().out
    sid = write_session(home / "sessions", 0, "482913")
    assert rp.cmd_sessions([]) == 0
    out = capsys.readouterr().out
    assert sid in out and "room 482913" in out and "0:06:00" in out and "Alice" in out
    assert rp.cmd_sessions(["--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == sid and row["room"] == "482913"
    assert row["started"] == "2025-03-04T10:15:02.000Z"
    assert rp.cmd_sessions(["--bogus"]) == 2


def test_cmd_report(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = write_session(home / "sessions", 0, "482913")
    assert rp.cmd_report([sid]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Support session 482913") and "Timeline" in out
    assert rp.cmd_report([sid, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["session_id"] == sid
    for alias in ("last", "2025", "482913"):
        assert rp.cmd_report([alias, "--json"]) == 0, alias
        assert json.loads(capsys.readouterr().out)["session_id"] == sid
    html_path = home / "sessions" / f"{sid}.html"
    html_path.unlink()
    opened: list[str] = []

    def fake_open(url: str) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr("agent.report.webbrowser.open", fake_open)
    assert rp.cmd_report([sid, "--html"]) == 0
    assert capsys.readouterr().out.strip() == str(html_path)
    assert html_path.is_file() and opened == []
    assert rp.cmd_report([sid, "--open"]) == 0
    assert opened == [html_path.resolve().as_uri()]


def test_cmd_report_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rp.cmd_report(["nope"]) == 1
    assert "no session report 'nope'" in capsys.readouterr().err
    assert rp.cmd_report(["../../etc/passwd"]) == 1
    assert "is not a session id" in capsys.readouterr().err
    assert rp.cmd_report([]) == 2
    assert rp.cmd_report(["x", "--json", "--html"]) == 2
    write_session(home / "sessions", 0, "111111")
    write_session(home / "sessions", 60, "222222")
    assert rp.cmd_report(["20250304-10"]) == 1
    assert "matches several sessions" in capsys.readouterr().err
    (home / "sessions" / "broken.json").write_text('{"peerdesk_report": 1}')
    assert rp.cmd_report(["broken"]) == 1
    assert "session_id is missing" in capsys.readouterr().err
