"""A page served by the agent on 127.0.0.1 for this user only (dashboard, customer panel).

Every request but the static files needs the per-launch token (``?t=`` or the
``X-PeerDesk-Token`` header), a ``Host`` of this very address (no DNS rebinding) and,
when the browser sends one, an ``Origin`` of this very address: anything else gets
403. The static files (HTML, JS, CSS: no secrets) are public.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

MAX_REQUEST = 128 * 1024
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self' ws://127.0.0.1:* ws://localhost:*; frame-ancestors 'none'"
)


def static_dir() -> Path:
    return Path(str(resources.files("tray").joinpath("static")))


def html_escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


class LocalServer:
    """An aiohttp app on a random loopback port behind the token/Host/Origin guard."""

    what = "this page"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self.port = 0
        self.token = secrets.token_urlsafe(24)
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._sends: set[asyncio.Future[None]] = set()

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's address, token included: for this user's browser only."""
        return f"{self.origin}/?t={self.token}"

    def routes(self, app: web.Application) -> None:
        """Add the server's own routes (subclasses)."""

    async def start(self) -> str:
        """Listen on a random loopback port; returns the page's URL."""
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_REQUEST)
        self.routes(app)
        app.router.add_static("/static/", static_dir(), show_index=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.url

    async def _handle(self, text: str) -> dict[str, Any] | None:
        """One JSON text message from the page; a reply for it alone, or None (subclasses)."""
        raise NotImplementedError

    async def serve(self, ws: web.WebSocketResponse) -> None:
        """Answer the page's messages on ``ws`` with ``_handle`` until it closes; while
        open it also receives ``broadcast``."""
        self._sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await ws.send_json({"type": "error", "reason": "send JSON text messages"})
                    continue
                reply = await self._handle(msg.data)
                if reply is not None:
                    await ws.send_json(reply)
        finally:
            self._sockets.discard(ws)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every open page, without waiting (a page gone is no error)."""
        for ws in list(self._sockets):
            if not ws.closed:
                send = asyncio.ensure_future(_send_quietly(ws, message))
                self._sends.add(send)
                send.add_done_callback(self._sends.discard)

    async def stop(self) -> None:
        for send in list(self._sends):
            send.cancel()
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith("/static/") and request.method == "GET":
            return await handler(request)
        if request.host not in (f"{self.host}:{self.port}", f"localhost:{self.port}"):
            raise web.HTTPForbidden(text=f"wrong Host: {self.what} answers on its own address")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (self.origin, f"http://localhost:{self.port}"):
            raise web.HTTPForbidden(text="requests from other sites are refused")
        given = str(request.query.get("t") or request.headers.get("X-PeerDesk-Token") or "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise web.HTTPForbidden(
                text=f"{self.what} needs the address PeerDesk opened (with its token)"
            )
        return await handler(request)

    def page(self, name: str, **values: str) -> web.Response:
        """``static/NAME`` with ``{{TOKEN}}`` and ``{{KEY}}`` (escaped) filled in."""
        html = (static_dir() / name).read_text(encoding="utf-8").replace("{{TOKEN}}", self.token)
        for key, value in values.items():
            html = html.replace("{{" + key + "}}", html_escape(value))
        return web.Response(
            text=html,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": CSP,
            },
        )


async def _send_quietly(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_json(message)
