"""An agent (or server) process for a benchmark: JSON lines out, JSON-line commands in.

Its stdout is read on a thread, so its pipe never fills; every wait is bounded.
(The tests have their own, ``tests.procs.Proc``: the benchmarks ship without the tests.)
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO, Any

Event = dict[str, Any]


class Child:
    """One process speaking JSON lines."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str] | None = None, stderr: IO[str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[tuple[float, Event] | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                self.lines.put((time.monotonic(), obj))
        self.lines.put(None)

    def expect(
        self, event: str, where: Callable[[Event], bool] = lambda e: True, timeout: float = 20
    ) -> tuple[float, Event]:
        """The next event named ``event`` matching ``where``, with when it was read
        (``time.monotonic()``); the ones before it are dropped."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                got = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if got is None:
                self.lines.put(None)
                raise RuntimeError(f"{self.proc.args!r} exited before {event!r}")
            if got[1].get("event") == event and where(got[1]):
                return got
        raise TimeoutError(f"{self.proc.args!r}: no {event!r} within {timeout:.0f} s")

    def send(self, cmd: Event) -> None:
        """One command line on its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
