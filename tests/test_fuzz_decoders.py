"""Fuzzing every decoder that reads text from outside: only our own errors may escape.

Three kinds of input: arbitrary text and bytes; near-valid JSON (the right ``type``
tag, the right field names, random or almost-right values); and valid messages built
from strategies, which must survive ``encode`` -> ``decode`` unchanged. Whenever a
decoder accepts an input, re-encoding what it returned must give UTF-8 text that
decodes to the same value: a decoder must never accept something it cannot repeat.
"""

from __future__ import annotations

import base64
import json
import os
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DecodeError, InvalidCode, PeerDeskError
from agent.protocol import code as codes
from agent.protocol import handshake as hs
from agent.protocol import signaling as sig

#: ``PEERDESK_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_decoders.py`` digs deeper.
FUZZ = settings(
    max_examples=int(os.environ.get("PEERDESK_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- strategies

#: Any code point, lone surrogates and NUL included.
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF) | st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF
)
any_text = st.text(any_char, max_size=80)
#: Text a valid message may hold: no NUL, no lone surrogate.
clean_chars = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])
clean_text = st.text(clean_chars, max_size=80)

digits6 = st.from_regex(r"[0-9]{6}", fullmatch=True)
hex12 = st.from_regex(r"[0-9a-f]{12}", fullmatch=True)
peer_ids = st.just("host") | hex12
reasons = st.from_regex(r"[a-z_]{1,32}", fullmatch=True)


def b64_of(sizes: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    return sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(
        lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
#: Values that are almost what some field wants.
near_values = (
    digits6
    | st.from_regex(r"[0-9]{5,7}", fullmatch=True)
    | peer_ids
    | st.from_regex(r"[0-9a-fA-F]{11,13}", fullmatch=True)
    | reasons
    | st.sampled_from(["customer", "csr", "wrong_code", "burned", "HOST", "", "\x00"])
    | b64_of(st.sampled_from([0, 16, 17, 31, 32, 33, 34, 63, 64, 65]))
    | st.integers(min_value=-2, max_value=86401)
    | st.text(string.printable, max_size=20)
    | json_values
)

SIGNALING_FIELDS = ["room", "to", "data", "reason", "expires_in", "peer", "from", "code", "message"]
SIGNALING_FIELDS += ["secret", "resume"]
HANDSHAKE_FIELDS = ["role", "pake", "v", "mac", "sealed", "reason", "remaining"]
INTRO_FIELDS = ["name", "key", "sig", "sdp"]
SIGNALING_TYPES = [
    "create",
    "join",
    "send",
    "close",
    "resume",
    "created",
    "resumed",
    "joined",
    "peer",
    "relay",
    "gone",
    "closed",
    "error",
]
HANDSHAKE_TYPES = ["hello", "pake", "confirm", "accept", "reject"]


def near_objects(types: list[str], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with a known ``type`` (mostly) and some of the known field names."""
    return st.builds(
        lambda kind, body, extra: {**extra, **body, "type": kind},
        st.sampled_from(types) | json_values,
        st.dictionaries(st.sampled_from(fields), near_values, max_size=len(fields)),
        st.dictionaries(any_text, json_values, max_size=2),
    )


def dumps(obj: Any, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only)


# --------------------------------------------------------------------------- harness


def check_decoder(
    decode: Callable[[Any], Any],
    encode: Callable[[Any], str | bytes],
    data: str | bytes,
    errors: type[PeerDeskError] = DecodeError,
) -> Any:
    """``decode(data)`` returns a value that re-encodes stably, or raises ``errors``."""
    try:
        value = decode(data)
    except errors:
        return None
    except PeerDeskError as exc:  # pragma: no cover - reported as a failure below
        pytest.fail(f"{decode.__qualname__} raised {type(exc).__name__}, not {errors.__name__}")
    again = encode(value)
    wire = again if isinstance(again, bytes) else again.encode("utf-8")  # must be real UTF-8
    assert decode(again) == value
    assert decode(wire) == value
    assert encode(decode(again)) == again
    return value


def intro_encode(intro: hs.Intro) -> bytes:
    return hs.encode_intro(intro)


WIRE_DECODERS: list[tuple[Callable[[Any], Any], Callable[[Any], str | bytes]]] = [
    (sig.decode_client, sig.encode),
    (sig.decode_server, sig.encode),
    (hs.decode, hs.encode),
    (hs.decode_intro, intro_encode),
]
WIRE_IDS = ["decode_client", "decode_server", "handshake.decode", "decode_intro"]


# --------------------------------------------------------------------------- wire decoders


@pytest.mark.parametrize(("decode", "encode"), WIRE_DECODERS, ids=WIRE_IDS)
@FUZZ
@given(data=any_text | st.binary(max_size=200))
def test_wire_decoders_on_arbitrary_input(
    decode: Callable[[Any], Any], encode: Callable[[Any], str | bytes], data: str | bytes
) -> None:
    check_decoder(decode, encode, data)


@pytest.mark.parametrize(("decode", "encode"), WIRE_DECODERS, ids=WIRE_IDS)
@FUZZ
@given(obj=json_values, ascii_only=st.booleans())
def test_wire_decoders_on_arbitrary_json(
    decode: Callable[[Any], Any],
    encode: Callable[[Any], str | bytes],
    obj: Any,
    ascii_only: bool,
) -> None:
    check_decoder(decode, encode, dumps(obj, ascii_only))


@FUZZ
@given(
    obj=near_objects(SIGNALING_TYPES, SIGNALING_FIELDS),
    ascii_only=st.booleans(),
    as_bytes=st.booleans(),
)
def test_signaling_decoders_on_near_valid_json(obj: Any, ascii_only: bool, as_bytes: bool) -> None:
    text = dumps(obj, ascii_only)
    data = text.encode("utf-8", "surrogatepass") if as_bytes else text
    for decode in (sig.decode_client, sig.decode_server):
        check_decoder(decode, sig.encode, data)


@FUZZ
@given(obj=near_objects(HANDSHAKE_TYPES, HANDSHAKE_FIELDS), ascii_only=st.booleans())
def test_handshake_decoder_on_near_valid_json(obj: Any, ascii_only: bool) -> None:
    check_decoder(hs.decode, hs.encode, dumps(obj, ascii_only))


@FUZZ
@given(
    body=st.dictionaries(st.sampled_from(INTRO_FIELDS), near_values, max_size=4),
    base=st.fixed_dictionaries(
        {
            "name": clean_text,
            "key": b64_of(st.just(32)),
            "sig": b64_of(st.just(64)),
            "sdp": clean_text,
        }
    ),
    ascii_only=st.booleans(),
)
def test_intro_decoder_on_near_valid_json(
    body: dict[str, Any], base: dict[str, Any], ascii_only: bool
) -> None:
    data = dumps({**base, **body}, ascii_only).encode("utf-8", "surrogatepass")
    check_decoder(hs.decode_intro, intro_encode, data)


def test_oversized_and_deep_input_is_a_decode_error() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for decode, _ in WIRE_DECODERS:
        with pytest.raises(DecodeError) as too_big:
            decode("x" * (sig.MAX_MESSAGE_BYTES + 1))
        assert too_big.value.code == "too_large"
        with pytest.raises(DecodeError):
            decode('{"a":' * 30_000 + "1" + "}" * 30_000)
        with pytest.raises(DecodeError):
            decode(deep[:40_000] + deep[-40_000:])
        with pytest.raises(DecodeError):
            decode('{"type": "x", "n": ' + "9" * 5000 + "}")


def test_lone_surrogate_in_a_string_field_is_refused() -> None:
    with pytest.raises(DecodeError, match="not valid Unicode"):
        sig.decode_client('{"type":"send","to":"host","data":"\\ud800"}')
    with pytest.raises(DecodeError, match="not valid Unicode"):
        sig.decode_server('{"type":"error","code":"x","message":"a\\udfff"}')


# --------------------------------------------------------------------------- round trips

client_messages = st.one_of(
    st.builds(sig.Create),
    st.builds(sig.Join, room=digits6),
    st.builds(sig.Send, to=peer_ids, data=clean_text.filter(bool)),
    st.builds(sig.Close, room=digits6, reason=reasons),
)
server_messages = st.one_of(
    st.builds(sig.Created, room=digits6, expires_in=st.integers(0, 86400)),
    st.builds(sig.Joined, room=digits6, peer=peer_ids),
    st.builds(sig.Peer, room=digits6, peer=peer_ids),
    st.builds(sig.Relay, room=digits6, sender=peer_ids, data=clean_text.filter(bool)),
    st.builds(sig.Gone, room=digits6, peer=peer_ids),
    st.builds(sig.Closed, room=digits6, reason=reasons),
    st.builds(sig.Error, code=reasons, message=st.text(clean_chars, max_size=500)),
)


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


handshake_messages = st.one_of(
    st.builds(hs.Hello, role=st.sampled_from(hs.ROLES), pake=fixed(33)),
    st.builds(hs.Pake, pake=fixed(33)),
    st.builds(hs.Confirm, mac=fixed(32), sealed=st.binary(min_size=17, max_size=300)),
    st.builds(hs.Accept, mac=fixed(32), sealed=st.binary(min_size=17, max_size=300)),
    st.builds(hs.Reject, reason=st.sampled_from(hs.REJECT_REASONS), remaining=st.integers(-1, 100)),
)
intros = st.builds(
    hs.Intro,
    name=st.text(
        st.characters(min_codepoint=32, exclude_categories=["Cs"]), max_size=hs.MAX_NAME_CHARS
    ),
    key=fixed(32),
    sig=fixed(64),
    sdp=clean_text.filter(bool),
)


@FUZZ
@given(msg=client_messages)
def test_client_messages_round_trip(msg: sig.ClientMessage) -> None:
    assert check_decoder(sig.decode_client, sig.encode, sig.encode(msg)) == msg


@FUZZ
@given(msg=server_messages)
def test_server_messages_round_trip(msg: sig.ServerMessage) -> None:
    assert check_decoder(sig.decode_server, sig.encode, sig.encode(msg)) == msg


@FUZZ
@given(msg=handshake_messages)
def test_handshake_messages_round_trip(msg: hs.Message) -> None:
    assert check_decoder(hs.decode, hs.encode, hs.encode(msg)) == msg


@FUZZ
@given(intro=intros)
def test_intros_round_trip(intro: hs.Intro) -> None:
    assert check_decoder(hs.decode_intro, intro_encode, hs.encode_intro(intro)) == intro


def test_close_without_reason_means_closed() -> None:
    assert sig.decode_client('{"type":"close","room":"123456"}') == sig.Close(room="123456")


# --------------------------------------------------------------------------- codes and links

url_chars = st.sampled_from([*"/:?#@[]%&=+ .-_~!$'()*,;\\\t\n", "\u00e9", "\uff0f", "\x00"])
url_like = st.builds(
    "".join,
    st.lists(
        st.sampled_from(
            [
                "ws://",
                "wss://",
                "http://",
                "https://",
                "peerdesk://",
                "join/",
                "peerdesk://join/",
                "?signal=",
                "&signal=",
                "ws%3A%2F%2F",
                "[::1]",
                "127.0.0.1",
                "example.com",
                ":8765",
                ":0",
                ":99999",
                "user:pw@",
                "4829-1307-5531",
                "482913075531",
                "#frag",
                "%",
                "%zz",
                "%ed%a0%80",
            ]
        )
        | st.text(url_chars, max_size=3)
        | any_text.map(lambda t: t[:6]),
        max_size=8,
    ),
)


def parse_ok(parse: Callable[[str], Any], text: str) -> Any:
    try:
        return parse(text)
    except InvalidCode:
        return None


def check_link(link: codes.JoinLink | None) -> None:
    if link is None:
        return
    text = str(link)
    text.encode("utf-8")
    assert codes.parse_link(text) == link
    assert codes.parse_code_or_link(text) == link
    assert codes.parse_code(str(link.code)) == link.code
    if link.signal is not None:
        assert codes.check_signal_url(link.signal) == link.signal


@FUZZ
@given(text=any_text | url_like)
def test_code_parsers_raise_only_invalid_code(text: str) -> None:
    code = parse_ok(codes.parse_code, text)
    if code is not None:
        assert codes.parse_code(str(code)) == code
        assert codes.parse_code_or_link(text) == codes.JoinLink(code=code, signal=None)
    check_link(parse_ok(codes.parse_link, text))
    check_link(parse_ok(codes.parse_code_or_link, text))
    url = parse_ok(codes.check_signal_url, text)
    if url is not None:
        url.encode("utf-8")
        assert codes.check_signal_url(url) == url


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True)
hosts = hostnames | st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(lambda a: f"[{a}]")
signal_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["ws", "wss", "http", "https"]),
    hosts,
    st.none().map(lambda _: "") | st.integers(1, 65535).map(lambda p: f":{p}"),
    st.from_regex(r"(/[A-Za-z0-9._~%+&=:@!$'()*,;-]{0,12}){0,3}", fullmatch=True),
)


@FUZZ
@given(room=digits6, secret=digits6, url=st.none() | signal_urls)
def test_links_round_trip(room: str, secret: str, url: str | None) -> None:
    code = codes.SessionCode(room=room, secret=secret)
    assert codes.parse_code(str(code)) == code
    assert codes.parse_code(str(code).replace("-", " ")) == code
    signal = codes.check_signal_url(url) if url is not None else None
    link = codes.JoinLink(code=code, signal=signal)
    check_link(link)
    assert codes.parse_code_or_link(str(code)) == codes.JoinLink(code=code, signal=None)


@FUZZ
@given(room=digits6, secret=digits6, query=url_like | any_text)
def test_links_with_random_queries(room: str, secret: str, query: str) -> None:
    text = f"peerdesk://join/{room}{secret}?{query}"
    check_link(parse_ok(codes.parse_link, text))
    check_link(parse_ok(codes.parse_link, f"peerdesk://join/{room}{secret}?signal={query}"))
