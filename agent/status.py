"""Status values: what the agent tells its front ends (headless JSON, console, tray).

Front ends receive these frozen values through one callback and never reach into
agent internals. ``to_json()`` gives the headless wire form documented in the README.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Status:
    event: ClassVar[str] = "status"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"event": self.event}
        for key, value in vars(self).items():
            body[key.rstrip("_")] = list(value) if isinstance(value, tuple) else value
        return body


@dataclass(frozen=True)
class SessionStarted(Status):
    """The CSR's session exists; ``code`` and ``link`` can be given to a customer."""

    event: ClassVar[str] = "session"
    code: str
    link: str
    room: str
    signal: str
    me: str
    "The CSR's own peer id."


@dataclass(frozen=True)
class Joined(Status):
    """A participant is in the session (``sas`` is set for a direct, PAKE-verified link)."""

    event: ClassVar[str] = "joined"
    peer: str
    role: str
    name: str
    sas: str | None
    me: str
    "Our own peer id."
    primary: bool = False


@dataclass(frozen=True)
class ChatReceived(Status):
    event: ClassVar[str] = "chat"
    from_: str
    name: str
    text: str
    to: tuple[str, ...] | None


@dataclass(frozen=True)
class Left(Status):
    event: ClassVar[str] = "left"
    peer: str
    reason: str = "left"


@dataclass(frozen=True)
class Ended(Status):
    event: ClassVar[str] = "ended"
    reason: str = "ended"


@dataclass(frozen=True)
class AttemptFailed(Status):
    """Host: someone tried to join with a wrong code (or a tampered handshake)."""

    event: ClassVar[str] = "join_failed"
    reason: str
    message: str
    failures: int
    remaining: int


@dataclass(frozen=True)
class CodeClosed(Status):
    """Host: the code admits nobody any more (``burned`` or ``expired``)."""

    event: ClassVar[str] = "code_closed"
    reason: str


@dataclass(frozen=True)
class Error(Status):
    """Something went wrong; ``reason`` is for people, ``code`` for programs."""

    event: ClassVar[str] = "error"
    reason: str
    code: str = "error"


@dataclass(frozen=True)
class RosterChanged(Status):
    """Who is in the session now: ``[{"id","name","role","primary"}]`` in join order."""

    event: ClassVar[str] = "roster"
    participants: tuple[dict[str, Any], ...]
