"""Failover: kill -9 the primary CSR's agent; time until the assistant leads.

Real processes on loopback: a primary, a customer and an assistant (admitted with the
CSR code, direct link to the customer). The clock starts when this process sends
SIGKILL and stops when the assistant's ``failover`` event is read. The baseline is
the silence threshold after which a peer counts as lost (``LOST_AFTER``): the part of
the figure that is waiting by design, not work.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from agent.net.peer import LOST_AFTER


class _Agent:
    def __init__(self, args: list[str], home: Path) -> None:
        env = {"PEERDESK_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put((time.perf_counter(), json.loads(line)))

    def expect(self, event: str, timeout: float = 20) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                at, obj = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if obj.get("event") == event:
                return at, obj
        raise RuntimeError(f"no {event!r} within {timeout} s")

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _one(work: Path) -> float:
    agents: list[_Agent] = []
    try:
        primary = _Agent(["start", "--headless", "--json", "--port", "0"], work / "p")
        agents.append(primary)
        _, session = primary.expect("session")
        customer = _Agent(["join", session["link"], "--headless", "--json"], work / "c")
        agents.append(customer)
        customer.expect("joined")
        assistant = _Agent(
            [
                "join",
                session["csr_code"],
                "--signal",
                session["signal"],
                "--as",
                "assistant",
                "--headless",
                "--json",
            ],
            work / "a",
        )
        agents.append(assistant)
        _, asked = primary.expect("assistant_request")
        primary.send({"cmd": "admit", "peer": asked["peer"]})
        assistant.expect("direct")
        customer.expect("direct")
        time.sleep(0.3)
        killed = time.perf_counter()
        os.kill(primary.proc.pid, signal.SIGKILL)
        at, _ = assistant.expect("failover", timeout=15)
        return at - killed
    finally:
        for a in agents:
            a.kill()


def measure(kills: int = 10) -> dict[str, Any]:
    times = []
    with tempfile.TemporaryDirectory(prefix="peerdesk-bench-failover-") as tmp:
        for i in range(kills):
            times.append(_one(Path(tmp) / str(i)))
    ordered = sorted(times)
    return {
        "kills": kills,
        "p50": statistics.median(times),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": max(times),
        "lost_after": LOST_AFTER,
        "ratio": statistics.median(times) / LOST_AFTER,
    }


def report(f: dict[str, Any]) -> list[str]:
    return [
        f"failover: kill -9 the primary, {f['kills']} times; until the assistant leads",
        f"  failover   p50 {f['p50'] * 1000:7.0f} ms   p95 {f['p95'] * 1000:7.0f} ms"
        f"   max {f['max'] * 1000:7.0f} ms   (goal <= 2 s)",
        f"  of which waiting by design: silence threshold {f['lost_after'] * 1000:.0f} ms"
        f"   ratio {f['ratio']:.2f}x",
    ]


def rows(f: dict[str, Any]) -> list[str]:
    return [
        f"| failover p50 / p95 (kill -9 to the assistant leading) | {f['p50'] * 1000:.0f} ms / "
        f"{f['p95'] * 1000:.0f} ms | silence threshold {f['lost_after'] * 1000:.0f} ms "
        f"| {f['ratio']:.2f}x | {f['kills']} kills |"
    ]


if __name__ == "__main__":
    print("\n".join(report(measure())))
