"""``peerdesk`` with no arguments (the tray agent) and ``peerdesk dashboard``.

The tray owns the main thread (pystray needs it); the asyncio loop with the hub,
the dashboard server and the sessions runs in a thread beside it. They talk in one
direction each: menu actions go to the loop with ``run_coroutine_threadsafe``;
status values come back through the hub's listener, are folded into a
``TrayView`` (a frozen value) and the icon and menu are rebuilt from it.

Without a tray host (no display, or no system tray on it) the agent opens the
dashboard in the browser instead and says why on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import signal
import sys
import threading
import webbrowser
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent import identity, status
from agent.cli import STOP_SIGNALS
from agent.errors import PeerDeskError
from agent.protocol import commands as cmds
from agent.protocol.code import check_signal_url
from tray import model
from tray.dashboard import Dashboard
from tray.driver import IconDriver
from tray.hub import Hub

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``peerdesk tray`` and ``peerdesk dashboard`` share."""
    p.add_argument("--signal", metavar="URL", help="signaling server (default: an embedded one)")
    p.add_argument("--name", help="display name for these sessions")
    p.add_argument("--download-dir", metavar="DIR", help="where files from customers land")
    p.add_argument("--no-browser", action="store_true", help="do not open the dashboard")
    p.add_argument("--json", action="store_true", help="say the dashboard's URL as a JSON line")
    from agent.cli import DEFAULT_PORT

    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"embedded signaling server's port (default {DEFAULT_PORT}, else any free one)",
    )


class Agent:
    """The hub and its dashboard on an asyncio loop (in this thread or beside the tray)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hub: Hub | None = None
        self.dashboard: Dashboard | None = None
        self.url = ""
        self.stop = asyncio.Event()

    async def start(self) -> str:
        me = identity.load(role="csr").with_name(self.args.name)
        url = check_signal_url(self.args.signal) if self.args.signal else None
        download = _directory(self.args.download_dir)
        self.hub = Hub(me, url, download_dir=download, port=self.args.port)
        self.dashboard = Dashboard(self.hub)
        self.url = await self.dashboard.start()
        return self.url

    async def close(self) -> None:
        """End every session for everyone first (their End goes out while the links
        are up), then stop the dashboard."""
        if self.hub is not None:
            await self.hub.close()
        if self.dashboard is not None:
            await self.dashboard.stop()

    def say(self, why: str = "") -> None:
        if self.args.json:
            print(json.dumps({"event": "dashboard", "url": self.url, "reason": why}), flush=True)
        else:
            print(f"PeerDesk dashboard: {self.url}", flush=True)
            if why:
                print(why, file=sys.stderr, flush=True)


def _directory(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def open_browser(url: str) -> bool:
    """Open ``url`` in the default browser; False if there is none."""
    try:
        return webbrowser.open(url, new=2)
    except webbrowser.Error:
        return False


async def _serve(args: argparse.Namespace, why: str = "") -> int:
    agent = Agent(args)
    await agent.start()
    agent.say(why)
    if not args.no_browser and not open_browser(agent.url):
        print("No browser found: open the address above yourself.", file=sys.stderr)
    loop = asyncio.get_running_loop()
    for name in STOP_SIGNALS:
        loop.add_signal_handler(getattr(signal, name), agent.stop.set)
    try:
        await agent.stop.wait()
    finally:
        await agent.close()
    return 0


def dashboard_main(args: argparse.Namespace, why: str = "") -> int:
    """``peerdesk dashboard``: serve the dashboard until interrupted."""
    return asyncio.run(_serve(args, why))


def tray_host_problem() -> str | None:
    """Why a tray icon cannot be shown here, or None when it can (as far as we can tell)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        return "No desktop (DISPLAY is not set): no tray icon can be shown."
    try:
        import pystray  # noqa: F401
    except Exception as exc:  # pystray raises whatever its backend raises on import
        return f"The tray library could not start ({exc})."
    if sys.platform.startswith("linux"):
        return _x_tray_problem()
    return None


def _x_tray_problem() -> str | None:
    try:
        from Xlib import display as xdisplay
    except ImportError:
        return "python-xlib is missing: no tray icon can be shown."
    try:
        d = xdisplay.Display()
    except Exception as exc:  # Xlib raises its own hierarchy and OSErrors
        return f"Cannot open the display ({exc})."
    try:
        screen = d.get_default_screen()
        owner = d.get_selection_owner(d.intern_atom(f"_NET_SYSTEM_TRAY_S{screen}"))
        if owner == 0 or getattr(owner, "id", 0) == 0:
            return "There is no system tray on this desktop (no tray host is running)."
        return None
    finally:
        d.close()


def tray_main(args: argparse.Namespace) -> int:
    """``peerdesk`` with no arguments: the tray icon, or the dashboard without a tray."""
    problem = tray_host_problem()
    if problem is not None:
        return dashboard_main(args, f"{problem} Opening the dashboard in the browser instead.")
    return TrayApp(args).run()


class TrayApp:
    """pystray on the main thread, the agent's loop in a thread beside it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.agent = Agent(args)
        self.loop = asyncio.new_event_loop()
        self.view = model.TrayView()
        self._lock = threading.Lock()
        self.icon: Any = None
        self.driver: IconDriver | None = None
        self.ready = threading.Event()

    # -- the loop thread

    def _loop_main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._agent_main())

    async def _agent_main(self) -> None:
        await self.agent.start()
        assert self.agent.hub is not None
        self.agent.hub.listen(self._on_status)
        self.agent.say()
        self.ready.set()
        await self.agent.stop.wait()
        await self.agent.close()

    def _on_status(self, sid: str, event: status.Status) -> None:
        with self._lock:
            self.view = model.fold(self.view, sid, event)
        self.refresh()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the agent's loop (from the tray's thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(self._report)
        return future

    def _report(self, future: concurrent.futures.Future[Any]) -> None:
        exc = future.exception()
        if isinstance(exc, PeerDeskError):
            self.notify(exc.message)
        elif exc is not None:
            log.error("tray action failed", exc_info=exc)

    # -- actions (the same hub API as the dashboard)

    def act(self, action: model.Action) -> None:
        """Carry out one menu action."""
        hub = self.agent.hub
        assert hub is not None
        kind, arg = action.kind, action.arg
        sid = self.view.session
        if kind == "start":
            self.submit(hub.start_session())
        elif kind == "dashboard":
            open_browser(self.agent.url)
        elif kind == "copy_link":
            if _copy(self.view.link):
                self.notify("Link copied")
            else:  # no clipboard tool: show it, and the dashboard has a Copy button
                self.notify(f"Link: {self.view.link}")
        elif kind == "copy_web":
            if _copy(self.view.web):
                self.notify("Web page link copied")
            else:
                self.notify(f"Web page: {self.view.web}")
        elif kind == "show_code":
            self.notify(f"Session code: {self.view.code}")
        elif kind == "email":
            open_browser(model.mailto(self.view))
        elif kind == "join_assistant":
            open_browser(self.agent.url + "#join")
        elif kind == "transfer" and sid is not None:
            self.submit(hub.command(sid, cmds.TransferCommand(to=arg)))
        elif kind == "end" and sid is not None:
            self.submit(hub.command(sid, cmds.EndCommand()))
        elif kind == "quit":
            self.loop.call_soon_threadsafe(self.agent.stop.set)
            if self.icon is not None:
                self.icon.stop()

    def notify(self, text: str) -> None:
        if self.icon is not None:
            try:
                self.icon.notify(text, "PeerDesk")
            except (NotImplementedError, AttributeError):
                log.info("%s", text)

    # -- the tray (main thread)

    def refresh(self) -> None:
        """Show the current view (from any thread: the driver applies it on pystray's)."""
        if self.driver is not None:
            with self._lock:
                view = self.view
            self.driver.show(view)

    def run(self) -> int:
        import pystray

        from tray import icons

        thread = threading.Thread(target=self._loop_main, name="peerdesk-loop", daemon=True)
        thread.start()
        if not self.ready.wait(30):
            print("peerdesk: the agent did not start", file=sys.stderr)
            return 1
        self.icon = pystray.Icon(
            "peerdesk",
            icons.draw(self.view.state),
            model.tooltip(self.view),
            menu=pystray_menu(model.menu(self.view), self.act),
        )
        self.driver = IconDriver(self.icon, self.act)
        self.refresh()
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), lambda *_: self.act(model.Action("quit")))
        self.icon.run(setup=self.driver.setup)
        self.driver.close()
        self.loop.call_soon_threadsafe(self.agent.stop.set)
        thread.join(15)
        return 0


def pystray_menu(items: tuple[model.Item, ...], act: Callable[[model.Action], None]) -> Any:
    import pystray

    def build(item: model.Item) -> Any:
        if item.separator:
            return pystray.Menu.SEPARATOR
        if item.children:
            return pystray.MenuItem(item.label, pystray.Menu(*(build(c) for c in item.children)))
        action = item.action

        def run(icon: Any, menu_item: Any) -> None:
            if action is not None:
                act(action)

        return pystray.MenuItem(item.label, run, enabled=item.enabled, default=item.default)

    return pystray.Menu(*(build(i) for i in items))


CLIPBOARD_TOOLS = (
    ("wl-copy",),
    ("xclip", "-selection", "clipboard"),
    ("xsel", "--clipboard", "--input"),
    ("pbcopy",),
    ("clip",),
)
"Programs that keep the clipboard after we hand it the text (Wayland, X11, macOS, Windows)."


def _copy(text: str) -> bool:
    """Put ``text`` on the clipboard with the desktop's own tool; False if there is none."""
    import shutil
    import subprocess

    for tool in CLIPBOARD_TOOLS:
        path = shutil.which(tool[0])
        if path is None:
            continue
        try:
            subprocess.run([path, *tool[1:]], input=text.encode(), timeout=5, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("%s could not copy: %s", tool[0], exc)
            continue
        return True
    return False
