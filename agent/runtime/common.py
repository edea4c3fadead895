"""What both sides of the runtime share: the signaling outbox, the team check, errors
worded for people."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import agent.capture  # noqa: F401 - installs the prompt jitter buffer before any peer exists
from agent import status
from agent.errors import (
    PeerDeskError,
)
from agent.net.signaling_client import SignalingClient, SignalingUnreachable
from agent.protocol import signaling as sig

log = logging.getLogger(__name__)

Emit = Callable[[status.Status], None]
CHANNEL_OPEN_TIMEOUT = 15.0
"Seconds a joined peer's data channels may take to open."


class Outbox:
    """Sends signaling messages in order from one task."""

    def __init__(self, client: SignalingClient) -> None:
        self._client = client
        self._queue: asyncio.Queue[sig.ClientMessage] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())

    def put(self, msg: sig.ClientMessage) -> None:
        self._queue.put_nowait(msg)

    async def _run(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._client.send(msg)
            except SignalingUnreachable as exc:
                log.warning("%s", exc.message)
                return
            finally:
                self._queue.task_done()

    async def drain(self, within: float = 2.0) -> None:
        """Wait (at most ``within`` seconds) until everything queued was sent."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), within)

    def cancel(self) -> None:
        self._task.cancel()


def on_team(key: bytes) -> bool:
    """Whether ``key`` is on this agent's team roster (read fresh: it may have changed)."""
    from agent import team

    try:
        return team.Roster.load().is_member(key)
    except PeerDeskError as exc:
        log.warning("team roster unreadable: %s", exc.message)
        return False


def describe(exc: BaseException) -> status.Error:
    """The error event for a failure, worded for the person at the keyboard."""
    if isinstance(exc, PeerDeskError):
        return status.Error(reason=exc.message, code=exc.code)
    return status.Error(reason=f"unexpected failure: {exc!r}", code="internal")
