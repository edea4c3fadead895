"""The team roster: the Ed25519 keys of CSRs a team trusts, shared as a file.

An assistant CSR whose identity key is on the roster joins a session with the room
id alone (DESIGN.md, "Joining"); anyone else needs a CSR code. The roster lives in
``identity.home()/"team.json"`` and is written through a temporary file and a
rename, so a crash never leaves half a roster behind.

Everything read here is treated as hostile: a key must be 32 bytes that decode to
a point of the Ed25519 prime-order group (not the identity, not a small-order or
mixed-order point, canonically encoded), because a low-order "key" is one that
anybody can forge signatures for. A ``team.json`` that does not parse is an error
that says what is wrong and is never overwritten; an import that does not parse
changes nothing.

File format (``team.json`` and exports alike; exports leave out ``added``)::

    {"peerdesk_team": 1,
     "members": [{"key": "<64 hex chars>", "name": "Alice", "added": "2025-01-02T10:15:00Z"}]}

Example::

    python3 -c "from agent.team import Roster; print(Roster.load().members())"
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import identity
from agent.errors import LocalProtocolError, PeerDeskError
from agent.protocol.handshake import PEER_ID_RE, peer_id

TEAM_FILE = "team.json"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 1024 * 1024
"A team file larger than this is refused before it is parsed."
MAX_MEMBERS = 1000
"At most this many members on one roster."

_HEX_RE = re.compile(r"[0-9a-fA-F]{64}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]{43}=?")


@dataclass(frozen=True)
class Member:
    """One trusted CSR on the roster."""

    key: bytes
    "The raw 32-byte Ed25519 public key."
    name: str
    "Display name, cleaned (printable, at most 64 characters)."
    added: str
    "When it was added to this roster, ISO 8601 UTC (``2025-01-02T10:15:00Z``)."

    @property
    def id(self) -> str:
        """The short peer id others see for this key (``peer_id(key)``)."""
        return peer_id(self.key)

    @property
    def key_hex(self) -> str:
        """The key as 64 hex characters, as ``peerdesk id`` prints it."""
        return self.key.hex()


# --- keys -------------------------------------------------------------------------

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_L = 2**252 + 27742317777372353535851937790883648493
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _add(a: _Point, b: _Point) -> _Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % _P
    bb = (y1 + x1) * (y2 + x2) % _P
    cc = 2 * _D * t1 * t2 % _P
    dd = 2 * z1 * z2 % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _decode_point(raw: bytes) -> _Point | None:
    """RFC 8032 5.1.3 point decoding; ``None`` when ``raw`` is not a canonical point."""
    y = int.from_bytes(raw, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_M1 % _P
    if v * x * x % _P != u:
        return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _is_identity(p: _Point) -> bool:
    x, y, z, _ = p
    return x % _P == 0 and (y - z) % _P == 0


def is_valid_key(raw: bytes) -> bool:
    """True when ``raw`` is a usable Ed25519 public key.

    32 bytes, canonically encoded, on the curve, and of prime order ``L``: the
    identity and small- or mixed-order points are refused, since signatures under
    them can be forged or are malleable. Every honestly generated key passes.
    """
    if len(raw) != 32:
        return False
    point = _decode_point(raw)
    if point is None or _is_identity(point):
        return False
    acc: _Point = (0, 1, 1, 0)
    for bit in bin(_L)[2:]:
        acc = _add(acc, acc)
        if bit == "1":
            acc = _add(acc, point)
    if not _is_identity(acc):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return False
    return True


def parse_key(text: str) -> bytes:
    """The raw key from 64 hex characters or 43 base64url characters; checked with
    :func:`is_valid_key`. Raises ``LocalProtocolError`` (code ``bad_key``) otherwise."""
    if not isinstance(text, str):
        raise LocalProtocolError("a public key must be given as text", code="bad_key")
    s = text.strip()
    if _HEX_RE.fullmatch(s):
        raw = bytes.fromhex(s)
    elif _B64URL_RE.fullmatch(s):
        try:
            raw = base64.urlsafe_b64decode(s.rstrip("=") + "=")
        except (binascii.Error, ValueError):
            raise LocalProtocolError(
                "that public key is not valid base64url", code="bad_key"
            ) from None
        if len(raw) != 32 or base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != (
            s.rstrip("=")
        ):
            raise LocalProtocolError(
                "that public key is not canonical base64url of 32 bytes", code="bad_key"
            )
    else:
        shown = s if len(s) <= 20 else f"{s[:20]}…"
        raise LocalProtocolError(
            f"{shown!r} is not a public key: give the 64 hex characters that "
            "'peerdesk id' prints (or 43 characters of base64url)",
            code="bad_key",
        )
    if not is_valid_key(raw):
        raise LocalProtocolError(
            "that is not a valid Ed25519 public key (not a point of the curve's prime-order "
            "group); check that it was copied whole from 'peerdesk id'",
            code="bad_key",
        )
    return raw


# --- files ------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the field {k!r} appears twice in one object")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _read_document(path: Path) -> Any:
    """The parsed JSON of a team file, or ``FileNotFoundError``; anything else raises
    ``LocalProtocolError`` naming the problem."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise LocalProtocolError(
            f"{path} is a directory, not a team file", code="team_file"
        ) from None
    except OSError as exc:
        raise LocalProtocolError(
            f"cannot read {path}: {exc.strerror or exc}", code="team_file"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise LocalProtocolError(
            f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB; it is not a team file",
            code="team_file",
        )
    try:
        return json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError:
        raise LocalProtocolError(f"{path} is not UTF-8 text", code="team_file") from None
    except RecursionError:
        raise LocalProtocolError(f"{path} is nested too deeply", code="team_file") from None
    except ValueError as exc:
        raise LocalProtocolError(f"{path} is not valid JSON ({exc})", code="team_file") from None


def _parse_members(doc: Any, where: str, *, allow_duplicates: bool) -> tuple[list[Member], int]:
    """Members of a parsed team document, and how many duplicate keys were dropped."""

    def bad(problem: str) -> LocalProtocolError:
        return LocalProtocolError(f"{where}: {problem}", code="team_file")

    if not isinstance(doc, dict):
        raise bad("a team file must hold a JSON object")
    version = doc.get("peerdesk_team")
    if version is None:
        raise bad('this is not a PeerDesk team file (no "peerdesk_team" field)')
    if type(version) is not int:
        raise bad('"peerdesk_team" must be a whole number')
    if version != FORMAT_VERSION:
        raise bad(
            f"team file version {version} is not supported (this agent reads "
            f"version {FORMAT_VERSION}); update PeerDesk"
        )
    raw_members = doc.get("members")
    if not isinstance(raw_members, list):
        raise bad('"members" must be a list')
    if len(raw_members) > MAX_MEMBERS:
        raise bad(f"{len(raw_members)} members is more than the {MAX_MEMBERS} allowed")
    members: list[Member] = []
    seen: set[bytes] = set()
    duplicates = 0
    for n, item in enumerate(raw_members, start=1):
        if not isinstance(item, dict):
            raise bad(f"member {n} is not an object")
        key_text, name, added = item.get("key"), item.get("name"), item.get("added")
        if not isinstance(key_text, str):
            raise bad(f'member {n} has no "key" text')
        if not isinstance(name, str):
            raise bad(f'member {n} has no "name" text')
        try:
            key = parse_key(key_text)
            clean = identity.clean_name(name)
        except PeerDeskError as exc:
            raise bad(f"member {n}: {exc.message}") from None
        if added is None:
            added = ""
        elif not isinstance(added, str) or len(added) > 40:
            raise bad(f'member {n}: "added" must be an ISO 8601 time')
        elif added:
            try:
                datetime.fromisoformat(added)
            except ValueError:
                raise bad(f'member {n}: "added" is not an ISO 8601 time') from None
        if key in seen:
            if not allow_duplicates:
                raise bad(f"member {n} repeats the key of an earlier member ({peer_id(key)})")
            duplicates += 1
            continue
        seen.add(key)
        members.append(Member(key, clean, added))
    return members, duplicates


def _document(members: Sequence[Member], *, with_added: bool) -> str:
    rows: list[dict[str, str]] = []
    for m in members:
        row = {"key": m.key_hex, "name": m.name}
        if with_added and m.added:
            row["added"] = m.added
        rows.append(row)
    doc = {"peerdesk_team": FORMAT_VERSION, "members": rows}
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Roster:
    """The team roster held in one file. Changes are written at once, atomically.

    A long-lived holder (the runtime) should call :meth:`Roster.load` again when it
    needs fresh answers; edits made by another process are not seen otherwise, and
    two processes editing at the same moment can lose one edit (last write wins).
    """

    def __init__(self, path: Path, members: Sequence[Member] = ()) -> None:
        self.path = path
        self._members: dict[bytes, Member] = {m.key: m for m in members}

    @classmethod
    def load(cls, path: Path | None = None) -> Roster:
        """The roster in ``path`` (default ``identity.home()/"team.json"``); empty when
        the file does not exist yet. A malformed file raises ``LocalProtocolError``."""
        path = path if path is not None else identity.home() / TEAM_FILE
        try:
            doc = _read_document(path)
            members, _ = _parse_members(doc, str(path), allow_duplicates=False)
        except FileNotFoundError:
            return cls(path)
        except LocalProtocolError as exc:
            raise LocalProtocolError(
                f"{exc.message}; the file was left untouched, fix or remove it",
                code="team_file",
            ) from None
        return cls(path, members)

    def __len__(self) -> int:
        return len(self._members)

    def members(self) -> list[Member]:
        """Everyone on the roster, in the order they were added."""
        return list(self._members.values())

    def get(self, key: bytes) -> Member | None:
        """The member with this raw key, if any."""
        return self._members.get(key)

    def is_member(self, key: bytes) -> bool:
        """True when this raw 32-byte key is on the roster (compared in full, never by id)."""
        return isinstance(key, bytes | bytearray) and bytes(key) in self._members

    def add(self, pubkey: str, name: str) -> Member:
        """Add a CSR by public key (64 hex or 43 base64url characters) and display name."""
        key = parse_key(pubkey)
        clean = identity.clean_name(name) if isinstance(name, str) else ""
        if not clean:
            raise LocalProtocolError("a team member needs a name", code="bad_name")
        existing = self._members.get(key)
        if existing is not None:
            raise LocalProtocolError(
                f"that key is already on the team as {existing.name!r} (id {existing.id})",
                code="duplicate",
            )
        if len(self._members) >= MAX_MEMBERS:
            raise LocalProtocolError(f"the team already has {MAX_MEMBERS} members", code="full")
        member = Member(key, clean, _now_iso())
        self._save({**self._members, key: member})
        return member

    def remove(self, pubkey_or_id: str) -> Member:
        """Remove a member by public key or by peer id; returns who was removed."""
        text = pubkey_or_id.strip() if isinstance(pubkey_or_id, str) else ""
        if PEER_ID_RE.fullmatch(text):
            matches = [m for m in self._members.values() if m.id == text]
            if len(matches) > 1:
                raise LocalProtocolError(
                    f"several members share the id {text}; remove by public key instead",
                    code="ambiguous",
                )
        else:
            key = parse_key(text)
            matches = [self._members[key]] if key in self._members else []
        if not matches:
            raise LocalProtocolError(f"no team member has the key or id {text!r}", code="unknown")
        gone = matches[0]
        self._save({k: m for k, m in self._members.items() if k != gone.key})
        return gone

    def export(self, path: Path) -> int:
        """Write the roster (keys and names) to a file a team can share; returns the count."""
        _write_atomic(Path(path), self.export_text())
        return len(self._members)

    def export_text(self) -> str:
        """The shareable JSON document :meth:`export` writes."""
        return _document(self.members(), with_added=False)

    def import_file(self, path: Path) -> tuple[list[Member], list[Member]]:
        """Merge a team file into the roster: ``(added, skipped)``.

        Members whose key is already on the roster (or repeated in the file) are
        skipped, keeping the local name. A malformed file raises ``LocalProtocolError``
        and changes nothing.
        """
        path = Path(path)
        try:
            doc = _read_document(path)
        except FileNotFoundError:
            raise LocalProtocolError(f"{path} does not exist", code="team_file") from None
        incoming, _ = _parse_members(doc, str(path), allow_duplicates=True)
        merged = dict(self._members)
        added: list[Member] = []
        skipped: list[Member] = []
        for m in incoming:
            if m.key in merged:
                skipped.append(m)
                continue
            new = Member(m.key, m.name, _now_iso())
            merged[m.key] = new
            added.append(new)
        if len(merged) > MAX_MEMBERS:
            raise LocalProtocolError(
                f"importing {path} would make the team larger than {MAX_MEMBERS} members",
                code="full",
            )
        if added:
            self._save(merged)
        return added, skipped

    def _save(self, members: dict[bytes, Member]) -> None:
        _write_atomic(self.path, _document(list(members.values()), with_added=True))
        self._members = members


# --- command line -----------------------------------------------------------------


def _team_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peerdesk team",
        description="The team roster: CSRs whose keys are on it join sessions as "
        "assistants with the room id alone.",
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a CSR by the key 'peerdesk id' prints")
    add.add_argument("pubkey", metavar="PUBKEY", help="64 hex characters")
    add.add_argument("name", metavar="NAME", nargs="+", help="display name")
    lst = sub.add_parser("list", help="show the roster")
    lst.add_argument("--json", action="store_true", help="print the roster as JSON")
    rm = sub.add_parser("remove", help="remove a member by key or id")
    rm.add_argument("who", metavar="PUBKEY|ID")
    exp = sub.add_parser("export", help="write the roster to a file to share ('-' for stdout)")
    exp.add_argument("file", metavar="FILE")
    imp = sub.add_parser("import", help="merge a shared team file into the roster")
    imp.add_argument("file", metavar="FILE")
    return p


def cmd_team(args_list: list[str]) -> int:
    """``peerdesk team add|list|remove|export|import``: 0 done, 1 refused, 2 bad usage."""
    try:
        args = _team_parser().parse_args(args_list)
    except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run_team(args)
    except PeerDeskError as exc:
        print(f"peerdesk team: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"peerdesk team: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _run_team(args: argparse.Namespace) -> int:
    roster = Roster.load()
    if args.action == "add":
        m = roster.add(args.pubkey, " ".join(args.name))
        print(f"added {m.name} (id {m.id}) to the team")
    elif args.action == "list":
        members = roster.members()
        if args.json:
            rows = [
                {"id": m.id, "key": m.key_hex, "name": m.name, "added": m.added} for m in members
            ]
            print(json.dumps(rows, indent=2, ensure_ascii=False))
        elif not members:
            print("no team members yet (add one with: peerdesk team add PUBKEY NAME)")
        else:
            width = max(len(m.name) for m in members)
            for m in members:
                print(f"{m.id}  {m.name:<{width}}  added {m.added[:10] or '?':<10}  {m.key_hex}")
    elif args.action == "remove":
        m = roster.remove(args.who)
        print(f"removed {m.name} (id {m.id}) from the team")
    elif args.action == "export":
        if args.file == "-":
            sys.stdout.write(roster.export_text())
        else:
            count = roster.export(Path(args.file))
            print(f"exported {count} member{'s' * (count != 1)} to {args.file}")
    else:
        added, skipped = roster.import_file(Path(args.file))
        for m in added:
            print(f"  + {m.name} (id {m.id})")
        for m in skipped:
            print(f"  = {m.name} (id {m.id}) already on the team")
        print(f"imported {len(added)} new member{'s' * (len(added) != 1)} from {args.file}")
    return 0
