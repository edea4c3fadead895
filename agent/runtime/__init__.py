"""The runtime: wires signaling, the handshake core, aiortc peers and the roster.

It owns no policy of its own: the sans-I/O cores decide, this package moves bytes
between them and the network and reports ``agent.status`` values through one
``emit`` callback. ``CsrSession`` (``host``) hosts a session; ``CustomerSession``
(``joiner``) joins one, as the customer or as an assistant CSR.
"""

from __future__ import annotations

import contextlib

from agent.runtime.common import CHANNEL_OPEN_TIMEOUT, Emit, describe, on_team
from agent.runtime.host import CsrSession
from agent.runtime.joiner import CustomerSession

__all__ = [
    "CHANNEL_OPEN_TIMEOUT",
    "CsrSession",
    "CustomerSession",
    "Emit",
    "close_quietly",
    "describe",
    "on_team",
]


async def close_quietly(session: CsrSession | CustomerSession) -> None:
    with contextlib.suppress(Exception):
        if isinstance(session, CsrSession):
            await session.end()
