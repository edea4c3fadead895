"""A thin WebSocket client for the signaling server: send messages, receive parsed ones."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp

from agent.errors import DecodeError, PeerDeskError
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
        return cls(session, ws)

    async def send(self, msg: sig.ClientMessage) -> None:
        try:
            await self._ws.send_str(sig.encode(msg))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise SignalingUnreachable(f"lost the signaling server: {exc}") from None

    async def recv(self) -> sig.ServerMessage | None:
        """The next message from the server, or None once the connection is closed."""
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
            except DecodeError as exc:
                log.warning("dropped a signaling message: %s", exc.message)

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def close(self) -> None:
        await self._ws.close()
        await self._session.close()
