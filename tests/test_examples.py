"""Every example runs to completion, so none of them rots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def test_there_are_examples() -> None:
    assert EXAMPLES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    doc = path.read_text().split('"""')[1]
    assert f"Run: python examples/{path.name}" in doc, "each example says how to run it"
    result = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=path.parent.parent,
        env={**os.environ, "PEERDESK_HOME": str(tmp_path)},  # records stay out of ~
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
