"""Two network namespaces joined by a veth pair: a LAN of two machines, made by root.

Used by the LAN tests and ``peerdesk bench lan``. Nothing sent inside can leave:
the namespaces have no other interface and no route out. They are deleted on exit,
also when the body fails.

    with NetnsPair() as lan:
        subprocess.run([*lan.a.exec, "ip", "addr"])
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class Namespace:
    name: str
    veth: str
    ipv4: str | None
    ipv6: str | None

    @property
    def exec(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


class NetnsPair:
    """Namespaces ``a`` (10.77.0.1, fd77::1) and ``b`` (10.77.0.2, fd77::2) on one veth."""

    def __init__(self, *, ipv4: bool = True, ipv6: bool = True) -> None:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.a = Namespace(
            f"pd{tag}a", f"pv{tag}a", "10.77.0.1" if ipv4 else None, "fd77::1" if ipv6 else None
        )
        self.b = Namespace(
            f"pd{tag}b", f"pv{tag}b", "10.77.0.2" if ipv4 else None, "fd77::2" if ipv6 else None
        )
        self._made: list[str] = []

    def __enter__(self) -> NetnsPair:
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns.name)
                self._made.append(ns.name)
            _ip(
                "link", "add", self.a.veth, "netns", self.a.name,
                "type", "veth", "peer", "name", self.b.veth, "netns", self.b.name,
            )  # fmt: skip
            for ns in (self.a, self.b):
                _ip("-n", ns.name, "link", "set", "lo", "up")
                if ns.ipv4:
                    _ip("-n", ns.name, "addr", "add", f"{ns.ipv4}/24", "dev", ns.veth)
                if ns.ipv6:
                    v6 = f"{ns.ipv6}/64"
                    _ip("-n", ns.name, "-6", "addr", "add", v6, "dev", ns.veth, "nodad")
                _ip("-n", ns.name, "link", "set", ns.veth, "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete both namespaces (the veth pair goes with them)."""
        while self._made:
            name = self._made.pop()
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ShapedNamespace:
    """One namespace whose loopback is a slow link: ``tbf`` at ``rate`` with 300 ms of buffer.

    Every process run inside talks over ``lo`` (a veth pair inside gives aiortc host
    candidates, 10.78.0.1 and 10.78.0.2; traffic between local addresses still takes
    ``lo``), so everything between them crosses the bottleneck both ways. ``lo``'s
    MTU is set to 1500 first: at its 64 KiB MTU tbf drops TCP's large segments.

        with ShapedNamespace("2mbit") as ns:
            subprocess.run([*ns.exec, "ping", "-c1", "10.78.0.2"])
            ns.shape("8mbit")  # change the rate mid-way
    """

    def __init__(self, rate: str | None, *, buffer_ms: int = 300) -> None:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.name = f"pd{tag}s"
        self.rate = rate
        self.buffer_ms = buffer_ms
        self._made = False

    @property
    def exec(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def __enter__(self) -> ShapedNamespace:
        try:
            _ip("netns", "add", self.name)
            self._made = True
            n = self.name
            _ip("-n", n, "link", "set", "lo", "mtu", "1500")
            _ip("-n", n, "link", "set", "lo", "up")
            _ip("-n", n, "link", "add", "pdv0", "type", "veth", "peer", "name", "pdv1")
            for dev, addr in (("pdv0", "10.78.0.1/24"), ("pdv1", "10.78.0.2/24")):
                _ip("-n", n, "addr", "add", addr, "dev", dev)
                _ip("-n", n, "link", "set", dev, "up")
            if self.rate is not None:
                self.shape(self.rate)
        except BaseException:
            self.close()
            raise
        return self

    def shape(self, rate: str | None) -> None:
        """Set the bottleneck's rate (tc's syntax: "2mbit"); None takes the limit away."""
        self.rate = rate
        subprocess.run(
            [*self.exec, "tc", "qdisc", "del", "dev", "lo", "root"],
            capture_output=True,
            timeout=20,
        )
        if rate is not None:
            subprocess.run(
                [*self.exec, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                 "rate", rate, "burst", "20kb", "latency", f"{self.buffer_ms}ms"],
                check=True, capture_output=True, timeout=20,
            )  # fmt: skip

    def drops(self) -> int:
        """Packets the bottleneck dropped so far."""
        out = subprocess.run(
            [*self.exec, "tc", "-s", "qdisc", "show", "dev", "lo"],
            capture_output=True, text=True, timeout=20,
        ).stdout  # fmt: skip
        marker = "dropped "
        if marker not in out:
            return 0
        return int(out.split(marker, 1)[1].split(",", 1)[0])

    def sent_bytes(self) -> int:
        """Bytes the bottleneck has passed so far (both directions: all of it crosses ``lo``)."""
        out = subprocess.run(
            [*self.exec, "tc", "-s", "qdisc", "show", "dev", "lo"],
            capture_output=True, text=True, timeout=20,
        ).stdout  # fmt: skip
        marker = "Sent "
        if marker not in out:
            return 0
        return int(out.split(marker, 1)[1].split(" ", 1)[0])

    def close(self) -> None:
        """Delete the namespace (its links and qdisc go with it)."""
        if self._made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=20)
            self._made = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
