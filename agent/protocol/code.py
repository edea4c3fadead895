"""Session codes and join links.

A session code is 12 digits shown as ``4829-1307-5531``: the first six are the
public room id the signaling server allocated, the last six a secret the host's
agent made, which never reaches any server. A link carries the code and,
optionally, the signaling server: ``peerdesk://join/4829-1307-5531?signal=ws://host:port``.

Everything here is parsed strictly: an unknown scheme, host or parameter is an
error that says what was wrong, and nothing starts.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

from agent.errors import InvalidCode

_CODE_RE = re.compile(r"([0-9]{6})([0-9]{6})")
_ROOM_RE = re.compile(r"[0-9]{6}")
_BLANK_OR_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


@dataclass(frozen=True)
class SessionCode:
    """A parsed session code: public ``room`` id and private ``secret``, six digits each."""

    room: str
    secret: str

    def __str__(self) -> str:
        digits = self.room + self.secret
        return f"{digits[0:4]}-{digits[4:8]}-{digits[8:12]}"

    @classmethod
    def new(cls, room: str) -> SessionCode:
        """A fresh code for ``room`` with a random secret."""
        if not _ROOM_RE.fullmatch(room):
            raise InvalidCode(f"room id must be 6 digits, got {room!r}")
        return cls(room=room, secret=f"{secrets.randbelow(10**6):06d}")


def parse_code(text: str) -> SessionCode:
    """Parse ``4829-1307-5531`` (spaces and dashes are ignored)."""
    if len(text) > 40:
        raise InvalidCode("a session code has 12 digits, like 4829-1307-5531")
    digits = re.sub(r"[\s-]", "", text)
    match = _CODE_RE.fullmatch(digits)
    if match is None:
        raise InvalidCode(
            f"{text.strip()!r} is not a session code: a code has 12 digits, like 4829-1307-5531"
        )
    return SessionCode(room=match.group(1), secret=match.group(2))


def check_signal_url(url: str) -> str:
    """Validate a signaling server URL: ws/wss (or http/https), a host, no secrets."""
    if len(url) > 512:
        raise InvalidCode("signaling URL is too long")
    if not url.isascii():
        try:
            url.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from undecodable argv bytes
            raise InvalidCode("signaling URL is not valid text") from None
    if _BLANK_OR_CONTROL.search(url):  # urlsplit would silently drop tabs and newlines
        raise InvalidCode("signaling URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidCode(f"signaling URL {url!r} is invalid: {exc}") from None
    if parts.scheme not in ("ws", "wss", "http", "https"):
        raise InvalidCode(
            f"signaling URL must start with ws://, wss://, http:// or https://, got {url!r}"
        )
    if not parts.hostname:
        raise InvalidCode(f"signaling URL {url!r} has no host")
    if parts.username or parts.password:
        raise InvalidCode("signaling URL must not carry a user name or password")
    if parts.fragment or parts.query:
        raise InvalidCode("signaling URL must not have a query or a fragment")
    if port == 0:
        raise InvalidCode("signaling URL has port 0")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return parts._replace(scheme=scheme).geturl()


@dataclass(frozen=True)
class JoinLink:
    """What a ``peerdesk://join/...`` link says: the code and where to signal."""

    code: SessionCode
    signal: str | None

    def __str__(self) -> str:
        base = f"peerdesk://join/{self.code}"
        if self.signal is None:
            return base
        return f"{base}?signal={quote(self.signal, safe=':/[]')}"


def landing_url(code: SessionCode, signal: str) -> str:
    """The server's one-click page for ``code``: ``http(s)://HOST/j/ROOM#SECRET``.

    The secret is in the fragment, which browsers never send: the server sees the room.
    """
    parts = urlsplit(check_signal_url(signal))
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/j/{code.room}#{code.secret}"


def parse_link(text: str) -> JoinLink:
    """Parse ``peerdesk://join/CODE[?signal=URL]``; anything else is an error."""
    if len(text) > 1024:
        raise InvalidCode("link is too long")
    text = text.strip()
    if _BLANK_OR_CONTROL.search(text):
        raise InvalidCode("link must not contain spaces or control characters")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise InvalidCode(f"link is invalid: {exc}") from None
    if parts.scheme != "peerdesk":
        raise InvalidCode(f"links must start with peerdesk://, got {parts.scheme or 'none'}://")
    if parts.netloc != "join":
        raise InvalidCode(f'unknown link action "{parts.netloc}"; only peerdesk://join/ exists')
    if parts.fragment:
        raise InvalidCode("link must not have a fragment")
    code = parse_code(parts.path.lstrip("/"))
    try:
        params = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise InvalidCode("link has a malformed query") from None
    unknown = set(params) - {"signal"}
    if unknown:
        raise InvalidCode(f"link has unknown parameter(s): {', '.join(sorted(unknown))}")
    signal = None
    if "signal" in params:
        if len(params["signal"]) != 1:
            raise InvalidCode("link names more than one signaling server")
        signal = check_signal_url(params["signal"][0])
    return JoinLink(code=code, signal=signal)


def parse_code_or_link(text: str) -> JoinLink:
    """A typed code or a pasted link, whichever ``text`` is."""
    if "://" in text:
        return parse_link(text)
    return JoinLink(code=parse_code(text), signal=None)
