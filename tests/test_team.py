"""The team roster: keys, the file, imports and exports, and ``peerdesk team``."""

from __future__ import annotations

import base64
import json
import re
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import team
from agent.errors import LocalProtocolError, PeerDeskError
from agent.protocol.handshake import peer_id
from agent.team import Roster, cmd_team, parse_key

# An independent affine model of edwards25519, to check the roster's decisions.
P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
L = 2**252 + 27742317777372353535851937790883648493
SMALL_ORDER = [  # the eight points of small order, and both encodings of the order-4 ones
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]
NON_CANONICAL = [  # y >= p
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]


def new_key() -> bytes:
    return Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def not_on_curve() -> bytes:
    """The smallest y for which x^2 = (y^2 - 1) / (d y^2 + 1) has no root (Euler's criterion)."""
    for y in range(2, 100):
        w = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
        if pow(w, (P - 1) // 2, P) == P - 1:
            return y.to_bytes(32, "little")
    raise AssertionError("unreachable")


def mixed_order(raw: bytes) -> bytes:
    """``A + (0, -1)``: a valid key plus the point of order 2, i.e. ``(-x, -y)``."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    return ((P - y) | ((1 - sign) << 255)).to_bytes(32, "little")


def affine_decode(raw: bytes) -> tuple[int, int] | None:
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    w = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(w, (P + 3) // 8, P)
    if x * x % P != w:
        x = x * pow(2, (P - 1) // 4, P) % P
    if x * x % P != w or (x == 0 and sign):
        return None
    return (P - x if x & 1 != sign else x), y


def affine_in_prime_subgroup(point: tuple[int, int]) -> bool:
    def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        (x1, y1), (x2, y2) = a, b
        t = D * x1 * x2 * y1 * y2 % P
        return (
            (x1 * y2 + x2 * y1) * pow(1 + t, P - 2, P) % P,
            (y1 * y2 + x1 * x2) * pow(1 - t, P - 2, P) % P,
        )

    acc = (0, 1)
    for bit in bin(L)[2:]:
        acc = add(acc, acc)
        if bit == "1":
            acc = add(acc, point)
    return acc == (0, 1) and point != (0, 1)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEERDESK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def roster(tmp_path: Path) -> Roster:
    return Roster.load(tmp_path / "team.json")


# --- keys -------------------------------------------------------------------------


def test_generated_keys_are_valid_in_every_spelling() -> None:
    for _ in range(20):
        raw = new_key()
        assert parse_key(raw.hex()) == raw
        assert parse_key(raw.hex().upper()) == raw
        assert parse_key(f"  {raw.hex()}\n") == raw
        assert parse_key(b64url(raw)) == raw
        assert parse_key(b64url(raw) + "=") == raw


@pytest.mark.parametrize("hexkey", SMALL_ORDER + NON_CANONICAL)
def test_small_order_and_non_canonical_points_are_refused(hexkey: str) -> None:
    with pytest.raises(LocalProtocolError, match="not a valid Ed25519 public key") as info:
        parse_key(hexkey)
    assert info.value.code == "bad_key"


def test_point_not_on_the_curve_is_refused() -> None:
    raw = not_on_curve()
    assert affine_decode(raw) is None
    with pytest.raises(LocalProtocolError, match="not a valid Ed25519 public key"):
        parse_key(raw.hex())


def test_mixed_order_point_is_refused() -> None:
    raw = new_key()
    evil = mixed_order(raw)
    point = affine_decode(evil)
    assert point is not None and not affine_in_prime_subgroup(point)
    with pytest.raises(LocalProtocolError, match="not a valid Ed25519 public key"):
        parse_key(evil.hex())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "00" * 31,
        "00" * 33,
        "zz" * 32,
        "0x" + "00" * 31,
        "+" * 43,
        "A" * 42,
        "A" * 44,
        b64url(b"\x00" * 31),
        b64url(bytes(range(32)))[:-1] + "B",  # non-canonical: stray low bits in the last char
        "ed25519:" + "00" * 32,
    ],
)
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_key(text)
    assert info.value.code == "bad_key"


# --- the roster -------------------------------------------------------------------


def test_add_list_remove_round_trip(roster: Roster) -> None:
    alice_key, bob_key = new_key(), new_key()
    alice = roster.add(alice_key.hex(), "Alice")
    bob = roster.add(b64url(bob_key), "Bob Builder")
    assert alice.key == alice_key and alice.name == "Alice" and alice.id == peer_id(alice_key)
    assert alice.key_hex == alice_key.hex()
    assert datetime.fromisoformat(alice.added).tzinfo is not None
    again = Roster.load(roster.path)
    assert again.members() == [alice, bob]
    assert again.is_member(alice_key) and again.is_member(bob_key)
    assert not again.is_member(new_key()) and not again.is_member("x")  # type: ignore[arg-type]
    assert again.remove(alice.id) == alice
    assert again.remove(bob_key.hex()) == bob
    assert Roster.load(roster.path).members() == []
    assert len(again) == 0


def test_file_format(roster: Roster) -> None:
    key = new_key()
    roster.add(key.hex(), "Alice")
    doc = json.loads(roster.path.read_text())
    assert doc["peerdesk_team"] == 1
    (member,) = doc["members"]
    assert member["key"] == key.hex() and member["name"] == "Alice"
    assert set(member) == {"key", "name", "added"}
    assert [p.name for p in roster.path.parent.iterdir() if p.name.startswith(".")] == []


def test_names_are_cleaned_and_required(roster: Roster) -> None:
    m = roster.add(new_key().hex(), "  Al\x1bice\u202e \n" + "x" * 100)
    assert m.name.startswith("Alice") and len(m.name) == 64 and "\x1b" not in m.name
    with pytest.raises(LocalProtocolError, match="printable"):
        roster.add(new_key().hex(), " \x00\t ")
    assert len(roster) == 1


def test_duplicate_add_is_refused(roster: Roster) -> None:
    key = new_key()
    roster.add(key.hex(), "Alice")
    with pytest.raises(LocalProtocolError, match="already on the team as 'Alice'"):
        roster.add(b64url(key), "Alice again")
    assert [m.name for m in Roster.load(roster.path).members()] == ["Alice"]


def test_bad_key_changes_nothing(roster: Roster) -> None:
    roster.add(new_key().hex(), "Alice")
    before = roster.path.read_bytes()
    for bad in [SMALL_ORDER[0], "nope", not_on_curve().hex(), mixed_order(new_key()).hex()]:
        with pytest.raises(LocalProtocolError):
            roster.add(bad, "Mallory")
    assert roster.path.read_bytes() == before


def test_remove_unknown_and_ambiguous(roster: Roster, monkeypatch: pytest.MonkeyPatch) -> None:
    roster.add(new_key().hex(), "Alice")
    with pytest.raises(LocalProtocolError, match="no team member"):
        roster.remove("aaaaaaaaaa")
    with pytest.raises(LocalProtocolError, match="no team member"):
        roster.remove(new_key().hex())
    with pytest.raises(LocalProtocolError, match="not a public key"):
        roster.remove("Alice")
    roster.add(new_key().hex(), "Alicia")
    monkeypatch.setattr(team, "peer_id", lambda key: "samesameid")
    with pytest.raises(LocalProtocolError, match="several members share the id"):
        roster.remove("samesameid")
    assert len(roster) == 2


def test_failed_write_keeps_the_old_file(roster: Roster, monkeypatch: pytest.MonkeyPatch) -> None:
    roster.add(new_key().hex(), "Alice")
    before = roster.path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agent.team.os.replace", boom)
    with pytest.raises(OSError, match="No space"):
        roster.add(new_key().hex(), "Bob")
    assert roster.path.read_bytes() == before
    assert len(roster) == 1
    assert [p.name for p in roster.path.parent.iterdir() if p.name.startswith(".")] == []


# --- export and import ------------------------------------------------------------


def test_export_import_round_trip(roster: Roster, tmp_path: Path) -> None:
    keys = [new_key() for _ in range(3)]
    for i, k in enumerate(keys):
        roster.add(k.hex(), f"CSR {i}")
    out = tmp_path / "share" / "team-export.json"
    assert roster.export(out) == 3
    doc = json.loads(out.read_text())
    assert doc == {
        "peerdesk_team": 1,
        "members": [{"key": k.hex(), "name": f"CSR {i}"} for i, k in enumerate(keys)],
    }
    other = Roster.load(tmp_path / "other" / "team.json")
    other.add(keys[1].hex(), "Local name")
    added, skipped = other.import_file(out)
    assert [m.name for m in added] == ["CSR 0", "CSR 2"]
    assert [m.name for m in skipped] == ["CSR 1"]
    reloaded = Roster.load(other.path)
    assert {m.key for m in reloaded.members()} == set(keys)
    assert reloaded.get(keys[1]) is not None and reloaded.get(keys[1]).name == "Local name"  # type: ignore[union-attr]
    assert other.import_file(out) == ([], [m for m in json_members(out)])


def json_members(path: Path) -> list[team.Member]:
    doc = json.loads(path.read_text())
    return [team.Member(bytes.fromhex(m["key"]), m["name"], "") for m in doc["members"]]


def test_import_accepts_a_team_json_and_repeats(roster: Roster, tmp_path: Path) -> None:
    k = new_key()
    src = tmp_path / "in.json"
    src.write_text(
        json.dumps(
            {
                "peerdesk_team": 1,
                "members": [
                    {"key": k.hex(), "name": "Alice", "added": "2025-01-01T00:00:00Z", "x": 1},
                    {"key": b64url(k), "name": "Alice twice"},
                ],
                "comment": "extra fields are fine",
            }
        )
    )
    added, skipped = roster.import_file(src)
    assert [m.name for m in added] == ["Alice"] and skipped == []


GOOD = new_key().hex()


BAD_FILES = [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "must hold a JSON object"),
    (b'{"members": []}', 'no "peerdesk_team" field'),
    (b'{"peerdesk_team": 2, "members": []}', "version 2 is not supported"),
    (b'{"peerdesk_team": true, "members": []}', "must be a whole number"),
    (b'{"peerdesk_team": "1", "members": []}', "must be a whole number"),
    (b'{"peerdesk_team": 1}', '"members" must be a list'),
    (b'{"peerdesk_team": 1, "members": {}}', '"members" must be a list'),
    (b'{"peerdesk_team": 1, "members": [7]}', "member 1 is not an object"),
    (b'{"peerdesk_team": 1, "members": [{"name": "A"}]}', 'member 1 has no "key"'),
    (f'{{"peerdesk_team": 1, "members": [{{"key": "{GOOD}"}}]}}'.encode(), 'no "name"'),
    (
        f'{{"peerdesk_team": 1, "members": [{{"key": "{GOOD}", "name": 5}}]}}'.encode(),
        'no "name"',
    ),
    (
        f'{{"peerdesk_team": 1, "members": [{{"key": "{GOOD}", "name": "\\u0000"}}]}}'.encode(),
        "member 1: a display name must have at least one printable character",
    ),
    (
        f'{{"peerdesk_team": 1, "members": [{{"key": "{SMALL_ORDER[6]}", "name": "M"}}]}}'.encode(),
        "member 1: that is not a valid Ed25519 public key",
    ),
    (
        b'{"peerdesk_team": 1, "members": [{"key": "cafe", "name": "M"}]}',
        "member 1: 'cafe' is not a public key",
    ),
    (
        f'{{"peerdesk_team": 1, "members": [{{"key": "{GOOD}", "name": "A", '
        f'"added": "yesterday"}}]}}'.encode(),
        '"added" is not an ISO 8601 time',
    ),
    (b'{"peerdesk_team": 1, "peerdesk_team": 1, "members": []}', "appears twice"),
    (b'{"peerdesk_team": NaN, "members": []}', "NaN is not allowed"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b" " * (team.MAX_FILE_BYTES + 1), "larger than"),
    (
        json.dumps({"peerdesk_team": 1, "members": [{"key": GOOD, "name": "A"}] * 1001}).encode(),
        "more than the 1000 allowed",
    ),
]


@pytest.mark.parametrize(("content", "problem"), BAD_FILES, ids=[p for _, p in BAD_FILES])
def test_malformed_import_is_refused_and_changes_nothing(
    roster: Roster, tmp_path: Path, content: bytes, problem: str
) -> None:
    roster.add(new_key().hex(), "Alice")
    before = roster.path.read_bytes()
    src = tmp_path / "evil.json"
    src.write_bytes(content)
    with pytest.raises(LocalProtocolError, match=re.escape(problem)) as info:
        roster.import_file(src)
    assert str(src) in info.value.message
    assert roster.path.read_bytes() == before
    assert len(roster) == 1


def test_import_of_missing_or_directory(roster: Roster, tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError, match="does not exist"):
        roster.import_file(tmp_path / "nope.json")
    with pytest.raises(LocalProtocolError, match="is a directory"):
        roster.import_file(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"peerdesk_team": 1, "members": [{"key": "00", "name": "x"}]}',
        (
            f'{{"peerdesk_team": 1, "members": [{{"key": "{GOOD}", "name": "A"}}, '
            f'{{"key": "{GOOD}", "name": "B"}}]}}'
        ).encode(),
    ],
    ids=["not-json", "bad-key", "repeated-key"],
)
def test_malformed_team_json_is_an_error_and_never_overwritten(
    home: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    home.mkdir()
    path = home / "team.json"
    path.write_bytes(content)
    with pytest.raises(LocalProtocolError, match="left untouched") as info:
        Roster.load()
    assert str(path) in info.value.message
    assert cmd_team(["add", new_key().hex(), "Bob"]) == 1
    assert "left untouched" in capsys.readouterr().err
    assert cmd_team(["list"]) == 1
    assert path.read_bytes() == content


# --- command line -----------------------------------------------------------------


def test_cli_round_trip(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_team(["list"]) == 0
    assert "no team members yet" in capsys.readouterr().out
    key = new_key()
    assert cmd_team(["add", key.hex(), "Alice", "Smith"]) == 0
    assert capsys.readouterr().out == f"added Alice Smith (id {peer_id(key)}) to the team\n"
    assert cmd_team(["list"]) == 0
    line = capsys.readouterr().out
    assert peer_id(key) in line and "Alice Smith" in line and key.hex() in line
    assert cmd_team(["list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == peer_id(key) and row["key"] == key.hex() and row["name"] == "Alice Smith"
    out = tmp_path / "export.json"
    assert cmd_team(["export", str(out)]) == 0
    assert capsys.readouterr().out == f"exported 1 member to {out}\n"
    assert cmd_team(["export", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["members"][0]["key"] == key.hex()
    assert cmd_team(["remove", peer_id(key)]) == 0
    assert "removed Alice Smith" in capsys.readouterr().out
    assert cmd_team(["import", str(out)]) == 0
    text = capsys.readouterr().out
    assert "+ Alice Smith" in text and "imported 1 new member from" in text
    assert cmd_team(["import", str(out)]) == 0
    text = capsys.readouterr().out
    assert "already on the team" in text and "imported 0 new members" in text


def test_cli_errors_and_usage(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_team(["add", "nope", "Mallory"]) == 1
    assert "peerdesk team: 'nope' is not a public key" in capsys.readouterr().err
    assert cmd_team(["add", SMALL_ORDER[0], "Mallory"]) == 1
    assert "not a valid Ed25519 public key" in capsys.readouterr().err
    assert cmd_team(["remove", "aaaaaaaaaa"]) == 1
    assert cmd_team(["import", str(home / "missing.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cmd_team([]) == 2
    assert cmd_team(["add", GOOD]) == 2
    assert cmd_team(["frobnicate"]) == 2
    assert "usage: peerdesk team" in capsys.readouterr().err
    assert cmd_team(["--help"]) == 0
    assert cmd_team(["export", str(home / "no" / "such" / "dir" / "x.json")]) == 0
    assert not (home / "team.json").exists()  # nothing was added by any of the above


# --- properties -------------------------------------------------------------------

KEYISH = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=40).map(bytes.hex),
    st.binary(max_size=40).map(b64url),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(min_size=32, max_size=32).map(b64url),
)


@settings(max_examples=300, deadline=None)
@given(KEYISH, st.text(max_size=80))
def test_add_accepts_only_valid_keys_and_raises_only_our_errors(text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        r = Roster.load(Path(d) / "team.json")
        try:
            m = r.add(text, name)
        except PeerDeskError:
            assert len(r) == 0 and not (Path(d) / "team.json").exists()
            return
        assert len(m.key) == 32
        point = affine_decode(m.key)
        assert point is not None and affine_in_prime_subgroup(point)
        assert Roster.load(r.path).is_member(m.key)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_real_key_is_accepted(seed: bytes) -> None:
    raw = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    assert parse_key(raw.hex()) == raw == parse_key(b64url(raw))
    assert not team.is_valid_key(mixed_order(raw))
