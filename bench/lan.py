"""LAN join time between two network namespaces, beside the same join through a server.

Two namespaces on a veth pair (``bench.netns``; needs root) stand for two machines
on a LAN with nothing else. In namespace A run, as real processes: a CSR with
``peerdesk start --lan`` (embedded endpoint, announced with zeroconf), a
signaling server, and a second CSR that uses that server. In namespace B one
process measures, interleaved run by run:

- **LAN**: from nothing but the code to ``joined``: a fresh zeroconf lookup of the
  room id (as a fresh ``peerdesk join CODE`` makes), the reachability probe, then
  signaling + SPAKE2 + sealed SDP + DTLS + SCTP;
- **explicit server**: the same join with the server's URL given (``--signal``).

The difference is what discovery costs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.child import Child
from bench.netns import NetnsPair


@dataclass(frozen=True)
class LanFigures:
    runs: int
    lan_p50: float
    lan_p95: float
    explicit_p50: float
    explicit_p95: float
    lookup_p50: float
    "The zeroconf lookup alone (part of the LAN join)."

    @property
    def ratio(self) -> float:
        return self.lan_p50 / self.explicit_p50


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def measure(runs: int = 20) -> LanFigures:
    """Start the LAN of two namespaces, measure ``runs`` joins of each kind, tear it down."""
    py = [sys.executable, "-m"]
    children: list[Child] = []
    with NetnsPair() as lan:
        try:
            server = Child(
                [*lan.a.exec, *py, "signaling", "--host", str(lan.a.ipv4), "--port", "0"]
            )
            children.append(server)
            url = f"ws://{lan.a.ipv4}:{server.expect('listening', timeout=30)[1]['port']}"
            on_lan = Child([*lan.a.exec, *py, "agent", "start", "--lan", "--port", "0", "--json"])
            children.append(on_lan)
            via = Child([*lan.a.exec, *py, "agent", "start", "--signal", url, "--json"])
            children.append(via)
            code_lan = on_lan.expect("session", timeout=30)[1]["code"]
            code_via = via.expect("session", timeout=30)[1]["code"]
            time.sleep(2.5)  # the announcement's probing (about 1.5 s) is over
            worker = subprocess.run(
                [*lan.b.exec, *py, "bench.lan", code_lan, code_via, url, str(runs)],
                capture_output=True,
                text=True,
                timeout=60 + 10 * runs,
            )
            if worker.returncode != 0:
                raise RuntimeError(f"bench worker failed:\n{worker.stderr[-3000:]}")
            result = json.loads(worker.stdout.strip().splitlines()[-1])
        finally:
            for child in children:
                child.stop()
    lans, vias, lookups = result["lan"], result["explicit"], result["lookup"]
    return LanFigures(
        runs=runs,
        lan_p50=statistics.median(lans),
        lan_p95=_p95(lans),
        explicit_p50=statistics.median(vias),
        explicit_p95=_p95(vias),
        lookup_p50=statistics.median(lookups),
    )


def report(f: LanFigures) -> list[str]:
    ms = 1000.0
    return [
        f"lan: {f.runs} joins between two network namespaces (code only -> joined)",
        f"  LAN (zeroconf lookup + join)  p50 {f.lan_p50 * ms:7.1f} ms   "
        f"p95 {f.lan_p95 * ms:7.1f} ms",
        f"  explicit signaling server     p50 {f.explicit_p50 * ms:7.1f} ms   "
        f"p95 {f.explicit_p95 * ms:7.1f} ms",
        f"  of which zeroconf lookup      p50 {f.lookup_p50 * ms:7.1f} ms",
        f"  ratio (p50)                   {f.ratio:.2f}x",
    ]


def rows(f: LanFigures) -> list[str]:
    ms = 1000.0
    return [
        f"| LAN join p50 / p95 (zeroconf lookup + join, two netns) "
        f"| {f.lan_p50 * ms:.1f} ms / {f.lan_p95 * ms:.1f} ms "
        f"| explicit signaling server {f.explicit_p50 * ms:.1f} ms / {f.explicit_p95 * ms:.1f} ms "
        f"| **{f.ratio:.2f}x** | {f.runs} joins each |",
        f"| LAN lookup alone (fresh zeroconf, room id -> URL) | {f.lookup_p50 * ms:.1f} ms "
        f"| - | - | {f.runs} lookups |",
    ]


# -- the worker, in namespace B --------------------------------------------------------


async def _worker(code_lan: str, code_via: str, url: str, runs: int) -> dict[str, list[float]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.identity import Identity
    from agent.net import lan
    from agent.protocol.code import JoinLink, parse_code
    from agent.runtime import CustomerSession

    me = Identity(Ed25519PrivateKey.generate(), "bench customer")
    c_lan, c_via = parse_code(code_lan), parse_code(code_via)

    async def join(code: Any, signal: str) -> None:
        session = CustomerSession(me, JoinLink(code, signal), signal, lambda e: None)
        await session.join()
        await session.leave()

    out: dict[str, list[float]] = {"lan": [], "explicit": [], "lookup": []}
    await join(c_via, url)  # warm-up: imports, first certificates
    for _ in range(runs):
        start = time.perf_counter()
        found = await lan.join_candidates(c_lan.room, 4.0)
        looked = time.perf_counter() - start
        if not found:
            raise RuntimeError(f"room {c_lan.room} not found on the LAN")
        await join(c_lan, found[0])
        out["lan"].append(time.perf_counter() - start)
        out["lookup"].append(looked)
        await asyncio.sleep(0.05)

        start = time.perf_counter()
        await join(c_via, url)
        out["explicit"].append(time.perf_counter() - start)
        await asyncio.sleep(0.05)
    return out


if __name__ == "__main__":
    code_lan, code_via, url, n = sys.argv[1:5]
    print(json.dumps(asyncio.run(_worker(code_lan, code_via, url, int(n)))))
