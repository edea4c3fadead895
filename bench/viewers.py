"""Two viewers on different links: ``peerdesk bench viewers`` (needs root: namespaces).

    python -m bench.viewers                 # the slow viewer behind 1 Mbit/s
    python -m bench.viewers --rate 500kbit

Two network namespaces on a veth pair (``bench.netns.NetnsPair``): in A the
customer's agent and the primary CSR, who talk over A's own addresses (no
bottleneck); in B the assistant CSR, whose every packet crosses the veth, shaped
both ways with tbf at the rate given (300 ms of buffer). The customer's screen is an
Xvfb (1920x1080) with a page of 11 px text scrolling 3 px a frame at 20 Hz
(``bench.links.Scroller``). All three are real ``peerdesk`` processes.

The primary views alone first (``alone``), then the assistant views too (``beside``):
the figures are each viewer's decoded frames per second and kbit/s received, from
the ``link`` events their agents emit every 2 s. The run is made twice in the same
process: as PeerDesk does it (a slow viewer gets an encode of its own,
``adapt.split_lanes``) and with ``PEERDESK_ONE_ENCODE=1`` (one encode fitted to the
slowest viewer, as before), the baseline. What it shows is the primary's fps
beside the slow viewer as a share of its fps alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.child import Child
from bench.netns import NetnsPair

W, H = 1920, 1080
RATE = "1mbit"
SETTLE_S = float(os.environ.get("PEERDESK_VIEWERS_SETTLE_S", "8"))
"Seconds after a viewer's first frame before its figures count (the start's probing)."
MEASURE_S = float(os.environ.get("PEERDESK_VIEWERS_MEASURE_S", "8"))
"Seconds of ``link`` events each phase is measured over."


def _shape(lan: NetnsPair, rate: str) -> None:
    for ns in (lan.a, lan.b):
        subprocess.run(
            [*ns.exec, "tc", "qdisc", "add", "dev", ns.veth, "root", "tbf",
             "rate", rate, "burst", "20kb", "latency", "300ms"],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip


def _links(csr: Child, seconds: float) -> list[dict[str, Any]]:
    """The ``link`` events ``csr`` emits over the next ``seconds``."""
    out: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            out.append(csr.expect("link", timeout=left)[1])
        except TimeoutError:
            break
    return out


def _figures(events: list[dict[str, Any]]) -> dict[str, float | None]:
    if not events:
        return {"fps": None, "kbps": None, "target_kbps": None}
    return {
        "fps": statistics.mean(e["fps"] for e in events),
        "kbps": statistics.mean(e["kbps"] for e in events),
        "target_kbps": statistics.mean(e["target_kbps"] for e in events),
    }


def _view(csr: Child, customer: Child, who: str) -> None:
    """``csr`` asks the customer for the screen; the customer grants it."""
    csr.send({"cmd": "request", "cap": "view"})
    _, asked = customer.expect("request", lambda e: e["cap"] == "view" and e["from"] == who, 30)
    customer.send({"cmd": "grant", "id": asked["id"]})
    csr.expect("consent", lambda e: e["cap"] == "view" and e["state"] == "granted", 30)


def run_one(rate: str = RATE, *, one_encode: bool = False) -> dict[str, Any]:
    """One run: the primary alone, then beside a viewer behind ``rate``."""
    from agent.capture.xvfb import Xvfb
    from bench.links import Scroller

    home = Path(tempfile.mkdtemp(prefix="pd-viewers-"))
    errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read on failure, then closed)
    children: list[Child] = []

    def agent(ns_exec: list[str], name: str, *args: str, **env: str) -> Child:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PEERDESK_HOME": str(home / name),
            "PYTHONUNBUFFERED": "1",
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
            **env,
        }
        argv = [*ns_exec, sys.executable, "-m", "agent", *args, "--headless", "--json"]
        child = Child([*argv, "--name", name], env=env, stderr=errors)
        children.append(child)
        return child

    with NetnsPair(ipv6=False) as lan, Xvfb(W, H) as screen:
        _shape(lan, rate)
        drawer = Scroller(screen.display)
        drawer.paint_background()
        drawer.start()
        try:
            carol = agent(lan.a.exec, "Carol", "start", "--lan", "--port", "0")
            _, session = carol.expect("session", timeout=60)
            extra = {"PEERDESK_ONE_ENCODE": "1"} if one_encode else {}
            alice = agent(
                lan.a.exec, "Alice", "join", session["link"], DISPLAY=screen.display, **extra
            )
            alice.expect("joined", timeout=60)
            _view(carol, alice, session["me"])
            carol.expect("link", timeout=30)
            time.sleep(SETTLE_S)
            alone = _figures(_links(carol, MEASURE_S))

            dan = agent(
                lan.b.exec, "Dan", "join", session["csr_code"],
                "--signal", session["signal"], "--as", "assistant",
            )  # fmt: skip
            _, asked = carol.expect("assistant_request", timeout=60)
            carol.send({"cmd": "admit", "peer": asked["peer"]})
            dan.expect("direct", timeout=60)
            _view(dan, alice, asked["peer"])
            dan.expect("link", timeout=30)
            time.sleep(SETTLE_S)
            both = [_links(c, MEASURE_S) for c in (carol, dan)]
        except (RuntimeError, TimeoutError) as e:
            errors.seek(0)
            raise RuntimeError(f"{e}; the agents said:\n{errors.read()[-3000:]}") from e
        finally:
            for child in reversed(children):
                child.stop()
            drawer.stop()
            drawer.close()
            errors.close()
            shutil.rmtree(home, ignore_errors=True)
    return {
        "rate": rate,
        "one_encode": one_encode,
        "alone": alone,
        "fast": _figures(both[0]),
        "slow": _figures(both[1]),
    }


def measure(rate: str = RATE) -> list[dict[str, Any]]:
    """The baseline (one encode) and PeerDesk's way, in the same run."""
    return [run_one(rate, one_encode=True), run_one(rate)]


def _n(v: float | None, fmt: str = ".1f") -> str:
    return "—" if v is None else format(v, fmt)


def rows(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown rows for bench/RESULTS.md."""
    out = [
        "| encodes | primary alone: fps | primary beside the slow viewer: fps (÷ alone) "
        "| slow viewer: fps, kbit/s (its estimate) |",
        "|---|---|---|---|",
    ]
    for r in runs:
        alone, fast, slow = r["alone"]["fps"], r["fast"]["fps"], r["slow"]
        share = None if not alone or fast is None else fast / alone
        out.append(
            f"| {'one (baseline)' if r['one_encode'] else 'a lane per link'} | {_n(alone)} "
            f"| {_n(fast)} ({_n(share, '.2f')}) | {_n(slow['fps'])}, {_n(slow['kbps'], '.0f')} "
            f"({_n(slow['target_kbps'], '.0f')}) |"
        )
    return out


def report(runs: list[dict[str, Any]]) -> list[str]:
    """Lines for a person: each run's figures."""
    lines = [f"viewers: the primary on the customer's LAN, an assistant behind {runs[0]['rate']}"]
    return lines + rows(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.viewers", description=__doc__)
    parser.add_argument("--rate", default=RATE, help=f"the slow viewer's link (default {RATE})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("viewers: needs root (network namespaces)", file=sys.stderr)
        return 2
    print("\n".join(report(measure(args.rate))))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
