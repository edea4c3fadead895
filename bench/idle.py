"""Idle cost: CPU and memory of a CSR and a customer agent in a session where nothing
happens, beside a bare Python process running an idle asyncio loop (the baseline).

Both agents are real ``peerdesk`` processes on loopback (headless), measured with
psutil over the same window after they settle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

IDLE_LOOP = "import asyncio\nasyncio.run(asyncio.sleep(3600))\n"


def _sample(procs: dict[str, psutil.Process], seconds: float) -> dict[str, dict[str, float]]:
    for p in procs.values():
        p.cpu_percent(None)
    time.sleep(seconds)
    return {
        name: {"cpu": p.cpu_percent(None), "rss_mb": p.memory_info().rss / 2**20}
        for name, p in procs.items()
    }


def _read_event(proc: subprocess.Popen[str], event: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        obj: dict[str, Any] = json.loads(line)
        if obj.get("event") == event:
            return obj
    raise RuntimeError(f"no {event!r} event from the agent")


def measure(seconds: float = 10.0) -> dict[str, Any]:
    """CPU % (of one core) and RSS of idle agents and of an idle asyncio loop."""
    work = Path(tempfile.mkdtemp(prefix="peerdesk-bench-idle-"))
    started: list[subprocess.Popen[str]] = []

    def spawn(args: list[str], home: str) -> subprocess.Popen[str]:
        env = {"PEERDESK_HOME": str(work / home), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        started.append(p)
        return p

    try:
        base = spawn(["-c", IDLE_LOOP], "base")
        csr = spawn(["-m", "agent", "start", "--headless", "--json", "--port", "0"], "csr")
        link = _read_event(csr, "session")["link"]
        cust = spawn(["-m", "agent", "join", link, "--headless", "--json"], "cust")
        _read_event(cust, "joined")
        time.sleep(2.0)  # settle: imports done, connection up
        figures = _sample(
            {
                "csr": psutil.Process(csr.pid),
                "customer": psutil.Process(cust.pid),
                "baseline": psutil.Process(base.pid),
            },
            seconds,
        )
    finally:
        for p in started:
            p.kill()
            p.wait(10)
    return {"seconds": seconds, **figures}


def report(f: dict[str, Any]) -> list[str]:
    lines = [f"idle: a session with nothing happening, {f['seconds']:.0f} s"]
    for name in ("csr", "customer", "baseline"):
        lines.append(
            f"  {name:9} CPU {f[name]['cpu']:5.2f} % of one core   RSS {f[name]['rss_mb']:6.1f} MB"
        )
    return lines


def rows(f: dict[str, Any]) -> list[str]:
    b = f["baseline"]
    return [
        f"| idle CPU, CSR / customer agent | {f['csr']['cpu']:.2f} % / "
        f"{f['customer']['cpu']:.2f} % "
        f"| idle asyncio loop {b['cpu']:.2f} % | - | {f['seconds']:.0f} s |",
        f"| idle RSS, CSR / customer agent | {f['csr']['rss_mb']:.0f} MB / "
        f"{f['customer']['rss_mb']:.0f} MB | idle asyncio loop {b['rss_mb']:.0f} MB "
        f"| {f['customer']['rss_mb'] / b['rss_mb']:.1f}x | {f['seconds']:.0f} s |",
    ]


if __name__ == "__main__":
    print("\n".join(report(measure())))
