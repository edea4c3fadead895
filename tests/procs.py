"""Drive real ``peerdesk`` processes through the headless JSON-lines contract."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Event = dict[str, Any]

NOISE = (
    "Traceback",
    "Unclosed",
    "Task was destroyed",
    "Exception ignored",
    "Fatal Python error",
    "ResourceWarning",
    "was never awaited",
    "exception was never retrieved",
)
"What must never reach a user's stderr, whatever went wrong."


def run_peerdesk(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One ``peerdesk`` command run to its end (``log verify``, ``report``, ...), bounded."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PEERDESK_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


class Proc:
    """One child process speaking JSON lines; every wait is bounded."""

    def __init__(
        self,
        args: list[str],
        *,
        home: Path | None = None,
        name: str = "",
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
        exe: list[str] | None = None,
        stdin: int = subprocess.PIPE,
    ) -> None:
        """``env`` adds to this process's environment (``DISPLAY`` for a customer's desktop).

        ``stdin=subprocess.DEVNULL`` gives it what cron and service managers give.

        ``wrap`` prefixes the command (``["ip", "netns", "exec", NS]``: run it in a namespace);
        ``exe`` replaces ``python -m`` (a frozen ``peerdesk`` binary).
        """
        extra = env or {}
        env = {**os.environ, **extra}
        if home is not None:
            env["PEERDESK_HOME"] = str(home)
        env["PYTHONUNBUFFERED"] = "1"
        if wrap is None:  # zeroconf stays on loopback, off the host's LAN (not in a netns)
            env.setdefault("PEERDESK_LAN_INTERFACES", "127.0.0.1")
        self.name = name or args[0]
        self.proc = subprocess.Popen(
            [*(wrap or []), *(exe or [sys.executable, "-m"]), *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: list[Event] = []
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True).start()

    def _pump(self, stream: Any, is_out: bool) -> None:
        for line in stream:
            if is_out:
                self.lines.put(line)
            else:
                self.stderr.append(line)
        if is_out:
            self.lines.put(None)

    def expect(
        self,
        event: str,
        where: Callable[[Event], bool] = lambda e: True,
        timeout: float = 15.0,
        *,
        names: tuple[str, ...] = (),
    ) -> Event:
        """Wait for the next event named ``event`` (or any of ``names``) matching ``where``;
        earlier ones are kept."""
        wanted = names or (event,)
        for seen in self.events:
            if seen.get("event") in wanted and where(seen) and not seen.get("_taken"):
                seen["_taken"] = True
                return seen
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}: no {event!r} within {timeout}s; events: {self.events}\n"
                    f"stderr:\n{''.join(self.stderr[-40:])}"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise AssertionError(
                    f"{self.name}: exited before {event!r}; events: {self.events}\n"
                    f"stderr:\n{''.join(self.stderr[-40:])}"
                )
            obj = self.parse(line)
            self.events.append(obj)
            if obj.get("event") in wanted and where(obj):
                obj["_taken"] = True
                return obj

    @staticmethod
    def parse(line: str) -> Event:
        """One line of output as an event: the stream must be pure JSON lines."""
        obj: Event = json.loads(line)
        return obj

    def first_of(self, *events: str, timeout: float = 15.0) -> Event:
        """The next event named any of ``events`` (such as ``joined`` or ``error``)."""
        return self.expect(events[0], lambda e: True, timeout, names=events)

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def drain(self, timeout: float = 2.0) -> list[Event]:
        """Read whatever else arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                self.lines.put(None)
                break
            self.events.append(self.parse(line))
        return self.events

    def quiet(self) -> None:
        """Fail unless stderr is clean: no traceback, no resource or task warnings."""
        text = "".join(self.stderr)
        for bad in NOISE:
            assert bad not in text, f"{self.name} printed {bad!r} on stderr:\n{text}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class ConsoleProc(Proc):
    """A ``peerdesk`` in console mode: lines for a person, not JSON."""

    @staticmethod
    def parse(line: str) -> Event:
        return {"event": "line", "text": line.rstrip("\n")}

    def line(self, containing: str, timeout: float = 15.0) -> str:
        """The next output line containing ``containing``; earlier ones are kept."""
        return str(self.expect("line", lambda e: containing in e["text"], timeout)["text"])

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def all_lines(self) -> list[str]:
        return [str(e["text"]) for e in self.drain(0.2)]


def returning(home: Path) -> None:
    """Make ``home`` a customer's who already read the first-run scam warning (its page
    then joins at once; the warning itself is tested in ``test_customer_panel``)."""
    from tray.customer import WARNING_SEEN

    home.mkdir(parents=True, exist_ok=True)
    (home / WARNING_SEEN).write_text("acknowledged in an earlier run\n")


def start_signal_server() -> tuple[Proc, str]:
    """A real signaling server process on a free loopback port."""
    proc = Proc(["signaling", "--host", "127.0.0.1", "--port", "0"], name="signal")
    ready = proc.expect("listening", timeout=20)
    return proc, f"ws://127.0.0.1:{ready['port']}"


_DASHBOARD_PAGE = """
import asyncio, json, sys
import aiohttp

async def main(url):
    base, token = url.split("/?t=")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base}/ws?t={token}", origin=base) as ws:
            await ws.send_json({"op": "start"})
            line = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
            frame = asyncio.ensure_future(ws.receive())
            while True:
                await asyncio.wait({line, frame}, return_when=asyncio.FIRST_COMPLETED)
                if line.done():
                    if not line.result():
                        return
                    await ws.send_str(line.result())
                    line = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
                if frame.done():
                    if frame.result().type != aiohttp.WSMsgType.TEXT:
                        return
                    obj = json.loads(frame.result().data)
                    if obj.get("type") == "status":  # the session's status values, as events
                        print(json.dumps({**obj["event"], "sid": obj["session"]}), flush=True)
                    frame = asyncio.ensure_future(ws.receive())

asyncio.run(main(sys.argv[1]))
"""


def dashboard_page(url: str, *, wrap: list[str] | None = None) -> Proc:
    """A stand-in for the dashboard's page: it opens the page's websocket at ``url``
    (with its token and Origin), starts a session, prints the sessions' status values
    as JSON lines (``sid`` added) and sends the page messages it is ``send``-ed."""
    return Proc(["-c", _DASHBOARD_PAGE, url], name="page", wrap=wrap, exe=[sys.executable])
