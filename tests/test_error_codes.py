"""Every ``error`` code the agent can emit is documented in the README's table.

The codes are found in the source (``code="..."`` arguments and the ``code = "..."``
class attributes of ``agent.errors`` and friends, the handshake's rejection codes
and the server codes a joiner passes on), so a new code cannot land undocumented.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.protocol.signaling import JOINER_ERRORS, OTHER_SERVER_ERROR
from agent.session.handshake import _REJECT_ERRORS
from tests.test_misbehaving_server import documented_codes

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [*(ROOT / "agent").rglob("*.py"), *(ROOT / "tray").rglob("*.py")]
# codes in the source that are not error events: status values and wire tags
NOT_EVENTS = {"code"}


def source_codes() -> set[str]:
    found: set[str] = set()
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        found |= set(re.findall(r'\bcode="([a-z_]+)"', text))
        found |= set(re.findall(r'^    code = "([a-z_]+)"$', text, flags=re.MULTILINE))
    found |= {code for _, code in _REJECT_ERRORS.values()}
    found |= JOINER_ERRORS | {OTHER_SERVER_ERROR}
    return found - NOT_EVENTS


def test_every_error_code_is_documented() -> None:
    documented = documented_codes()
    assert len(documented) > 40
    missing = sorted(source_codes() - documented)
    assert not missing, f"error codes missing from the README's table: {missing}"


def test_the_table_documents_no_code_that_does_not_exist() -> None:
    stale = sorted(documented_codes() - source_codes())
    assert not stale, f"the README documents codes the agent never emits: {stale}"
