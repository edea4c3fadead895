"""Real servers for tests: redis-server, signaling nodes, coturn; every wait bounded,
everything stopped (killed if need be) also when the test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 3.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1; yields its URL."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is missing: tests/run installs the Debian package redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [
            *(exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", str(tmp), "--protected-mode", "yes"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, "redis-server exited at start"
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not answer PING within 10 s"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


class Node:
    """One ``python -m signaling`` process; its JSON-line log is kept."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "signaling", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, 20.0)
        if not line:
            _stop(self.proc)
            raise AssertionError(f"signaling node did not start:\n{''.join(self.log[-30:])}")
        self.port = int(json.loads(line)["port"])
        self.url = f"http://127.0.0.1:{self.port}"

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def events(self, name: str) -> list[dict[str, object]]:
        out = []
        for line in list(self.log):
            with contextlib.suppress(ValueError):
                body = json.loads(line)
                if body.get("event") == name:
                    out.append(body)
        return out

    def kill(self) -> None:
        """SIGKILL: the node dies without a word to anyone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        _stop(self.proc, 15.0)


def _readline(stream: object, timeout: float) -> str:
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        got.append(stream.readline())  # type: ignore[attr-defined]
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout)
    return got[0] if got else ""


@contextlib.contextmanager
def nodes(count: int, *args: str) -> Iterator[list[Node]]:
    """``count`` signaling nodes started with ``args``; all stopped at the end."""
    started: list[Node] = []
    try:
        for _ in range(count):
            started.append(Node(*args))
        yield started
    finally:
        for node in started:
            _stop(node.proc)
