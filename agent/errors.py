"""Every error PeerDesk raises, in one place.

Split as h11 does: ``LocalProtocolError`` is our own misuse (a bug in the caller,
or a command that is not allowed now), ``RemoteProtocolError`` is the other side
misbehaving (a peer, or the signaling server). Messages are written for the person
who will read them in a terminal or in the dashboard.
"""

from __future__ import annotations


class PeerDeskError(Exception):
    """Base of every PeerDesk error. ``code`` is a stable, machine-readable tag."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class LocalProtocolError(PeerDeskError):
    """We (or the person typing commands) asked for something that is not allowed now."""

    code = "not_allowed"


class RemoteProtocolError(PeerDeskError):
    """The other side sent something we cannot accept."""

    code = "protocol"


class DecodeError(RemoteProtocolError):
    """A message on the wire could not be parsed: malformed, oversized or of unknown type."""

    code = "malformed"


class UnknownMessage(DecodeError):
    """A well-formed message of a type we do not know; logged and dropped."""

    code = "unknown_type"


class InvalidCode(LocalProtocolError):
    """A session code or link that does not parse."""

    code = "invalid_code"


class WrongCode(RemoteProtocolError):
    """The PAKE did not agree: the code was mistyped, or someone tampered with the join."""

    code = "wrong_code"


class HandshakeTampered(RemoteProtocolError):
    """A sealed handshake payload failed to open or verify although the code was right."""

    code = "tampered"


class HandshakeTimeout(RemoteProtocolError):
    """The other side stopped answering during the join."""

    code = "timeout"


class CodeBurned(RemoteProtocolError):
    """The code was burned after too many wrong attempts, or expired."""

    code = "code_burned"


class JoinRefused(RemoteProtocolError):
    """The host refused the join (full session, role not offered, declined by the CSR)."""

    code = "refused"


class StoreError(LocalProtocolError):
    """A session database cannot be opened, or holds a row that does not parse."""

    code = "store"


class UnreadableLog(LocalProtocolError):
    """A file given to the log verifier is neither a session database nor a JSON-lines log."""

    code = "unreadable"
