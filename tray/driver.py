"""Apply tray views to a pystray icon without touching its X connection from elsewhere.

pystray's plain-X backend runs the icon's updates in its own loop thread: a setter
called from another thread sends a client message on the icon's X connection and
waits for the loop to answer. Two threads on one python-xlib connection lose
messages and can break the loop (measured: 28 of 40 updates from a second thread
went through, then it hung for good), and a wait on the asyncio loop would freeze
the whole agent. So under X:

- ``IconDriver`` keeps a second X connection of its own; ``show(view)`` stores the
  view and sends the icon's window a ``_PEERDESK_UPDATE`` client message on it,
  returning at once;
- pystray's loop thread receives that message and applies the newest view there
  (also selecting button presses on the window once: pystray's X backend forgets
  them, so a click would never reach the default menu item);
- the icon is made visible there too: pystray's own setup thread would ask its loop
  to do that over the loop's connection, the cross-thread use that loses messages;
- a checker thread sends the same message with ``CHECK_DOCK`` every second or two,
  and pystray's thread asks to be docked again whenever the icon's window is not
  inside a tray. pystray asks once, and a tray host that owns the selection but is
  still starting (a panel at login, a panel restarted) drops that request: the
  icon then never showed (seen under load with trayer: the window stayed a child
  of the root window, unmapped, for good).

Other backends get the view from a worker thread through pystray's own setters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tray import model

log = logging.getLogger(__name__)

ATOM = "_PEERDESK_UPDATE"
UPDATE, CHECK_DOCK = 0, 1  # the first data word of an ATOM message
DOCK_CHECKS_S = (1.0,) * 10 + (2.0,)  # after each wait the next; the last repeats


class IconDriver:
    """Shows ``TrayView`` values on one pystray icon; make it before ``icon.run``."""

    def __init__(self, icon: Any, act: Callable[[model.Action], None]) -> None:
        self.icon = icon
        self._act = act
        self._view: model.TrayView | None = None
        self._shown: model.TrayView | None = None
        self._lock = threading.Lock()
        self._conn: Any = None
        self._target: Any = None
        self._atom = 0
        self._clicks = False
        self._wake = threading.Event()
        self._closed = threading.Event()
        if not self._hook_x():
            threading.Thread(target=self._worker, name="peerdesk-icon", daemon=True).start()

    def show(self, view: model.TrayView) -> None:
        """Show ``view`` soon (from any thread; returns at once)."""
        self._view = view
        if self._conn is None:
            self._wake.set()
            return
        self._send(UPDATE)

    def setup(self, icon: Any) -> None:
        """pystray's setup callback: show the icon (under X, on pystray's own thread)."""
        if self._conn is None:
            icon.visible = True
        else:
            self._send(UPDATE)  # ``_apply`` makes it visible

    def _send(self, what: int) -> bool:
        from Xlib import X
        from Xlib.protocol import event

        message = event.ClientMessage(
            window=self._target, client_type=self._atom, data=(32, [what, 0, 0, 0, 0])
        )
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._target.send_event(message, event_mask=X.NoEventMask)
                self._conn.flush()
            except Exception as exc:  # the icon's window is gone: it was stopped
                log.debug("tray message not sent: %s", exc)
                return False
        return True

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._wake.set()

    # -- under X: applied in pystray's loop thread

    def _hook_x(self) -> bool:
        window = getattr(self.icon, "_window", None)
        handlers = getattr(self.icon, "_message_handlers", None)
        if window is None or not isinstance(handlers, dict):
            return False
        try:
            from Xlib import X
            from Xlib import display as xdisplay
        except ImportError:
            return False
        try:
            self._conn = xdisplay.Display()
        except Exception as exc:  # Xlib raises its own hierarchy and OSErrors
            log.info("no second X connection for the tray: %s", exc)
            return False
        self._target = self._conn.create_resource_object("window", window.id)
        self._atom = self._conn.intern_atom(ATOM)
        pystrays = handlers.get(X.ClientMessage, lambda e: None)

        def on_client_message(ev: Any) -> None:
            if ev.client_type != self._atom:
                pystrays(ev)
            elif ev.data[1][0] == CHECK_DOCK:
                self._redock()
            else:
                self._apply()

        handlers[X.ClientMessage] = on_client_message
        threading.Thread(target=self._check_docking, name="peerdesk-dock", daemon=True).start()
        return True

    def _check_docking(self) -> None:
        waits = iter(DOCK_CHECKS_S)
        wait = next(waits)
        while not self._closed.wait(wait) and self._send(CHECK_DOCK):
            wait = next(waits, wait)

    def _redock(self) -> None:
        """On pystray's thread: ask to be docked again if the icon is in no tray."""
        from Xlib.error import XError

        icon = self.icon
        try:
            if icon._window.query_tree().parent.id != icon._display.screen().root.id:
                return  # inside a tray (a tray embeds the icon's window in one of its own)
            icon._assert_docked()  # raises AssertionError while no tray host runs
        except AssertionError:
            return
        except XError as exc:
            log.debug("could not check the tray icon's docking: %s", exc)
            return
        log.info("asked the tray host again to show the icon")

    def _apply(self) -> None:
        if not self._clicks:
            from Xlib import X

            self.icon._window.change_attributes(
                event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask
            )
            self._clicks = True
        self._update()
        if not self.icon.visible:
            self.icon.visible = True  # here, not from pystray's setup thread: see the header

    # -- elsewhere: a worker thread and pystray's setters

    def _worker(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._conn is None and self._view is None:
                continue
            self._update()

    def _update(self) -> None:
        from tray import icons
        from tray.app import pystray_menu

        view = self._view
        if view is None or view == self._shown:
            return
        try:
            self.icon.icon = icons.draw(view.state)
            self.icon.title = model.tooltip(view)
            self.icon.menu = pystray_menu(model.menu(view), self._act)
            self.icon.update_menu()
            self._shown = view
        except Exception:  # the icon went away, or its backend failed: keep going
            log.exception("could not update the tray icon")
