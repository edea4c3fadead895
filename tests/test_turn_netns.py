"""TURN through a real coturn: two agents in network namespaces that cannot reach each
other, only coturn and the signaling server.

The test makes three namespaces: a router, where coturn and the signaling server run
and which forwards between the other two, and a and b, one agent each. With the drop
on, the router refuses to forward between a and b, so a direct ICE pair cannot work,
while both still reach the router. The signaling server mints coturn REST credentials
(``--turn-url --turn-secret``); the agents fetch them from ``/ice`` and the session
comes up over the relay, which the agents log as the selected ICE pair. Without the
drop, the same setup connects host to host. Everything the test creates (namespaces,
links, processes) is removed also when it fails; no traffic leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.procs import Proc

SECRET = "peerdesk-test-turn-secret-0123456789"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=15, check=check)


@dataclass(frozen=True)
class Net:
    router: str
    "Namespace of coturn and the signaling server; it routes between a and b."
    a: str
    b: str
    router_a: str
    "The router's address on a's link."
    router_b: str
    a_addr: str
    b_addr: str


@contextlib.contextmanager
def namespaces(*, drop_between: bool) -> Iterator[Net]:
    """Three namespaces made by the test: a and b, each linked by a veth pair to a
    router namespace that forwards between them. With ``drop_between`` the router
    refuses to forward anything from a to b or from b to a (``ip rule ... prohibit`` on
    the packets arriving from either link), while both still reach the router itself."""
    assert os.geteuid() == 0, "the netns test needs root (ip netns, veth)"
    assert shutil.which("ip"), "ip is missing: tests/run installs the Debian package iproute2"
    tag = f"{os.getpid() % 200 + 20}"
    router, ns_a, ns_b = f"pd7r{tag}", f"pd7a{tag}", f"pd7b{tag}"
    net = f"10.{tag}"
    made: list[str] = []

    def in_ns(ns: str, *args: str) -> None:
        sh("ip", "netns", "exec", ns, *args)

    try:
        for ns in (router, ns_a, ns_b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        for ns, side, sub in ((ns_a, "a", 1), (ns_b, "b", 2)):
            outer, inner = f"pd7{side}{tag}r", f"pd7{side}{tag}i"
            in_ns(router, "ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            in_ns(router, "ip", "link", "set", inner, "netns", ns)
            in_ns(router, "ip", "addr", "add", f"{net}.{sub}.1/24", "dev", outer)
            in_ns(router, "ip", "link", "set", outer, "up")
            in_ns(ns, "ip", "addr", "add", f"{net}.{sub}.2/24", "dev", inner)
            in_ns(ns, "ip", "link", "set", inner, "up")
            in_ns(ns, "ip", "route", "add", "default", "via", f"{net}.{sub}.1")
        # forwarding in the router namespace only (the sysctl is per namespace)
        in_ns(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        if drop_between:
            for side, other in (("a", 2), ("b", 1)):
                in_ns(
                    router,
                    *("ip", "rule", "add", "iif", f"pd7{side}{tag}r"),
                    *("to", f"{net}.{other}.0/24", "prohibit"),
                )
        yield Net(router, ns_a, ns_b, f"{net}.1.1", f"{net}.2.1", f"{net}.1.2", f"{net}.2.2")
    finally:
        for ns in reversed(made):  # deleting a namespace deletes its veth ends
            sh("ip", "netns", "del", ns, check=False)


def tcp_error(ns: str, host: str) -> str:
    """How a TCP connect from ``ns`` to port 9 of ``host`` fails (``ECONNREFUSED`` means
    the packet got there and was answered)."""
    code = (
        "import errno, socket\n"
        "s = socket.socket()\ns.settimeout(3)\n"
        f"try:\n    s.connect(({host!r}, 9))\nexcept OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, 'timeout'))\nelse:\n    print('connected')\n"
    )
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", code)
    return out.stdout.strip()


@contextlib.contextmanager
def coturn(
    ns: str, listen: list[str], relay: str, port: int, tmp: Path
) -> Iterator[subprocess.Popen[str]]:
    exe = shutil.which("turnserver")
    assert exe, "turnserver is missing: tests/run installs the Debian package coturn"
    log = tmp / "turn.log"
    proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", ns, exe),
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


def run_session(procs: list[Proc], tmp_path: Path, net: Net) -> list[tuple[str, ...]]:
    """A CSR in a and a customer in b through the headless CLI, chat both ways, with the
    signaling server and TURN in the router; returns the ICE pairs the agents log."""
    turn_url = f"turn:{net.router_a}:3478?transport=udp"
    server = Proc(
        [
            *("signaling", "--host", net.router_a, "--host", net.router_b, "--port", "0"),
            *("--turn-url", turn_url, "--turn-secret", SECRET, "--drain", "0"),
        ],
        name="signal",
        wrap=["ip", "netns", "exec", net.router],
    )
    procs.append(server)
    port = server.expect("listening", timeout=20)["port"]
    csr = Proc(
        [
            *("agent", "-v", "start", "--signal", f"ws://{net.router_a}:{port}"),
            *("--headless", "--json", "--name", "Carol"),
        ],
        home=tmp_path / "csr",
        name="csr",
        wrap=["ip", "netns", "exec", net.a],
    )
    procs.append(csr)
    code = csr.expect("session", timeout=30)["code"]
    customer = Proc(
        [
            *("agent", "-v", "join", code, "--signal", f"ws://{net.router_b}:{port}"),
            *("--headless", "--json", "--name", "Alice"),
        ],
        home=tmp_path / "alice",
        name="customer",
        wrap=["ip", "netns", "exec", net.b],
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
    with namespaces(drop_between=True) as net:
        assert tcp_error(net.a, net.b_addr) != "ECONNREFUSED"  # dropped on the way
        assert tcp_error(net.a, net.router_b) == "ECONNREFUSED"  # the router answers
        assert tcp_error(net.b, net.router_a) == "ECONNREFUSED"
        with coturn(net.router, [net.router_a, net.router_b], net.router_a, 3478, tmp_path):
            pairs = run_session(procs, tmp_path, net)
            assert all("relay" in pair for pair in pairs), pairs
            turn_log = (tmp_path / "turn.log").read_text()
            assert "ALLOCATE" in turn_log or "allocation" in turn_log.lower()


def test_agents_with_a_direct_path_do_not_use_the_relay(procs: list[Proc], tmp_path: Path) -> None:
    """The same three namespaces without the drop: TURN is offered but ICE finds the
    direct pair (routed through the router namespace) and uses it."""
    with namespaces(drop_between=False) as net:
        assert tcp_error(net.a, net.b_addr) == "ECONNREFUSED"  # b answers: a direct path
        with coturn(net.router, [net.router_a, net.router_b], net.router_a, 3478, tmp_path):
            pairs = run_session(procs, tmp_path, net)
            assert all(pair == ("host", "host") for pair in pairs), pairs
