"""System information the customer's agent returns when ``sysinfo`` is granted.

Structured data only (no free text from the machine that could be mistaken for a
message), gathered in a thread because psutil and mss may block briefly.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

import psutil

from agent import __version__


def displays() -> list[dict[str, Any]]:
    """The monitors, 1-based as mss numbers them: index, x, y, width, height."""
    if os.name == "posix" and not os.environ.get("DISPLAY") and platform.system() == "Linux":
        return []
    try:
        import mss

        factory = getattr(mss, "MSS", None) or mss.mss
        with factory() as grabber:
            return [
                {
                    "index": i,
                    "x": m["left"],
                    "y": m["top"],
                    "width": m["width"],
                    "height": m["height"],
                }
                for i, m in enumerate(grabber.monitors[1:], start=1)
            ]
    except Exception:  # no display server is a normal answer here
        return []


def _disks() -> list[dict[str, Any]]:
    out = []
    for part in psutil.disk_partitions(all=False):
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue
        out.append(
            {
                "mount": part.mountpoint,
                "fs": part.fstype,
                "total": usage.total,
                "free": usage.free,
                "percent": usage.percent,
            }
        )
    return out[:32]


def _interfaces() -> list[dict[str, Any]]:
    stats = psutil.net_if_stats()
    out = []
    for name, addrs in psutil.net_if_addrs().items():
        out.append(
            {
                "name": name,
                "up": bool(stats[name].isup) if name in stats else None,
                "addresses": [
                    a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)
                ],
                "mac": next((a.address for a in addrs if a.family == psutil.AF_LINK), None),
            }
        )
    return out[:64]


def collect() -> dict[str, Any]:
    """OS, CPU, memory, disks, displays, network interfaces and agent version."""
    mem = psutil.virtual_memory()
    freq = psutil.cpu_freq()
    return {
        "agent": {"version": __version__, "python": platform.python_version()},
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "version": platform.version(),
            "machine": platform.machine(),
            "hostname": socket.gethostname(),
            "boot_time": int(psutil.boot_time()),
            "uptime_s": int(time.time() - psutil.boot_time()),
        },
        "cpu": {
            "model": _cpu_model(),
            "logical": psutil.cpu_count(logical=True),
            "physical": psutil.cpu_count(logical=False),
            "mhz": round(freq.current) if freq else None,
            "load_percent": psutil.cpu_percent(interval=0.1),
        },
        "memory": {"total": mem.total, "available": mem.available, "percent": mem.percent},
        "disks": _disks(),
        "displays": displays(),
        "network": _interfaces(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
