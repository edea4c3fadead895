"""A private Xvfb display and a full-screen canvas on it, for desktop tests and benches.

``Xvfb`` starts ``Xvfb -displayfd FD -screen 0 WxHx24 -nolisten tcp -noreset``: the
server picks a free display number itself (no race with other displays in
``/tmp/.X11-unix``) and writes it to our pipe. Every wait is bounded, and ``stop()``
(or leaving the ``with`` block, even on an exception) terminates the server, then
kills it if it does not exit in time.

``Canvas`` maps one override-redirect window over the whole screen and draws on it
with python-xlib (installed with pynput on Linux): filled rectangles and Pillow
images. Nothing else draws on an Xvfb screen, so what it draws stays until redrawn.

    with Xvfb() as x, Canvas(x.display) as c:   # then capture x.display with mss
        c.fill(0, 0, 100, 100, (255, 0, 0))
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

START_TIMEOUT = 10.0
"Seconds to wait for Xvfb to report its display number."
STOP_TIMEOUT = 5.0
"Seconds to wait for Xvfb to exit after SIGTERM before SIGKILL."
_MAX_PUT_BYTES = 240_000
"PutImage bytes per request: X11's core limit is 262,140 and python-xlib lacks BIG-REQUESTS."


class XvfbError(RuntimeError):
    """Xvfb is missing, failed to start, or did not say which display it took."""


class Xvfb:
    """One Xvfb server on a free display; ``display`` is ``":N"`` once started."""

    def __init__(self, width: int = 1920, height: int = 1080, depth: int = 24) -> None:
        self.width = width
        self.height = height
        self.depth = depth
        self.display = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server and return its display name, e.g. ``":3"``."""
        exe = shutil.which("Xvfb")
        if exe is None:
            raise XvfbError("Xvfb is not installed (Debian/Ubuntu: apt-get install xvfb)")
        rfd, wfd = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [
                    exe,
                    "-displayfd",
                    str(wfd),
                    "-screen",
                    "0",
                    f"{self.width}x{self.height}x{self.depth}",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ],
                pass_fds=(wfd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.close(wfd)
            wfd = -1
            number = self._read_number(rfd)
        except BaseException:
            self.stop()
            raise
        finally:
            if wfd >= 0:
                os.close(wfd)
            os.close(rfd)
        self.display = f":{number}"
        socket = Path(f"/tmp/.X11-unix/X{number}")  # noqa: S108 (the X11 socket path)
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists():
            if time.monotonic() > deadline:
                self.stop()
                raise XvfbError(f"Xvfb reported display {self.display} but {socket} never appeared")
            time.sleep(0.01)
        return self.display

    def _read_number(self, rfd: int) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise XvfbError(f"Xvfb did not report a display within {START_TIMEOUT:.0f} s")
            ready, _, _ = select.select([rfd], [], [], min(left, 0.1))
            if ready:
                chunk = os.read(rfd, 64)
                if not chunk:
                    break
                data += chunk
            elif self._proc.poll() is not None:
                raise XvfbError(f"Xvfb exited with status {self._proc.returncode} while starting")
        try:
            return int(data.strip())
        except ValueError:
            raise XvfbError(f"Xvfb reported an unreadable display number {data!r}") from None

    def stop(self) -> None:
        """Terminate the server (SIGKILL after ``STOP_TIMEOUT``). Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def __enter__(self) -> Xvfb:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Canvas:
    """A full-screen window on an X display to draw test patterns on (24-bit TrueColor)."""

    def __init__(self, display: str) -> None:
        import Xlib.display
        import Xlib.X

        self._X: Any = Xlib.X
        self.dpy: Any = Xlib.display.Display(display)
        screen = self.dpy.screen()
        if screen.root_depth != 24:
            raise XvfbError(f"Canvas needs a 24-bit screen, {display} has {screen.root_depth}")
        self.width: int = screen.width_in_pixels
        self.height: int = screen.height_in_pixels
        self.window: Any = screen.root.create_window(
            0,
            0,
            self.width,
            self.height,
            0,
            screen.root_depth,
            Xlib.X.InputOutput,
            Xlib.X.CopyFromParent,
            background_pixel=screen.white_pixel,
            override_redirect=True,
            event_mask=Xlib.X.ExposureMask,
        )
        self.gc: Any = self.window.create_gc(foreground=screen.black_pixel)
        self.window.map()
        self.dpy.sync()
        self._wait_exposed()

    def _wait_exposed(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            while self.dpy.pending_events():
                if self.dpy.next_event().type == self._X.Expose:
                    return
            time.sleep(0.005)
        raise XvfbError("the canvas window was never exposed")

    def fill(self, x: int, y: int, w: int, h: int, rgb: tuple[int, int, int]) -> None:
        """Fill a rectangle with an RGB colour (not flushed: call ``sync()``)."""
        self.gc.change(foreground=(rgb[0] << 16) | (rgb[1] << 8) | rgb[2])
        self.window.fill_rectangle(self.gc, x, y, w, h)

    def put_bgrx(self, x: int, y: int, w: int, h: int, data: bytes) -> None:
        """Draw raw 32-bit BGRX pixels (``w*h*4`` bytes), in as few requests as X allows."""
        stride = w * 4
        rows = max(1, _MAX_PUT_BYTES // stride)
        for top in range(0, h, rows):
            n = min(rows, h - top)
            chunk = data[top * stride : (top + n) * stride]
            self.window.put_image(self.gc, x, y + top, w, n, self._X.ZPixmap, 24, 0, chunk)

    def put_image(self, x: int, y: int, image: Image.Image) -> None:
        """Draw a Pillow image at (x, y)."""
        data = image.convert("RGBX").tobytes("raw", "BGRX")
        self.put_bgrx(x, y, image.width, image.height, data)

    def sync(self) -> None:
        """Wait until the server has drawn everything sent so far."""
        self.dpy.sync()

    def close(self) -> None:
        """Destroy the window and close the connection."""
        try:
            self.window.destroy()
            self.dpy.close()
        except Exception:  # noqa: S110 (the server may be gone already)
            pass

    def __enter__(self) -> Canvas:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
