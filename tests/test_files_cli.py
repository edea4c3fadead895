"""Files end to end between real agent processes: basic and advanced, consent, resume."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.procs import Proc


def make_file(path: Path, mib: int, extra: int = 0) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(mib):
            block = os.urandom(1024 * 1024)
            digest.update(block)
            f.write(block)
        tail = os.urandom(extra)
        digest.update(tail)
        f.write(tail)
    return digest.hexdigest()


def sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def start_pair(procs: list[Proc], tmp_path: Path, *join_args: str) -> tuple[Proc, Proc]:
    (tmp_path / "csr-downloads").mkdir(exist_ok=True)
    csr = Proc(
        [
            "agent",
            "start",
            "--headless",
            "--json",
            "--port",
            "0",
            "--download-dir",
            str(tmp_path / "csr-downloads"),
        ],
        home=tmp_path / "csr",
        name="csr",
    )
    procs.append(csr)
    link = csr.expect("session")["link"]
    cust = Proc(
        ["agent", "join", link, "--headless", "--json", *join_args],
        home=tmp_path / "cust",
        name="customer",
    )
    procs.append(cust)
    cust.expect("joined")
    csr.expect("joined")
    return csr, cust


def grant(csr: Proc, cust: Proc, cap: str, **extra: str) -> None:
    csr.send({"cmd": "request", "cap": cap})
    if extra.get("auto") != "yes":
        prompt = cust.expect("request", lambda e: e["cap"] == cap)
        cust.send({"cmd": "grant", "id": prompt["id"], **{k: v for k, v in extra.items()}})
    csr.expect("consent", lambda e: e["cap"] == cap and e["state"] == "granted")


def test_200_mb_basic_file_with_preaccept(procs: list[Proc], tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    src = tmp_path / "installer.bin"
    digest = make_file(src, 200, extra=12345)
    csr, cust = start_pair(procs, tmp_path, "--accept", "files", "--download-dir", str(downloads))

    csr.send({"cmd": "send_file", "path": str(src)})
    assert "not granted" in csr.expect("error")["reason"]  # refused before the grant

    grant(csr, cust, "files", auto="yes")
    csr.send({"cmd": "send_file", "path": str(src)})
    done = cust.expect("file", lambda e: e["state"] in ("done", "failed"), timeout=120)
    assert done["state"] == "done", done
    assert done["sha256"] == digest
    assert done["size"] == 200 * 1024 * 1024 + 12345
    assert done["transport"] == "fastpath"
    assert sha(downloads / "installer.bin") == digest
    assert sorted(p.name for p in downloads.iterdir()) == ["installer.bin"]
    sent = csr.expect("file", lambda e: e["state"] == "done")
    assert sent["direction"] == "send" and sent["sha256"] == digest

    # a second copy does not overwrite the first
    csr.send({"cmd": "send_file", "path": str(src)})
    again = cust.expect(
        "file", lambda e: e["state"] == "done" and e["id"] != done["id"], timeout=60
    )
    assert Path(again["path"]).name == "installer (1).bin"
    csr.send({"cmd": "end"})
    assert csr.wait() == 0
    assert cust.wait() == 0


def test_customer_chooses_and_revoke_stops_files(procs: list[Proc], tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("wanted\n")
    b.write_text("unwanted\n")
    csr, cust = start_pair(procs, tmp_path, "--download-dir", str(downloads))
    grant(csr, cust, "files")
    csr.send({"cmd": "send_file", "path": str(a)})
    offer_a = cust.expect("file", lambda e: e["state"] == "offered" and e["name"] == "a.txt")
    csr.send({"cmd": "send_file", "path": str(b)})
    offer_b = cust.expect("file", lambda e: e["state"] == "offered" and e["name"] == "b.txt")
    cust.send({"cmd": "accept_file", "id": offer_a["id"]})
    cust.send({"cmd": "reject_file", "id": offer_b["id"]})
    cust.expect("file", lambda e: e["id"] == offer_a["id"] and e["state"] == "done")
    assert csr.expect("file", lambda e: e["id"] == offer_b["id"] and e["state"] == "failed")
    assert sorted(p.name for p in downloads.iterdir()) == ["a.txt"]

    cust.send({"cmd": "revoke", "cap": "files"})
    csr.expect("consent", lambda e: e["cap"] == "files" and e["state"] == "revoked")
    csr.send({"cmd": "send_file", "path": str(b)})
    assert "not granted" in csr.expect("error", lambda e: "granted" in e["reason"])["reason"]
    csr.send({"cmd": "end"})
    assert csr.wait() == 0
    assert cust.wait() == 0


def test_advanced_browse_fetch_confirmed_and_hostile_paths(
    procs: list[Proc], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    (shared / "logs").mkdir(parents=True)
    digest = make_file(shared / "logs" / "app.log", 1, extra=77)
    (tmp_path / "secret.txt").write_text("outside the shared directory\n")
    os.symlink(tmp_path / "secret.txt", shared / "escape.txt")
    csr, cust = start_pair(procs, tmp_path)

    csr.send({"cmd": "browse", "path": ""})
    assert "not granted" in csr.expect("error")["reason"]
    grant(csr, cust, "files_advanced", dir=str(shared))

    csr.send({"cmd": "browse", "path": ""})
    listing = csr.expect("listing")
    assert {e["name"] for e in listing["entries"]} >= {"logs"}
    csr.send({"cmd": "browse", "path": "logs"})
    logs = csr.expect("listing", lambda e: e["path"] == "logs")
    assert [e["name"] for e in logs["entries"]] == ["app.log"]

    # each transfer out of the customer's machine is confirmed by the customer
    csr.send({"cmd": "fetch", "path": "logs/app.log"})
    asked = cust.expect("file", lambda e: e["state"] == "requested")
    assert asked["name"] == "app.log"
    cust.send({"cmd": "accept_file", "id": asked["id"]})
    got = csr.expect("file", lambda e: e["state"] == "done" and e["direction"] == "receive")
    assert got["sha256"] == digest
    assert sha(tmp_path / "csr-downloads" / "app.log") == digest
    # "dest" puts it where the CSR said (it went to the downloads folder whatever it said)
    csr.send({"cmd": "fetch", "path": "logs/app.log", "dest": str(tmp_path / "case-123")})
    asked = cust.expect("file", lambda e: e["state"] == "requested")
    cust.send({"cmd": "accept_file", "id": asked["id"]})
    got = csr.expect("file", lambda e: e["state"] == "done" and e["direction"] == "receive")
    assert got["path"] == str(tmp_path / "case-123" / "app.log")
    assert sha(tmp_path / "case-123" / "app.log") == digest

    # nothing outside the shared directory, whatever the path says
    for hostile in ("../secret.txt", "/etc/passwd", "escape.txt", "logs/../../secret.txt"):
        csr.send({"cmd": "fetch", "path": hostile})
        failed = csr.expect("file", lambda e: e["state"] == "failed")
        assert failed["reason"], hostile
    csr.send({"cmd": "browse", "path": "../"})
    csr.drain(1.0)
    assert not (tmp_path / "csr-downloads" / "secret.txt").exists()
    assert not (tmp_path / "csr-downloads" / "passwd").exists()
    assert sorted(p.name for p in (tmp_path / "csr-downloads").iterdir()) == ["app.log"]
    csr.send({"cmd": "end"})
    assert csr.wait() == 0
    assert cust.wait() == 0


def test_transfer_killed_half_way_resumes_with_the_right_hash(
    procs: list[Proc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the data channel (fast path off, so the cut lands mid-file), kill -9 the
    customer half-way; it joins again and the CSR sends the same file: it resumes."""
    monkeypatch.setenv("PEERDESK_NO_FASTPATH", "1")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    src = tmp_path / "big.iso"
    digest = make_file(src, 40, extra=999)
    size = src.stat().st_size
    csr, cust = start_pair(procs, tmp_path, "--accept", "files", "--download-dir", str(downloads))
    grant(csr, cust, "files", auto="yes")
    csr.send({"cmd": "send_file", "path": str(src)})
    cust.expect("file", lambda e: e["state"] == "active" and e["bytes"] > size // 2, timeout=60)
    cust.kill()
    assert not (downloads / "big.iso").exists()
    parts = [p for p in downloads.iterdir() if p.name.endswith(".peerdesk-part")]
    assert len(parts) == 1
    kept = parts[0].stat().st_size
    assert 0 < kept < size
    csr.expect("left")

    link = csr.events[0]["link"]
    again = Proc(
        [
            "agent",
            "join",
            link,
            "--headless",
            "--json",
            "--accept",
            "files",
            "--download-dir",
            str(downloads),
        ],
        home=tmp_path / "cust",
        name="customer2",
    )
    procs.append(again)
    again.expect("joined")
    csr.expect("joined")
    grant(csr, again, "files", auto="yes")
    csr.send({"cmd": "send_file", "path": str(src)})
    first = again.expect("file", lambda e: e["state"] in ("active", "done"), timeout=60)
    # it continues from the last fsynced offset (every 4 MiB), not from zero
    assert first["bytes"] >= min(kept - 4 * 1024 * 1024, size // 3), (first, kept)
    done = again.expect("file", lambda e: e["state"] in ("done", "failed"), timeout=120)
    assert done["state"] == "done", done
    assert done["sha256"] == digest
    assert sha(downloads / "big.iso") == digest
    assert sorted(p.name for p in downloads.iterdir()) == ["big.iso"]
    csr.send({"cmd": "end"})
    assert csr.wait() == 0
    assert again.wait() == 0
