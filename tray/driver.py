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
  them, so a click would never reach the default menu item).

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
        if not self._hook_x():
            threading.Thread(target=self._worker, name="peerdesk-icon", daemon=True).start()

    def show(self, view: model.TrayView) -> None:
        """Show ``view`` soon (from any thread; returns at once)."""
        self._view = view
        if self._conn is None:
            self._wake.set()
            return
        from Xlib import X
        from Xlib.protocol import event

        message = event.ClientMessage(
            window=self._target, client_type=self._atom, data=(32, [0, 0, 0, 0, 0])
        )
        with self._lock:
            try:
                self._target.send_event(message, event_mask=X.NoEventMask)
                self._conn.flush()
            except Exception as exc:  # the icon's window is gone: it was stopped
                log.debug("tray update not sent: %s", exc)

    def close(self) -> None:
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
            if ev.client_type == self._atom:
                self._apply()
            else:
                pystrays(ev)

        handlers[X.ClientMessage] = on_client_message
        return True

    def _apply(self) -> None:
        if not self._clicks:
            from Xlib import X

            self.icon._window.change_attributes(
                event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask
            )
            self._clicks = True
        self._update()

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
