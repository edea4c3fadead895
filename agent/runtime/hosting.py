"""Where this agent hosts its CSR sessions: one way for every face.

The console (``peerdesk start``), the tray and the dashboard all start sessions
here, so that each gets the same signaling endpoint, the same LAN announcement and
the same links. With ``signal`` set, sessions use that server; otherwise the agent
embeds one (``HostedEndpoint``, started on first use and shared by every session of
the agent) and announces each session's room on the LAN while it lives::

    hosting = Hosting(HostOptions())               # embedded, announced
    session = await hosting.start_session(me, emit)
    ...
    await hosting.close()                          # withdraws, stops the endpoint
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.identity import Identity
from agent.net.endpoint import DEFAULT_PORT, HostedEndpoint
from agent.protocol.code import check_signal_url
from agent.runtime.common import Emit
from agent.runtime.host import CsrSession

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostOptions:
    """How sessions are hosted; the same options for every face."""

    signal: str | None = None
    "A signaling server's URL; None: embed one in this agent."
    port: int = DEFAULT_PORT
    "The embedded server's port (another free one if it is taken)."
    advertise: bool = True
    "Announce each session of the embedded server on the LAN (zeroconf)."
    download_dir: Path | None = None
    "Where files fetched from customers land."

    def __post_init__(self) -> None:
        if self.signal is not None:
            object.__setattr__(self, "signal", check_signal_url(self.signal))


class Hosting:
    """The signaling endpoint of this agent's CSR sessions, and their announcements."""

    def __init__(self, options: HostOptions) -> None:
        self.options = options
        self.endpoint: HostedEndpoint | None = None
        "The embedded endpoint, once started (None with a given server)."
        self._lock = asyncio.Lock()
        self._watchers: set[asyncio.Task[None]] = set()

    @property
    def signal_url(self) -> str | None:
        """The URL sessions use: the given server, the embedded one, or None yet."""
        if self.options.signal is not None:
            return self.options.signal
        return self.endpoint.url if self.endpoint is not None else None

    async def url(self) -> str:
        """The signaling URL, starting the embedded endpoint on first use."""
        async with self._lock:
            if self.options.signal is not None:
                return self.options.signal
            if self.endpoint is None:
                self.endpoint = await HostedEndpoint.start(self.options.port)
                wanted, got = self.options.port, urlsplit(self.endpoint.url).port
                if wanted and got != wanted:  # one line: it changes how customers find us
                    log.warning(
                        "port %d is taken (another PeerDesk?): this agent's sessions are on "
                        "port %s; customers on this machine need the link or the LAN",
                        wanted,
                        got,
                    )
            return self.endpoint.url

    async def start_session(self, me: Identity, emit: Emit) -> CsrSession:
        """Open a session (its ``session`` event carries the code and links); on the
        embedded endpoint it is announced on the LAN until it ends. Raises the
        ``PeerDeskError`` that says why not."""
        session = CsrSession(me, await self.url(), emit, download_dir=self.options.download_dir)
        code = await session.start()
        endpoint = self.endpoint
        if endpoint is not None and self.options.advertise and self.options.signal is None:
            endpoint.advertise(code.room, me.name, emit)
            watcher = asyncio.ensure_future(self._withdraw_at_end(session, endpoint, code.room))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watched)
        return session

    async def _withdraw_at_end(
        self, session: CsrSession, endpoint: HostedEndpoint, room: str
    ) -> None:
        await session.wait()  # (cancelled at close: the endpoint withdraws them all)
        await endpoint.withdraw(room)

    def _watched(self, task: asyncio.Task[None]) -> None:
        self._watchers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("withdrawing a LAN announcement failed", exc_info=task.exception())

    async def close(self) -> None:
        """Withdraw every announcement and stop the embedded endpoint."""
        for watcher in list(self._watchers):
            watcher.cancel()
        if self.endpoint is not None:
            endpoint, self.endpoint = self.endpoint, None
            await endpoint.stop()
