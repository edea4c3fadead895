"""TURN through a real coturn: two agents in network namespaces that cannot reach each
other, only coturn and the signaling server.

The test makes two namespaces, each joined to the root namespace by a veth pair. Each
namespace has a route to its own /24 and to one address of the root namespace (where
coturn and the signaling server listen) and nothing else: no route between them, so a
direct ICE pair cannot work. The signaling server mints coturn REST credentials
(``--turn-url --turn-secret``); the agents fetch them from ``/ice`` and the session
comes up over the relay, which the agents log as the selected ICE pair. Everything the
test creates (namespaces, links, processes) is removed also when it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc

SECRET = "peerdesk-test-turn-secret-0123456789"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=15, check=check)


@contextlib.contextmanager
def namespaces() -> Iterator[tuple[str, str, str, str, str]]:
    """(ns A, ns B, root address seen by A, root address seen by B, subnet tag)."""
    assert os.geteuid() == 0, "the netns test needs root (ip netns, veth)"
    assert shutil.which("ip"), "ip is missing: tests/run installs the Debian package iproute2"
    tag = f"{os.getpid() % 200 + 20}"
    ns_a, ns_b = f"pd7a{tag}", f"pd7b{tag}"
    net = f"10.{tag}"
    made: list[str] = []
    try:
        for ns, side, sub in ((ns_a, "a", 1), (ns_b, "b", 2)):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            outer, inner = f"pd7{side}{tag}o", f"pd7{side}{tag}i"
            sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            made.append(f"link:{outer}")
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "addr", "add", f"{net}.{sub}.1/24", "dev", outer)
            sh("ip", "link", "set", outer, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.{sub}.2/24", "dev", inner)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inner, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        # each side reaches the other side's root address (coturn listens on both), and
        # nothing of the other namespace
        sh("ip", "netns", "exec", ns_a, "ip", "route", "add", f"{net}.2.1/32", "via", f"{net}.1.1")
        sh("ip", "netns", "exec", ns_b, "ip", "route", "add", f"{net}.1.1/32", "via", f"{net}.2.1")
        yield ns_a, ns_b, f"{net}.1.1", f"{net}.2.1", net
    finally:
        for item in reversed(made):
            if item.startswith("link:"):
                sh("ip", "link", "del", item[5:], check=False)
            else:
                sh("ip", "netns", "del", item, check=False)


@contextlib.contextmanager
def coturn(listen: list[str], relay: str, port: int, tmp: Path) -> Iterator[subprocess.Popen[str]]:
    exe = shutil.which("turnserver")
    assert exe, "turnserver is missing: tests/run installs the Debian package coturn"
    log = tmp / "turn.log"
    proc = subprocess.Popen(
        [
            exe,
            "-n",
            *(f"--listening-ip={ip}" for ip in listen),
            f"--listening-port={port}",
            f"--relay-ip={relay}",
            "--min-port=49200",
            "--max-port=49400",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=peerdesk.test",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--no-multicast-peers",
            f"--pidfile={tmp / 'turn.pid'}",
            f"--log-file={log}",
            "--simple-log",
            "--verbose",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while "listener opened on" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, f"coturn exited: {log.read_text() if log.exists() else ''}"
            assert time.monotonic() < deadline, "coturn did not open its listener within 10 s"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def run_session(
    procs: list[Proc],
    tmp_path: Path,
    csr_ns: str,
    customer_ns: str,
    csr_root: str,
    customer_root: str,
    turn_url: str,
) -> list[tuple[str, ...]]:
    """A CSR and a customer through the headless CLI, chat both ways; the ICE pairs they log."""
    hosts = [x for root in dict.fromkeys([csr_root, customer_root]) for x in ("--host", root)]
    server = Proc(
        [
            *("signaling", *hosts, "--port", "0"),
            *("--turn-url", turn_url, "--turn-secret", SECRET, "--drain", "0"),
        ],
        name="signal",
    )
    procs.append(server)
    port = server.expect("listening", timeout=20)["port"]
    csr = Proc(
        [
            *("agent", "-v", "start", "--signal", f"ws://{csr_root}:{port}"),
            *("--headless", "--json", "--name", "Carol"),
        ],
        home=tmp_path / "csr",
        name="csr",
        prefix=["ip", "netns", "exec", csr_ns],
    )
    procs.append(csr)
    code = csr.expect("session", timeout=30)["code"]
    customer = Proc(
        [
            *("agent", "-v", "join", code, "--signal", f"ws://{customer_root}:{port}"),
            *("--headless", "--json", "--name", "Alice"),
        ],
        home=tmp_path / "alice",
        name="customer",
        prefix=["ip", "netns", "exec", customer_ns],
    )
    procs.append(customer)
    customer.expect("joined", timeout=45)
    csr.expect("joined", lambda e: e.get("name") == "Alice", timeout=15)
    customer.send({"cmd": "chat", "text": "hello"})
    assert csr.expect("chat", timeout=15)["text"] == "hello"
    csr.send({"cmd": "chat", "text": "heard you"})
    assert customer.expect("chat", timeout=15)["text"] == "heard you"
    assert any("ice_servers turn:" in line for line in customer.stderr), customer.stderr[-20:]
    pairs = [
        m.groups()
        for line in csr.stderr + customer.stderr
        for m in [re.search(r"ice_pair local=(\w+) remote=(\w+)", line)]
        if m
    ]
    assert pairs, "no agent logged its ICE pair:\n" + "".join(csr.stderr[-30:])
    csr.send({"cmd": "end"})
    assert csr.wait(15) == 0
    return pairs


def test_agents_that_cannot_reach_each_other_relay_through_coturn(
    procs: list[Proc], tmp_path: Path
) -> None:
    with namespaces() as (ns_a, ns_b, root_a, root_b, net):
        # no direct path: the kernel has no route from A to B
        unreachable = sh(
            "ip", "netns", "exec", ns_a, "ip", "route", "get", f"{net}.2.2", check=False
        )
        assert unreachable.returncode != 0, unreachable.stdout
        turn_port = 3478 + int(net.split(".")[1])
        with coturn([root_a, root_b], root_a, turn_port, tmp_path):
            turn_url = f"turn:{root_a}:{turn_port}?transport=udp"
            pairs = run_session(procs, tmp_path, ns_a, ns_b, root_a, root_b, turn_url)
            assert all("relay" in pair for pair in pairs), pairs
            turn_log = (tmp_path / "turn.log").read_text()
            assert "ALLOCATE" in turn_log or "allocation" in turn_log.lower()


def test_agents_with_a_direct_path_do_not_use_the_relay(procs: list[Proc], tmp_path: Path) -> None:
    """TURN is offered but only used when direct pairs fail: two agents in one namespace
    connect host to host."""
    with namespaces() as (ns_a, _ns_b, root_a, root_b, _net):
        turn_port = 3478 + int(_net.split(".")[1])
        with coturn([root_a, root_b], root_a, turn_port, tmp_path):
            turn_url = f"turn:{root_a}:{turn_port}?transport=udp"
            pairs = run_session(procs, tmp_path, ns_a, ns_a, root_a, root_a, turn_url)
            assert all(pair == ("host", "host") for pair in pairs), pairs
