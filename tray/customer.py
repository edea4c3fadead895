"""The customer's side: consent prompts, the "you are being watched" indicator, Stop.

A local page served by the customer's own agent (``LocalServer``: 127.0.0.1, random
port, per-launch token, Host and Origin checked), opened in the default browser
when ``peerdesk join`` runs without ``--headless``. A page rather than a native
dialog: it works the same on every desktop (no Tk or GTK needed, nor a tray host),
it can show the verified CSR's name, the check code and the scam warning with
proper typography, and Playwright tests it in a real browser like the dashboard.

The page sends answers as the headless commands (``grant``/``deny``, ``revoke all``,
``leave``, ``chat``, ``accept_file``/``reject_file``) through ``Controllable.command``
and receives the session's frozen status values; it never sees the session itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from agent import status
from agent.errors import DecodeError, PeerDeskError
from agent.headless import Controllable
from agent.protocol import commands as cmds
from tray import model
from tray.driver import IconDriver
from tray.web import LocalServer

log = logging.getLogger(__name__)

WARNING_SEEN = "scam-warning-seen"
"A file in the agent's home: the first-run warning was read and acknowledged."
_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_MESSAGE = 16 * 1024


class CustomerPanel(LocalServer):
    """The customer's prompts page; ``emit`` is the session's status callback."""

    what = "the PeerDesk prompt page"

    def __init__(self, home: Path, *, also: Callable[[status.Status], None] | None = None) -> None:
        super().__init__()
        self.home = home
        self.session: Controllable | None = None
        self.history: list[status.Status] = []
        self._also = also
        self.tray: CustomerTray | None = None
        self.acknowledged = asyncio.Event()
        'The first-run warning was answered with "I asked for this help".'
        self.declined = asyncio.Event()
        "The customer chose to leave at the warning, before joining."

    @property
    def warning_seen(self) -> bool:
        return (self.home / WARNING_SEEN).exists()

    def emit(self, event: status.Status) -> None:
        """The session's status callback: keep, show on the page, pass on."""
        self.history.append(event)
        del self.history[:-1000]
        self.broadcast({"type": "status", "event": event.to_json()})
        if self._also is not None:
            self._also(event)
        if self.tray is not None:
            self.tray.on_status(event)

    def _on_page(self, event: status.Status) -> None:
        """Keep and show ``event`` on the page only (our own chat line: the console and
        the tray need not hear what we said)."""
        self.history.append(event)
        del self.history[:-1000]
        self.broadcast({"type": "status", "event": event.to_json()})

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._ws)

    async def _index(self, request: web.Request) -> web.Response:
        return self.page("customer.html")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=20)
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "warn": not self.warning_seen})
        for event in list(self.history):
            await ws.send_json({"type": "status", "event": event.to_json()})
        await self.serve(ws)
        return ws

    async def _handle(self, text: str) -> dict[str, Any] | None:
        try:
            command = self.parse(text)
            if command is None:  # the warning was acknowledged
                await asyncio.to_thread(_touch, self.home / WARNING_SEEN)
                self.acknowledged.set()
                return {"type": "warning_seen"}
            if isinstance(command, _OpenFolder):
                await self._open_folder(command.id)
                return None
            if isinstance(command, cmds.LeaveCommand) and self.session is None:
                self.declined.set()  # left at the warning: nothing was joined
                return None
            if self.session is None:
                raise DecodeError("not connected to a session yet")
            await self.session.command(command)
            if isinstance(command, cmds.ChatCommand):  # kept for a reload, as said
                me = getattr(self.session, "me", "")
                self._on_page(status.ChatReceived(me, "You", command.text, command.to))
        except PeerDeskError as exc:
            return {"type": "error", "reason": exc.message, "code": exc.code}
        return None

    async def wait_for_warning(self) -> bool:
        """Until the first-run warning is answered: True to go on, False to leave. At
        once when it was acknowledged before (on this machine, once)."""
        if self.warning_seen:
            return True
        ok = asyncio.ensure_future(self.acknowledged.wait())
        no = asyncio.ensure_future(self.declined.wait())
        try:
            await asyncio.wait({ok, no}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ok.cancel()
            no.cancel()
        return self.acknowledged.is_set()

    async def _open_folder(self, file_id: str) -> None:
        """Show the folder of a file this session received: only a path the agent
        itself reported in a ``done`` event, never one the page names."""
        from tray.app import open_browser

        for event in reversed(self.history):
            if (
                isinstance(event, status.FileProgress)
                and event.id == file_id
                and event.state == "done"
                and event.path
            ):
                folder = Path(event.path).parent
                await asyncio.to_thread(open_browser, folder.as_uri())
                return
        raise DecodeError("no received file with that id")

    @staticmethod
    def parse(text: str) -> cmds.Command | _OpenFolder | None:
        """One message from the page as a command (None: acknowledge the warning)."""
        try:
            obj = json.loads(text)
        except ValueError:
            raise DecodeError("not JSON") from None
        if not isinstance(obj, dict):
            raise DecodeError("a message is a JSON object")
        op = obj.get("op")
        if op == "warning_seen":
            return None
        if op == "stop":
            return cmds.RevokeCommand(cap="all")
        if op == "leave":
            return cmds.LeaveCommand()
        if op == "open_folder":
            ident = obj.get("id")
            if not isinstance(ident, str) or not _ID_RE.fullmatch(ident):
                raise DecodeError("open_folder: id is missing or malformed")
            return _OpenFolder(ident)
        if op == "chat":
            return cmds.parse_command(json.dumps({"cmd": "chat", "text": obj.get("text")}))
        if op in ("answer", "file"):
            ident = obj.get("id")
            yes = obj.get("yes")
            if not isinstance(ident, str) or not _ID_RE.fullmatch(ident):
                raise DecodeError(f"{op}: id is missing or malformed")
            if not isinstance(yes, bool):
                raise DecodeError(f"{op}: yes must be true or false")
            if op == "answer":
                return cmds.AnswerCommand(id=ident, grant=yes)
            return cmds.FileCommand(kind="accept_file" if yes else "reject_file", id=ident)
        raise DecodeError(
            "unknown op (known: answer, chat, file, leave, open_folder, stop, warning_seen)"
        )

    async def stop(self) -> None:
        if self.tray is not None:
            self.tray.stop()
        with contextlib.suppress(Exception):
            await super().stop()


@dataclass(frozen=True)
class _OpenFolder:
    """The page asks to show the folder a received file went to."""

    id: str


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("The first-run warning about support scams was acknowledged.\n")


async def open_panel(
    home: Path, *, also: Callable[[status.Status], None] | None = None
) -> CustomerPanel:
    """Start the customer's page and open it in the default browser (or say where it is)."""
    import sys

    from tray.app import open_browser

    panel = CustomerPanel(home, also=also)
    url = await panel.start()
    print(f"PeerDesk prompts: {url}", flush=True)
    panel.tray = CustomerTray.start(panel, asyncio.get_running_loop())
    if not await asyncio.to_thread(open_browser, url):
        print("No browser found: open the address above to answer requests.", file=sys.stderr)
    return panel


class CustomerTray:
    """The customer's tray icon: red while controlled, amber while viewed, and the menu
    Stop sharing / Leave session / Session info (which opens the prompts page).

    pystray's X backend runs its loop in a thread of its own here: the customer's
    agent keeps asyncio on the main thread (``peerdesk join``). Menu actions go to the
    loop with ``run_coroutine_threadsafe``; status values come back through
    ``on_status`` and are folded into a ``TrayView``.
    """

    SESSION = "c"

    def __init__(self, panel: CustomerPanel, loop: asyncio.AbstractEventLoop, icon: Any) -> None:
        self.panel = panel
        self.loop = loop
        self.icon = icon
        self.view = model.TrayView(role="customer")
        self.driver: IconDriver | None = None

    @classmethod
    def start(cls, panel: CustomerPanel, loop: asyncio.AbstractEventLoop) -> CustomerTray | None:
        """The icon, if this desktop has a tray host (else None: the page is enough)."""
        import threading

        from tray.app import pystray_menu, tray_host_problem

        problem = tray_host_problem()
        if problem is not None:
            log.info("no tray icon for the customer: %s", problem)
            return None
        import pystray

        from tray import icons

        tray = cls(panel, loop, None)
        tray.icon = pystray.Icon(
            "peerdesk",
            icons.draw(tray.view.state),
            model.tooltip(tray.view),
            menu=pystray_menu(model.menu(tray.view), tray.act),
        )
        tray.driver = IconDriver(tray.icon, tray.act)
        tray.driver.show(tray.view)
        threading.Thread(
            target=tray.icon.run,
            kwargs={"setup": tray.driver.setup},
            name="peerdesk-tray",
            daemon=True,
        ).start()
        return tray

    def on_status(self, event: status.Status) -> None:
        self.view = model.fold(self.view, self.SESSION, event)
        if self.driver is not None:
            self.driver.show(self.view)

    def act(self, action: model.Action) -> None:
        """One menu action (runs on pystray's thread)."""
        from tray.app import open_browser

        command: cmds.Command | None = None
        if action.kind == "stop_sharing":
            command = cmds.RevokeCommand(cap="all")
        elif action.kind in ("leave", "quit"):
            command = cmds.LeaveCommand()
        elif action.kind == "info":
            open_browser(self.panel.url)
        session = self.panel.session
        if command is not None and session is not None:
            asyncio.run_coroutine_threadsafe(session.command(command), self.loop)

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.close()
        with contextlib.suppress(Exception):
            self.icon.stop()
