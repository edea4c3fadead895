"""Time-limited TURN credentials, coturn's ``use-auth-secret`` REST scheme.

coturn started with ``--use-auth-secret --static-auth-secret=SECRET`` accepts any
username of the form ``<unix expiry>:<name>`` whose password is
``base64(HMAC-SHA1(SECRET, username))`` until the expiry passes
(draft-uberti-behave-turn-rest). The signaling server holds the secret and hands
agents fresh credentials at ``GET /ice``; agents never learn the secret, and a leaked
credential dies by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

URL_PREFIXES = ("turn:", "turns:", "stun:")


@dataclass(frozen=True)
class IceServer:
    """One ICE server entry as WebRTC's ``RTCIceServer`` spells it."""

    urls: tuple[str, ...]
    username: str
    credential: str

    def as_json(self) -> dict[str, object]:
        return {"urls": list(self.urls), "username": self.username, "credential": self.credential}


def credential(secret: str, username: str) -> str:
    """coturn's password for ``username``: base64 of HMAC-SHA1 keyed with the shared secret."""
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


@dataclass(frozen=True)
class TurnSecret:
    """The TURN servers and the secret shared with them."""

    urls: tuple[str, ...]
    "``turn:host:port`` (``?transport=udp|tcp``) or ``turns:`` URLs, at least one."
    secret: str
    "coturn's ``static-auth-secret``; never leaves the signaling server."
    ttl: int = 3600
    "Seconds a minted credential is valid (60 to 86400)."

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("give at least one TURN URL")
        for url in self.urls:
            if not url.startswith(URL_PREFIXES) or any(c.isspace() for c in url):
                raise ValueError(f"not a TURN URL (turn:host:port): {url!r}")
        if len(self.secret) < 16:
            raise ValueError("the TURN secret must be at least 16 characters")
        if not 60 <= self.ttl <= 86400:
            raise ValueError("the TURN credential lifetime must be 60 to 86400 seconds")

    def mint(self, now: float, name: str | None = None) -> IceServer:
        """A credential valid for ``ttl`` seconds from ``now`` (Unix time)."""
        label = name if name is not None else secrets.token_hex(4)
        username = f"{int(now) + self.ttl}:{label}"
        return IceServer(self.urls, username, credential(self.secret, username))
