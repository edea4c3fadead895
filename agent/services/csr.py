"""The CSR's side of the capabilities, one ``CsrServices`` per customer link.

It asks (``request``), remembers what the customer answered, holds the control
token the customer's agent issued, stamps input events with it, and keeps the
latest frame of the customer's screen. It never assumes a grant: the customer's
agent enforces every one, this side only avoids sending what would be dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import status
from agent.errors import LocalProtocolError
from agent.net.peer import PeerLink
from agent.protocol import channel as ch
from agent.protocol import control as ctl
from agent.protocol.commands import InputCommand
from agent.session.consent import AVAILABLE, CAPABILITIES

log = logging.getLogger(__name__)

Emit = Callable[[status.Status], None]
_refs = itertools.count(1)


class CsrServices:
    """What this CSR can do with one customer."""

    def __init__(self, me: str, customer: str, link: PeerLink, emit: Emit) -> None:
        self.me = me
        self.customer = customer
        self.link = link
        self._emit = emit
        self.grants: dict[str, str] = {}
        "capability -> state as the customer last reported it"
        self.token: tuple[int, int] | None = None
        self._seq = itertools.count(1)
        self.viewer: Any = None
        "The screen viewer, once the customer's video track arrived."
        self.feedback: Any = None
        "``agent.services.link.ViewerFeedback`` on that track's receiver."
        self.files: Any = None
        self.published: dict[str, Path] = {}
        "Files this CSR published to this customer, by name."

    def attach_files(self, session_key: bytes, download_dir: Path) -> None:
        from agent.services.files import FileLink

        self.files = FileLink(
            self.customer,
            self.link,
            session_key,
            download_dir,
            _CsrFilePolicy(self),
            self._emit,
            screen_live=self._viewing,
        )

    def _viewing(self) -> bool:
        """Whether the customer's screen is coming over this link now."""
        return self.viewer is not None and self.grants.get("view") == "granted"

    async def send_file(self, path: str) -> str:
        """Publish a local file to the customer and offer it (``files`` must be granted)."""
        self._need_any("files", "files_advanced")
        local = await asyncio.to_thread(_existing_file, path)
        files = self._files()
        self.published[local.name] = local
        tid: str = await files.send(local)
        return tid

    def browse(self, path: str) -> str:
        self._need("files_advanced")
        tid: str = self._files().browse(path)
        return tid

    def fetch(self, path: str, dest: Path) -> str:
        self._need("files_advanced")
        tid: str = self._files().fetch("browse", path, dest)
        return tid

    def _files(self) -> Any:
        if self.files is None:
            raise LocalProtocolError(
                "file transfer with this customer is not set up yet", code="not_available"
            )
        return self.files

    def _need_any(self, *caps: str) -> None:
        if not any(self.grants.get(cap) == "granted" for cap in caps):
            self._need(caps[0])

    # -- commands

    def request(self, cap: str) -> str:
        if cap not in CAPABILITIES:
            raise LocalProtocolError(
                f'unknown capability "{cap}"; capabilities: {", ".join(AVAILABLE)}',
                code="unknown_cap",
            )
        ref = f"q{next(_refs)}"
        self.link.send(ch.Request(cap=cap, ref=ref))
        return ref

    def release(self, cap: str) -> None:
        """Stop using ``cap``: the customer's agent ends the grant (and says so)."""
        if cap not in CAPABILITIES:
            raise LocalProtocolError(
                f'unknown capability "{cap}"; capabilities: {", ".join(AVAILABLE)}',
                code="unknown_cap",
            )
        if self.grants.get(cap) != "granted":
            raise LocalProtocolError(f"{cap} is not granted to you", code="no_grant")
        self.link.send(ch.Release(cap=cap))

    def keyframe(self) -> None:
        self.link.send(ch.Keyframe())

    def select_monitor(self, index: int) -> None:
        self._need("view")
        self.link.send(ch.SelectMonitor(index=index))

    def screen_mode(self, mode: str) -> None:
        """Ask the customer's agent to spend a slow link on text (sharp) or motion (smooth)."""
        self._need("view")
        self.link.send(ch.ScreenModeMsg(mode=mode))

    def input(self, cmd: InputCommand) -> None:
        """Send one pointer or keyboard command, stamped with our control token."""
        self._need("control")
        if self.token is None:
            raise LocalProtocolError(
                "control was granted but the customer's agent has not issued a token yet",
                code="no_token",
            )
        event = self._event(cmd, self.token, next(self._seq))
        if not self.link.send_raw("control", ctl.encode(event)):
            raise LocalProtocolError("the connection to the customer is not open")

    @staticmethod
    def _event(cmd: InputCommand, token: tuple[int, int], seq: int) -> ctl.ControlEvent:
        if cmd.kind in ("click", "move", "down", "up"):
            return ctl.Pointer(
                token=token,
                seq=seq,
                action=cmd.kind,
                x=cmd.x,
                y=cmd.y,
                button=None if cmd.kind == "move" else cmd.button,
            )
        if cmd.kind == "scroll":
            return ctl.Wheel(token=token, seq=seq, x=cmd.x, y=cmd.y, dx=cmd.dx, dy=cmd.dy)
        if cmd.kind == "key":
            if not ctl.is_key_name(cmd.key):
                raise LocalProtocolError(f'unknown key "{cmd.key}"')
            return ctl.Key(token=token, seq=seq, action=cmd.action, key=cmd.key)
        return ctl.Text(token=token, seq=seq, text=cmd.text)

    async def snapshot(self, path: str) -> status.SnapshotSaved:
        self._need("view")
        if self.viewer is None:
            raise LocalProtocolError("no video from the customer yet", code="no_video")
        if self.viewer.latest is None:
            try:
                await asyncio.wait_for(self.viewer.wait_frame(), 5.0)
            except TimeoutError:
                raise LocalProtocolError(
                    "no frame from the customer's screen yet", code="no_video"
                ) from None
        saved = await self.viewer.snapshot(path)
        frame = self.viewer.latest
        return status.SnapshotSaved(
            peer=self.customer, path=str(saved), width=frame.width, height=frame.height
        )

    def _need(self, cap: str) -> None:
        if self.grants.get(cap) != "granted":
            raise LocalProtocolError(
                f'"{cap}" is not granted by this customer: request it first',
                code="no_grant",
            )

    # -- from the customer

    def on_main(self, msg: ch.Message) -> bool:
        if isinstance(msg, ch.LinkReport):
            fps = self.viewer.fps(2.0) if self.viewer is not None else 0.0
            self._emit(
                status.Link(
                    peer=self.customer,
                    kbps=msg.kbps,
                    target_kbps=msg.target_kbps,
                    rtt_ms=msg.rtt_ms,
                    loss=msg.loss,
                    queue_ms=msg.queue_ms,
                    fps=round(fps, 1),
                )
            )
            return True
        if isinstance(msg, ch.ScreenModeMsg):
            self._emit(status.ScreenModeChanged(peer=self.customer, mode=msg.mode))
            return True
        if isinstance(msg, ch.ConsentState):
            self.grants[msg.cap] = msg.state
            if msg.cap == "control" and msg.state != "granted":
                self.token = None
            self._emit(
                status.ConsentChanged(
                    id=msg.id,
                    cap=msg.cap,
                    state=msg.state,
                    peer=self.customer,
                    reason=msg.reason,
                )
            )
        elif isinstance(msg, ch.ControlState):
            self.token = msg.token if msg.holder == self.me else None
            self._emit(status.ControlChanged(holder=msg.holder, token=msg.token))
        elif isinstance(msg, ch.SysInfo):
            self._emit(status.SysInfoReceived(peer=self.customer, data=msg.data))
        elif isinstance(msg, ch.Monitors):
            self._emit(
                status.MonitorsListed(
                    peer=self.customer,
                    items=tuple(vars(m) for m in msg.items),
                    current=msg.current,
                )
            )
        else:
            return False
        return True

    def on_channel(self, name: str, data: str | bytes) -> None:
        if name == "files" and self.files is not None:
            self.files.on_data(data)

    def on_track(self, track: Any) -> None:
        from agent.capture.viewer import ScreenViewer

        if track.kind == "video":
            self.viewer = ScreenViewer(track)
            self.viewer.start()
            receiver = next((r for r in self.link.pc.getReceivers() if r.track is track), None)
            if receiver is not None and self.feedback is None:
                from agent.services.link import ViewerFeedback

                self.feedback = ViewerFeedback(receiver, self.link.send)

    async def close(self) -> None:
        if self.feedback is not None:
            await self.feedback.close()
        if self.viewer is not None:
            await self.viewer.stop()
        if self.files is not None:
            await self.files.close()


class _CsrFilePolicy:
    """File decisions on the CSR's side: serve what was published, take what was asked."""

    def __init__(self, services: CsrServices) -> None:
        self._s = services

    def may_take(self, offer: Any) -> str | None:
        return "a customer cannot push files unasked; the CSR fetches them"

    def auto_accept(self, offer: Any) -> bool:
        return False

    def serve_root(self, scope: str) -> Path | None:
        return Path.home() if scope == "published" else None

    def published(self) -> dict[str, Path]:
        return dict(self._s.published)

    def ask_before_serving(self) -> bool:
        return False


def _existing_file(path: str) -> Path:
    local = Path(path).expanduser().resolve()
    if not local.is_file():
        raise LocalProtocolError(f"{path} is not a file", code="not_found")
    return local
