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
