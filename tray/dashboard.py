"""The CSR dashboard: a page served by the agent on 127.0.0.1, for this user only.

Every request but the page's static files needs the per-launch token, this very
``Host`` and (when sent) this very ``Origin``: ``tray.web.LocalServer`` checks them.

The page talks over one websocket (``/ws``): JSON objects ``{"op": ...}`` in, status
values out, the same commands as headless mode (``agent.protocol.commands`` parses
them). The customer's screen comes over a second websocket (``/screen``):

- VP8 passthrough (``?codec=vp8``, when the browser has WebCodecs): the customer's
  own encoded frames, copied as the agent's receiver gets them (``tray.passthrough``),
  decoded by the page in parallel with the agent. No re-encoding.
- JPEG relay (otherwise, or for H.264): the agent's newest decoded frame, compressed
  from its YUV planes and scaled to the page's canvas, sent when the page has drawn
  the one before.

``peerdesk bench dashboard`` measured both against the agent's own figures on the
same frames (bench/RESULTS.md): with the passthrough the page keeps the agent's fps
and, at decode, its latency within 10 %; the JPEG relay doubles the latency
(a JPEG encode and decode in series after the agent's own decode).

    dash = Dashboard(hub)
    url = await dash.start()        # http://127.0.0.1:PORT/?t=TOKEN
    ...
    await dash.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import struct
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from agent import status
from agent.errors import DecodeError, PeerDeskError
from agent.protocol import commands as cmds
from tray.hub import Hub
from tray.web import LocalServer

log = logging.getLogger(__name__)

MAX_WS_MESSAGE = 128 * 1024
MAX_UPLOAD = 4 * 1024**3
IN_FLIGHT = 1
MAX_BEHIND = 8
"VP8 frames sent to the page and not yet drawn before the relay skips to a keyframe."
KIND_JPEG, KIND_VP8_KEY, KIND_VP8 = 0, 1, 2
"The first byte of a screen message; then the frame number (4 bytes, big-endian)."
"Screen frames sent to the page and not yet shown."
JPEG_QUALITY = 80
_SID_RE = re.compile(r"s[0-9]{1,6}")
_PEER_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OPS = frozenset({"start", "join", "cmd", "note"})
_FILE_NAME_BAD = re.compile(r"[\x00-\x1f/\\]")
STATIC = "static"

ShownHook = Callable[[Any, float, float, float], None]
"""(the decoded frame for JPEG, the RTP timestamp for VP8 passthrough; when it was sent
to the page; when the page said it drew it, monotonic seconds; how long the page says
drawing took, seconds)."""


def _safe_name(name: str) -> str:
    name = _FILE_NAME_BAD.sub("_", name).strip(". ")[:200]
    return name or "file"


def fit_size(width: int, height: int, fit: tuple[int, int] | None) -> tuple[int, int]:
    """The size to send a ``width`` x ``height`` frame at on a canvas of ``fit`` device
    pixels: never larger than the frame, aspect kept, even numbers (4:2:0)."""
    if fit is None or (width <= fit[0] and height <= fit[1]):
        return width, height
    scale = min(fit[0] / width, fit[1] / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def encode_jpeg(
    frame: Any, quality: int = JPEG_QUALITY, fit: tuple[int, int] | None = None
) -> bytes:
    """One decoded video frame as JPEG bytes, straight from its YUV 4:2:0 planes
    (libjpeg-turbo through simplejpeg: no RGB conversion; runs in a thread). With
    ``fit``, scaled down (area averaging) to what the page shows."""
    import numpy as np
    import simplejpeg

    size = fit_size(frame.width, frame.height, fit)
    if frame.format.name != "yuv420p" or size != (frame.width, frame.height):
        frame = frame.reformat(
            width=size[0], height=size[1], format="yuv420p", interpolation="AREA"
        )
    planes = []
    for plane in frame.planes[:3]:
        rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(
            plane.height, plane.line_size
        )
        planes.append(np.ascontiguousarray(rows[:, : plane.width]))
    data: bytes = simplejpeg.encode_jpeg_yuv_planes(*planes, quality=quality)
    return data


class Dashboard(LocalServer):
    """The dashboard's HTTP server for one hub."""

    what = "the dashboard"

    def __init__(self, hub: Hub, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.hub = hub
        self._unlisten: Callable[[], None] | None = None
        self.on_shown: ShownHook | None = None
        "Benchmarks: called when the page drew a frame (see ``ShownHook``)."

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/screen", self._screen)
        app.router.add_post("/api/upload", self._upload)
        app.router.add_get("/report", self._report)

    async def start(self) -> str:
        """Listen on a random loopback port; returns the page's URL."""
        url = await super().start()
        self._unlisten = self.hub.listen(self._on_status)
        return url

    async def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        await super().stop()

    # -- pages

    async def _index(self, request: web.Request) -> web.Response:
        return self.page("index.html", NAME=self.hub.me.name)

    async def _report(self, request: web.Request) -> web.StreamResponse:
        sid = _sid(request.query.get("session", ""))
        entry = self.hub.entry(sid) if sid in self.hub.entries else None
        report = None
        if entry is not None:
            report = next(
                (e for _, e in reversed(entry.history) if isinstance(e, status.ReportWritten)),
                None,
            )
        if report is None:
            raise web.HTTPNotFound(text="no report for this session yet")
        return web.FileResponse(report.html, headers={"Content-Type": "text/html"})

    async def _upload(self, request: web.Request) -> web.Response:
        """The page's file for ``send_file``: streamed to a private directory, then offered."""
        try:
            sid = _sid(request.query.get("session", ""))
            self.hub.entry(sid)
            name = _safe_name(request.query.get("name", ""))
            peer = request.query.get("to") or None
            if peer is not None and not _PEER_RE.fullmatch(peer):
                raise DecodeError("to: not a participant id")
        except PeerDeskError as exc:
            return web.json_response({"error": exc.message, "code": exc.code}, status=400)
        folder = self.hub.upload_dir / secrets.token_hex(8)
        folder.mkdir(mode=0o700)
        path = folder / name
        size = 0
        with path.open("wb") as out:
            async for chunk in request.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > MAX_UPLOAD:
                    return web.json_response({"error": "the file is too large"}, status=413)
                await asyncio.to_thread(out.write, chunk)
        try:
            await self.hub.command(sid, cmds.FileCommand(kind="send_file", path=str(path), to=peer))
        except PeerDeskError as exc:
            return web.json_response({"error": exc.message, "code": exc.code}, status=409)
        return web.json_response({"ok": True, "name": name, "size": size})

    # -- the page's websocket

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20)
        await ws.prepare(request)
        me = self.hub.me
        roles = {sid: e.role for sid, e in self.hub.entries.items()}
        await ws.send_json(
            {"type": "hello", "me": {"id": me.peer_id, "name": me.name}, "roles": roles}
        )
        for sid, entry in list(self.hub.entries.items()):
            for at, event in list(entry.history):
                await ws.send_json(_status_message(sid, event, at))
            for text in entry.notes:
                await ws.send_json({"type": "note", "session": sid, "text": text})
        await self.serve(ws)
        return ws

    async def _handle(self, text: str) -> dict[str, Any] | None:
        """One message from the page; a reply for it alone (errors), or None."""
        sid: str | None = None
        try:
            try:
                obj = json.loads(text)
            except ValueError:
                raise DecodeError("not JSON") from None
            if not isinstance(obj, dict):
                raise DecodeError("a message is a JSON object")
            op = obj.get("op")
            if op not in _OPS:
                raise DecodeError(f"unknown op (known: {', '.join(sorted(_OPS))})")
            if op == "start":
                sid = await self.hub.start_session()
                return {"type": "started", "session": sid}
            if op == "join":
                code = obj.get("code")
                if not isinstance(code, str) or not 1 <= len(code) <= 4096:
                    raise DecodeError("join: code must be the CSR code or link you were given")
                sid = await self.hub.join_as_assistant(code)
                return {"type": "started", "session": sid, "role": "assistant"}
            sid = _sid(obj.get("session"))
            if op == "note":
                text_ = obj.get("text")
                if not isinstance(text_, str):
                    raise DecodeError("note: text must be a string")
                self.hub.note(sid, text_)
                self.broadcast({"type": "note", "session": sid, "text": text_.strip()})
                return None
            raw = obj.get("cmd")
            if not isinstance(raw, dict):
                raise DecodeError("cmd: a command object, as in headless mode")
            command = cmds.parse_command(json.dumps(raw))
            await self.hub.command(sid, command)
            return None
        except PeerDeskError as exc:
            return {"type": "error", "session": sid, "reason": exc.message, "code": exc.code}

    def _on_status(self, sid: str, event: status.Status) -> None:
        self.broadcast(_status_message(sid, event, time.time()))

    # -- the customer's screen

    async def _screen(self, request: web.Request) -> web.WebSocketResponse:
        try:
            sid = _sid(request.query.get("session", ""))
            self.hub.entry(sid)
            peer = request.query.get("peer") or None
            if peer is not None and not _PEER_RE.fullmatch(peer):
                raise DecodeError("peer: not a participant id")
        except PeerDeskError as exc:
            raise web.HTTPBadRequest(text=exc.message) from None
        ws = web.WebSocketResponse(max_msg_size=4096, heartbeat=20)
        await ws.prepare(request)
        if request.query.get("codec") == "vp8":
            await _Passthrough(self, ws, sid, peer).run()
        else:
            await _Relay(self, ws, sid, peer).run()
        return ws


class _Relay:
    """Newest decoded frame → JPEG → page, at most IN_FLIGHT unacknowledged."""

    def __init__(self, dash: Dashboard, ws: web.WebSocketResponse, sid: str, peer: str | None):
        self.dash = dash
        self.ws = ws
        self.sid = sid
        self.peer = peer
        self.sent: dict[int, tuple[Any, float]] = {}
        self.acked = asyncio.Event()
        self.seq = 0
        self.fit: tuple[int, int] | None = None
        "The page's canvas in device pixels: frames are scaled down to it."

    async def run(self) -> None:
        pump = asyncio.ensure_future(self._pump())
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    obj = json.loads(msg.data)
                    if "fit" in obj:
                        w, h = (int(v) for v in obj["fit"][:2])
                        self.fit = (min(max(w, 64), 8192), min(max(h, 64), 8192))
                        continue
                    seq = int(obj["shown"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a confused page gets nothing back here
                frame = self.sent.pop(seq, None)
                if frame is not None:
                    if self.dash.on_shown is not None:
                        self.dash.on_shown(frame[0], frame[1], time.monotonic(), _draw(obj))
                    self.acked.set()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self) -> None:
        shown = 0
        while not self.ws.closed:
            try:
                viewer = self.dash.hub.viewer(self.sid, self.peer)
            except PeerDeskError:
                await self.ws.close()
                return
            if viewer is None or viewer.ended:
                await asyncio.sleep(0.1)
                continue
            if viewer.frames <= shown or viewer.latest is None:
                with contextlib.suppress(TimeoutError, EOFError):
                    await asyncio.wait_for(viewer.wait_frame(after=shown), 1.0)
                continue
            while len(self.sent) >= IN_FLIGHT and not self.ws.closed:
                self.acked.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.acked.wait(), 1.0)
                if len(self.sent) >= IN_FLIGHT:
                    self.sent.clear()  # the page lost some: start over
            shown = viewer.frames
            frame = viewer.latest
            data = await asyncio.to_thread(encode_jpeg, frame, JPEG_QUALITY, self.fit)
            self.seq += 1
            self.sent[self.seq] = (frame, time.monotonic())
            try:
                await self.ws.send_bytes(struct.pack(">BI", KIND_JPEG, self.seq) + data)
            except (ConnectionError, RuntimeError):
                return


class _Passthrough:
    """The customer's encoded VP8 frames → page (WebCodecs decodes them there).

    From a keyframe on, every frame in order (a decoder needs them all); when the page
    falls MAX_BEHIND frames behind, or says its decoder failed, frames are skipped up
    to the next keyframe, which is asked of the customer's agent at once.
    """

    def __init__(self, dash: Dashboard, ws: web.WebSocketResponse, sid: str, peer: str | None):
        self.dash = dash
        self.ws = ws
        self.sid = sid
        self.peer = peer
        self.sent: dict[int, tuple[int, float]] = {}
        self.seq = 0
        self.frames: asyncio.Queue[tuple[str, bytes, int]] = asyncio.Queue(maxsize=120)
        self.need_key = True

    def _on_encoded(self, codec: str, data: bytes, timestamp: int) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.frames.put_nowait((codec, data, timestamp))

    async def _keyframe(self) -> None:
        self.need_key = True
        with contextlib.suppress(PeerDeskError):
            await self.dash.hub.command(self.sid, cmds.SimpleCommand(name="keyframe", to=self.peer))

    async def run(self) -> None:
        from tray.passthrough import EncodedTap

        tap = None
        while tap is None and not self.ws.closed:
            try:
                source = self.dash.hub.screen_source(self.sid, self.peer)
            except PeerDeskError:
                await self.ws.close()
                return
            if source is None:
                await asyncio.sleep(0.1)
                continue
            tap = EncodedTap.of(source[1], source[0].track)
            if tap is None:
                await self.ws.send_json({"fallback": "jpeg"})
                await self.ws.close()
                return
        if tap is None:
            return
        tap.listeners.add(self._on_encoded)
        pump = asyncio.ensure_future(self._pump())
        try:
            await self._keyframe()
            async for msg in self.ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    obj = json.loads(msg.data)
                    if obj.get("key") is True:
                        await self._keyframe()
                        continue
                    seq = int(obj["shown"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                sent = self.sent.pop(seq, None)
                for old in [s for s in self.sent if s < seq]:
                    del self.sent[old]  # the page skipped them (decoded, not drawn)
                if sent is not None and self.dash.on_shown is not None:
                    self.dash.on_shown(sent[0], sent[1], time.monotonic(), _draw(obj))
        finally:
            tap.listeners.discard(self._on_encoded)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self) -> None:
        from tray.passthrough import is_keyframe

        while not self.ws.closed:
            codec, data, timestamp = await self.frames.get()
            if codec.upper() != "VP8":
                await self.ws.send_json({"fallback": "jpeg"})
                await self.ws.close()
                return
            key = is_keyframe(data)
            if len(self.sent) > MAX_BEHIND and not key:
                if not self.need_key:
                    self.sent.clear()
                    await self._keyframe()
                continue
            if self.need_key and not key:
                continue
            self.need_key = False
            self.seq += 1
            self.sent[self.seq] = (timestamp, time.monotonic())
            kind = KIND_VP8_KEY if key else KIND_VP8
            try:
                await self.ws.send_bytes(struct.pack(">BI", kind, self.seq) + data)
            except (ConnectionError, RuntimeError):
                return


def _draw(obj: Any) -> float:
    """The page's own figure for drawing a frame, in seconds (0 when absent or absurd)."""
    value = obj.get("draw_ms") if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1000:
        return 0.0
    return float(value) / 1000


def _status_message(sid: str, event: status.Status, at: float) -> dict[str, Any]:
    """A status value for the page; ``at`` (ms since the epoch) is when it happened,
    so that a page opened later shows true times."""
    return {"type": "status", "session": sid, "event": event.to_json(), "at": int(at * 1000)}


def _sid(value: object) -> str:
    if not isinstance(value, str) or not _SID_RE.fullmatch(value):
        raise DecodeError("session: a session id like s1")
    return value
