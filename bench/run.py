"""``peerdesk bench``: print each figure beside its in-run baseline, optionally record it."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
from pathlib import Path

from agent import __version__


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def _join(runs: int) -> list[str]:
    from bench.join import measure

    f = asyncio.run(measure(runs))
    ms = 1000.0
    print(f"join: {f.runs} joins on loopback (signaling + SPAKE2 + sealed SDP + DTLS + SCTP)")
    print(
        f"  peerdesk join -> joined   p50 {f.join_p50 * ms:7.1f} ms   p95 {f.join_p95 * ms:7.1f} ms"
    )
    print(
        f"  bare aiortc connect       p50 {f.bare_p50 * ms:7.1f} ms   p95 {f.bare_p95 * ms:7.1f} ms"
    )
    print(f"  bare aiortc + prompt ICE  p50 {f.prompt_p50 * ms:7.1f} ms   (prompt ICE alone)")
    print(f"  ratio (p50)               {f.ratio:.2f}x   (goal <= 1.3x and < 1000 ms)")
    return [
        f"| join p50 / p95 | {f.join_p50 * ms:.1f} ms / {f.join_p95 * ms:.1f} ms "
        f"| bare aiortc {f.bare_p50 * ms:.1f} ms / {f.bare_p95 * ms:.1f} ms "
        f"| **{f.ratio:.2f}x** | {f.runs} joins |",
        f"| join overhead over bare aiortc with prompt ICE | "
        f"{(f.join_p50 - f.prompt_p50) * ms:.1f} ms | {f.prompt_p50 * ms:.1f} ms "
        f"| {f.join_p50 / f.prompt_p50:.2f}x | {f.runs} joins |",
    ]


def _control(runs: int) -> list[str]:
    from bench.control import measure, report

    return report(asyncio.run(measure(max(runs, 200))))


def _files(runs: int) -> list[str]:
    from bench.files import measure

    f = asyncio.run(measure(200, runs=3))
    print(f"files: 200 MB on loopback, {f['setup']}")
    print(f"  fast path (TCP + AES-256-GCM)  {f['fastpath_mbps']:7.1f} MB/s")
    print(f"  raw TLS copy (baseline)        {f['tls_mbps']:7.1f} MB/s")
    print(f"  aiortc data channel (stock)    {f['datachannel_mbps']:7.1f} MB/s")
    print(f"  ratio fast path / TLS          {f['fastpath_vs_tls']:.2f}x   (goal >= 100 MB/s)")
    return [
        f"| file goodput, fast path | {f['fastpath_mbps']:.0f} MB/s "
        f"| raw TLS loopback copy {f['tls_mbps']:.0f} MB/s | **{f['fastpath_vs_tls']:.2f}x** "
        f"| 200 MB, best of 3 |",
        f"| file goodput, data channel fallback | {f['datachannel_mbps']:.1f} MB/s "
        f"| raw TLS loopback copy {f['tls_mbps']:.0f} MB/s | {f['datachannel_vs_tls']:.3f}x "
        f"| {f['datachannel_mb']} MB |",
    ]


def _screen(runs: int) -> list[str]:
    from bench.screen import measure, report, rows

    f = asyncio.run(measure(10))
    print("\n".join(report(f)))
    return rows(f)


def _log(runs: int) -> list[str]:
    from bench.log import measure, report, rows

    f = measure(10_000)
    print("\n".join(report(f)))
    return rows(f)


def _idle(runs: int) -> list[str]:
    from bench.idle import measure, report, rows

    f = measure(10.0)
    print("\n".join(report(f)))
    return rows(f)


def _transfer(runs: int) -> list[str]:
    from bench.transfer import measure, report, rows

    f = asyncio.run(measure(max(runs, 40)))
    print("\n".join(report(f)))
    return rows(f)


def _failover(runs: int) -> list[str]:
    from bench.failover import measure, report, rows

    f = measure(max(10, min(runs, 50)))
    print("\n".join(report(f)))
    return rows(f)


def _lan(runs: int) -> list[str]:
    from bench.lan import measure, report, rows

    if os.geteuid() != 0:
        print("lan: needs root (it makes two network namespaces); skipped")
        return []
    f = measure(runs)
    print("\n".join(report(f)))
    return rows(f)


def _links(runs: int) -> list[str]:
    import shutil

    from bench.links import PICTURES, RATES, VIEWER, measure, measure_vnc, report, rows, vnc_rows

    if os.geteuid() != 0:
        print("links: needs root (it makes network namespaces with tbf bottlenecks); skipped")
        return []
    f = measure()
    print("\n".join(report(f)))
    if not (shutil.which("x11vnc") and shutil.which(VIEWER)):
        print("links: the anchor needs x11vnc and tigervnc-viewer (apt-get install); skipped")
        return rows(f)
    anchor = vnc_rows(f, measure_vnc(RATES, PICTURES))
    print("\n".join(anchor))
    return [*rows(f), "", *anchor]


def _viewers(runs: int) -> list[str]:
    from bench.viewers import measure, report, rows

    if os.geteuid() != 0:
        print("viewers: needs root (it makes network namespaces with a tbf bottleneck); skipped")
        return []
    f = measure()
    print("\n".join(report(f)))
    return rows(f)


def _signaling(runs: int) -> list[str]:
    from bench.signaling import measure, report, rows

    f = measure()
    print("\n".join(report(f)))
    return rows(f)


def _dashboard(runs: int) -> list[str]:
    from bench.dashboard import measure, report, rows

    f = asyncio.run(measure(10.0))
    print("\n".join(report(f)))
    return rows(f)


BENCHES = {
    "join": _join,
    "control": _control,
    "files": _files,
    "screen": _screen,
    "log": _log,
    "idle": _idle,
    "transfer": _transfer,
    "failover": _failover,
    "lan": _lan,
    "links": _links,
    "viewers": _viewers,
    "signaling": _signaling,
    "dashboard": _dashboard,
}


def main(which: list[str], *, runs: int = 20, record: str | None = None) -> int:
    if "all" in which:
        which = list(BENCHES)
    unknown = [w for w in which if w not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}")
        return 2
    if runs < 1 or runs > 10_000:
        print("--runs must be between 1 and 10000")
        return 2
    rows: list[str] = []
    for name in which:
        rows += BENCHES[name](runs)
    if record:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(record, "a", encoding="utf-8") as f:
            f.write(f"\n### {stamp} — peerdesk {__version__} — {machine()}\n\n")
            f.write("| figure | PeerDesk | baseline (same run) | ratio | runs |\n")
            f.write("|---|---|---|---|---|\n")
            f.write("\n".join(rows) + "\n")
        print(f"recorded in {record}")
    return 0
