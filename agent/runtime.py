"""The runtime: wires signaling, the handshake core, aiortc peers and the roster.

It owns no policy of its own: the sans-I/O cores decide, this module moves bytes
between them and the network and reports ``agent.status`` values through one
``emit`` callback. ``CsrSession`` hosts a session; ``CustomerSession`` joins one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import agent.capture  # noqa: F401 - installs the prompt jitter buffer before any peer exists
from agent import status
from agent.errors import (
    LocalProtocolError,
    PeerDeskError,
    RemoteProtocolError,
)
from agent.identity import Identity
from agent.net.peer import PeerLink
from agent.net.signaling_client import SignalingClient, SignalingUnreachable
from agent.protocol import channel as ch
from agent.protocol import commands as cmds
from agent.protocol import control as ctl
from agent.protocol import signaling as sig
from agent.protocol.code import JoinLink, SessionCode
from agent.protocol.handshake import peer_id
from agent.protocol.wire import b64, b64d
from agent.services.csr import CsrServices
from agent.services.customer import CustomerOptions, CustomerServices, default_download_dir
from agent.services.record import SessionRecord
from agent.session import handshake as hsk
from agent.session.roster import Roster

log = logging.getLogger(__name__)

Emit = Callable[[status.Status], None]
CHANNEL_OPEN_TIMEOUT = 15.0


class _Outbox:
    """Sends signaling messages in order from one task."""

    def __init__(self, client: SignalingClient) -> None:
        self._client = client
        self._queue: asyncio.Queue[sig.ClientMessage] = asyncio.Queue()
        self._task = asyncio.ensure_future(self._run())

    def put(self, msg: sig.ClientMessage) -> None:
        self._queue.put_nowait(msg)

    async def _run(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._client.send(msg)
            except SignalingUnreachable as exc:
                log.warning("%s", exc.message)
                return
            finally:
                self._queue.task_done()

    async def drain(self, within: float = 2.0) -> None:
        """Wait (at most ``within`` seconds) until everything queued was sent."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), within)

    def cancel(self) -> None:
        self._task.cancel()


# --- the CSR's side ------------------------------------------------------------------


@dataclass
class _Member:
    link: PeerLink
    name: str
    role: str
    services: CsrServices


class CsrSession:
    """A session hosted by this agent (the primary CSR)."""

    def __init__(
        self, identity: Identity, signal_url: str, emit: Emit, *, download_dir: Path | None = None
    ) -> None:
        self.identity = identity
        self.download_dir = download_dir or default_download_dir()
        self.record: SessionRecord | None = None
        self.signal_url = signal_url
        self._emit = emit
        self.me = identity.peer_id
        self.roster = Roster(ch.Participant(self.me, identity.name, "csr", False))
        self._members: dict[str, _Member] = {}
        self._pending: dict[str, PeerLink] = {}
        self._early: dict[PeerLink, CsrServices] = {}
        self._byes: set[str] = set()
        self._all_byes = asyncio.Event()
        self.control_holder: str | None = None
        "Who holds control of the primary customer's machine, as the customer said."
        self._asking: dict[str, hsk.JoinRequest] = {}
        "Assistant CSRs who proved the CSR code, waiting for the primary's answer."
        self._history: list[ch.Chat] = []
        "Chat lines for everyone, replayed to an assistant who joins later."
        "Services of links whose channel is not open yet (a track may arrive first)."
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._client: SignalingClient | None = None
        self._outbox: _Outbox | None = None
        self._core: hsk.HostHandshake | None = None
        self.code: SessionCode | None = None
        self._ending = False

    async def start(self) -> SessionCode:
        """Open a room on the signaling server and make the session code."""
        self._client = await SignalingClient.connect(self.signal_url)
        await self._client.send(sig.Create())
        reply = await asyncio.wait_for(self._client.recv(), 10)
        if isinstance(reply, sig.Error):
            raise RemoteProtocolError(f"the signaling server refused a room: {reply.message}")
        if not isinstance(reply, sig.Created):
            raise RemoteProtocolError("the signaling server did not allocate a room")
        self.code = SessionCode.new(reply.room)
        self.csr_code = SessionCode.new(reply.room)
        while self.csr_code.secret == self.code.secret:
            self.csr_code = SessionCode.new(reply.room)
        self._core = hsk.HostHandshake(
            self.code,
            self.identity.key,
            self.identity.name,
            now=time.monotonic(),
            csr_secret=self.csr_code.secret,
            team=on_team,
        )
        try:
            self.record = SessionRecord(
                self.identity, reply.room, send=self._send_log, emit=self._emit
            )
            user_emit = self._emit
            record = self.record

            def emit(event: status.Status) -> None:
                user_emit(event)
                record.observe(event)

            self._emit = emit
        except (PeerDeskError, OSError) as exc:
            log.warning("this session will not be recorded: %s", exc)
        self._outbox = _Outbox(self._client)
        self._spawn(self._signal_loop())
        self._spawn(self._tick())
        link = JoinLink(self.code, self.signal_url)
        self._emit(
            status.SessionStarted(
                code=str(self.code),
                link=str(link),
                room=self.code.room,
                signal=self.signal_url,
                me=self.me,
                csr_code=str(self.csr_code),
            )
        )
        return self.code

    async def wait(self) -> int:
        """Until the session ends; returns the process exit status."""
        return await self._done

    # -- commands (the same API for headless, console, tray and dashboard)

    def chat(self, text: str, to: tuple[str, ...] | None = None) -> None:
        recipients = self.roster.recipients(self.me, to)
        msg = ch.Chat(text=text, to=to, sender=self.me, name=self.identity.name)
        if to is None:
            self._history.append(msg)
        if self.record is not None:
            self.record.chat(self.identity.name, text, to)
        for pid in recipients:
            member = self._members.get(pid)
            if member is not None:
                member.link.send(msg)

    def note(self, text: str) -> None:
        """A note in the session log, sealed so that only the CSRs can read it."""
        if self.record is None:
            raise LocalProtocolError("this session is not recorded", code="no_record")
        self.record.note(text)

    def make_primary(self, pid: str) -> None:
        """Make a secondary customer the primary one (the old primary becomes secondary,
        and the new one holds the session log and votes in its place)."""
        self.roster.make_primary(pid)
        member = self._members.get(pid)
        if self.record is not None and member is not None:
            self.record.write(
                "participant",
                {
                    "peer": pid,
                    "name": member.name,
                    "role": "customer",
                    "primary": True,
                    "action": "promoted",
                },
            )
        self._roster_changed()

    def admit(self, pid: str, admit: bool) -> None:
        """Answer an assistant CSR's request to join."""
        req = self._asking.pop(pid, None)
        if req is None:
            raise LocalProtocolError(
                f"nobody with id {pid} is waiting to join", code="no_such_peer"
            )
        if admit:
            self._spawn(self._admit(req))
        else:
            assert self._core is not None
            self._core.refuse(req.peer)
            self._pump()

    def services_for(self, to: str | None) -> CsrServices:
        """The customer a command is for: ``to``, or else the primary customer."""
        pid = to or self.roster.primary
        if pid is None:
            raise LocalProtocolError("no customer in the session yet", code="no_customer")
        member = self._members.get(pid)
        if member is None or member.role != "customer":
            raise LocalProtocolError(f"{pid} is not a customer in this session")
        return member.services

    def _dest(self, dest: str | None) -> Path:
        return Path(dest).expanduser() if dest else self.download_dir

    async def command(self, command: cmds.Command) -> None:
        """Carry out one command (headless, console, tray and dashboard all come here)."""
        if isinstance(command, cmds.ChatCommand):
            self.chat(command.text, command.to)
        elif isinstance(command, cmds.NoteCommand):
            self.note(command.text)
        elif isinstance(command, cmds.EndCommand):
            await self.end()
        elif isinstance(command, cmds.LeaveCommand):
            await self.leave()
        elif isinstance(command, cmds.MakePrimaryCommand):
            self.make_primary(command.peer)
        elif isinstance(command, cmds.AdmitCommand):
            self.admit(command.peer, command.admit)
        elif isinstance(command, cmds.TransferCommand):
            self.transfer_control(command.to)
        elif isinstance(command, cmds.RequestCommand):
            self.services_for(command.to).request(command.cap)
        elif isinstance(command, cmds.InputCommand):
            self.services_for(command.to).input(command)
        elif isinstance(command, cmds.SnapshotCommand):
            self._emit(await self.services_for(command.to).snapshot(command.path))
        elif isinstance(command, cmds.SimpleCommand):
            services = self.services_for(command.to)
            if command.name == "keyframe":
                services.keyframe()
            elif command.name == "sysinfo":
                services.request("sysinfo")
            else:
                services.request("view")  # monitors come with the view grant
        elif isinstance(command, cmds.MonitorCommand):
            self.services_for(command.to).select_monitor(command.index)
        elif isinstance(command, cmds.FileCommand) and command.kind == "send_file":
            await self.services_for(command.to).send_file(command.path)
        elif isinstance(command, cmds.FileCommand) and command.kind == "browse":
            self.services_for(command.to).browse(command.path)
        elif isinstance(command, cmds.FileCommand) and command.kind == "fetch":
            self.services_for(command.to).fetch(command.path, self._dest(command.dest))
        else:
            raise LocalProtocolError(f'"{command.cmd}" is a customer command', code="not_allowed")

    async def leave(self) -> None:
        raise LocalProtocolError("you are the only CSR in this session: end it instead of leaving")

    async def end(self, reason: str = "ended", *, force: bool = False) -> None:
        """End the session for everyone (not while an assistant holds control, unless
        ``force``: the agent is being stopped)."""
        if self._done.done() or self._ending:
            return
        holder = self.control_holder
        if holder is not None and holder != self.me and holder in self._members and not force:
            raise LocalProtocolError(
                f"control is with {self._members[holder].name}: take it back "
                f'({{"cmd":"transfer_control","to":"{self.me}"}}) before ending the session',
                code="control_elsewhere",
            )
        self._ending = True
        if self.record is not None:  # everyone's copy of the log gets the end first
            self.record.write("session_end", {"by": self.me, "reason": reason[:200]})
            await self.record.settle(1.0)
        self._byes = {
            pid for pid, m in self._members.items() if m.link.channel.readyState == "open"
        }
        self._all_byes.clear()
        for member in self._members.values():
            member.link.send(ch.End())
        if self._byes:
            # each agent answers End with Bye: then it has the End, and closing is safe
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_byes.wait(), 1.5)
        await self._flush_links(0.5)
        await self._shutdown()
        if self.record is not None:
            paths = await self.record.finish(reason, end=True)
            if paths is not None:
                self._emit(
                    status.ReportWritten(
                        id=self.record.session_id,
                        log=str(self.record.path),
                        json=str(paths[0]),
                        html=str(paths[1]),
                    )
                )
        self._emit(status.Ended(reason=reason))
        self._done.set_result(0)

    async def _flush_links(self, within: float) -> None:
        """Wait (bounded) until every link's queued messages went out, plus a short
        grace for SCTP to put them on the wire: closing first would drop them."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and any(  # noqa: ASYNC110 - aiortc has no "empty" event
            m.link.buffered("main") for m in self._members.values()
        ):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)

    async def _shutdown(self) -> None:
        if self._client is not None and self.code is not None and self._outbox is not None:
            self._outbox.put(sig.Close(room=self.code.room, reason="ended"))
            await self._outbox.drain()
        for task in list(self._tasks):
            task.cancel()
        links = [m.link for m in self._members.values()] + list(self._pending.values())
        await asyncio.gather(
            *(m.services.close() for m in self._members.values()), return_exceptions=True
        )
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        self._members.clear()
        if self._outbox is not None:
            self._outbox.cancel()
        if self._client is not None:
            await self._client.close()

    # -- signaling and handshake

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session task failed", exc_info=task.exception())

    async def _signal_loop(self) -> None:
        assert self._client is not None
        assert self._core is not None
        while True:
            msg = await self._client.recv()
            if msg is None:
                if not self._done.done():
                    self._emit(
                        status.Error(
                            reason="lost the signaling server: nobody new can join, "
                            "the session goes on for those in it",
                            code="signal_lost",
                        )
                    )
                return
            now = time.monotonic()
            if isinstance(msg, sig.Relay):
                self._core.receive(msg.sender, msg.data, now)
            elif isinstance(msg, sig.Gone):
                self._core.peer_gone(msg.peer)
            elif isinstance(msg, sig.Closed):
                self._emit(status.CodeClosed(reason=msg.reason))
            elif isinstance(msg, sig.Error):
                log.warning("signaling error: %s (%s)", msg.message, msg.code)
            self._pump()

    async def _tick(self) -> None:
        assert self._core is not None
        while True:
            await asyncio.sleep(1.0)
            self._core.handle_timer(time.monotonic())
            self._core.refill()
            self._pump()

    def _pump(self) -> None:
        core, outbox = self._core, self._outbox
        assert core is not None
        assert outbox is not None
        for peer, data in core.messages_to_send():
            outbox.put(sig.Send(to=peer, data=data))
        while (event := core.next_event()) is not None:
            if isinstance(event, hsk.JoinRequest) and event.role == "csr":
                pid = peer_id(event.key)
                self._asking[pid] = event
                self._emit(status.AssistantRequest(peer=pid, name=event.name, sas=event.sas))
            elif isinstance(event, hsk.JoinRequest):
                self._spawn(self._admit(event))
            elif isinstance(event, hsk.AttemptFailed):
                log.info("join attempt failed: %s", event.error.message)
                self._emit(
                    status.AttemptFailed(
                        reason=event.error.code,
                        message=event.error.message,
                        failures=event.failures,
                        remaining=event.remaining,
                    )
                )
            elif isinstance(event, hsk.CodeClosed):
                assert self.code is not None
                outbox.put(sig.Close(room=self.code.room, reason=event.reason))
                self._emit(status.CodeClosed(reason=event.reason))

    async def _admit(self, req: hsk.JoinRequest) -> None:
        pid = peer_id(req.key)
        link = PeerLink(
            on_message=lambda msg: self._on_message(pid, msg),
            on_lost=lambda why: self._on_lost(pid, link, why),
            on_channel=lambda name, data: self._on_channel(pid, name, data),
            on_track=lambda track: self._on_track(pid, track),
        )
        services = CsrServices(self.me, pid, link, self._emit)
        self._early[link] = services
        self._pending[req.peer] = link
        try:
            try:
                answer = await link.answer(req.offer)
            except PeerDeskError as exc:
                assert self._core is not None
                self._core.refuse(req.peer)
                self._pump()
                raise exc
            assert self._core is not None
            if not self._core.accept(req.peer, answer, time.monotonic()):
                raise RemoteProtocolError("the joiner went away or misbehaved during the join")
            self._pump()
            await asyncio.wait_for(asyncio.shield(link.opened), CHANNEL_OPEN_TIMEOUT)
        except (TimeoutError, PeerDeskError, asyncio.CancelledError) as exc:
            self._pending.pop(req.peer, None)
            self._early.pop(link, None)
            await link.close()
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = (
                exc.message
                if isinstance(exc, PeerDeskError)
                else "the secure connection did not open in time"
            )
            log.warning("join of %s failed after the handshake: %s", req.name, reason)
            self._emit(
                status.Error(
                    reason=f"{req.name} knew the code but could not connect: {reason}",
                    code="connect_failed",
                )
            )
            return
        self._pending.pop(req.peer, None)
        if self._core is not None:
            self._core.refill()  # the next joiner's SPAKE2 start, while nobody waits
        old = self._members.pop(pid, None)
        if old is not None:  # the same agent reconnected: the new link replaces the old
            await old.link.close()
        self._early.pop(link, None)
        services.attach_files(req.session_key, self.download_dir)
        self._members[pid] = _Member(link, req.name, req.role, services)
        person = self.roster.add(pid, req.name, req.role)
        if req.role == "csr":
            if self.record is not None and self.record.note_key is not None:
                link.send(ch.NoteKey(key=b64(self.record.note_key)))
            for line in self._history[-500:]:
                link.send(
                    ch.Chat(
                        text=line.text, to=None, sender=line.sender, name=line.name, history=True
                    )
                )
        self._emit(
            status.Joined(
                peer=pid,
                role=req.role,
                name=req.name,
                sas=req.sas,
                me=self.me,
                primary=person.primary,
            )
        )
        self._roster_changed()

    # -- the session's channels

    def _on_message(self, pid: str, msg: ch.Message) -> None:
        member = self._members.get(pid)
        if member is None:
            return
        if member.role == "customer" and member.services.on_main(msg):
            if isinstance(msg, ch.ControlState):  # the assistants learn it through us
                self.control_holder = msg.holder
                for other in self._members.values():
                    if other.role == "csr":
                        other.link.send(msg)
            return
        if isinstance(msg, ch.Sdp):
            self._relay_sdp(pid, member, msg)
        elif isinstance(msg, ch.Transfer) and member.role == "csr":
            self._assistant_transfer(pid, msg.to)
        elif isinstance(msg, ch.Chat):
            self._relay_chat(pid, member, msg)
        elif isinstance(msg, ch.Bye) and self._ending:
            self._byes.discard(pid)
            if not self._byes:
                self._all_byes.set()
        elif isinstance(msg, ch.Bye):
            self._drop(pid, "left")
        elif isinstance(msg, ch.End):
            member.link.send(
                ch.Refused(code="not_allowed", message="only a CSR can end the session")
            )
        elif isinstance(msg, ch.Refused):
            self._emit(status.Error(reason=f"{member.name}: {msg.message}", code=msg.code))
        else:
            log.info("ignored %s from %s", msg.type, member.name)

    def _relay_chat(self, pid: str, member: _Member, msg: ch.Chat) -> None:
        try:
            recipients = self.roster.recipients(pid, msg.to)
        except LocalProtocolError as exc:
            member.link.send(ch.Refused(code="unknown_recipient", message=exc.message))
            return
        relayed = ch.Chat(text=msg.text, to=msg.to, sender=pid, name=member.name)
        if msg.to is None:
            self._history.append(relayed)
        for rid in recipients:
            if rid == self.me:
                self._emit(
                    status.ChatReceived(from_=pid, name=member.name, text=msg.text, to=msg.to)
                )
            elif (other := self._members.get(rid)) is not None:
                other.link.send(relayed)

    def _on_channel(self, pid: str, name: str, data: str | bytes) -> None:
        member = self._members.get(pid)
        if member is None:
            return
        if name == "log":
            if self.record is not None and self._holds_log(pid):
                self.record.receive(pid, data)
            return
        if member.role == "csr" and name == "control":
            # an assistant's input, untouched, to the customer, who judges it as theirs
            if isinstance(data, str) and self.roster.primary is not None:
                customer = self._members.get(self.roster.primary)
                if customer is not None:
                    customer.link.send_raw("control", ctl.encode_relayed(pid, data))
            return
        member.services.on_channel(name, data)

    def _holds_log(self, pid: str) -> bool:
        """Assistants and the primary customer hold the session log (and vote)."""
        member = self._members.get(pid)
        return member is not None and (member.role == "csr" or pid == self.roster.primary)

    def _send_log(self, peer: str, text: str) -> None:
        member = self._members.get(peer)
        if member is not None and self._holds_log(peer):
            member.link.send_raw("log", text)

    def _relay_sdp(self, pid: str, member: _Member, msg: ch.Sdp) -> None:
        """Introduce an assistant and the primary customer: pass their SDP, naming the
        sender. Only between those two roles; anything else is refused."""
        other = self._members.get(msg.peer)
        primary = self.roster.primary
        allowed = other is not None and (
            (member.role == "csr" and msg.peer == primary)
            or (pid == primary and other.role == "csr")
        )
        if other is None or not allowed:
            member.link.send(ch.Refused(code="not_allowed", message="no such introduction"))
            return
        other.link.send(ch.Sdp(peer=pid, kind=msg.kind, sdp=msg.sdp))

    def transfer_control(self, to: str) -> None:
        """Pass control to an assistant CSR, or take it back (``to`` = our own id)."""
        if to != self.me:
            member = self._members.get(to)
            if member is None or member.role != "csr":
                raise LocalProtocolError(f"{to} is not an assistant CSR in this session")
        services = self.services_for(None)
        if services.grants.get("control") != "granted":
            raise LocalProtocolError(
                "the customer has not granted control: request it first", code="no_grant"
            )
        services.link.send(ch.Transfer(to=to))

    def _assistant_transfer(self, pid: str, to: str) -> None:
        if self.control_holder != pid:
            self._members[pid].link.send(
                ch.Refused(code="not_holder", message="only the CSR holding control can pass it")
            )
            return
        try:
            self.transfer_control(to)
        except LocalProtocolError as exc:
            self._members[pid].link.send(ch.Refused(code=exc.code, message=exc.message))

    def _on_track(self, pid: str, track: Any) -> None:
        member = self._members.get(pid)
        services = member.services if member is not None else None
        if services is None:
            services = next((s for s in self._early.values() if s.customer == pid), None)
        if services is not None:
            services.on_track(track)

    def _on_lost(self, pid: str, link: PeerLink, why: str) -> None:
        member = self._members.get(pid)
        if member is not None and member.link is link and not self._ending:
            self._drop(pid, "lost")

    def _drop(self, pid: str, reason: str) -> None:
        member = self._members.pop(pid, None)
        if member is None:
            return
        self.roster.remove(pid)
        if pid == self.control_holder and not self._ending:
            with contextlib.suppress(LocalProtocolError):  # control comes back to us
                self.transfer_control(self.me)
        self._spawn(member.services.close())
        self._spawn(member.link.close())
        self._emit(status.Left(peer=pid, reason=reason))
        self._roster_changed()

    def _roster_changed(self) -> None:
        people = self.roster.snapshot()
        self._emit(status.RosterChanged(participants=tuple(vars(p) for p in people)))
        for member in self._members.values():
            member.link.send(ch.Roster(participants=people))


# --- the customer's side --------------------------------------------------------------


class CustomerSession:
    """This agent joining a session with a code."""

    def __init__(
        self,
        identity: Identity,
        link: JoinLink,
        signal_url: str,
        emit: Emit,
        *,
        role: str = "customer",
        timeout: float = hsk.JOIN_TIMEOUT,
        options: CustomerOptions | None = None,
    ) -> None:
        self.identity = identity
        self.code = link.code
        self.signal_url = signal_url
        self.role = role
        self.me = identity.peer_id
        self._user_emit = emit
        self._timeout = timeout
        self._link: PeerLink | None = None
        self.host: str | None = None
        self._host_name = ""
        self._known: dict[str, ch.Participant] = {}
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._leaving = False
        self.direct: dict[str, PeerLink] = {}
        self.acting: CsrServices | None = None
        """An assistant's services towards the primary customer over their direct link
        (view, system information; everything once it leads)."""
        self.leading = False
        "An assistant that took over after the primary was lost."
        self._early_offer: ch.Sdp | None = None
        self._host_lost_at: float | None = None
        self.record: SessionRecord | None = None
        "This agent's copy of the session log (assistants and the primary customer)."
        self._direct_tasks: set[asyncio.Task[None]] = set()
        self._control: tuple[str | None, tuple[int, int]] | None = None
        self._input_seq = 0
        self._session_key = b""
        self._tick_task: asyncio.Task[None] | None = None
        self.services = CustomerServices(self._emit, options or CustomerOptions())
        self._closing: asyncio.Future[None] | None = None
        self._finishing = False
        self._announced = False
        self._sas = ""

    async def join(self) -> None:
        """Run the join; raises a ``PeerDeskError`` that says why it failed."""
        link = PeerLink(
            on_message=self._on_message,
            on_lost=lambda why: self._link_lost(link, why),
            on_channel=self._on_channel,
            screen_codec=self.services.options.video_codec if self.role == "customer" else None,
        )
        self._link = link
        try:
            await self._handshake(link)
            await asyncio.wait_for(asyncio.shield(link.opened), CHANNEL_OPEN_TIMEOUT)
        except TimeoutError:
            await link.close()
            raise RemoteProtocolError(
                "the secure connection to the CSR could not be set up (no network path?)",
                code="connect_failed",
            ) from None
        except BaseException:
            await link.close()
            raise
        assert self.host is not None
        if self.role == "customer":
            self.services.attach(self.host, self._host_name, link, self._session_key)
        else:
            self._start_record()
        self._tick_task = asyncio.ensure_future(self._tick())
        self.announce()

    # -- the session log (an assistant's and the primary customer's copy)

    def _emit(self, event: status.Status) -> None:
        self._user_emit(event)
        if self.record is not None:
            self.record.observe(event)

    def _start_record(self) -> None:
        if self.record is not None or self.host is None:
            return
        try:
            self.record = SessionRecord(
                self.identity,
                self.code.room,
                send=self._send_log,
                emit=self._emit,
                primary=self.host,
                role=self.role,
                on_epoch=self._on_epoch,
            )
        except PeerDeskError as exc:
            log.warning("no copy of the session log here: %s", exc.message)
            return
        if self.role == "customer":
            self.services.record = self.record
        self.record.sync()

    def _send_log(self, peer: str, text: str) -> None:
        link = self.direct.get(peer) or (self._link if peer == self.host else None)
        if link is not None:
            link.send_raw("log", text)

    def _on_epoch(self, epoch: int, sequencer: str) -> None:
        """The log has a new sequencer: after a take-over, the session follows it."""
        if sequencer == self.me and self.role == "csr" and self._host_lost_at is not None:
            self._took_over()
        elif self.role == "customer" and sequencer != self.host and sequencer in self.direct:
            self._follow(sequencer)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.services.handle_timer(time.monotonic())

    async def _handshake(self, link: PeerLink) -> None:
        offer_task = asyncio.ensure_future(link.offer())
        # SPAKE2's first scalar multiplications run in a thread while we connect.
        core_task = asyncio.ensure_future(
            asyncio.to_thread(
                hsk.JoinerHandshake,
                self.code,
                self.role,
                self.identity.key,
                self.identity.name,
                now=time.monotonic(),
                timeout=self._timeout,
                team=on_team,
            )
        )
        try:
            client = await SignalingClient.connect(self.signal_url)
        except BaseException:
            offer_task.cancel()
            core_task.cancel()
            raise
        core = await core_task
        outbox = _Outbox(client)
        recv_task: asyncio.Task[sig.ServerMessage | None] | None = None
        offered = False
        try:
            outbox.put(sig.Join(room=self.code.room))
            core.start()
            while True:
                for data in core.messages_to_send():
                    outbox.put(sig.Send(to=sig.HOST, data=data))
                event = core.next_event()
                if isinstance(event, hsk.JoinFailed):
                    raise event.error
                if isinstance(event, hsk.Admitted):
                    await link.complete(event.answer)
                    self.host = peer_id(event.key)
                    self._host_name = event.name
                    self._sas = event.sas
                    self._session_key = event.session_key
                    return
                if recv_task is None:
                    recv_task = asyncio.ensure_future(client.recv())
                waits: set[asyncio.Future[object]] = {recv_task}  # type: ignore[arg-type]
                if not offer_task.done():
                    waits.add(offer_task)  # type: ignore[arg-type]
                deadline = core.get_timer()
                timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if offer_task.done() and not offered:
                    offered = True
                    core.set_offer(offer_task.result())
                if recv_task.done():
                    msg = recv_task.result()
                    recv_task = None
                    self._on_signal(core, msg)
                core.handle_timer(time.monotonic())
        finally:
            if recv_task is not None:
                recv_task.cancel()
            if not offer_task.done():
                offer_task.cancel()
            self._closing = asyncio.ensure_future(self._close_signaling(outbox, client))

    @staticmethod
    async def _close_signaling(outbox: _Outbox, client: SignalingClient) -> None:
        """Off the join's path: the customer needs signaling no more once admitted."""
        await outbox.drain(0.5)
        outbox.cancel()
        await client.close()

    def _on_signal(self, core: hsk.JoinerHandshake, msg: sig.ServerMessage | None) -> None:
        now = time.monotonic()
        if msg is None:
            raise SignalingUnreachable("the signaling server closed the connection during the join")
        if isinstance(msg, sig.Relay) and msg.sender == sig.HOST:
            core.receive(msg.data, now)
        elif isinstance(msg, sig.Error):
            if msg.code == "room_not_found":
                raise LocalProtocolError(
                    f"no session {self.code.room} on {self.signal_url}: check the code "
                    "(it may have expired or ended)",
                    code="no_such_session",
                )
            raise RemoteProtocolError(f"the signaling server said: {msg.message}", code=msg.code)
        elif isinstance(msg, sig.Gone | sig.Closed):
            raise RemoteProtocolError(
                "the session host went away before we could join", code="host_gone"
            )

    def announce(self) -> None:
        """Report the admitted join (once; ``join`` and the first channel message call it)."""
        if self._announced or self.host is None:
            return
        self._announced = True
        self._emit(
            status.Joined(
                peer=self.host,
                role="csr",
                name=self._host_name,
                sas=self._sas,
                me=self.me,
                primary=True,
            )
        )

    async def wait(self) -> int:
        return await self._done

    # -- commands

    def chat(self, text: str, to: tuple[str, ...] | None = None) -> None:
        assert self._link is not None
        if self.record is not None:
            self.record.chat(self.identity.name, text, to)
        if self.leading:  # we lead now: our lines are ours, not relayed
            self._link.send(ch.Chat(text=text, to=None, sender=self.me, name=self.identity.name))
            return
        self._link.send(ch.Chat(text=text, to=to))

    def make_primary(self, pid: str) -> None:
        raise LocalProtocolError("only a CSR can choose the primary customer")

    async def command(self, command: cmds.Command) -> None:
        """Carry out one command (headless, console, tray and dashboard all come here)."""
        if isinstance(command, cmds.ChatCommand):
            self.chat(command.text, command.to)
        elif isinstance(command, cmds.LeaveCommand):
            await self.leave()
        elif isinstance(command, cmds.EndCommand):
            await self.end()
        elif isinstance(command, cmds.NoteCommand) and self.role == "csr":
            if self.record is None:
                raise LocalProtocolError("this agent keeps no session log", code="no_record")
            self.record.note(command.text)
        elif self.role == "csr" and self.leading:
            await self._lead_command(command)
        elif self.role == "csr" and not await self._direct_command(command):
            self._assistant_command(command)
        elif isinstance(command, cmds.AnswerCommand):
            self.services.answer(command.id, command.grant, command.dir)
        elif isinstance(command, cmds.RevokeCommand):
            self.services.revoke(command.cap)
        elif isinstance(command, cmds.SimpleCommand) and command.name == "monitors":
            items = await asyncio.to_thread(self.services.monitors)
            self._emit(
                status.MonitorsListed(
                    peer=self.me, items=tuple(items), current=self.services.options.monitor
                )
            )
        elif isinstance(command, cmds.MonitorCommand):
            self.services.select_monitor(command.index)
        elif isinstance(command, cmds.FileCommand) and command.kind in (
            "accept_file",
            "reject_file",
        ):
            self.services.answer_file(command.id, command.kind == "accept_file")
        else:
            raise LocalProtocolError(f'"{command.cmd}" is a CSR command', code="not_allowed")

    async def leave(self) -> None:
        if self._done.done() or self._link is None or self._leaving:
            return
        self._leaving = True
        await self._stop_services()
        for direct in list(self.direct.values()):
            await direct.close()
        self._link.send(ch.Bye())
        await asyncio.sleep(0.05)
        await self._link.close()
        self._emit(status.Left(peer=self.me, reason="left"))
        await self._write_report("left")
        self._done.set_result(0)

    async def end(self, reason: str = "ended") -> None:
        if self.leading and self._link is not None:  # we lead since a take-over
            self._leaving = True  # the customer closing its end is no loss now
            if self.record is not None:  # the customer's copy gets the end first
                self.record.write("session_end", {"by": self.me, "reason": reason[:200]})
                await self.record.settle(1.0)
            self._link.send(ch.End())
            await asyncio.sleep(0.2)
            self._finish(status.Ended(reason=reason), 0)
            return
        who = "an assistant CSR" if self.role == "csr" else "a customer"
        raise LocalProtocolError(f"{who} cannot end the session, only leave it", code="not_allowed")

    # -- channel

    async def _lead_command(self, command: cmds.Command) -> None:
        """An assistant that took over serves the customer as the primary did."""
        acting = self.acting
        assert acting is not None
        if isinstance(command, cmds.RequestCommand):
            acting.request(command.cap)
        elif isinstance(command, cmds.InputCommand):
            acting.input(command)
        elif not await self._direct_command(command):
            raise LocalProtocolError(
                f'"{command.cmd}" is not available after a take-over yet', code="not_available"
            )

    def _dest(self, dest: str | None) -> Path:
        return Path(dest).expanduser() if dest else self.services.download_dir

    async def _direct_command(self, command: cmds.Command) -> bool:
        """What an assistant asks of the customer itself, over their direct link: the
        screen, files and system information, which the customer grants it by name
        (control comes from the primary, by transfer)."""
        acting = self.acting
        if acting is None:
            if isinstance(
                command,
                cmds.RequestCommand | cmds.SnapshotCommand | cmds.SimpleCommand | cmds.FileCommand,
            ):
                raise LocalProtocolError(
                    "no direct link with the customer yet", code="no_direct_link"
                )
            return False
        if isinstance(command, cmds.RequestCommand) and command.cap != "control":
            acting.request(command.cap)  # control comes from the primary, by transfer
        elif isinstance(command, cmds.SnapshotCommand):
            self._emit(await acting.snapshot(command.path))
        elif isinstance(command, cmds.SimpleCommand):
            if command.name == "keyframe":
                acting.keyframe()
            else:
                acting.request("sysinfo" if command.name == "sysinfo" else "view")
        elif isinstance(command, cmds.MonitorCommand):
            acting.select_monitor(command.index)
        elif isinstance(command, cmds.FileCommand) and command.kind == "send_file":
            await acting.send_file(command.path)
        elif isinstance(command, cmds.FileCommand) and command.kind == "browse":
            acting.browse(command.path)
        elif isinstance(command, cmds.FileCommand) and command.kind == "fetch":
            acting.fetch(command.path, self._dest(command.dest))
        else:
            return False
        return True

    def _assistant_command(self, command: cmds.Command) -> None:
        """An assistant CSR: input while it holds control, and passing control on."""
        assert self._link is not None
        if isinstance(command, cmds.TransferCommand):
            self._link.send(ch.Transfer(to=command.to))
        elif isinstance(command, cmds.InputCommand):
            if self._control is None or self._control[0] != self.me:
                raise LocalProtocolError(
                    "you do not hold control: the primary CSR transfers it to you",
                    code="no_token",
                )
            self._input_seq += 1
            event = CsrServices._event(command, self._control[1], self._input_seq)
            direct = next(iter(self.direct.values()), None)
            if direct is None or not direct.send_raw("control", ctl.encode(event)):
                self._link.send_raw("control", ctl.encode(event))  # relayed by the primary
        else:
            raise LocalProtocolError(
                f'"{command.cmd}" is for the primary CSR or the customer', code="not_allowed"
            )

    async def _stop_services(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
        if self.acting is not None:
            await self.acting.close()
        if self.host is not None:
            self.services.detach(self.host)
        await self.services.close()

    def _on_channel(self, name: str, data: str | bytes) -> None:
        if self.host is None:
            return
        if name == "log":
            if self.record is not None:
                self.record.receive(self.host, data)
            return
        self.services.on_channel(self.host, name, data)

    def _on_message(self, msg: ch.Message) -> None:
        self.announce()
        if isinstance(msg, ch.Sdp):
            self._spawn_direct(self._on_sdp(msg))
            return
        if (
            self.role == "customer"
            and self.host is not None
            and self.services.on_main(self.host, msg)
        ):
            return
        if isinstance(msg, ch.Chat):
            sender = msg.sender or self.host or ""
            self._emit(
                status.ChatReceived(
                    from_=sender,
                    name=msg.name or self._host_name,
                    text=msg.text,
                    to=msg.to,
                    history=msg.history,
                )
            )
        elif isinstance(msg, ch.Roster):
            self._on_roster(msg)
        elif isinstance(msg, ch.End):
            if self._link is not None:
                self._link.send(ch.Bye())  # tells the CSR we have it: it may close now
            self._finish(status.Ended(reason="ended"), 0)
        elif isinstance(msg, ch.Refused):
            self._emit(status.Error(reason=msg.message, code=msg.code))
        elif isinstance(msg, ch.ControlState) and self.role == "csr":
            self._control = (msg.holder, msg.token)
            self._emit(status.ControlChanged(holder=msg.holder, token=msg.token))
        elif isinstance(msg, ch.NoteKey) and self.role == "csr" and self.record is not None:
            self.record.note_key = b64d(msg.key)

    # -- direct links between an assistant and the customer, introduced by the primary

    def _spawn_direct(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._direct_tasks.add(task)
        task.add_done_callback(self._direct_tasks.discard)

    async def _on_sdp(self, msg: ch.Sdp) -> None:
        if msg.kind == "offer" and self.role == "csr" and msg.peer not in self._known:
            self._early_offer = msg  # the customer's offer came before our roster
            return
        try:
            if msg.kind == "offer" and self.role == "csr" and self._is_primary_customer(msg.peer):
                link = self._direct_link(msg.peer)
                answer = await link.answer(msg.sdp)
                assert self._link is not None
                self._link.send(ch.Sdp(peer=msg.peer, kind="answer", sdp=answer))
            elif msg.kind == "answer" and self.role == "customer" and msg.peer in self.direct:
                await self.direct[msg.peer].complete(msg.sdp)
            else:
                return
            link = self.direct[msg.peer]
            await asyncio.wait_for(asyncio.shield(link.opened), CHANNEL_OPEN_TIMEOUT)
            self._direct_opened(msg.peer, link)
        except (PeerDeskError, TimeoutError) as exc:
            log.info("no direct link with %s: %s", msg.peer, exc)
            gone = self.direct.pop(msg.peer, None)
            if gone is not None:
                await gone.close()

    def _is_primary_customer(self, peer: str) -> bool:
        person = self._known.get(peer)
        return person is not None and person.role == "customer" and person.primary

    def _direct_opened(self, peer: str, link: PeerLink) -> None:
        if self.role == "customer":  # the assistant may ask us for the screen itself
            name = self._known[peer].name if peer in self._known else peer
            key = secrets.token_bytes(32)
            self.services.attach(peer, name, link, key)
            link.send(ch.DirectKey(key=b64(key)))
        self._emit(status.DirectLink(peer=peer))

    def _on_direct_track(self, track: Any) -> None:
        if self.acting is not None:
            self.acting.on_track(track)

    def _direct_link(self, peer: str) -> PeerLink:
        old = self.direct.pop(peer, None)
        if old is not None:
            self._spawn_direct(old.close())

        def on_lost(why: str) -> None:
            if self.direct.get(peer) is link:
                del self.direct[peer]
            if peer == self.host and self._link is link:
                self._link_lost(link, why)  # the direct link became the session's link

        def on_channel(name: str, data: str | bytes) -> None:
            if name == "log":
                if self.record is not None:
                    self.record.receive(peer, data)
            elif self.role == "customer":
                self.services.on_channel(peer, name, data)
            elif self.acting is not None:
                self.acting.on_channel(name, data)

        customer = self.role == "customer"
        link = PeerLink(
            on_message=lambda m: self._on_direct_message(peer, m),
            on_lost=on_lost,
            on_channel=on_channel,
            screen_codec=self.services.options.video_codec if customer else None,
            on_track=None if customer else self._on_direct_track,
        )
        self.direct[peer] = link
        if not customer:  # ready before the link opens: the customer's first messages
            if self.acting is not None and not self.leading:
                self._spawn_direct(self.acting.close())
            self.acting = CsrServices(self.me, peer, link, self._emit)
        return link

    # -- failover: a take-over is the session log's next epoch

    def _on_direct_message(self, peer: str, msg: ch.Message) -> None:
        if self.role == "customer":
            if self.services.on_main(peer, msg):  # the assistant's own requests
                return
        elif self.acting is not None:
            if isinstance(msg, ch.ControlState):
                self._control = (msg.holder, msg.token)
            if isinstance(msg, ch.DirectKey) and self.acting.files is None:
                self.acting.attach_files(b64d(msg.key), self.services.download_dir)
                return
            if self.acting.on_main(msg):
                return
        if peer == self.host:
            self._on_message(msg)

    def _follow(self, assistant: str) -> None:
        """The customer: the assistant won the epoch (with our vote, so we lost the
        primary too); it is our CSR from now on."""
        lost, old = self.host, self._link
        link = self.direct[assistant]
        if lost is not None and lost != assistant:
            self.services.detach(lost)  # grants end, held keys released (if not done yet)
        self.host = assistant
        self._host_name = self._known[assistant].name if assistant in self._known else assistant
        self._link = link
        lost_at, self._host_lost_at = self._host_lost_at, None
        if old is not None and old is not link:
            self._spawn_direct(old.close())
        if not self.services.attached(assistant):  # it is, since the direct link opened
            self.services.attach(assistant, self._host_name, link, secrets.token_bytes(32))
        after = int((time.monotonic() - lost_at) * 1000) if lost_at is not None else 0
        self._emit(status.Failover(primary=assistant, lost=lost or "", after_ms=after))

    def _took_over(self) -> None:
        """An assistant that won the epoch: it serves the customer as the primary did."""
        lost, lost_at = self.host, self._host_lost_at
        customer, link = next(iter(self.direct.items()))
        self._host_lost_at = None
        self.host = customer
        self._link = link
        self.leading = True
        if self.acting is None:
            self.acting = CsrServices(self.me, customer, link, self._emit)
        self.acting.token = None
        self._control = None
        after = int((time.monotonic() - lost_at) * 1000) if lost_at is not None else 0
        self._emit(status.Failover(primary=self.me, lost=lost or "", after_ms=after))

    async def _take_over(self) -> None:
        """The primary is gone: stand for the log's next epoch until the customer's
        agent (which must have lost the primary too) votes for us, or give up."""
        for _ in range(16):
            if self.leading or self._done.done():
                return
            if self.record is None or not self.record.take_over():
                break
            await asyncio.sleep(0.25)
        if not self.leading:
            self._finish(status.Ended(reason="lost the primary CSR; no take-over"), 1)

    async def _offer_direct(self, assistant: str) -> None:
        """The primary customer asks the primary CSR to introduce it to an assistant
        (the customer offers: its offer carries the screen line, as on its main link)."""
        link = self._direct_link(assistant)
        offer = await link.offer()
        if self._link is not None:
            self._link.send(ch.Sdp(peer=assistant, kind="offer", sdp=offer))

    async def _give_up_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._host_lost_at is not None:
            self._finish(status.Ended(reason="lost the CSR and nobody took over"), 1)

    def _on_roster(self, msg: ch.Roster) -> None:
        now = {p.id: p for p in msg.participants}
        for pid, person in now.items():
            if pid not in self._known and pid not in (self.me, self.host):
                self._emit(
                    status.Joined(
                        peer=pid,
                        role=person.role,
                        name=person.name,
                        sas=None,
                        me=self.me,
                        primary=person.primary,
                    )
                )
        for pid in self._known:
            if pid not in now:
                self._emit(status.Left(peer=pid))
                gone = self.direct.pop(pid, None) if pid != self.host else None
                if gone is not None:  # an assistant left: its direct link and grants end
                    if self.role == "customer":
                        self.services.detach(pid, release=False)
                    self._spawn_direct(gone.close())
        self._known = now
        self.services.csrs = {p.id for p in msg.participants if p.role == "csr"}
        if self.role == "customer" and any(p.primary and p.id == self.me for p in now.values()):
            self._start_record()  # the primary customer holds the log and votes
            for person in msg.participants:  # a direct link to each assistant
                if person.role == "csr" and person.id != self.host and person.id not in self.direct:
                    self._spawn_direct(self._offer_direct(person.id))
        early, self._early_offer = self._early_offer, None
        if early is not None and self._is_primary_customer(early.peer):
            self._spawn_direct(self._on_sdp(early))
        self._emit(status.RosterChanged(participants=tuple(vars(p) for p in msg.participants)))

    def _link_lost(self, link: PeerLink, why: str) -> None:
        if self._leaving or link is not self._link:
            return  # a link we already left behind (after a take-over)
        if self.direct and self.host is not None and self.host not in self.direct:
            # the primary is gone but we hold a direct link: the session may go on
            lost = self.host
            self._host_lost_at = time.monotonic()
            self._emit(status.Left(peer=lost, reason="lost"))
            if self.role == "customer":
                self.services.detach(lost)  # grants end, held keys released, at once
                self._spawn_direct(self._give_up_after(5.0))
            else:
                self._spawn_direct(self._take_over())
            return
        if self.host is not None and not self._done.done():
            self._emit(status.Left(peer=self.host, reason="lost"))
        self._finish(status.Ended(reason=f"lost the connection to the CSR ({why})"), 1)

    def _finish(self, event: status.Status, code: int) -> None:
        if self._done.done() or self._finishing:
            return
        self._finishing = True
        if self.host is not None:  # grants end and held keys are released first
            self.services.detach(self.host)
        self._emit(event)
        self._closing = asyncio.ensure_future(self._close_all(code))

    async def _close_all(self, code: int) -> None:
        try:
            await self._write_report("ended")
            await self._stop_services()
            for link in list(self.direct.values()):
                await link.close()
            self.direct.clear()
            if self._link is not None:
                await self._link.close()
        finally:
            if not self._done.done():
                self._done.set_result(code)

    async def _write_report(self, reason: str) -> None:
        """Our copy of the log becomes our activity report too."""
        record, self.record = self.record, None
        self.services.record = None
        if record is None:
            return
        paths = await record.finish(reason, end=self.leading)
        if paths is not None:
            self._emit(
                status.ReportWritten(
                    id=record.session_id,
                    log=str(record.path),
                    json=str(paths[0]),
                    html=str(paths[1]),
                )
            )


def on_team(key: bytes) -> bool:
    """Whether ``key`` is on this agent's team roster (read fresh: it may have changed)."""
    from agent import team

    try:
        return team.Roster.load().is_member(key)
    except PeerDeskError as exc:
        log.warning("team roster unreadable: %s", exc.message)
        return False


def describe(exc: BaseException) -> status.Error:
    """The error event for a failure, worded for the person at the keyboard."""
    if isinstance(exc, PeerDeskError):
        return status.Error(reason=exc.message, code=exc.code)
    return status.Error(reason=f"unexpected failure: {exc!r}", code="internal")


async def close_quietly(session: CsrSession | CustomerSession) -> None:
    with contextlib.suppress(Exception):
        if isinstance(session, CsrSession):
            await session.end()
