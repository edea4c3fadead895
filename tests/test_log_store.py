"""The session log on disk (SQLite) and the offline verifier.

The store must survive a SIGKILL of its writer in the middle of a batch: the file
opens, holds whole transactions only, every batch that was reported written is there,
and what is there verifies. The verifier must name the exact entry where a tampered
log breaks: a flipped byte, a deleted entry, two swapped entries, a forged signature,
an epoch without a majority of votes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.errors import LocalProtocolError, StoreError
from agent.logverify import export_jsonl, main, verify
from agent.protocol import log as lw
from agent.protocol.log import Entry
from agent.session.log import Committed, EpochChanged, Persist, SessionLog, VoteRecord
from agent.store import LogStore, session_db_path
from tests.logsim import ALICE, BOB, CAROL, Net, session

A, B, C = ALICE.id, BOB.id, CAROL.id
ROOT = Path(__file__).parent.parent


def chat(who: str, name: str, text: str) -> dict[str, object]:
    return {"from": who, "name": name, "text": text, "to": None}


def a_real_log() -> list[Entry]:
    """A committed log with proposals from everyone, a control grant and a failover."""
    net = session()
    for i in range(5):
        net.nodes[A].propose("chat", chat(A, "Alice", f"alice {i}"), net.now)
        net.nodes[C].propose("chat", chat(C, "Carol", f"carol {i}"), net.now)
        net.pump()
    token = net.nodes[A].state.control
    assert token is not None
    net.nodes[A].propose("control", {"holder": B, "token": list(token.token), "by": A}, net.now)
    net.nodes[C].propose("sysinfo", {"customer": C, "data": {"os": "Linux", "cpu": 12.5}}, net.now)
    net.pump()
    net.down = {A}
    net.tick(2.0)  # Bob takes over: an epoch entry with Bob's and Carol's votes
    for i in range(8):
        net.nodes[B].propose("note", {"text": f"note {i}", "by": B}, net.now)
        net.nodes[C].propose("chat", chat(C, "Carol", f"later {i}"), net.now)
        net.pump()
    net.nodes[B].propose("session_end", {"by": B, "reason": "solved"}, net.now)
    net.pump()
    log = net.committed(B)
    assert [e.kind for e in log].count("epoch") == 1 and log[-1].kind == "session_end"
    return log


@pytest.fixture(scope="module")
def real_log() -> list[Entry]:
    return a_real_log()


@pytest.fixture
def db(tmp_path: Path, real_log: list[Entry]) -> Path:
    path = tmp_path / "session.sqlite"
    with LogStore(path) as store:
        store.append(real_log)
    return path


# --------------------------------------------------------------------------- the store


def test_store_round_trip_truncate_vote_and_meta(tmp_path: Path, real_log: list[Entry]) -> None:
    path = tmp_path / "s.sqlite"
    with LogStore(path) as store:
        assert store.load() == [] and store.last() is None and store.load_vote() is None
        store.append(real_log[:10])
        store.append(real_log[10:])
        assert store.load() == real_log
        last = real_log[-1]
        assert store.last() == (last.epoch, last.seq, last.digest)
        store.truncate_from(20)
        assert store.load() == real_log[:20] and len(store) == 20
        store.save_vote(VoteRecord(3, B))
        store.set_meta(session_id="s1", room="123456", started=1.5, primary_csr=A)
        store.set_meta(title="printer on fire", ended=9.0)
        with pytest.raises(LocalProtocolError):
            store.set_meta(colour="red")
        assert path.stat().st_mode & 0o777 == 0o600
        assert Path(f"{path}-wal").stat().st_mode & 0o777 == 0o600
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
        assert (mode, sync) == ("wal", 2)  # 2 = FULL
    with LogStore(path) as again:
        assert again.load() == real_log[:20]
        assert again.load_vote() == VoteRecord(3, B)
        meta = again.meta()
        assert (meta.session_id, meta.room, meta.primary_csr, meta.title) == (
            "s1",
            "123456",
            A,
            "printer on fire",
        )
        assert (meta.started, meta.ended) == (1.5, 9.0)


def test_a_persist_request_is_one_transaction(tmp_path: Path, real_log: list[Entry]) -> None:
    with LogStore(tmp_path / "s.sqlite") as store:
        store.append(real_log[:12])
        store.apply(Persist(1, 8, tuple(real_log[8:10]), VoteRecord(2, None), 9))
        assert store.load() == real_log[:10] and store.load_vote() == VoteRecord(2, None)
        broken = Persist(2, 5, (real_log[5], None), VoteRecord(3, A), 6)  # type: ignore[arg-type]
        with pytest.raises(AttributeError):  # fails half-way: nothing of it is kept
            store.apply(broken)
        assert store.load() == real_log[:10] and store.load_vote() == VoteRecord(2, None)


def test_session_db_path_lives_in_the_agent_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERDESK_HOME", str(tmp_path))
    assert session_db_path("abc-123") == tmp_path / "sessions" / "abc-123.sqlite"
    for bad in ("../x", "a/b", "", "x" * 65):
        with pytest.raises(LocalProtocolError):
            session_db_path(bad)


def test_a_core_writes_through_its_store_and_restarts_from_it(tmp_path: Path) -> None:
    path = tmp_path / "alice.sqlite"
    with LogStore(path) as store:
        alice = SessionLog(A, ALICE.key, {A}, A, store=store)
        alice.start("123456", "Alice", 0.0)
        alice.propose("chat", chat(A, "Alice", "hello"), 0.0)
        assert alice.persist_requests() == []  # written synchronously
        assert alice.committed_seq == 1  # alone, Alice is a majority
        entries = list(alice.entries)
    with LogStore(path) as store:
        again = SessionLog(A, ALICE.key, {A}, A, store=store)
        assert list(again.entries) == entries and again.sequencer is None
        again.handle_timer(5.0)  # stands for a new epoch, alone: wins at once
        assert again.epoch == 1 and again.sequencer == A
        assert store.load()[-1].kind == "epoch" and store.load_vote() == VoteRecord(1, A)
    assert verify(path).ok


def test_a_row_that_does_not_parse_is_a_store_error(db: Path) -> None:
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE entries SET data = ? WHERE seq = 3", (b"{oops",))
    with LogStore(db) as store, pytest.raises(StoreError, match="entry 3"):
        store.load()


WRITER = """
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from agent.protocol import log as lw
from agent.protocol.handshake import peer_id
from agent.store import LogStore

key = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
me = peer_id(lw.public_bytes(key))
batch = int(sys.argv[2])
store = LogStore(sys.argv[1])
prev, seq = lw.ZERO_HASH, 0
text = "x" * 1500
while True:
    entries = []
    for _ in range(batch):
        if seq == 0:
            kind, body = "session_start", {"room": "123456", "primary": me, "name": "A"}
        else:
            kind, body = "chat", {"from": me, "name": "A", "text": f"{seq} {text}", "to": None}
        e = lw.make_entry(key, epoch=0, seq=seq, prev=prev, ts=1.0 + seq, kind=kind, body=body)
        entries.append(e)
        prev, seq = e.digest, seq + 1
    print("writing", flush=True)
    store.append(entries)
    print(seq, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.002, 0.004, 0.007])
def test_the_store_survives_sigkill_of_its_writer_mid_batch(tmp_path: Path, delay: float) -> None:
    """Killed ``delay`` seconds into writing a ~650 kB batch (about 9 ms of SQLite work)."""
    path = tmp_path / "crash.sqlite"
    batch = 400
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(batch)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    reported = 0
    try:
        while True:
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            if line.strip() == b"writing":
                if reported >= 3 * batch:
                    break
            else:
                reported = int(line)
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert Path(f"{path}-wal").exists()  # the WAL a crashed writer leaves behind

    with LogStore(path) as store:
        entries = store.load()
    assert len(entries) >= reported  # everything reported durable is there...
    assert len(entries) % batch == 0  # ...in whole transactions only
    assert [e.seq for e in entries] == list(range(len(entries)))
    report = verify(path)
    assert report.ok, report.lines()
    assert report.entries == len(entries)


# --------------------------------------------------------------------------- the verifier


def tamper(db: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(db) as raw:
        raw.execute(sql, args)


def data_of(db: Path, seq: int) -> bytes:
    with sqlite3.connect(db) as raw:
        return bytes(raw.execute("SELECT data FROM entries WHERE seq = ?", (seq,)).fetchone()[0])


def test_an_intact_log_verifies_as_database_and_as_json_lines(db: Path, tmp_path: Path) -> None:
    report = verify(db)
    assert report.ok and report.format == "sqlite" and report.ended
    assert report.summary().startswith(f"OK: {report.entries} entries, epochs 0..1")
    out = tmp_path / "session.jsonl"
    assert export_jsonl(db, out) == report.entries
    again = verify(out)
    assert again.ok and again.format == "jsonl" and again.entries == report.entries
    assert out.read_bytes().splitlines()[0] == data_of(db, 0)


def test_a_flipped_byte_is_found_at_its_entry(db: Path, real_log: list[Entry]) -> None:
    target = next(e for e in real_log if e.seq > 10 and "carol" in str(e.body.get("text")))
    data = data_of(db, target.seq)
    at = data.index(b"carol ")
    tamper(
        db,
        "UPDATE entries SET data = ? WHERE seq = ?",
        data[:at] + b"C" + data[at + 1 :],
        target.seq,
    )
    report = verify(db)
    first = report.problems[0]
    assert (first.index, first.seq, first.reason) == (target.seq, target.seq, "misfiled")
    reasons = {p.reason for p in report.problems if p.index == target.seq}
    assert "bad_signature" in reasons
    assert f"entry {target.seq} (epoch {target.epoch}, seq {target.seq})" in report.summary()


def test_a_flipped_byte_in_a_json_lines_export(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    export_jsonl(db, out)
    lines = out.read_bytes().splitlines()
    rng = random.Random(7)
    for _ in range(20):
        index = rng.randrange(1, len(lines) - 1)
        line = bytearray(lines[index])
        pos = rng.randrange(len(line))
        line[pos] ^= 1 << rng.randrange(7)
        broken = tmp_path / "broken.jsonl"
        broken.write_bytes(b"\n".join([*lines[:index], bytes(line), *lines[index + 1 :]]))
        report = verify(broken)
        assert not report.ok
        assert report.problems[0].index == index, (index, pos, report.lines())


def test_a_deleted_entry_is_named(db: Path) -> None:
    tamper(db, "DELETE FROM entries WHERE seq = 17")
    report = verify(db)
    first = report.problems[0]
    assert (first.index, first.seq, first.reason) == (17, 18, "bad_seq")
    assert "seq jumps from 16 to 18: entry 17 missing" in str(first)
    assert len(report.problems) == 1  # the rest of the chain is intact


def test_two_swapped_entries_are_named(db: Path, tmp_path: Path) -> None:
    a, b = data_of(db, 20), data_of(db, 21)
    tamper(db, "UPDATE entries SET data = ? WHERE seq = 20", b)
    tamper(db, "UPDATE entries SET data = ? WHERE seq = 21", a)
    report = verify(db)
    assert report.problems[0].index == 20 and report.problems[0].seq == 21
    out = tmp_path / "swapped.jsonl"
    export_jsonl(db, out)  # the export keeps the swapped order
    first = verify(out).problems[0]
    assert (first.index, first.seq, first.reason) == (20, 21, "bad_seq")


def test_a_forged_signature_is_named(db: Path, real_log: list[Entry]) -> None:
    for entry in (real_log[9], next(e for e in real_log if e.sequenced and e.seq > 12)):
        target = dataclasses.replace(entry, sig=CAROL.key.sign(b"not this entry"))
        path = db.with_name(f"forged{entry.seq}.sqlite")
        shutil.copy(db, path)
        tamper(
            path,
            "UPDATE entries SET data = ?, hash = ? WHERE seq = ?",
            target.raw,
            target.digest,
            entry.seq,
        )
        report = verify(path)
        first = report.problems[0]
        assert (first.index, first.reason) == (entry.seq, "bad_signature"), report.lines()
        assert "signature does not verify" in first.detail
        assert report.problems[1].detail == f"prev hash does not match entry {entry.seq}"


def test_an_epoch_without_a_majority_is_named(tmp_path: Path, real_log: list[Entry]) -> None:
    at = next(e.seq for e in real_log if e.kind == "epoch")
    fake = lw.make_entry(
        BOB.key,
        epoch=1,
        seq=at,
        prev=real_log[at - 1].digest,
        ts=5.0,
        kind="epoch",
        body={"epoch": 1, "sequencer": B, "votes": [B]},
    )
    path = tmp_path / "coup.jsonl"
    path.write_bytes(b"\n".join(e.raw for e in [*real_log[:at], fake]) + b"\n")
    report = verify(path)
    assert [(p.index, p.reason) for p in report.problems] == [(at, "not_allowed")]
    assert "1 of 3 votes, not a majority" in report.problems[0].detail


def test_main_prints_a_summary_and_exits_by_verdict(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(db)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
    tamper(db, "DELETE FROM entries WHERE seq = 5")
    assert main([str(db)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("BROKEN: ") and "entry 5 (epoch 0, seq 6)" in out[0]
    assert out[1].strip().startswith("entry 5 (epoch 0, seq 6): seq jumps")
    assert main([str(db), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"][0]["seq"] == 6
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)))
    assert main([str(junk)]) == 2
    assert capsys.readouterr().out.startswith("UNREADABLE: ")
    assert main([str(tmp_path / "missing.sqlite")]) == 2
    not_ours = tmp_path / "other.sqlite"
    sqlite3.connect(not_ours).execute("CREATE TABLE t (x)").connection.close()
    assert main([str(not_ours)]) == 2
    assert main(["export", str(db), str(tmp_path / "e.jsonl")]) == 0


def test_the_verifier_agrees_with_a_follower_on_every_entry(real_log: list[Entry]) -> None:
    """What the verifier accepts, a follower that catches up accepts too."""
    net = Net()
    net.add(CAROL, {A}, A)
    carol = net.nodes[C]
    at = next(e.seq for e in real_log if e.kind == "epoch")
    carol.receive(A, lw.encode(lw.Sync(0, at - 1, None, tuple(real_log[:at]))), 0.0)
    carol.receive(B, lw.encode(lw.Sync(1, len(real_log) - 1, None, tuple(real_log[at:]))), 0.0)
    net.pump()
    assert list(carol.entries) == real_log
    others = [e for e in net.drain(C) if not isinstance(e, Committed)]
    assert others == [EpochChanged(1, B)]
