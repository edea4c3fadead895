"""Fixtures every test module may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Child processes a test starts; killed at its end, last started first, also on failure."""
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.kill()
