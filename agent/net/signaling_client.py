"""A thin WebSocket client for the signaling server: send messages, receive parsed ones."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp

from agent.errors import DecodeError, PeerDeskError, RemoteProtocolError, UnknownMessage
from agent.protocol import signaling as sig

log = logging.getLogger(__name__)


class SignalingUnreachable(PeerDeskError):
    code = "signal_unreachable"


def ws_url(url: str) -> str:
    """The WebSocket endpoint for a signaling server URL (adds ``/ws`` when no path is given)."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/ws")
    return parts.geturl()


def ice_url(url: str) -> str:
    """The HTTP endpoint listing a signaling server's ICE (TURN) servers."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return parts._replace(scheme=scheme, path="/ice").geturl()


async def _fetch_ice(session: aiohttp.ClientSession, url: str) -> None:
    """Ask the server for TURN servers; without a usable answer, direct paths only (never
    servers an earlier signaling server handed out)."""
    from agent.net.peer import use_ice_servers

    servers: tuple[sig.IceServer, ...] = ()
    try:
        timeout = aiohttp.ClientTimeout(total=3.0)
        async with session.get(ice_url(url), timeout=timeout) as resp:
            if resp.status == 200:
                body = b""
                async for chunk in resp.content.iter_chunked(4096):
                    body += chunk
                    if len(body) > sig.MAX_ICE_BYTES:
                        raise DecodeError("the ICE server list is too long")
                servers = sig.decode_ice(body)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.info("no ICE servers from %s: %s", url, exc or type(exc).__name__)
    except DecodeError as exc:
        log.warning("ignored the ICE servers the signaling server offered: %s", exc.message)
    if servers:
        log.info("ice_servers %s", " ".join(u for s in servers for u in s.urls))
    use_ice_servers(servers)


class SignalingClient:
    """One connection to a signaling server."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws

    @classmethod
    async def connect(cls, url: str, *, within: float = 10.0) -> SignalingClient:
        """Connect to the signaling server at ``url``."""
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                ws_url(url),
                timeout=aiohttp.ClientWSTimeout(ws_close=within),
                heartbeat=20,
                max_msg_size=sig.MAX_MESSAGE_BYTES * 2,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            await session.close()
            raise SignalingUnreachable(
                f"cannot reach the signaling server at {url}: {exc or type(exc).__name__}"
            ) from None
        await _fetch_ice(session, url)
        return cls(session, ws)

    async def send(self, msg: sig.ClientMessage) -> None:
        try:
            await self._ws.send_str(sig.encode(msg))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise SignalingUnreachable(f"lost the signaling server: {exc}") from None

    async def recv(self, *, strict: bool = False) -> sig.ServerMessage | None:
        """The next message from the server, or None once the connection is closed.

        Messages of types we do not know are dropped (a newer server may send them).
        One that does not parse is dropped too, or with ``strict`` (while a room is
        being allocated or a join runs, when waiting on would only end in a timeout)
        raised as ``RemoteProtocolError`` with code ``signal_protocol``.
        """
        while True:
            frame = await self._ws.receive()
            if frame.type is not aiohttp.WSMsgType.TEXT:
                if frame.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return None
                continue
            try:
                return sig.decode_server(frame.data)
            except UnknownMessage as exc:
                log.info("dropped a signaling message: %s", exc.message)
            except DecodeError as exc:
                if strict:
                    raise RemoteProtocolError(
                        f"the signaling server sent a message that could not be read "
                        f"({exc.message})",
                        code="signal_protocol",
                    ) from None
                log.warning("dropped a signaling message: %s", exc.message)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def close(self) -> None:
        await self._ws.close()
        await self._session.close()
