"""A real X server (Xvfb) for desktop tests, and xdotool to look at it."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is missing: run tests/run (it installs {package})")


@contextmanager
def xvfb(width: int = 1280, height: int = 800) -> Iterator[str]:
    """Start Xvfb on a free display; yield ``":N"``; kill it afterwards, also on failure."""
    _need("Xvfb", "xvfb")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write_fd),
            "-screen",
            "0",
            f"{width}x{height}x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 15)
        if not ready:
            raise RuntimeError("Xvfb did not start within 15 s")
        number = os.read(read_fd, 32).decode().strip()
        if not number.isdigit():
            raise RuntimeError(f"Xvfb did not report a display ({number!r})")
        yield f":{number}"
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def xdotool(display: str, *args: str) -> str:
    _need("xdotool", "xdotool")
    return subprocess.run(
        ["xdotool", *args],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout


def pointer(display: str) -> tuple[int, int]:
    """Where the X pointer is, as xdotool reports it."""
    fields = dict(
        part.split(":", 1) for part in xdotool(display, "getmouselocation").split() if ":" in part
    )
    return int(fields["x"]), int(fields["y"])


def wait_pointer(display: str, want: tuple[int, int], timeout: float = 5.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    where = pointer(display)
    while where != want and time.monotonic() < deadline:
        time.sleep(0.02)
        where = pointer(display)
    return where
