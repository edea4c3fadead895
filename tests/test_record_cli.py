"""The session's record: a signed log on disk that verifies, and an activity report."""

from __future__ import annotations

import json
from pathlib import Path

from tests.procs import Proc, run_peerdesk


def test_session_ends_with_a_verifiable_log_and_a_report(tmp_path: Path) -> None:
    home = tmp_path / "csr"
    csr = Proc(
        ["agent", "start", "--headless", "--json", "--port", "0", "--name", "Carol"],
        home=home,
        name="csr",
    )
    cust = None
    try:
        session = csr.expect("session")
        cust = Proc(
            ["agent", "join", session["link"], "--headless", "--json", "--name", "Alice"],
            home=tmp_path / "cust",
            name="customer",
        )
        cust.expect("joined")
        csr.expect("joined")
        csr.send({"cmd": "chat", "text": "hello <script>alert(1)</script>"})
        cust.expect("chat")
        csr.send({"cmd": "end"})
        written = csr.expect("report")
        assert csr.wait() == 0
        assert cust.wait() == 0
    finally:
        csr.kill()
        if cust is not None:
            cust.kill()

    db = Path(written["log"])
    assert db.parent == home / "sessions"
    verified = run_peerdesk(home, "log", "verify", str(db))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK")

    report = json.loads(Path(written["json"]).read_text())
    assert report["room"] == session["room"]
    assert report["ended"] is not None
    names = {p["name"]: p["role"] for p in report["participants"]}
    assert names == {"Carol": "csr", "Alice": "customer"}
    assert [c["text"] for c in report["chat"]] == ["hello <script>alert(1)</script>"]
    html = Path(written["html"]).read_text()
    assert "<script" not in html
    assert "&lt;script&gt;" in html

    listed = run_peerdesk(home, "sessions", "--json")
    assert listed.returncode == 0
    assert written["id"] in listed.stdout
    shown = run_peerdesk(home, "report", written["id"])
    assert "Alice" in shown.stdout and "Carol" in shown.stdout

    # tampering with the log is found, and the verifier says where
    import sqlite3

    with sqlite3.connect(db) as conn:
        table = next(
            r[0]
            for r in conn.execute("select name from sqlite_master where type='table'")
            if "entr" in r[0]
        )
        cols = [r[1] for r in conn.execute(f"pragma table_info({table})")]
        blob = next(c for c in cols if c not in ("seq", "epoch", "hash"))
        row = conn.execute(
            f"select seq, {blob} from {table} order by seq limit 1 offset 2"
        ).fetchone()
        data = bytearray(row[1] if isinstance(row[1], bytes) else row[1].encode())
        data[len(data) // 2] ^= 0x01
        conn.execute(f"update {table} set {blob} = ? where seq = ?", (bytes(data), row[0]))
    broken = run_peerdesk(home, "log", "verify", str(db))
    assert broken.returncode in (1, 2)
    assert "entry" in (broken.stdout + broken.stderr)


def test_the_record_keeps_every_join_control_change_and_file(tmp_path: Path) -> None:
    """With a customer in the session the log still commits (it is the primary's alone
    for now), and control changes and files are in the report."""
    home = tmp_path / "csr"
    src = tmp_path / "notes.txt"
    src.write_text("how to reset the router\n")
    downloads = tmp_path / "dl"
    downloads.mkdir()
    csr = Proc(
        ["agent", "start", "--headless", "--json", "--port", "0", "--name", "Carol"],
        home=home,
        name="csr",
    )
    cust = None
    bob = None
    try:
        session = csr.expect("session")
        cust = Proc(
            [
                "agent",
                "join",
                session["link"],
                "--headless",
                "--json",
                "--name",
                "Alice",
                "--accept",
                "files,sysinfo",
                "--download-dir",
                str(downloads),
            ],
            home=tmp_path / "cust",
            name="customer",
        )
        cust.expect("joined")
        csr.expect("joined")
        bob = Proc(
            ["agent", "join", session["link"], "--headless", "--json", "--name", "Bob"],
            home=tmp_path / "bob",
            name="bob",
        )
        bob.expect("joined")
        csr.expect("joined", lambda e: e["name"] == "Bob")
        csr.send({"cmd": "request", "cap": "files"})
        csr.expect("consent", lambda e: e["state"] == "granted")
        csr.send({"cmd": "send_file", "path": str(src)})
        cust.expect("file", lambda e: e["state"] == "done")
        csr.expect("file", lambda e: e["state"] == "done")
        bob.send({"cmd": "leave"})
        csr.expect("left")
        csr.send({"cmd": "end"})
        written = csr.expect("report")
        assert csr.wait() == 0
    finally:
        for p in (csr, cust, bob):
            if p is not None:
                p.kill()
    report = json.loads(Path(written["json"]).read_text())
    people = {p["name"]: p for p in report["participants"]}
    assert set(people) == {"Carol", "Alice", "Bob"}
    assert people["Bob"]["how_left"] == "left"
    assert [f["name"] for f in report["files"]] == ["notes.txt"]
    assert report["files"][0]["state"] == "done"
    verified = run_peerdesk(home, "log", "verify", written["log"])
    assert verified.returncode == 0, verified.stdout
