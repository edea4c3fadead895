"""Protocol cores stay sans-I/O: no asyncio, aiortc, aiohttp, mss or pynput in them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CORES = sorted(
    [*(ROOT / "agent" / "protocol").glob("*.py"), *(ROOT / "agent" / "session").glob("*.py")]
)
FORBIDDEN = {"asyncio", "aiortc", "aioice", "aiohttp", "mss", "pynput", "socket", "av", "zeroconf"}


@pytest.mark.parametrize("path", CORES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_does_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {imported & FORBIDDEN}"
    assert "agent.net" not in path.read_text() and "agent.runtime" not in path.read_text()


def test_signaling_server_shares_the_wire_definitions() -> None:
    source = (ROOT / "signaling" / "server.py").read_text()
    assert "agent.protocol" in source
