"""A prompt ICE ``connect()`` for aiortc, worked around in our code (no fork).

aioice paces connectivity checks with a fixed ``asyncio.sleep(0.02)`` (RFC 8445's Ta)
and only notices that the check list completed at the next tick. On loopback or a
LAN the checks finish in about 2 ms, so every connection waited about 20 ms more for
nothing: measured with aioice 0.13, ICE completed 2 ms after ``setRemoteDescription``
but ``connect()`` returned at 22 ms, out of a 27 ms bare connect.

``PromptConnection.connect`` is aioice's own algorithm with one change: it waits on
"the next tick *or* the check list's outcome", whichever comes first. Pacing of new
checks is unchanged. ``install()`` makes aiortc use it; if a future aioice lacks the
internals it relies on, ``install()`` leaves aioice alone and says so in the log.

``install()`` also quiets one aiortc race. ``setRemoteDescription`` starts the
transports in a task of aiortc's own that nobody awaits; when the connection is
closed while that task waits on the media transport's ICE or DTLS (someone left as
their link was forming), its next step raises ``InvalidStateError("RTCIceTransport is
closed")`` and asyncio prints "Task exception was never retrieved" with a traceback
on stderr. Measured on loopback: closing 3 or 6 ms after the answer is applied does
it every time. A failure after the connection was closed is the close's own
consequence: it is logged at debug level; any other failure still surfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import aioice
import aioice.ice
import aiortc.exceptions
import aiortc.rtcicetransport
import aiortc.rtcpeerconnection

log = logging.getLogger(__name__)

_STOCK = aioice.Connection
_NEEDED = ("_check_list", "_check_list_state", "_early_checks", "_check_periodic", "query_consent")


class PromptConnection(aioice.Connection):
    """aioice's Connection whose ``connect()`` returns as soon as ICE completes."""

    async def connect(self) -> None:
        self_: Any = self
        if not self_._local_candidates_end:
            raise ConnectionError("Local candidates gathering was not performed")
        if self_.remote_username is None or self_.remote_password is None:
            raise ConnectionError("Remote username or password is missing")
        for remote_candidate in self_._remote_candidates:
            self_._pair_remote_candidate(remote_candidate)
        self_.sort_check_list()
        self_._unfreeze_initial()
        for early_check in self_._early_checks:
            self_.check_incoming(*early_check)
        self_._early_checks.clear()
        self_._early_checks_done = True

        outcome: asyncio.Task[int] = asyncio.ensure_future(self_._check_list_state.get())
        try:
            while self_._check_periodic():
                await asyncio.wait({outcome}, timeout=0.02)
                if outcome.done():
                    break
            if outcome.done():
                res = outcome.result()
            elif self_._check_list:
                res = await outcome
            else:
                res = aioice.ice.ICE_FAILED
        finally:
            if not outcome.done():
                outcome.cancel()

        for check in self_._check_list:
            if check.task:
                check.task.cancel()
        if res != aioice.ice.ICE_COMPLETED:
            raise ConnectionError("ICE negotiation failed")
        self_._query_consent_task = asyncio.create_task(self_.query_consent())


_PC = aiortc.rtcpeerconnection.RTCPeerConnection
_STOCK_CONNECT = getattr(_PC, "_RTCPeerConnection__connect", None)


async def _connect_until_closed(pc: aiortc.RTCPeerConnection) -> None:
    """aiortc's own transport start-up, quiet about failures its close caused."""
    assert _STOCK_CONNECT is not None
    try:
        await _STOCK_CONNECT(pc)
    except aiortc.exceptions.InvalidStateError:
        if pc.connectionState != "closed":
            raise
        log.debug("connection closed while its transports started", exc_info=True)


def _compatible() -> bool:
    probe = _STOCK.__init__.__code__.co_names + _STOCK.connect.__code__.co_names
    return all(name in probe or hasattr(_STOCK, name) for name in _NEEDED) and hasattr(
        aioice.ice, "ICE_COMPLETED"
    )


def install() -> bool:
    """Make aiortc create ``PromptConnection``s and quiet its close race.

    Returns whether the prompt connect is in effect."""
    if _STOCK_CONNECT is not None:
        _PC._RTCPeerConnection__connect = _connect_until_closed  # type: ignore[attr-defined]
    else:
        log.warning(
            "aiortc %s differs from what PeerDesk expects: no close guard", aiortc.__version__
        )
    if not _compatible():
        log.warning(
            "aioice %s differs from what PeerDesk expects: stock ICE pacing kept",
            getattr(aioice, "__version__", "?"),
        )
        return False
    aiortc.rtcicetransport.Connection = PromptConnection  # type: ignore[attr-defined]
    return True


@contextlib.contextmanager
def stock() -> Iterator[None]:
    """Use aioice's stock Connection inside the block (for in-run baselines)."""
    saved = aiortc.rtcicetransport.Connection  # type: ignore[attr-defined]
    aiortc.rtcicetransport.Connection = _STOCK  # type: ignore[attr-defined]
    try:
        yield
    finally:
        aiortc.rtcicetransport.Connection = saved  # type: ignore[attr-defined]
