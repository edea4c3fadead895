"""What the customer's agent serves to the CSRs it is linked to, behind consent.

One ``CustomerServices`` per customer agent. It owns the consent core (the only
place a grant exists) and the control arbiter, and wires each capability's module:
screen (``agent.services.screen``), control (``agent.input``), files
(``agent.services.files``) and system information. Every decision is taken where it
takes effect: the injector is fed only what the arbiter passes, frames leave only
while ``view`` is granted, file requests are served only while a files grant lives.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import status
from agent.errors import DecodeError, LocalProtocolError, PeerDeskError, RemoteProtocolError
from agent.net.peer import PeerLink
from agent.protocol import channel as ch
from agent.protocol import control as ctl
from agent.session.consent import Change, Consent, State
from agent.session.control import ControlArbiter

if TYPE_CHECKING:
    from agent.services.record import SessionRecord

log = logging.getLogger(__name__)

Emit = Callable[[status.Status], None]


@dataclass(frozen=True)
class CustomerOptions:
    """How the customer's agent was started."""

    accept: frozenset[str] = frozenset()
    "Capabilities pre-granted to the CSR (``--accept``)."
    download_dir: Path | None = None
    "Where files from the CSR land (``--download-dir``)."
    share_dir: Path | None = None
    "The directory ``files_advanced`` exposes, unless a grant names another."
    monitor: int = 1
    "The monitor shared (1-based, as ``monitors`` lists them)."
    video_codec: str = "vp8"


class CustomerServices:
    """Consent, control, screen, files and system information for one customer agent."""

    def __init__(self, emit: Emit, options: CustomerOptions) -> None:
        self._emit = emit
        self.options = options
        self.consent = Consent(options.accept)
        self.arbiter = ControlArbiter()
        self._links: dict[str, PeerLink] = {}
        self._names: dict[str, str] = {}
        self._token_seq = 0
        self._token_epoch = 0
        self._injector: Any = None
        self._monitor_index = options.monitor
        self._tasks: set[asyncio.Task[Any]] = set()
        self.screen: Any = None
        "The shared screen (``agent.capture.EncodedScreen``), made at the first view grant."
        self._files: dict[str, Any] = {}
        "csr -> FileLink"
        self._share_dirs: dict[str, Path] = {}
        self.csrs: set[str] = set()
        "Peer ids of the session's CSRs (the primary and admitted assistants)."
        self._viewers: dict[str, PeerLink] = {}
        "csr -> link whose video sender carries the screen now"
        self._viewed: dict[str, Any] = {}
        "csr -> ``agent.services.link.ViewedLink``: the estimate of that viewer's link."
        self._screen_tracks: dict[str, Any] = {}
        "csr -> the ``PacketTrack`` its video sender sends (``EncodedScreen.fit`` names it)."
        self.record: SessionRecord | None = None
        "This agent's copy of the session log (the primary customer holds one)."
        self.me = ""
        "This agent's peer id (the runtime sets it)."
        from agent.session.adapt import ScreenMode

        self.screen_mode = ScreenMode.SHARP
        "How the screen spends a slow link (``set_screen_mode``)."

    # -- links

    def attach(self, csr: str, name: str, link: PeerLink, session_key: bytes) -> None:
        self._links[csr] = link
        self._names[csr] = name
        from agent.services.files import FileLink

        self._files[csr] = FileLink(
            csr,
            link,
            session_key,
            self.download_dir,
            _CustomerFilePolicy(self, csr),
            self._emit,
            screen_live=lambda: csr in self._viewers,
        )

    def attached(self, csr: str) -> bool:
        return csr in self._links

    @property
    def download_dir(self) -> Path:
        return self.options.download_dir or default_download_dir()

    def share_dir(self, csr: str) -> Path:
        return self._share_dirs.get(csr) or self.options.share_dir or self.download_dir

    def detach(self, csr: str, *, release: bool = True) -> None:
        """A CSR left or was lost: its grants end at once, held keys are released.

        ``release``: this CSR's link also carried others' input (the primary relays
        the assistants'), so whoever holds control loses it too. Without it, only
        control held by ``csr`` itself ends.
        """
        holder = self.arbiter.holder
        if holder is not None and (release or holder == csr):
            self._stop_input(self.arbiter.holder_lost(holder))
        self.consent.csr_left(csr)
        self._pump()
        self._links.pop(csr, None)
        self._stop_view(csr)
        files = self._files.pop(csr, None)
        if files is not None:
            self._spawn(files.close())

    async def close(self) -> None:
        self.consent.revoke("all")
        self._pump()
        if self._injector is not None:
            self._injector.release_all()
            await asyncio.to_thread(self._injector.close)
        for csr in list(self._viewers):
            self._stop_view(csr)
        if self.screen is not None:
            await self.screen.aclose()
            self.screen = None

    # -- from the CSR

    def on_main(self, csr: str, msg: ch.Message) -> bool:
        """Handle a session message meant for the services; False if it is not ours."""
        link = self._links.get(csr)
        if link is None:
            return True
        if isinstance(msg, ch.Request):
            try:
                self.consent.request(csr, msg.cap, time.monotonic(), msg.ref)
            except RemoteProtocolError as exc:
                link.send(ch.Refused(code=exc.code, message=exc.message))
            self._pump()
        elif isinstance(msg, ch.Transfer):
            try:
                self._transfer(csr, msg.to)
            except RemoteProtocolError as exc:
                link.send(ch.Refused(code=exc.code, message=exc.message))
        elif isinstance(msg, ch.Release):  # the CSR gives a grant back: ours to end
            if msg.cap == "control" and self.consent.allows(csr, "control"):
                self._stop_input(self.arbiter.revoke())  # input stops at once, as on Stop
            self.consent.revoke(msg.cap, csr, reason="released")
            self._pump()
        elif isinstance(msg, ch.Keyframe):
            if self.screen is not None and csr in self._viewers:
                self.screen.request_keyframe()
        elif isinstance(msg, ch.ScreenFeedback):
            if (viewed := self._viewed.get(csr)) is not None:
                viewed.on_feedback(msg)
        elif isinstance(msg, ch.ScreenModeMsg):
            if self.consent.allows(csr, "view"):
                self.set_screen_mode(msg.mode)
            else:
                link.send(ch.Refused(code="no_grant", message="view is not granted"))
        elif isinstance(msg, ch.SelectMonitor):
            if self.consent.allows(csr, "view"):
                self._select_monitor(msg.index)
            else:
                link.send(ch.Refused(code="no_grant", message="view is not granted"))
        else:
            return False
        return True

    def on_channel(self, csr: str, name: str, data: str | bytes) -> None:
        if name == "control":
            self._on_control(csr, data)
        elif name == "files" and (files := self._files.get(csr)) is not None:
            files.on_data(data)

    def _on_control(self, csr: str, data: str | bytes) -> None:
        try:
            relayed_from, event = ctl.decode_any(data)
        except DecodeError as exc:
            log.warning("dropped a control event from %s: %s", csr, exc.message)
            return
        sender = csr
        if relayed_from is not None:
            # An assistant's input, relayed by the primary CSR we verified at the join;
            # it counts only if that assistant is a CSR of this session.
            if not self.is_csr(relayed_from):
                log.warning("dropped input relayed for %s, who is not a CSR here", relayed_from)
                return
            sender = relayed_from
        self._inject(self.arbiter.receive(sender, event, time.monotonic()))

    def is_csr(self, pid: str) -> bool:
        """Whether ``pid`` is a CSR of this session (set by the runtime from the roster)."""
        return pid in self.csrs

    def _transfer(self, host: str, to: str) -> None:
        """The primary CSR passes control to ``to`` (an assistant, or back to itself).

        Allowed only while the customer's control grant to the session stands; the
        new holder gets a newer token, so the old holder's input in flight is dead.
        """
        if not self.consent.allows(host, "control"):
            raise RemoteProtocolError("control is not granted", code="no_grant")
        if to != host and not self.is_csr(to):
            raise RemoteProtocolError(f"{to} is not a CSR in this session", code="no_such_peer")
        self._stop_input(self.arbiter.transfer(to, self._next_token()))
        self._announce_control()

    # -- the customer's own commands

    def answer(self, rid: str, grant: bool, directory: str | None = None) -> None:
        if grant:
            if directory is not None:
                shared = Path(directory).expanduser()
                if not shared.is_dir():
                    raise LocalProtocolError(f"{directory} is not a directory")
            change = self.consent.grant(rid)
            if change.cap == "files_advanced" and directory is not None:
                self._share_dirs[change.csr] = shared.resolve()
        else:
            self.consent.deny(rid)
        self._pump()

    def revoke(self, cap: str) -> None:
        """Revoke ``cap`` or ``all`` from everyone; the injector stops at once."""
        if cap in ("all", "control"):
            self._stop_input(self.arbiter.revoke())
        self.consent.revoke(cap)
        self._pump()

    def answer_file(self, tid: str, take: bool) -> None:
        """Accept or reject an offered file, or a CSR's request for one of ours."""
        for files in self._files.values():
            if files.knows(tid):
                files.answer(tid, take)
                return
        raise LocalProtocolError(f'no file transfer "{tid[:20]}" waits for an answer')

    def monitors(self) -> list[dict[str, int]]:
        """The customer's monitors (blocking briefly: call from a thread where it matters)."""
        from agent.sysinfo import displays

        return displays()

    def select_monitor(self, index: int) -> None:
        self._select_monitor(index)

    def set_screen_mode(self, mode: str) -> None:
        """Spend a slow link on text (``sharp``) or motion (``smooth``); every viewer hears."""
        from agent.session.adapt import ScreenMode

        self.screen_mode = ScreenMode(mode)
        if self.screen is not None:
            self.screen.set_mode(self.screen_mode)
        for link in self._viewers.values():
            link.send(ch.ScreenModeMsg(mode=mode))
        self._emit(status.ScreenModeChanged(peer=self.me, mode=mode))

    def handle_timer(self, now: float) -> None:
        self.consent.handle_timer(now)
        self._pump()

    # -- consent changes take effect here

    def _pump(self) -> None:
        while (change := self.consent.next_event()) is not None:
            self._apply(change)
        paused = self.consent.input_paused
        if paused != self.arbiter.prompt_pending:
            releases = self.arbiter.set_prompt_pending(paused)
            if paused:  # nothing queued may land on the prompt
                self._stop_input(releases)

    def _apply(self, change: Change) -> None:
        csr, cap = change.csr, change.cap
        if change.state is State.PENDING:
            self._emit(
                status.ConsentRequest(
                    id=change.id, cap=cap, from_=csr, name=self._names.get(csr, csr)
                )
            )
        self._emit(
            status.ConsentChanged(
                id=change.id, cap=cap, state=change.state.value, peer=csr, reason=change.reason
            )
        )
        if self.record is not None:
            self.record.consent(change.id, cap, change.state.value, csr, change.reason)
        link = self._links.get(csr)
        if link is not None:
            link.send(
                ch.ConsentState(
                    id=change.id,
                    cap=cap,
                    state=change.state.value,
                    ref=change.ref,
                    reason=change.reason,
                )
            )
        granted = change.state is State.GRANTED
        ended = change.state in (State.REVOKED, State.DENIED)
        if cap == "control":
            if granted:
                self._grant_control(csr)
            elif ended and self.arbiter.holder is not None:
                # the grant covers whoever holds control now (the primary may have
                # passed it to an assistant): it ends for them too, at once
                self._stop_input(self.arbiter.revoke())
                self._announce_control()
        elif cap == "view":
            if granted and link is not None:
                self._start_view(csr, link)
            elif ended:
                self._stop_view(csr)
        elif cap == "sysinfo" and granted and link is not None:
            self._spawn(self._send_sysinfo(link))

    def _start_view(self, csr: str, link: PeerLink) -> None:
        from agent.capture import EncodedScreen, EncoderSettings
        from agent.capture.rtc import share

        if link.video_sender is None:
            return
        if self.screen is None:
            if not self.monitors():
                why = "there is no display to share on this machine"
                self._emit(status.Error(reason=why, code="no_display"))
                self.consent.revoke("view", csr, reason=why)
                return
            self.screen = EncodedScreen(
                monitor=self._monitor_index,
                settings=EncoderSettings(codec=self.options.video_codec),  # type: ignore[arg-type]
                adaptive=True,
            )
            self.screen.set_mode(self.screen_mode)
        from agent.services.link import ViewedLink

        self._viewers[csr] = link
        track = self._screen_tracks[csr] = self.screen.track()
        share(link.video_sender, track)
        if csr not in self._viewed:
            self._viewed[csr] = ViewedLink(link.video_sender, link.send, self._fit_screen)
        self._send_monitors(link)

    def _fit_screen(self) -> None:
        """The frames fit each viewer's link: one encode for viewers on alike links,
        fitted to the slowest of them that was found full, and one of its own for a
        viewer on a link much slower than the fastest (``EncodedScreen.fit``)."""
        if self.screen is None:
            return
        links = {
            track: viewed.target_bps if viewed.limited else None
            for csr, track in self._screen_tracks.items()
            if (viewed := self._viewed.get(csr)) is not None
        }
        if os.environ.get("PEERDESK_ONE_ENCODE"):  # the benchmark's baseline (bench.viewers)
            limited = [bps for bps in links.values() if bps is not None]
            self.screen.limit(min(limited) if limited else None)
            return
        self.screen.fit(links)

    def _stop_view(self, csr: str) -> None:
        """Frames stop at once: the sender's track is taken off on this machine."""
        from agent.capture.rtc import unshare

        link = self._viewers.pop(csr, None)
        self._screen_tracks.pop(csr, None)
        viewed = self._viewed.pop(csr, None)
        if viewed is not None:
            viewed.close()
            self._fit_screen()
        if link is not None and link.video_sender is not None:
            unshare(link.video_sender)

    def _grant_control(self, csr: str) -> None:
        if self._injector is None:
            try:
                self._injector = self._make_injector()
            except PeerDeskError as exc:
                self._emit(status.Error(reason=exc.message, code=exc.code))
                self.consent.revoke("control", csr, reason=exc.message)
                return
        self._inject(self.arbiter.transfer(csr, self._next_token()))
        self.arbiter.grant()
        self._announce_control()

    def _epoch(self) -> int:
        return self.record.core.epoch if self.record is not None else 0

    def _next_token(self) -> tuple[int, int]:
        """A control token (epoch, seq): the session log's epoch, so every token issued
        after a take-over is newer than any issued before it, and a counter within it."""
        epoch = self._epoch()
        if epoch != self._token_epoch:
            self._token_epoch, self._token_seq = epoch, 0
        self._token_seq += 1
        return (epoch, self._token_seq)

    def _announce_control(self) -> None:
        holder = self.arbiter.holder
        token = self.arbiter.token or (self._epoch(), self._token_seq)
        self._emit(status.ControlChanged(holder=holder, token=token))
        for link in self._links.values():
            link.send(ch.ControlState(holder=holder, token=token))

    def _make_injector(self) -> Any:
        from agent.input.injector import Injector, Monitor

        geometry = self._monitor_geometry()
        injector = Injector(
            Monitor(geometry["x"], geometry["y"], geometry["width"], geometry["height"])
        )
        injector.start()
        return injector

    def _monitor_geometry(self) -> dict[str, int]:
        items = self.monitors()
        if not items:
            raise LocalProtocolError("no display to control here", code="no_display")
        for item in items:
            if item["index"] == self._monitor_index:
                return item
        return items[0]

    def _select_monitor(self, index: int) -> None:
        items = self.monitors()
        if not any(m["index"] == index for m in items):
            raise LocalProtocolError(f"there is no monitor {index}; monitors: {len(items)}")
        self._monitor_index = index
        if self._injector is not None:
            from agent.input.injector import Monitor

            g = self._monitor_geometry()
            self._injector.set_monitor(Monitor(g["x"], g["y"], g["width"], g["height"]))
        if self.screen is not None:  # a new capture of the chosen monitor, same viewers
            old, self.screen = self.screen, None
            viewers = dict(self._viewers)
            for csr in viewers:
                self._stop_view(csr)
            old.close()
            for csr, link in viewers.items():
                self._start_view(csr, link)
        for csr, link in self._links.items():
            if self.consent.allows(csr, "view"):
                self._send_monitors(link)

    def _send_monitors(self, link: PeerLink) -> None:
        try:
            items = self.monitors()
        except Exception:  # no display: nothing to list
            items = []
        link.send(
            ch.Monitors(
                items=tuple(
                    ch.Monitor(m["index"], m["x"], m["y"], m["width"], m["height"]) for m in items
                ),
                current=self._monitor_index if items else 0,
            )
        )

    async def _send_sysinfo(self, link: PeerLink) -> None:
        from agent.sysinfo import collect

        data = await asyncio.to_thread(collect)
        link.send(ch.SysInfo(data=data))
        if self.record is not None:
            self.record.sysinfo(data)

    def _stop_input(self, releases: list[Any]) -> None:
        """Drop queued input at once, then release what is held."""
        if self._injector is not None:
            self._injector.cancel()
            self._injector.submit(*releases)

    def _inject(self, actions: list[Any]) -> None:
        if actions and self._injector is not None:
            self._injector.submit(*actions)
            if self.screen is not None:
                self.screen.poke()  # show the effect without waiting for the next tick

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def default_download_dir() -> Path:
    """Where received files land when no ``--download-dir`` was given."""
    import platformdirs

    return Path(platformdirs.user_downloads_dir()) / "PeerDesk"


class _CustomerFilePolicy:
    """File decisions on the customer's machine, from the consent grants of one CSR."""

    def __init__(self, services: CustomerServices, csr: str) -> None:
        self._s = services
        self._csr = csr

    def may_take(self, offer: Any) -> str | None:
        consent = self._s.consent
        if consent.allows(self._csr, "files") or consent.allows(self._csr, "files_advanced"):
            return None
        return "file transfer is not granted"

    def auto_accept(self, offer: Any) -> bool:
        return bool({"files", "files_advanced"} & self._s.options.accept)

    def serve_root(self, scope: str) -> Path | None:
        if scope == "browse" and self._s.consent.allows(self._csr, "files_advanced"):
            return self._s.share_dir(self._csr)
        return None

    def published(self) -> dict[str, Path]:
        return {}

    def ask_before_serving(self) -> bool:
        return "files_advanced" not in self._s.options.accept
