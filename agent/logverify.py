"""Check a session log offline: ``peerdesk log verify FILE``.

``FILE`` is a session database (``agent.store.LogStore``) or a JSON-lines export
(one canonical entry per line, ``export_jsonl``). Every entry is checked exactly as
a follower checks it live (``agent.session.logstate.LogState``): canonical form,
author id against key, signatures (the author's, and the sequencer's on proposed
entries), the hash chain, seq continuity, epochs that never decrease and rise only
at an epoch entry backed by a majority of the voters known at that point, and the
write policy. The report says exactly where the log breaks::

    BROKEN: 42 entries, first break at entry 17 (epoch 2, seq 17): prev hash does not match entry 16

"entry N" is the N-th entry of the file, from 0 (the seq of an intact log). Checking
goes on past a break, folding each entry in as the file has it, so every further
problem is listed too (a tampered entry usually also breaks the next one's chain).

    python -m agent.logverify verify session.sqlite
    python -m agent.logverify export session.sqlite session.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import DecodeError, UnreadableLog
from agent.protocol.log import decode_entry
from agent.session.logstate import LogState

_SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_LISTED = 50
"Problems listed in a report; the count says how many there were."


@dataclass(frozen=True)
class Problem:
    """One place where the log breaks."""

    index: int
    "Position in the file, from 0."
    seq: int | None
    "The entry's own seq, when it parsed."
    epoch: int | None
    reason: str
    "A ``LogState`` refusal reason, or ``malformed`` / ``misfiled``."
    detail: str

    def __str__(self) -> str:
        where = f"entry {self.index}"
        if self.seq is not None:
            where += f" (epoch {self.epoch}, seq {self.seq})"
        return f"{where}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found."""

    path: Path
    format: str
    "``sqlite`` or ``jsonl``."
    entries: int
    problems: tuple[Problem, ...]
    last_epoch: int
    "Epoch of the last entry, -1 for an empty log."
    ended: bool
    "The log holds a ``session_end``."

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: OK or BROKEN, and where it first breaks."""
        size = f"{self.entries} entr{'y' if self.entries == 1 else 'ies'}"
        if self.ok:
            if not self.entries:
                return f"OK: {self.path} holds an empty log"
            state = "session ended" if self.ended else "session not ended"
            return f"OK: {size}, epochs 0..{self.last_epoch}, {state}, every check passed"
        more = len(self.problems) - 1
        extra = f" (+{more} more problem{'s' if more != 1 else ''})" if more else ""
        return f"BROKEN: {size}, first break at {self.problems[0]}{extra}"

    def lines(self) -> list[str]:
        """The summary, then one line per problem (at most ``MAX_LISTED``)."""
        out = [self.summary()]
        out += [f"  {p}" for p in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            out.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "path": str(self.path),
            "format": self.format,
            "entries": self.entries,
            "last_epoch": self.last_epoch,
            "ended": self.ended,
            "summary": self.summary(),
            "problems": [
                {
                    "index": p.index,
                    "seq": p.seq,
                    "epoch": p.epoch,
                    "reason": p.reason,
                    "detail": p.detail,
                }
                for p in self.problems
            ],
        }


@dataclass(frozen=True)
class _Item:
    index: int
    data: bytes
    row_seq: int | None = None
    row_epoch: int | None = None
    row_hash: str | None = None


def _select(target: str, *, uri: bool = False) -> list[tuple[int, int, str, bytes]]:
    db = sqlite3.connect(target, uri=uri)
    try:
        rows: list[tuple[int, int, str, bytes]] = db.execute(
            "SELECT seq, epoch, hash, data FROM entries ORDER BY seq"
        ).fetchall()
        return rows
    finally:
        db.close()


def _sqlite_items(path: Path) -> list[_Item]:
    try:
        try:
            rows = _select(f"file:{path}?mode=ro", uri=True)
        except sqlite3.OperationalError:
            # A writer that crashed leaves a WAL that only a writable connection recovers.
            rows = _select(str(path))
    except sqlite3.DatabaseError as exc:
        raise UnreadableLog(f"{path} is not a PeerDesk session database ({exc})") from None
    items = []
    for i, (seq, epoch, digest, data) in enumerate(rows):
        raw = bytes(data) if isinstance(data, bytes | memoryview) else str(data).encode()
        items.append(_Item(i, raw, seq, epoch, digest))
    return items


def _jsonl_items(raw: bytes, path: Path) -> list[_Item]:
    lines = [line for line in raw.split(b"\n") if line.strip()]
    if lines and not lines[0].lstrip().startswith(b"{"):
        raise UnreadableLog(f"{path} is neither a session database nor a JSON-lines log")
    return [_Item(i, line.rstrip(b"\r")) for i, line in enumerate(lines)]


def _read(path: Path) -> tuple[str, list[_Item]]:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
            if head == _SQLITE_MAGIC:
                return "sqlite", _sqlite_items(path)
            raw = head + handle.read()
    except OSError as exc:
        raise UnreadableLog(f"cannot read {path}: {exc.strerror or exc}") from None
    return "jsonl", _jsonl_items(raw, path)


def verify(path: str | Path) -> VerifyReport:
    """Check the log in ``path``; raises ``UnreadableLog`` if it cannot be read at all."""
    path = Path(path)
    kind, items = _read(path)
    state = LogState()
    problems: list[Problem] = []
    for item in items:
        try:
            entry = decode_entry(item.data)
        except DecodeError as exc:
            problems.append(
                Problem(item.index, None, None, "malformed", f"does not parse: {exc.message}")
            )
            # Step over it so that the entries after it are judged on their own.
            state.count += 1
            state.head = item.row_hash or "?" * 64
            continue
        if item.row_seq is not None and (
            item.row_seq != entry.seq
            or item.row_epoch != entry.epoch
            or item.row_hash != entry.digest
        ):
            problems.append(
                Problem(
                    item.index,
                    entry.seq,
                    entry.epoch,
                    "misfiled",
                    f"the database row filed as seq {item.row_seq} holds a different entry "
                    "(rows swapped, or edited without their index columns)",
                )
            )
        refusal = state.check(entry)
        if refusal is not None:
            problems.append(
                Problem(item.index, entry.seq, entry.epoch, refusal.reason, refusal.detail)
            )
        state.apply(entry)
    return VerifyReport(
        path=path,
        format=kind,
        entries=len(items),
        problems=tuple(problems),
        last_epoch=state.epoch,
        ended=state.ended,
    )


def _rows(db: str | Path) -> Iterator[bytes]:
    for item in _sqlite_items(Path(db)):
        yield item.data


def export_jsonl(db: str | Path, out: str | Path) -> int:
    """Write the entries of session database ``db`` to ``out``, one canonical entry per line.

    Written to a temporary file and renamed, so ``out`` is whole or absent. Returns
    the number of entries.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    count = 0
    with tmp.open("wb") as handle:
        for data in _rows(db):
            handle.write(data + b"\n")
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out)
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """``peerdesk log verify FILE`` / ``peerdesk log export DB OUT``.

    Exit status: 0 the log verifies, 1 it is broken, 2 it cannot be read.
    ``argv`` may start with ``verify`` or ``export``; a bare FILE means verify.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "export":
        parser = argparse.ArgumentParser(prog="peerdesk log export")
        parser.add_argument("db", help="session database (.sqlite)")
        parser.add_argument("out", help="JSON-lines file to write")
        opts = parser.parse_args(args[1:])
        try:
            count = export_jsonl(opts.db, opts.out)
        except (UnreadableLog, OSError) as exc:
            print(f"cannot export: {exc}", file=sys.stderr)
            return 2
        print(f"exported {count} entries to {opts.out}")
        return 0
    if args and args[0] == "verify":
        args = args[1:]
    parser = argparse.ArgumentParser(
        prog="peerdesk log verify",
        description="Check a session log (database or JSON lines) offline.",
    )
    parser.add_argument("file", help="session database (.sqlite) or JSON-lines export")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    opts = parser.parse_args(args)
    try:
        report = verify(opts.file)
    except UnreadableLog as exc:
        if opts.json:
            print(json.dumps({"ok": False, "unreadable": True, "summary": exc.message}))
        else:
            print(f"UNREADABLE: {exc.message}")
        return 2
    if opts.json:
        print(json.dumps(report.to_json()))
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
