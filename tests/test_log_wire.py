"""The session log's wire: canonical entries and strict decoders.

Fuzzed like every other wire (``tests/test_fuzz_decoders.py``): arbitrary text and
bytes, arbitrary JSON, near-valid objects and mutated real entries; only
``DecodeError`` may escape, and whatever a decoder accepts must re-encode to
something that decodes to the same value.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DecodeError, PeerDeskError
from agent.protocol import log as lw
from agent.protocol.log import Entry
from tests.logsim import ALICE, BOB, CAROL
from tests.test_fuzz_decoders import any_text, json_values

FUZZ = settings(
    max_examples=int(os.environ.get("PEERDESK_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
A, B, C = ALICE.id, BOB.id, CAROL.id


def start() -> Entry:
    return lw.make_entry(
        ALICE.key,
        epoch=0,
        seq=0,
        prev=lw.ZERO_HASH,
        ts=1712345678.25,
        kind="session_start",
        body={"room": "123456", "primary": A, "name": "Alice"},
    )


GENESIS = start()
BODIES: dict[str, dict[str, Any]] = {
    "session_start": {"room": "123456", "primary": A, "name": "Alice"},
    "participant": {
        "peer": C,
        "name": "Carol",
        "role": "customer",
        "primary": True,
        "action": "joined",
    },
    "request": {"id": "q1", "cap": "view", "csr": A, "customer": C},
    "consent": {"id": "r1", "cap": "view", "state": "granted", "csr": A, "customer": C},
    "control": {"holder": B, "token": [0, 0], "by": A},
    "chat": {"from": C, "name": "Carol", "text": 'héllo \u2028 "quoted" \\ \n', "to": [A, B]},
    "note": {"text": "n", "by": A},
    "file": {
        "id": "f1",
        "name": "report.pdf",
        "size": 12345,
        "sha256": "ab" * 32,
        "direction": "to_customer",
        "by": A,
        "state": "done",
    },
    "sysinfo": {
        "customer": C,
        "data": {
            "cpu": 12.5,
            "mem": 2**40,
            "ok": True,
            "x": None,
            "disks": [{"mount": "/", "percent": 1e-05}],
        },
    },
    "epoch": {"epoch": 1, "sequencer": B, "votes": [B, C]},
    "session_end": {"by": A, "reason": "solved"},
}


def sample_entries() -> list[Entry]:
    out = [GENESIS]
    for kind, body in BODIES.items():
        prev = out[-1]
        if kind in ("chat", "consent", "sysinfo"):
            p = lw.make_proposal(CAROL.key, session=GENESIS.digest, ts=3.5, kind=kind, body=body)
            out.append(lw.sequence(p, ALICE.key, epoch=0, seq=prev.seq + 1, prev=prev.digest))
        else:
            out.append(
                lw.make_entry(
                    ALICE.key,
                    epoch=0,
                    seq=prev.seq + 1,
                    prev=prev.digest,
                    ts=2.0,
                    kind=kind,
                    body=body,
                )
            )
    return out


ENTRIES = sample_entries()
PROPOSAL = lw.make_proposal(
    CAROL.key, session=GENESIS.digest, ts=4.0, kind="chat", body=BODIES["chat"]
)
MESSAGES: list[lw.LogMessage] = [
    lw.Propose(PROPOSAL),
    lw.Reject(PROPOSAL.sig, "not_allowed", "a customer may not write note entries"),
    lw.Append(0, 3, tuple(ENTRIES[:4])),
    lw.Ack(0, 3, ENTRIES[3].digest),
    lw.Commit(0, 3, 5, ENTRIES[5].digest),
    lw.SyncRequest(0, 5, ENTRIES[5].digest, ((2, ENTRIES[2].digest),)),
    lw.Sync(1, 3, 4, tuple(ENTRIES[4:7])),
    lw.Sync(1, 3, None, ()),
    lw.VoteRequest(2, B, (1, 7, ENTRIES[7].digest), transfer=True),
    lw.VoteRequest(2, B, (0, -1, lw.ZERO_HASH), pre=True),
    lw.Vote(2, B, True),
    lw.Vote(2, B, False, pre=True),
    lw.NewEpoch(2, B, (B, C)),
    lw.HandOver(1, B),
]


def check_decoder(data: str | bytes) -> None:
    try:
        msg = lw.decode(data)
    except DecodeError:
        return
    except PeerDeskError as exc:  # pragma: no cover
        pytest.fail(f"decode raised {type(exc).__name__}, not DecodeError")
    again = lw.encode(msg)
    assert lw.decode(again) == msg
    assert lw.decode(again.encode("utf-8")) == msg


def check_entry_decoder(data: bytes | str) -> None:
    try:
        entry = lw.decode_entry(data)
    except DecodeError:
        return
    except PeerDeskError as exc:  # pragma: no cover
        pytest.fail(f"decode_entry raised {type(exc).__name__}, not DecodeError")
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    assert entry.raw == raw  # only the canonical spelling is ever accepted
    assert lw.decode_entry(entry.raw) == entry


# --------------------------------------------------------------------------- canonical form


def test_every_kind_round_trips_and_signatures_verify() -> None:
    for entry in ENTRIES:
        assert lw.decode_entry(entry.raw) == entry
        assert lw.entry_from_obj(json.loads(entry.raw)) == entry
        assert entry.author_signature_ok()
        if entry.sequenced:
            assert entry.sequencer_signature_ok(lw.public_bytes(ALICE.key))
            assert not entry.sequencer_signature_ok(lw.public_bytes(BOB.key))
            assert entry.proposal().signature_ok()
    chat = next(e for e in ENTRIES if e.kind == "chat")
    assert '"text":"héllo \u2028 \\"quoted\\" \\\\ \\n"'.encode() in chat.raw
    sysinfo = next(e for e in ENTRIES if e.kind == "sysinfo")
    assert b'"percent":1e-05' in sysinfo.raw and b'"mem":1099511627776' in sysinfo.raw


def test_the_canonical_encoding_is_sorted_compact_json() -> None:
    raw = GENESIS.raw
    assert (
        raw
        == json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    )
    assert raw.startswith(b'{"author":"') and b'"ts":1712345678.25' in raw
    assert GENESIS.digest == __import__("hashlib").sha256(raw).hexdigest()


def test_the_fast_encoder_is_the_canonical_encoding() -> None:
    """Entries assemble their canonical bytes by hand; it must equal ``canonical(obj)``."""

    def without(obj: dict[str, Any], *names: str) -> bytes:
        return lw.canonical({k: v for k, v in obj.items() if k not in names})

    for entry in ENTRIES:
        obj = entry.to_obj()
        assert entry._fast
        assert entry._encode() == lw.canonical(obj) == entry.raw
        assert entry._encode(sig=False) == without(obj, "sig")
        assert entry._encode(seqsig=False) == without(obj, "seqsig")
        assert entry._encode(position=False, sig=False) == without(
            obj, "sig", "seqsig", "epoch", "seq", "prev"
        )
        if entry.sequenced:
            assert entry._encode(position=False, sig=False) == lw.canonical(
                entry.proposal().content()
            )
        odd = dataclasses.replace(entry, ts=int(entry.ts))  # not a float: the slow path
        assert not odd._fast and odd.raw == lw.canonical(odd.to_obj())


@pytest.mark.parametrize(
    "respell",
    [
        lambda o: json.dumps(o, sort_keys=True),  # spaces
        lambda o: json.dumps(o, separators=(",", ":")),  # unsorted
        lambda o: json.dumps(o, sort_keys=True, separators=(",", ":")),  # \\u escapes
        lambda o: json.dumps(o | {"ts": int(o["ts"])}, sort_keys=True, separators=(",", ":")),
    ],
)
def test_other_spellings_of_an_entry_are_refused(respell: Any) -> None:
    chat = next(e for e in ENTRIES if e.kind == "chat")
    obj = json.loads(chat.raw)
    with pytest.raises(DecodeError):
        lw.decode_entry(respell(obj))


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("chat", {"text": "x" * 4001}),
        ("chat", {"text": ""}),
        ("chat", {"name": "n" * 65}),
        ("chat", {"to": [A, A]}),
        ("chat", {"extra": 1}),
        ("note", {"text": "x" * 20001}),
        ("participant", {"role": "admin"}),
        ("participant", {"primary": 1}),
        ("control", {"token": [0, True]}),
        ("control", {"holder": "not-a-peer"}),
        ("consent", {"state": "maybe"}),
        ("file", {"size": -1}),
        ("file", {"direction": "sideways"}),
        ("sysinfo", {"data": {"x": float("inf")}}),
        ("sysinfo", {"data": {"x": 2**60}}),
        ("sysinfo", {"data": {"x": "a\x00b"}}),
        ("epoch", {"votes": [B, B]}),
        ("session_end", {"reason": "r" * 301}),
    ],
)
def test_bodies_are_checked_strictly(kind: str, change: dict[str, Any]) -> None:
    body = BODIES[kind] | change
    with pytest.raises(DecodeError):
        lw.check_body(kind, body)


def test_notes_seal_with_chacha20_poly1305() -> None:
    key = os.urandom(32)
    sealed = lw.seal_note(key, "secret " * 100)
    assert lw.open_note(key, sealed) == "secret " * 100
    assert lw.seal_note(key, "same") != lw.seal_note(key, "same")  # fresh nonces
    lw.check_body("note", {"sealed": sealed, "by": A})
    with pytest.raises(DecodeError):
        lw.open_note(os.urandom(32), sealed)
    with pytest.raises(DecodeError):
        lw.open_note(key, sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1])
    with pytest.raises(ValueError, match="32 bytes"):
        lw.seal_note(b"short", "x")


def test_batches_fit_one_message() -> None:
    big = next(e for e in ENTRIES if e.kind == "sysinfo")
    groups = lw.batches([big] * 10 + list(ENTRIES))
    for group in groups:
        text = lw.encode(lw.Append(0, 0, group))
        assert len(text.encode()) <= lw.MAX_LOG_MESSAGE_BYTES


# --------------------------------------------------------------------------- fuzzing


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.type)
def test_messages_round_trip(msg: lw.LogMessage) -> None:
    assert lw.decode(lw.encode(msg)) == msg


@FUZZ
@given(data=any_text | st.binary(max_size=200))
def test_decoders_on_arbitrary_input(data: str | bytes) -> None:
    check_decoder(data)
    check_entry_decoder(data)


@FUZZ
@given(obj=json_values, ascii_only=st.booleans())
def test_decoders_on_arbitrary_json(obj: Any, ascii_only: bool) -> None:
    check_decoder(json.dumps(obj, ensure_ascii=ascii_only))
    check_entry_decoder(json.dumps(obj, ensure_ascii=ascii_only))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


def _mutate(obj: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        copy = dict(obj)
        if delete and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _mutate(obj[head], rest, value, delete)
        return copy
    copy_list = list(obj)
    copy_list[head] = _mutate(obj[head], rest, value, delete)
    return copy_list


REAL = [json.loads(lw.encode(m)) for m in MESSAGES]


@FUZZ
@given(
    base=st.sampled_from(REAL),
    data=st.data(),
    value=json_values | st.sampled_from([A, lw.ZERO_HASH, -1, 2**53, 1.5, "", []]),
    delete=st.booleans(),
)
def test_decoders_on_mutated_real_messages(
    base: Any, data: st.DataObject, value: Any, delete: bool
) -> None:
    path = data.draw(st.sampled_from(_paths(base)))
    mutated = _mutate(base, path, value, delete)
    check_decoder(json.dumps(mutated, ensure_ascii=False))
    if isinstance(mutated, dict) and isinstance(mutated.get("entries"), list):
        for item in mutated["entries"]:
            text = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            check_entry_decoder(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(entry=st.sampled_from(ENTRIES), at=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_a_flipped_bit_never_yields_a_different_valid_entry(
    entry: Entry, at: int, bit: int
) -> None:
    raw = bytearray(entry.raw)
    raw[at % len(raw)] ^= 1 << bit
    try:
        other = lw.decode_entry(bytes(raw))
    except DecodeError:
        return
    sequencer = lw.public_bytes(ALICE.key)
    valid = other.author_signature_ok() and (
        not other.sequenced or other.sequencer_signature_ok(sequencer)
    )
    assert not valid or other == entry


def test_signatures_can_be_checked_ahead_on_a_thread_pool() -> None:
    from concurrent.futures import ThreadPoolExecutor

    fresh = [lw.decode_entry(e.raw) for e in ENTRIES]
    with ThreadPoolExecutor(2) as pool:
        assert lw.prefetch_signatures(fresh, None, pool.map, chunk=3)
    assert all("_author_ok" in e.__dict__ for e in fresh)
    assert all("_seq_ok" in e.__dict__ for e in fresh if e.sequenced)  # key from entry 0
    forged = [*fresh[:3], dataclasses.replace(fresh[3], sig=bytes(64))]
    assert not lw.prefetch_signatures(forged, None)
    assert not forged[3].author_signature_ok()  # remembered, and still refused
