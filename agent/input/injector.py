"""Inject the arbiter's actions into the local desktop with pynput, off the event loop.

One worker thread owns the pynput controllers and runs actions from a queue in the
order they were submitted; ``submit`` only enqueues, so the asyncio loop never waits
on the X server. pynput is imported in that thread (it needs ``DISPLAY`` at import
time), so importing this module is free.

Coordinates arrive normalised (0..1) and are mapped to the shared monitor's pixels:
``x`` becomes ``left + floor(x * width)``, clamped to the last pixel.

How pynput reaches X (pynput 1.8, Xlib backend): the pointer, mouse buttons and
named keys go through the XTEST extension, like a real device; printable characters
are sent with XSendEvent to the focused window, carrying the shift state that types
them on the current layout plus the modifiers pynput holds down. Most toolkits (Tk,
GTK, Qt) accept such events; xterm ignores them unless ``allowSendEvents`` is set.
Every pynput call ends with an XSync, so when it returns the X server has the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from agent.errors import LocalProtocolError, PeerDeskError
from agent.protocol.control import BUTTONS, KEY_NAMES
from agent.session.control import (
    Action,
    ButtonDown,
    ButtonUp,
    KeyDown,
    KeyUp,
    MoveTo,
    Scroll,
    TypeText,
)

log = logging.getLogger(__name__)

PYNPUT_KEYS: dict[str, str] = {
    **{name: name for name in KEY_NAMES},
    "escape": "esc",
    "meta": "cmd",
}
"Our key names (``agent.protocol.control.KEY_NAMES``) to pynput ``Key`` member names."


@dataclass(frozen=True)
class Monitor:
    """The shared monitor's rectangle in the desktop's pixel space (mss's layout)."""

    left: int
    top: int
    width: int
    "Pixels, >= 1."
    height: int
    "Pixels, >= 1."

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise LocalProtocolError(f"a monitor needs a size, not {self.width}x{self.height}")

    @classmethod
    def from_mss(cls, monitor: Mapping[str, int]) -> Monitor:
        """From one entry of ``mss.mss().monitors`` (keys left, top, width, height)."""
        return cls(monitor["left"], monitor["top"], monitor["width"], monitor["height"])

    def to_pixels(self, x: float, y: float) -> tuple[int, int]:
        """Absolute pixel for a normalised point.

        ``Monitor(0, 0, 1280, 800).to_pixels(0.25, 0.5) == (320, 400)``
        """
        col = min(self.width - 1, max(0, int(x * self.width)))
        row = min(self.height - 1, max(0, int(y * self.height)))
        return self.left + col, self.top + row


class Backend(Protocol):
    """What the worker drives; ``PynputBackend`` in production, a fake in unit tests."""

    def move(self, px: int, py: int) -> None: ...
    def button(self, name: str, down: bool) -> None: ...
    def scroll(self, dx: int, dy: int) -> None: ...
    def key(self, name: str, down: bool) -> None: ...
    def type(self, text: str) -> None: ...
    def close(self) -> None: ...


class PynputBackend:
    """pynput's mouse and keyboard controllers. Make and use it in one thread only."""

    def __init__(self) -> None:
        mouse = importlib.import_module("pynput.mouse")
        keyboard = importlib.import_module("pynput.keyboard")
        self._mouse: Any = mouse.Controller()
        self._keyboard: Any = keyboard.Controller()
        self._buttons: dict[str, Any] = {name: getattr(mouse.Button, name) for name in BUTTONS}
        self._keys: dict[str, Any] = {
            ours: getattr(keyboard.Key, theirs) for ours, theirs in PYNPUT_KEYS.items()
        }

    def move(self, px: int, py: int) -> None:
        self._mouse.position = (px, py)

    def button(self, name: str, down: bool) -> None:
        if down:
            self._mouse.press(self._buttons[name])
        else:
            self._mouse.release(self._buttons[name])

    def scroll(self, dx: int, dy: int) -> None:
        self._mouse.scroll(dx, -dy)  # pynput: dy > 0 scrolls up; ours: dy > 0 scrolls down

    def key(self, name: str, down: bool) -> None:
        key = self._keys.get(name, name)  # a single character stands for itself
        if down:
            self._keyboard.press(key)
        else:
            self._keyboard.release(key)

    def type(self, text: str) -> None:
        self._keyboard.type(text)

    def close(self) -> None:
        # Close the X connections now rather than in pynput's __del__, which complains
        # when the server went away first.
        for controller in (self._mouse, self._keyboard):
            display = getattr(controller, "_display", None)
            if display is not None:
                with contextlib.suppress(Exception):
                    display.close()
                with contextlib.suppress(AttributeError):
                    del controller._display


class _Fence:
    """Queue marker: runs ``done`` once everything submitted before it has run."""

    __slots__ = ("done",)

    def __init__(self, done: Callable[[], None]) -> None:
        self.done = done


_TYPE_CHUNK = 8
"Characters typed between checks for ``cancel()``."
_RELEASE_ALL = object()
_RESUME = object()
_STOP = object()


class Injector:
    """Runs input actions in one worker thread, in order, without blocking the caller.

    ``on_injected(action, t)`` is called in the worker after each action, with the
    ``time.perf_counter()`` at which pynput returned (the X server has the event);
    ``backend`` makes the backend in the worker (pynput by default).
    """

    def __init__(
        self,
        monitor: Monitor,
        *,
        on_injected: Callable[[Action, float], None] | None = None,
        backend: Callable[[], Backend] = PynputBackend,
    ) -> None:
        self._monitor = monitor
        self._on_injected = on_injected
        self._make_backend = backend
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: PeerDeskError | None = None
        self._failures = 0
        self._cancelling = threading.Event()
        # Owned by the worker thread:
        self._keys: dict[str, None] = {}
        self._buttons: dict[str, None] = {}

    # ------------------------------------------------------------------ state

    @property
    def monitor(self) -> Monitor:
        return self._monitor

    def set_monitor(self, monitor: Monitor) -> None:
        """Map later actions to ``monitor`` (the CSR switched the shared monitor)."""
        self._monitor = monitor

    @property
    def error(self) -> PeerDeskError | None:
        """Why injection is unavailable (no X display, pynput missing), or None."""
        return self._error

    @property
    def failures(self) -> int:
        """Actions that raised in pynput and were skipped (each one is logged)."""
        return self._failures

    # ------------------------------------------------------------------ API

    def start(self) -> None:
        """Start the worker thread; returns at once. Actions submitted earlier wait for it."""
        if self._closed:
            raise LocalProtocolError("this injector was closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="peerdesk-input", daemon=True)
            self._thread.start()

    def submit(self, *actions: Action) -> None:
        """Queue ``actions`` to run in order; returns at once (safe on the event loop)."""
        if self._closed:
            raise LocalProtocolError("this injector was closed")
        for action in actions:
            self._queue.put(action)

    def inject(self, *actions: Action, timeout: float = 5.0) -> None:
        """Run ``actions`` and wait until they ran. Blocks: for threads and scripts only."""
        self._require_started()
        done = threading.Event()
        self.submit(*actions)
        self._queue.put(_Fence(done.set))
        if not done.wait(timeout):
            raise LocalProtocolError(f"input injection did not finish within {timeout} s")
        if self._error is not None:
            raise self._error

    def release_all(self) -> None:
        """Queue a release of every key and button this injector holds down."""
        if not self._closed:
            self._queue.put(_RELEASE_ALL)

    def cancel(self) -> None:
        """Stop remote input now: drop queued actions, release what is held. Non-blocking.

        For a revoke, a lost holder or a consent prompt: input the arbiter accepted
        but the worker has not run yet is discarded, a text being typed stops within
        a few characters, then every key and button this injector pressed is
        released. Actions submitted after ``cancel`` run normally. (Await ``drain()``
        afterwards to know it is done, e.g. before showing a prompt.)
        """
        self._cancelling.set()
        kept: list[object] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Fence) or item is _STOP:
                kept.append(item)
        self._queue.put(_RESUME)
        self._queue.put(_RELEASE_ALL)
        for item in kept:
            self._queue.put(item)

    async def drain(self) -> None:
        """Wait (without blocking the loop) until everything submitted so far has run."""
        self._require_started()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, fut)

        self._queue.put(_Fence(done))
        await fut
        if self._error is not None:
            raise self._error

    def close(self, timeout: float = 2.0) -> None:
        """Release everything held, stop the worker and close its X connections.

        Waits at most ``timeout`` seconds for the worker (a hung X server cannot hang
        the agent; the thread is a daemon). Later submits raise; close is idempotent.
        Blocks: on the event loop, ``await aclose()`` instead.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(_RELEASE_ALL)
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("input worker did not stop within %.1f s", timeout)

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def _require_started(self) -> None:
        if self._thread is None:
            raise LocalProtocolError("start() the injector before waiting on it")
        if self._closed:
            raise LocalProtocolError("this injector was closed")

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        backend: Backend | None = None
        try:
            backend = self._make_backend()
        except Exception as exc:  # ImportError or Xlib errors when there is no display
            self._error = PeerDeskError(
                f"remote control is unavailable on this desktop: {exc}".splitlines()[0],
                code="input_unavailable",
            )
            log.error("%s", self._error.message)
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if isinstance(item, _Fence):
                item.done()
            elif item is _RESUME:
                self._cancelling.clear()
            elif backend is None or self._cancelling.is_set():
                continue  # no display, or cancelled: _RELEASE_ALL follows _RESUME
            elif item is _RELEASE_ALL:
                for button in reversed(list(self._buttons)):
                    self._apply(backend, ButtonUp(button))
                for key in reversed(list(self._keys)):
                    self._apply(backend, KeyUp(key))
            else:
                self._apply(backend, cast(Action, item))
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()

    def _apply(self, backend: Backend, action: Action) -> None:
        try:
            if isinstance(action, MoveTo):
                backend.move(*self._monitor.to_pixels(action.x, action.y))
            elif isinstance(action, ButtonDown):
                backend.button(action.button, True)
                self._buttons[action.button] = None
            elif isinstance(action, ButtonUp):
                if action.button not in self._buttons:
                    return  # not pressed by us (or already released by cancel)
                del self._buttons[action.button]
                backend.button(action.button, False)
            elif isinstance(action, Scroll):
                backend.scroll(action.dx, action.dy)
            elif isinstance(action, KeyDown):
                backend.key(action.key, True)
                self._keys[action.key] = None
            elif isinstance(action, KeyUp):
                if action.key not in self._keys:
                    return  # not pressed by us (or already released by cancel)
                del self._keys[action.key]
                backend.key(action.key, False)
            elif isinstance(action, TypeText):
                for i in range(0, len(action.text), _TYPE_CHUNK):
                    if self._cancelling.is_set():
                        return
                    backend.type(action.text[i : i + _TYPE_CHUNK])
            else:
                raise LocalProtocolError(f"not an input action: {action!r}")
        except Exception as exc:
            self._failures += 1
            # The action's type only: a TypeText may hold a password.
            log.warning("input action %s failed: %s", type(action).__name__, exc)
            return
        if self._on_injected is not None:
            try:
                self._on_injected(action, time.perf_counter())
            except Exception:
                log.exception("on_injected callback failed")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
