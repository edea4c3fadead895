"""The signaling endpoint an agent hosts itself, and its announcement on the LAN.

``peerdesk start`` without ``--signal`` embeds one; so does an assistant CSR that
took over a session whose server died with the primary (a LAN session). One place
for both, so that both listen, name their URL and announce alike::

    endpoint = await HostedEndpoint.start(47800)
    session = CsrSession(me, endpoint.url, emit)
    code = await session.start()
    endpoint.advertise(code.room, me.name, emit)   # in the background
    ...
    await endpoint.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from agent import status
from agent.errors import LocalProtocolError

if TYPE_CHECKING:
    from aiohttp import web

    from agent.net.lan import LanAdvertiser

log = logging.getLogger(__name__)

Emit = Callable[[status.Status], None]

DEFAULT_PORT = 47800
"The embedded signaling server's port when it is free; a customer on the same machine finds it."


class HostedEndpoint:
    """A signaling server inside this agent (``url`` is what others use to reach it),
    optionally announced on the LAN with zeroconf until ``stop``."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self.runner = runner
        "The aiohttp runner serving the endpoint."
        self.url = url
        self._advertising: dict[str, asyncio.Task[LanAdvertiser | None]] = {}
        "Room id -> its announcement (several sessions share one endpoint)."

    @classmethod
    async def start(cls, port: int = DEFAULT_PORT) -> HostedEndpoint:
        """Listen on every interface, on ``port`` if it is free, else on any free port."""
        from signaling.server import start_server

        # The embedded server listens on every interface on purpose: customers on the LAN
        # reach it. It is as untrusted as any signaling server; the PAKE protects the join.
        v4 = ["0.0.0.0"]  # noqa: S104
        hosts = [*v4, "::"] if socket.has_ipv6 else v4
        for attempt_hosts, attempt_port in ((hosts, port), (hosts, 0), (v4, port), (v4, 0)):
            try:
                runner, actual = await start_server(attempt_hosts, attempt_port)
            except OSError as exc:
                log.info("embedded server on %s:%s: %s", attempt_hosts, attempt_port, exc)
                continue
            address = lan_address()
            host = f"[{address}]" if ":" in address else address
            return cls(runner, f"ws://{host}:{actual}")
        raise LocalProtocolError("could not start the embedded signaling server on any port")

    def advertise(self, room: str, name: str, emit: Emit) -> None:
        """Announce ``room`` on the LAN in the background (probing the name takes ~1.5 s;
        ``PEERDESK_LAN_INTERFACES`` chooses the interfaces). A LAN without multicast is
        reported (``lan_unavailable``), not fatal."""
        if room not in self._advertising:
            self._advertising[room] = asyncio.ensure_future(self._advertise(room, name, emit))

    @property
    def advertised(self) -> tuple[str, ...]:
        """The rooms announced (or being announced) now."""
        return tuple(self._advertising)

    async def withdraw(self, room: str) -> None:
        """Withdraw ``room``'s announcement (its session ended); the endpoint goes on."""
        advertising = self._advertising.pop(room, None)
        if advertising is None:
            return
        if not advertising.done():
            advertising.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            advertiser = await advertising
            if advertiser is not None:
                await advertiser.stop()

    async def _advertise(self, room: str, name: str, emit: Emit) -> LanAdvertiser | None:
        from agent.net import lan

        port = urlsplit(self.url).port or DEFAULT_PORT
        try:
            advertiser = lan.LanAdvertiser(room, port, name=name)
            await advertiser.start()
        except (OSError, ValueError, LocalProtocolError) as exc:  # no multicast interface, ...
            why = exc.message if isinstance(exc, LocalProtocolError) else str(exc)
            emit(
                status.Error(
                    reason=f"could not announce the session on the LAN ({why}); "
                    "customers need the link, or the code and --signal",
                    code="lan_unavailable",
                )
            )
            return None
        return advertiser

    async def stop(self) -> None:
        """Withdraw every announcement, then stop the server."""
        for room in list(self._advertising):
            await self.withdraw(room)
        await self.runner.cleanup()


def lan_address() -> str:
    """This machine's first LAN address (IPv4, else IPv6), for links others can use."""
    from agent.net.lan import lan_addresses

    return next(iter(lan_addresses()), "127.0.0.1")
