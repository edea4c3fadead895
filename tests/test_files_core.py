"""File-transfer cores pumped into each other by hand, with real stores in tmp_path.

No network and no asyncio: two ``FileTransfers`` exchange messages through in-memory
queues (which a test may reorder, drop or forge), each with a ``FileStore`` that
performs its disk requests at once. Also: the files wire decoder under Hypothesis.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.errors import DecodeError, LocalProtocolError
from agent.files import store as fs
from agent.files.errors import UnsafeFileName
from agent.protocol import files as fw
from agent.session import filetransfer as ft

KiB = 1024


def tree(root: Path) -> set[str]:
    """Every path under ``root``, relative, as text."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Peer:
    """One agent: a core, a store for its download directory, an inbox, its events."""

    def __init__(
        self,
        directory: Path,
        *,
        free_space: Callable[[str], int] | None = None,
        sync_every: int = 64 * KiB,
        **core: object,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.core = ft.FileTransfers(**core)  # type: ignore[arg-type]
        self.store = fs.FileStore(directory, free_space=free_space, sync_every=sync_every)
        self.inbox: deque[str | bytes] = deque()
        self.events: list[ft.Event] = []
        self.sent: list[str | bytes] = []
        self.decide: Callable[[ft.OfferReceived], bool | None] = lambda e: True
        self.ios: list[ft.IoRequest] = []

    def of(self, kind: type) -> list[ft.Event]:
        return [e for e in self.events if isinstance(e, kind)]


def pump(
    a: Peer,
    b: Peer,
    now: float = 0.0,
    *,
    chunks_per_round: int = 4,
    until: Callable[[], bool] | None = None,
    mangle: Callable[[list[str | bytes]], list[str | bytes]] | None = None,
    rounds: int = 100_000,
) -> None:
    """Run both peers until nothing moves (or ``until()``); ``mangle`` may reorder,
    drop or add messages in flight."""
    for _ in range(rounds):
        moved = False
        for me, other in ((a, b), (b, a)):
            wire: list[str | bytes] = list(me.core.messages_to_send())
            for _ in range(chunks_per_round):
                rc = me.core.next_chunk(now)
                if rc is None:
                    break
                with fs.FileReader(rc.source) as reader:
                    wire.append(rc.frame(reader.read(rc.offset, rc.length)))
                wire += me.core.messages_to_send()
            while (op := me.core.next_io()) is not None:
                me.ios.append(op)
                me.core.io_done(me.store.perform(op), now)
                moved = True
            while (e := me.core.next_event()) is not None:
                me.events.append(e)
                if isinstance(e, ft.OfferReceived):
                    verdict = me.decide(e)
                    if verdict is True:
                        me.core.accept(e.id, now)
                    elif verdict is False:
                        me.core.reject(e.id, now)
                moved = True
            wire += me.core.messages_to_send()
            if mangle is not None and wire:
                wire = mangle(wire)
            me.sent += wire
            other.inbox.extend(wire)
            moved = moved or bool(wire)
        for me in (a, b):
            while me.inbox:
                me.core.receive(me.inbox.popleft(), now)
                moved = True
        if until is not None and until():
            return
        if not moved:
            return
    raise AssertionError("the peers never settled")


def make_file(directory: Path, name: str, size: int) -> tuple[Path, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path = directory / name
    path.write_bytes(data)
    return path, data


def offer(peer: Peer, path: Path, name: str | None = None, **kw: object) -> str:
    info = fs.describe(path)
    return peer.core.send_file(
        name or path.name,
        info.size,
        info.sha256,
        str(path),
        0.0,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Peer, Peer]:
    return Peer(tmp_path / "csr"), Peer(tmp_path / "customer")


# --------------------------------------------------------------------------- happy paths


def test_a_file_crosses_with_matching_sha256(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    path, data = make_file(tmp_path / "src", "report.pdf", 300 * KiB + 7)
    asked: list[ft.OfferReceived] = []
    b.decide = lambda e: asked.append(e) or True
    tid = offer(a, path)
    pump(a, b)
    assert [e.name for e in asked] == ["report.pdf"]
    assert asked[0].size == len(data) and asked[0].sha256 == sha(data)
    (done,) = b.of(ft.Completed)
    assert done == ft.Completed(tid, ft.Role.RECEIVE, "report.pdf", len(data), sha(data))
    assert a.of(ft.Completed) == [
        ft.Completed(tid, ft.Role.SEND, "report.pdf", len(data), sha(data))
    ]
    assert (b.dir / "report.pdf").read_bytes() == data
    assert tree(b.dir) == {"report.pdf"}  # no partial file or sidecar left
    assert a.core.send_state(tid) is ft.SendState.DONE
    assert b.core.receive_state(tid) is ft.ReceiveState.DONE
    progress = [e for e in a.of(ft.Progress) if isinstance(e, ft.Progress)]
    assert progress and progress[-1].done == len(data)


def test_empty_file_and_two_transfers_at_once(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    p1, d1 = make_file(tmp_path / "src", "one.bin", 200 * KiB)
    p2, d2 = make_file(tmp_path / "src", "two.bin", 150 * KiB)
    p3, _ = make_file(tmp_path / "src", "empty.txt", 0)
    ids = {offer(a, p1), offer(a, p2), offer(a, p3)}
    pump(a, b, chunks_per_round=1)
    assert {e.id for e in b.of(ft.Completed)} == ids
    assert (b.dir / "one.bin").read_bytes() == d1
    assert (b.dir / "two.bin").read_bytes() == d2
    assert (b.dir / "empty.txt").read_bytes() == b""
    writes = [op.id for op in b.ios if isinstance(op, ft.Write)]
    switches = sum(1 for x, y in itertools.pairwise(writes) if x != y)
    assert switches >= 3  # round-robin, not one file after the other


def test_declined_offer_writes_nothing(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    path, _ = make_file(tmp_path / "src", "x.bin", 10 * KiB)
    b.decide = lambda e: False
    tid = offer(a, path)
    pump(a, b)
    assert tree(b.dir) == set()
    assert not [op for op in b.ios if isinstance(op, ft.Open)]
    (failed,) = a.of(ft.Failed)
    assert failed.id == tid and failed.reason == "declined"


def test_auto_accept_takes_pushed_files_without_asking(tmp_path: Path) -> None:
    a, b = Peer(tmp_path / "a"), Peer(tmp_path / "b", auto_accept=True)
    b.decide = lambda e: pytest.fail("asked although auto_accept")
    path, data = make_file(tmp_path / "src", "auto.bin", 5 * KiB)
    offer(a, path)
    pump(a, b)
    assert (b.dir / "auto.bin").read_bytes() == data


def test_pull_a_published_file_without_a_prompt(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    csr, customer = pair
    path, data = make_file(tmp_path / "published", "log.txt", 70 * KiB)
    published = {"log.txt": path}
    csr.decide = lambda e: pytest.fail("a pull we asked for must not prompt")
    lid = csr.core.list_files("published")
    pump(csr, customer)
    (req,) = customer.of(ft.ListRequested)
    entries, more = fs.catalogue_listing(published, req.start)
    customer.core.send_listing(fw.Listing(req.id, req.scope, req.path, tuple(entries), 0, more))
    pump(csr, customer)
    (got,) = csr.of(ft.ListingReceived)
    assert got.listing.id == lid and [e.name for e in got.listing.entries] == ["log.txt"]
    tid = csr.core.request("published", "log.txt", 0.0)
    pump(csr, customer)
    (want,) = customer.of(ft.FileRequested)
    assert (want.id, want.path) == (tid, "log.txt")
    info = fs.describe(published[want.path])
    customer.core.send_file(
        want.path, info.size, info.sha256, str(path), 0.0, transfer_id=want.id, direction="pull"
    )
    pump(csr, customer)
    assert (csr.dir / "log.txt").read_bytes() == data


def test_refused_request_and_unasked_pull(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    csr, customer = pair
    tid = csr.core.request("browse", "secret/keys.txt", 0.0)
    pump(csr, customer)
    (want,) = customer.of(ft.FileRequested)
    customer.core.refuse(want.id, "not_allowed", "browsing was not granted")
    pump(csr, customer)
    assert csr.of(ft.Failed) == [
        ft.Failed(tid, ft.Role.RECEIVE, "not_allowed", "browsing was not granted")
    ]
    # An offer claiming to answer a request nobody made is refused.
    path, _ = make_file(tmp_path / "src", "evil.exe", 10)
    offer(customer, path, direction="pull")
    pump(csr, customer)
    assert tree(csr.dir) == set()
    assert csr.of(ft.Failed)[-1].reason == "unexpected"


def test_browse_listing_stays_inside_the_granted_directory(tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    (granted / "docs").mkdir(parents=True)
    (granted / "docs" / "a.txt").write_text("a")
    (granted / "b.bin").write_bytes(b"bb")
    (tmp_path / "outside.txt").write_text("secret")
    (granted / "escape").symlink_to(tmp_path)
    (granted / "leak.txt").symlink_to(tmp_path / "outside.txt")
    entries, more = fs.list_directory(granted, "")
    assert [(e.name, e.is_dir, e.size) for e in entries] == [
        ("docs", True, 0),
        ("b.bin", False, 2),
    ]
    assert not more
    entries, _ = fs.list_directory(granted, "docs")
    assert [e.name for e in entries] == ["a.txt"]
    for bad in ("escape", "escape/outside.txt", "../outside.txt", "/etc", "docs/../.."):
        with pytest.raises(UnsafeFileName):
            fs.list_directory(granted, bad)


# --------------------------------------------------------------------------- resume


def written(peer: Peer) -> int:
    return max((op.offset + len(op.data) for op in peer.ios if isinstance(op, ft.Write)), default=0)


def test_a_dropped_transfer_resumes_from_the_verified_offset(
    tmp_path: Path, pair: tuple[Peer, Peer]
) -> None:
    a, b = pair
    size = 1024 * KiB + 123
    path, data = make_file(tmp_path / "src", "big.iso", size)
    tid = offer(a, path)
    pump(a, b, chunks_per_round=2, until=lambda: written(b) >= size // 2)
    # The link drops with chunks still in flight: they are lost.
    a.inbox.clear()
    b.inbox.clear()
    a.core.connection_lost(1.0)
    b.core.connection_lost(1.0)
    pump(a, b)  # the receiver writes what it had, closes its partial file, keeps it
    half = written(b)
    assert size // 2 <= half < size
    assert [e for e in b.events if isinstance(e, ft.Interrupted)]
    assert a.core.send_state(tid) is ft.SendState.INTERRUPTED
    part, meta = b.store.part_paths(tid, "big.iso")
    verified = json.loads(meta.read_text())["verified"]
    assert verified == part.stat().st_size == half
    assert tree(b.dir) == {part.name, meta.name}
    # Reconnected: the sender offers again; the receiver continues without asking.
    b.decide = lambda e: pytest.fail("a resume must not ask again")
    a.core.resume(tid, 2.0)
    n_writes = len([op for op in b.ios if isinstance(op, ft.Write)])
    pump(a, b, 2.0)
    resumed = [op for op in b.ios if isinstance(op, ft.Write)][n_writes:]
    assert resumed[0].offset == half
    assert sum(len(op.data) for op in resumed) == size - half
    (done,) = b.of(ft.Completed)
    assert done.sha256 == sha(data)
    assert (b.dir / "big.iso").read_bytes() == data
    assert tree(b.dir) == {"big.iso"}


def test_resume_after_a_crash_trusts_only_fsynced_bytes(tmp_path: Path) -> None:
    """The receiving agent dies: a new core and store find the partial file, cut it back
    to the verified offset (unsynced bytes may be garbage), re-hash it and finish."""
    a, b = Peer(tmp_path / "a"), Peer(tmp_path / "b", sync_every=256 * KiB)
    size = 1500 * KiB
    path, data = make_file(tmp_path / "src", "crash.bin", size)
    tid = offer(a, path)
    pump(a, b, chunks_per_round=1, until=lambda: written(b) >= 1100 * KiB)
    part, meta = b.store.part_paths(tid, "crash.bin")
    verified = json.loads(meta.read_text())["verified"]
    assert 0 < verified < written(b)
    # Crash: no orderly close; the unsynced tail on disk is garbage.
    b.store.partial(tid).close()
    with open(part, "r+b") as f:
        f.seek(verified)
        f.write(b"\xff" * (written(b) - verified))
    # Both agents start over with new cores; the sender offers the same transfer id.
    a2, b2 = Peer(tmp_path / "a"), Peer(tmp_path / "b")
    b2.decide = lambda e: pytest.fail("a resume must not ask again")
    offer(a2, path, transfer_id=tid)
    pump(a2, b2)
    (opened,) = [op for op in b2.ios if isinstance(op, ft.Open)]
    first = next(op for op in b2.ios if isinstance(op, ft.Write))
    assert first.offset == verified
    assert b2.of(ft.Completed)[0].sha256 == sha(data)
    assert (b2.dir / "crash.bin").read_bytes() == data
    assert opened.id == tid


def test_a_reoffer_after_a_lost_done_is_answered_at_once(
    tmp_path: Path, pair: tuple[Peer, Peer]
) -> None:
    a, b = pair
    path, _ = make_file(tmp_path / "src", "f.bin", 10 * KiB)
    tid = offer(a, path)
    pump(a, b, mangle=lambda w: [m for m in w if not (isinstance(m, str) and '"done"' in m)])
    assert b.of(ft.Completed) and not a.of(ft.Completed)
    a.core.connection_lost(1.0)
    a.core.resume(tid, 1.0)
    pump(a, b)
    assert a.of(ft.Completed)
    assert tree(b.dir) == {"f.bin"}


# --------------------------------------------------------------------------- hostile input

HOSTILE_NAMES = [
    "../x",
    "/etc/passwd",
    "a/b",
    "C:\\x",
    "NUL",
    "con.txt",
    "x\x00y",
    "..",
    " ",
    "",
    "a" * 300,
    "é" * 130,
    "notes.txt.",
    "\u202etxt.exe",
    "a\nb",
    "LPT9.log",
    "x:stream",
]


def forge(peer: Peer, msg: fw.Control | tuple[str, int, bytes]) -> None:
    """Deliver a message as a hostile peer would send it."""
    if isinstance(msg, tuple):
        peer.core.receive(fw.encode_chunk(*msg), 0.0)
    else:
        peer.core.receive(fw.encode(msg), 0.0)


def drain(peer: Peer) -> list[fw.Message]:
    """Run the peer's disk requests, collect its events, decode what it sends."""
    while (op := peer.core.next_io()) is not None:
        peer.ios.append(op)
        peer.core.io_done(peer.store.perform(op), 0.0)
    while (e := peer.core.next_event()) is not None:
        peer.events.append(e)
        if isinstance(e, ft.OfferReceived):
            peer.core.accept(e.id, 0.0)
    out = peer.core.messages_to_send()
    if peer.core.next_io() is not None:
        return [fw.decode(m) for m in out] + drain(peer)
    return [fw.decode(m) for m in out]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_hostile_names_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    (tmp_path / "down").mkdir()
    (tmp_path / "etc").mkdir()
    before = tree(tmp_path)
    b = Peer(tmp_path / "down", auto_accept=True)
    forge(b, fw.Offer("00000000000000aa", name, 5, sha(b"hello"), "push"))
    sent = drain(b)
    forge(b, ("00000000000000aa", 0, b"hello"))
    sent += drain(b)
    assert isinstance(sent[0], fw.Reject)
    assert sent[0].reason == "unsafe_name"
    assert "refused" in sent[0].message
    (failed,) = b.of(ft.Failed)[:1]
    assert failed.reason == "unsafe_name"
    assert not b.ios  # not even a free-space check
    assert tree(tmp_path) == before


def test_hostile_name_in_send_file_is_refused_locally(pair: tuple[Peer, Peer]) -> None:
    a, _ = pair
    with pytest.raises(UnsafeFileName):
        a.core.send_file("../x", 1, sha(b"x"), "/dev/null", 0.0)


def _accepted_peer(tmp_path: Path, size: int, digest: str) -> tuple[Peer, str]:
    b = Peer(tmp_path / "down", auto_accept=True)
    tid = "00000000000000bb"
    forge(b, fw.Offer(tid, "victim.bin", size, digest, "push"))
    sent = drain(b)
    assert sent == [fw.Accept(tid, 0)]
    return b, tid


def test_more_bytes_than_offered_aborts_and_removes_the_temp_file(tmp_path: Path) -> None:
    b, tid = _accepted_peer(tmp_path, 10, sha(b"0123456789"))
    forge(b, (tid, 0, b"01234"))
    assert drain(b) == []
    assert len(tree(b.dir)) == 2  # the partial file and its sidecar
    forge(b, (tid, 5, b"56789-and-more"))
    (abort,) = drain(b)
    assert isinstance(abort, fw.Abort) and abort.reason == "too_much_data"
    assert "more than the 10 bytes" in abort.message
    assert tree(b.dir) == set()
    assert b.of(ft.Failed)[0].reason == "too_much_data"


def test_wrong_hash_aborts_and_removes_the_temp_file(tmp_path: Path) -> None:
    b, tid = _accepted_peer(tmp_path, 10, sha(b"0123456789"))
    forge(b, (tid, 0, b"0123456780"))
    (abort,) = drain(b)
    assert isinstance(abort, fw.Abort) and abort.reason == "hash_mismatch"
    assert tree(b.dir) == set()


def test_wrong_hash_end_to_end(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    path, _ = make_file(tmp_path / "src", "lie.bin", 100 * KiB)
    tid = a.core.send_file("lie.bin", 100 * KiB, sha(b"something else"), str(path), 0.0)
    pump(a, b)
    assert a.of(ft.Failed)[0].reason == "hash_mismatch"
    assert b.of(ft.Failed)[0].reason == "hash_mismatch"
    assert a.core.send_state(tid) is ft.SendState.FAILED
    assert tree(b.dir) == set()


def test_reordered_chunks_abort_with_offset_mismatch(
    tmp_path: Path, pair: tuple[Peer, Peer]
) -> None:
    a, b = pair
    path, _ = make_file(tmp_path / "src", "r.bin", 400 * KiB)
    offer(a, path)

    def swap_chunks(wire: list[str | bytes]) -> list[str | bytes]:
        chunks = [i for i, m in enumerate(wire) if isinstance(m, bytes)]
        if len(chunks) >= 2:
            i, j = chunks[0], chunks[1]
            wire[i], wire[j] = wire[j], wire[i]
        return wire

    pump(a, b, mangle=swap_chunks)
    assert b.of(ft.Failed)[0].reason == "offset_mismatch"
    assert a.of(ft.Failed)[0].reason == "offset_mismatch"
    assert tree(b.dir) == set()


def test_chunks_for_unknown_or_unaccepted_transfers(tmp_path: Path) -> None:
    b = Peer(tmp_path / "down")
    forge(b, ("00000000000000cc", 0, b"surprise"))
    (abort,) = drain(b)
    assert isinstance(abort, fw.Abort) and abort.reason == "unknown_transfer"
    # Offered but not yet accepted by the person: a chunk is a protocol violation.
    forge(b, fw.Offer("00000000000000dd", "wait.txt", 4, sha(b"data"), "push"))
    while (op := b.core.next_io()) is not None:
        b.core.io_done(b.store.perform(op), 0.0)
    b.core.messages_to_send()
    forge(b, ("00000000000000dd", 0, b"data"))
    (abort,) = [fw.decode(m) for m in b.core.messages_to_send()]
    assert isinstance(abort, fw.Abort) and abort.reason == "unexpected_chunk"
    assert tree(b.dir) == set()


def test_malformed_messages_blame_their_transfer(tmp_path: Path) -> None:
    b, tid = _accepted_peer(tmp_path, 10, sha(b"0123456789"))
    b.core.receive(json.dumps({"type": "accept", "id": tid, "offset": -1}), 0.0)
    (abort,) = drain(b)
    assert isinstance(abort, fw.Abort) and abort.reason == "malformed"
    assert tree(b.dir) == set()
    b.core.receive(b"\x07garbage", 0.0)
    b.core.receive('{"type":"teleport","id":"0000000000000001"}', 0.0)
    assert drain(b) == []
    assert [e.code for e in b.events if isinstance(e, ft.PeerError)] == [
        "malformed",
        "unknown_type",
    ]


def test_insufficient_space_is_refused_before_writing(tmp_path: Path) -> None:
    a = Peer(tmp_path / "a")
    b = Peer(tmp_path / "b", free_space=lambda d: 50 * KiB, keep_free=0)
    b.decide = lambda e: pytest.fail("must not ask when the file cannot fit")
    path, _ = make_file(tmp_path / "src", "huge.bin", 60 * KiB)
    tid = offer(a, path)
    pump(a, b)
    assert [type(op) for op in b.ios] == [ft.Prepare]
    (failed,) = b.of(ft.Failed)
    assert failed.reason == "no_space" and "needs 61440 bytes" in failed.message
    assert a.of(ft.Failed) == [ft.Failed(tid, ft.Role.SEND, "no_space", failed.message)]
    assert tree(b.dir) == set()


def test_keep_free_reserve_counts(tmp_path: Path) -> None:
    a = Peer(tmp_path / "a")
    b = Peer(tmp_path / "b", free_space=lambda d: 100 * KiB, keep_free=50 * KiB)
    path, _ = make_file(tmp_path / "src", "fits-not.bin", 60 * KiB)
    offer(a, path)
    pump(a, b)
    assert b.of(ft.Failed)[0].reason == "no_space"


def test_an_existing_file_is_never_overwritten(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    (b.dir / "report.pdf").write_bytes(b"mine")
    (b.dir / "report (1).pdf").write_bytes(b"mine too")
    path, data = make_file(tmp_path / "src", "report.pdf", 3 * KiB)
    offer(a, path)
    pump(a, b)
    offer(a, path)
    pump(a, b)
    assert [e.name for e in b.of(ft.Completed)] == ["report (2).pdf", "report (3).pdf"]
    assert (b.dir / "report.pdf").read_bytes() == b"mine"
    assert (b.dir / "report (1).pdf").read_bytes() == b"mine too"
    assert (b.dir / "report (2).pdf").read_bytes() == data
    assert (b.dir / "report (3).pdf").read_bytes() == data


def test_a_symlink_in_place_of_the_final_name_is_not_followed(
    tmp_path: Path, pair: tuple[Peer, Peer]
) -> None:
    a, b = pair
    target = tmp_path / "elsewhere.txt"
    target.write_text("untouched")
    (b.dir / "x.txt").symlink_to(target)
    path, _ = make_file(tmp_path / "src", "x.txt", 100)
    offer(a, path)
    pump(a, b)
    assert b.of(ft.Completed)[0].name == "x (1).txt"
    assert target.read_text() == "untouched"


def test_sender_abort_and_receiver_cancel(tmp_path: Path, pair: tuple[Peer, Peer]) -> None:
    a, b = pair
    path, _ = make_file(tmp_path / "src", "c.bin", 500 * KiB)
    tid = offer(a, path)
    pump(a, b, chunks_per_round=1, until=lambda: written(b) > 0)
    b.core.abort(tid, 1.0)
    pump(a, b)
    assert a.of(ft.Failed)[0].reason == "cancelled"
    assert tree(b.dir) == set()
    assert a.core.next_chunk(1.0) is None


def test_local_misuse_raises_local_errors(pair: tuple[Peer, Peer]) -> None:
    a, _ = pair
    with pytest.raises(LocalProtocolError):
        a.core.resume("0000000000000001", 0.0)
    with pytest.raises(LocalProtocolError):
        a.core.send_file("ok.txt", 1, "not-hex", "/dev/null", 0.0)
    tid = a.core.send_file("ok.txt", 1, sha(b"x"), "/dev/null", 0.0)
    with pytest.raises(LocalProtocolError):
        a.core.offer_fast_path(tid, 1234, os.urandom(16))  # not accepted yet


def test_progress_reports_rate_and_eta() -> None:
    core = ft.FileTransfers(chunk_size=1000)
    tid = core.send_file("p.bin", 10_000, sha(b""), "/dev/null", 0.0)
    core.receive(fw.encode(fw.Accept(tid, 0)), 0.0)
    for i in range(10):
        assert core.next_chunk(float(i)) is not None
    progress = [e for e in iter(core.next_event, None) if isinstance(e, ft.Progress)]
    assert progress[-1].done == 10_000
    assert progress[-1].rate == pytest.approx(1000)
    mid = progress[len(progress) // 2]
    assert mid.eta is not None and mid.eta > 0


# --------------------------------------------------------------------------- the wire

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ids = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)
hexsha = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
clean_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=60
)
sizes = st.integers(0, fw.MAX_FILE_SIZE)
names = st.text(
    st.characters(exclude_categories=["Cc", "Cs"], exclude_characters="/\\"),
    min_size=1,
    max_size=40,
).filter(fw.listing_name_ok)
entries = st.builds(fw.Entry, names, sizes, st.booleans(), st.integers(0, fw.MAX_MTIME))
messages = st.one_of(
    st.builds(fw.Offer, ids, clean_text, sizes, hexsha, st.sampled_from(["push", "pull"])),
    st.builds(fw.Accept, ids, sizes),
    st.builds(fw.Reject, ids, st.from_regex(r"[a-z_]{1,32}", fullmatch=True), clean_text),
    st.builds(fw.Done, ids, hexsha),
    st.builds(fw.Abort, ids, st.from_regex(r"[a-z_]{1,32}", fullmatch=True), clean_text),
    st.builds(fw.Get, ids, st.sampled_from(["published", "browse"]), clean_text),
    st.builds(fw.ListFiles, ids, st.sampled_from(["published", "browse"]), clean_text, sizes),
    st.builds(
        fw.Listing,
        ids,
        st.sampled_from(["published", "browse"]),
        clean_text,
        st.lists(entries, max_size=5).map(tuple),
        sizes,
        st.booleans(),
    ),
    st.builds(
        fw.FastPath,
        ids,
        st.integers(1, 65535),
        st.binary(min_size=16, max_size=16),
        st.lists(st.ip_addresses().map(str), max_size=3).map(tuple),
    ),
)


@FUZZ
@given(messages)
def test_every_message_round_trips(msg: fw.Control) -> None:
    assert fw.decode(fw.encode(msg)) == msg


@FUZZ
@given(ids, st.integers(0, fw.MAX_FILE_SIZE), st.binary(min_size=1, max_size=300))
def test_chunks_round_trip(tid: str, offset: int, data: bytes) -> None:
    assert fw.decode(fw.encode_chunk(tid, offset, data)) == fw.Chunk(tid, offset, data)


def _only_decode_errors(data: str | bytes) -> None:
    try:
        msg = fw.decode(data)
    except DecodeError:
        return
    if isinstance(msg, fw.Chunk):
        assert fw.decode(fw.encode_chunk(msg.id, msg.offset, msg.data)) == msg
    else:
        assert fw.decode(fw.encode(msg)) == msg


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_the_decoder_only_raises_decode_error_on_anything(data: str | bytes) -> None:
    _only_decode_errors(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
fields = [
    "id",
    "name",
    "size",
    "sha256",
    "direction",
    "offset",
    "reason",
    "message",
    "scope",
    "path",
    "start",
    "entries",
    "truncated",
    "port",
    "nonce",
    "hosts",
]


@FUZZ
@given(
    st.sampled_from(
        [
            "offer",
            "accept",
            "reject",
            "done",
            "abort",
            "get",
            "list",
            "listing",
            "fastpath",
            "chunk",
            "x",
        ]
    ),
    st.dictionaries(st.sampled_from(fields), json_values, max_size=8),
)
def test_near_valid_json_only_raises_decode_error(kind: str, body: dict[str, object]) -> None:
    _only_decode_errors(json.dumps({"type": kind, **body}))


@FUZZ
@given(st.binary(min_size=0, max_size=40), ids, st.integers(0, 2**64 - 1))
def test_near_valid_chunks_only_raise_decode_error(tail: bytes, tid: str, offset: int) -> None:
    _only_decode_errors(bytes([1]) + bytes.fromhex(tid) + offset.to_bytes(8, "big") + tail)


def test_decoder_limits() -> None:
    with pytest.raises(DecodeError, match="limit"):
        fw.decode(bytes([1]) + bytes(8) + bytes(8) + bytes(fw.MAX_CHUNK_DATA + 1))
    with pytest.raises(DecodeError, match="unknown kind"):
        fw.decode(bytes([2]) + bytes(20))
    with pytest.raises(ValueError, match="chunk data"):
        fw.encode_chunk("0000000000000001", 0, b"")
    too_many = [{"name": f"f{i}", "size": 1, "is_dir": False, "mtime": 0} for i in range(401)]
    body = {
        "type": "listing",
        "id": "0000000000000001",
        "scope": "browse",
        "path": "",
        "entries": too_many,
        "start": 0,
        "truncated": False,
    }
    with pytest.raises(DecodeError, match="at most 400"):
        fw.decode(json.dumps(body))
    with pytest.raises(DecodeError, match="not an IP"):
        fw.decode(
            json.dumps(
                {
                    "type": "fastpath",
                    "id": "0000000000000001",
                    "port": 1,
                    "nonce": "A" * 22,
                    "hosts": ["example.com"],
                }
            )
        )


# --------------------------------------------------------------------------- hostile peer, fuzzed

FUZZ_IDS = ["00000000000000a1", "00000000000000a2", "00000000000000a3"]
fuzz_ids = st.sampled_from(FUZZ_IDS)
CONTENT = b"0123456789" * 20
peer_messages = st.one_of(
    st.builds(
        fw.Offer, fuzz_ids, st.just("ok.txt"), st.just(200), st.just(sha(CONTENT)), st.just("push")
    ),
    st.builds(lambda i: (i, 0, CONTENT), fuzz_ids),
    st.builds(lambda i: ("honest", i), fuzz_ids),
    st.builds(
        fw.Offer,
        fuzz_ids,
        st.sampled_from(["ok.txt", "../x", "NUL", "a.bin", "x\x00y", "sub/dir"]),
        st.sampled_from([0, 10, 200, 201, 10**15]),
        st.sampled_from([sha(CONTENT), sha(b""), sha(CONTENT[:10])]),
        st.sampled_from(["push", "pull"]),
    ),
    st.builds(
        lambda i, o, n: (i, o, CONTENT[o % 200 : o % 200 + n] or b"z"),
        fuzz_ids,
        st.sampled_from([0, 10, 100, 190, 200, 250]),
        st.integers(1, 120),
    ),
    st.builds(fw.Accept, fuzz_ids, st.sampled_from([0, 5, 200, 201])),
    st.builds(fw.Reject, fuzz_ids, st.just("declined")),
    st.builds(fw.Done, fuzz_ids, st.sampled_from([sha(CONTENT), sha(b"")])),
    st.builds(fw.Abort, fuzz_ids, st.just("cancelled")),
    st.builds(fw.FastPath, fuzz_ids, st.just(4000), st.just(bytes(16))),
    st.builds(fw.Get, fuzz_ids, st.just("published"), st.just("ok.txt")),
    st.builds(fw.ListFiles, fuzz_ids, st.just("browse"), st.just("")),
    st.builds(fw.Listing, fuzz_ids, st.just("browse"), st.just(""), st.just(())),
    st.text(max_size=20),
    st.binary(max_size=30),
)
local_actions = st.one_of(
    st.tuples(st.sampled_from(["accept", "reject", "abort", "resume"]), fuzz_ids),
    st.tuples(st.sampled_from(["lost", "chunk", "send", "request"]), st.just("")),
    st.tuples(
        st.sampled_from(["fast_sent", "fast_received", "fast_progress"]),
        fuzz_ids,
        st.sampled_from([0, 100, 200]),
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(peer_messages, local_actions), max_size=40))
def test_a_hostile_peer_never_makes_us_write_outside_or_store_a_bad_file(
    steps: list[object],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        (src / "mine.bin").write_bytes(CONTENT)
        me = Peer(root / "down", auto_accept=True, chunk_size=64, keep_free=0)
        offered: dict[str, set[str]] = {}
        for step in steps:
            try:
                if isinstance(step, fw.Offer):
                    offered.setdefault(step.id, set()).add(step.sha256)
                if isinstance(step, tuple) and step[0] == "honest":
                    offered.setdefault(str(step[1]), set()).add(sha(CONTENT))
                if (
                    isinstance(step, tuple)
                    and isinstance(step[0], str)
                    and len(step) == 3
                    and isinstance(step[2], bytes)
                ):
                    forge(me, step)  # type: ignore[arg-type]
                elif isinstance(step, tuple):
                    _local(me, step, src / "mine.bin")
                elif isinstance(step, str | bytes):
                    me.core.receive(step, 0.0)
                else:
                    forge(me, step)  # type: ignore[arg-type]
            except LocalProtocolError:
                pass  # our own misuse in this random script, not the peer's doing
            drain(me)
        outside = {p for p in tree(root) if not p.startswith("down/")}
        assert outside <= {"src", "src/mine.bin", "down"}
        completed = [e for e in me.of(ft.Completed) if e.role is ft.Role.RECEIVE]
        event("received a file" if completed else "received nothing")
        for done in me.of(ft.Completed):
            if done.role is ft.Role.RECEIVE:
                stored = (me.dir / done.name).read_bytes()
                assert sha(stored) == done.sha256
                assert done.sha256 in offered[done.id]
        for p in me.dir.iterdir():
            assert p.name.endswith((".peerdesk-part", ".peerdesk-part.json")) or any(
                isinstance(e, ft.Completed) and e.name == p.name for e in me.events
            )


def _local(me: Peer, step: tuple[object, ...], source: Path) -> None:
    what, tid = step[0], str(step[1])
    core = me.core
    if what == "honest":  # a well-behaved peer sends a whole file
        forge(me, fw.Offer(tid, "ok.txt", len(CONTENT), sha(CONTENT), "push"))
        drain(me)
        forge(me, (tid, 0, CONTENT))
    elif what == "accept":
        core.accept(tid, 0.0)
    elif what == "reject":
        core.reject(tid, 0.0)
    elif what == "abort":
        core.abort(tid, 0.0)
    elif what == "resume":
        core.resume(tid, 0.0)
    elif what == "lost":
        core.connection_lost(0.0)
    elif what == "chunk":
        rc = core.next_chunk(0.0)
        if rc is not None:
            with fs.FileReader(rc.source) as reader:
                fw.decode(rc.frame(reader.read(rc.offset, rc.length)))
    elif what == "send":
        core.send_file(
            "mine.bin", len(CONTENT), sha(CONTENT), str(source), 0.0, transfer_id=FUZZ_IDS[0]
        )
    elif what == "request":
        core.request("published", "ok.txt", 0.0)
    elif what == "fast_sent":
        core.fast_path_sent(tid, int(step[2]), 0.0)  # type: ignore[call-overload]
    elif what == "fast_received":
        core.fast_path_received(tid, int(step[2]), 0.0)  # type: ignore[call-overload]
    elif what == "fast_progress":
        core.fast_path_progress(tid, int(step[2]), 0.0)  # type: ignore[call-overload]
