"""The CSR who hosts a session (the primary): signaling, admissions, relays, the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import status
from agent.errors import (
    LocalProtocolError,
    PeerDeskError,
    RemoteProtocolError,
)
from agent.identity import Identity
from agent.net.endpoint import DEFAULT_PORT, HostedEndpoint
from agent.net.peer import PeerLink
from agent.net.signaling_client import SignalingClient, SignalingUnreachable
from agent.protocol import channel as ch
from agent.protocol import commands as cmds
from agent.protocol import control as ctl
from agent.protocol import signaling as sig
from agent.protocol.code import JoinLink, SessionCode, landing_url
from agent.protocol.handshake import peer_id
from agent.protocol.wire import b64
from agent.runtime import common
from agent.runtime.common import Emit, Outbox, on_team
from agent.services.csr import CsrServices
from agent.services.customer import default_download_dir
from agent.services.record import SessionRecord
from agent.session import handshake as hsk
from agent.session.roster import Roster

log = logging.getLogger(__name__)

CREATE_TIMEOUT = 10.0
"Seconds the signaling server has to allocate a room before ``start`` gives up."

# --- the CSR's side ------------------------------------------------------------------


@dataclass
class _Member:
    link: PeerLink
    name: str
    role: str
    services: CsrServices


class CsrSession:
    """A session hosted by this agent (the primary CSR).

    When the signaling connection drops (its node died, or the network blinked), the
    agent reconnects to ``signal_url`` — in a team setup a name that reaches any live
    node, through DNS or a load balancer — with a bounded backoff for at most
    ``resume_within`` seconds, and resumes its room with the secret the server gave
    (``signal_resumed``): the session code keeps working. If that fails it reports
    ``signal_lost`` with the reason; the session goes on for those already in it.
    """

    resume_within: float = 60.0
    "Seconds to keep trying to resume the room after losing the signaling server."
    RESUME_FINAL = frozenset({"bad_secret", "room_not_found", "already_joined", "too_many_rooms"})
    "Refusals of ``resume`` that a retry cannot change."

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
        self._outbox: Outbox | None = None
        self._core: hsk.HostHandshake | None = None
        self.code: SessionCode | None = None
        self._ending = False
        self._resume_secret = ""
        "The room's current resume secret (from ``created``/``resumed``); empty: none."
        self._no_resume = "this session's code admits nobody any more"
        "Why there is no resume secret, when there is none."
        self._endpoint: HostedEndpoint | None = None
        "The signaling server this session hosts itself (a successor whose server died)."

    async def start(self) -> SessionCode:
        """Open a room on the signaling server and make the session code."""
        self._client = await SignalingClient.connect(self.signal_url)
        try:
            await self._create_room()
        except BaseException:  # a refusal, a server that does not answer, a stop
            client, self._client = self._client, None
            await client.close()
            raise
        return self._serve()

    @classmethod
    async def successor(
        cls,
        identity: Identity,
        signal_url: str,
        emit: Emit,
        *,
        record: SessionRecord,
        customer: tuple[str, str, PeerLink, CsrServices],
        download_dir: Path | None = None,
        port: int = DEFAULT_PORT,
    ) -> CsrSession:
        """Host a session in progress: the assistant CSR that took over after the
        primary was lost becomes its primary, so that new people can join again.

        ``record`` is the session log this agent sequences since the take-over (it goes
        on in the same epoch); ``customer`` is (peer id, name, direct link, services)
        of the primary customer, who becomes this session's first member. A new room
        and new codes are opened on ``signal_url`` if that server still answers, else
        on a signaling server embedded in this agent (the session's server died with
        the primary, as on a LAN), announced on the LAN. Emits ``session`` with the
        new code, as ``start`` does; raises a ``PeerDeskError`` if no room can be had
        (nothing is adopted then: the caller keeps serving its customer).
        """
        session = cls(identity, signal_url, emit, download_dir=download_dir)
        try:
            session._client = await asyncio.wait_for(
                SignalingClient.connect(signal_url, within=3.0), 5.0
            )
        except (SignalingUnreachable, TimeoutError) as exc:
            why = exc.message if isinstance(exc, PeerDeskError) else "no answer in time"
            log.info("the session's signaling server is gone (%s): hosting one here", why)
            session._endpoint = await HostedEndpoint.start(port)
            session.signal_url = session._endpoint.url
        try:
            if session._client is None:
                session._client = await SignalingClient.connect(session.signal_url)
            await session._create_room()
        except BaseException:
            if session._client is not None:
                await session._client.close()
            if session._endpoint is not None:
                await session._endpoint.stop()
            raise
        session._adopt(record, customer)
        code = session._serve()
        if session._endpoint is not None:
            session._endpoint.advertise(code.room, identity.name, session._emit)
        return session

    def _adopt(
        self, record: SessionRecord, customer: tuple[str, str, PeerLink, CsrServices]
    ) -> None:
        """Take over the session log and the link with the primary customer (no awaits:
        nothing either sends is lost between the old owner and us)."""
        pid, name, link, services = customer
        self.record = record
        record.rebind(send=self._send_log, emit=self._emit)
        link.rebind(
            on_message=lambda msg: self._on_message(pid, msg),
            on_lost=lambda why: self._on_lost(pid, link, why),
            on_channel=lambda channel, data: self._on_channel(pid, channel, data),
        )
        self._members[pid] = _Member(link, name, "customer", services)
        self.roster.add(pid, name, "customer")

    def _record_here(self, room: str) -> None:
        """Start the session log here, as its sequencer; our events feed it."""
        record = SessionRecord(self.identity, room, send=self._send_log, emit=self._emit)
        self.record = record
        user_emit = self._emit

        def emit(event: status.Status) -> None:
            user_emit(event)
            record.observe(event)

        self._emit = emit

    async def _create_room(self) -> None:
        """Ask the signaling server for a room; make the codes and the handshake core."""
        assert self._client is not None
        await self._client.send(sig.Create())
        try:
            reply = await asyncio.wait_for(self._client.recv(strict=True), CREATE_TIMEOUT)
        except TimeoutError:
            raise RemoteProtocolError(
                f"the signaling server at {self.signal_url} did not allocate a room within "
                f"{CREATE_TIMEOUT:g} s (no answer, or answers that could not be read)",
                code="signal_timeout",
            ) from None
        if reply is None:
            raise SignalingUnreachable(
                f"the signaling server at {self.signal_url} closed the connection "
                "before allocating a room"
            )
        if isinstance(reply, sig.Error):
            raise RemoteProtocolError(
                f"the signaling server refused a room: {reply.message}", code="room_refused"
            )
        if not isinstance(reply, sig.Created):
            raise RemoteProtocolError(
                f"the signaling server answered {reply.type!r} where it should have "
                "allocated a room",
                code="signal_protocol",
            )
        self.code = SessionCode.new(reply.room)
        self._resume_secret = reply.resume
        if not reply.resume:
            self._no_resume = "this signaling server does not offer resuming rooms"
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

    def _serve(self) -> SessionCode:
        """Start the session's log (unless adopted), its loops, and say it exists."""
        assert self._client is not None
        assert self.code is not None
        if self.record is None:  # (an adopted log is fed by the emit we were given)
            try:
                self._record_here(self.code.room)
            except (PeerDeskError, OSError) as exc:
                log.warning("this session will not be recorded: %s", exc)
        self._outbox = Outbox(self._client)
        self._spawn(self._signal_loop())
        self._spawn(self._tick())
        if self._members:
            self._roster_changed()
        link = JoinLink(self.code, self.signal_url)
        self._emit(
            status.SessionStarted(
                code=str(self.code),
                link=str(link),
                room=self.code.room,
                signal=self.signal_url,
                me=self.me,
                csr_code=str(self.csr_code),
                web=landing_url(self.code, self.signal_url),
            )
        )
        return self.code

    async def wait(self) -> int:
        """Until the session ends; returns the process exit status."""
        return await asyncio.shield(self._done)  # a waiter cancelled is not the session

    # -- commands (the same API for headless, console, tray and dashboard)

    def chat(self, text: str, to: tuple[str, ...] | None = None) -> None:
        recipients = self.roster.recipients(self.me, to)
        if not any(pid in self._members for pid in recipients):
            raise LocalProtocolError(
                "nobody else is in this session yet: the line was not sent",
                code="nobody_here",
            )
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
        elif isinstance(command, cmds.ReleaseCommand):
            self.services_for(command.to).release(command.cap)
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
        elif isinstance(command, cmds.ScreenModeCommand):
            self.services_for(command.to).screen_mode(command.mode)
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
            await self.record.end(reason)
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
        if self._endpoint is not None:  # the LAN announcement goes with the session
            await self._endpoint.stop()
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
        assert self._core is not None
        while True:
            assert self._client is not None
            msg = await self._client.recv()
            if msg is None:
                if self._done.done() or self._ending:
                    return
                why = await self._resume_room()
                if why is None:
                    continue
                if not self._done.done() and not self._ending:
                    self._emit(
                        status.Error(
                            reason=f"lost the signaling server ({why}): nobody new can join, "
                            "the session goes on for those in it",
                            code="signal_lost",
                        )
                    )
                return
            try:
                self._on_signal(msg)
            except Exception as exc:  # one hostile message must not end hosting
                log.error("a signaling message could not be handled (%s): %r", msg.type, exc)
            self._pump()

    def _on_signal(self, msg: sig.ServerMessage) -> None:
        assert self._core is not None
        now = time.monotonic()
        if isinstance(msg, sig.Relay):
            self._core.receive(msg.sender, msg.data, now)
        elif isinstance(msg, sig.Gone):
            self._core.peer_gone(msg.peer)
        elif isinstance(msg, sig.Closed):
            self._resume_secret = ""  # nothing left to resume
            self._no_resume = "this session's code admits nobody any more"
            self._emit(status.CodeClosed(reason=msg.reason))
        elif isinstance(msg, sig.Error):
            log.warning("signaling error: %s (%s)", msg.message, msg.code)

    async def _resume_room(self) -> str | None:
        """Reconnect and host our room again; None once done, else why it failed."""
        assert self.code is not None
        room, lost_at = self.code.room, time.monotonic()
        if self._outbox is not None:
            self._outbox.cancel()
        if self._client is not None:
            await self._client.close()
        if not self._resume_secret:
            return self._no_resume
        log.warning("lost the signaling server; resuming room %s", room)
        deadline = lost_at + self.resume_within
        delay, why = 0.25, "no answer"
        while True:
            client: SignalingClient | None = None
            reply: sig.ServerMessage | None = None
            try:
                client = await asyncio.wait_for(
                    SignalingClient.connect(self.signal_url, within=5.0), 10.0
                )
                await client.send(sig.Resume(room=room, secret=self._resume_secret))
                reply = await asyncio.wait_for(client.recv(), 5.0)
                if reply is None:
                    why = "the server closed the connection"
            except (SignalingUnreachable, TimeoutError) as exc:
                why = exc.message if isinstance(exc, PeerDeskError) else "no answer in time"
            except BaseException:
                if client is not None:
                    await client.close()
                raise
            if isinstance(reply, sig.Resumed) and reply.room == room and client is not None:
                self._client, self._outbox = client, Outbox(client)
                self._resume_secret = reply.resume
                after_ms = int((time.monotonic() - lost_at) * 1000)
                log.info("resumed room %s after %d ms", room, after_ms)
                self._emit(
                    status.SignalResumed(room=room, signal=self.signal_url, after_ms=after_ms)
                )
                self._pump()
                return None
            if client is not None:
                await client.close()
            if isinstance(reply, sig.Error):
                why = f"{reply.message} ({reply.code})"
                if reply.code in self.RESUME_FINAL:
                    return why
            if self._ending or time.monotonic() + delay > deadline:
                return why
            log.info("resuming room %s: %s; again in %.2f s", room, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

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
                self._resume_secret = ""
                self._no_resume = "this session's code admits nobody any more"
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
            await asyncio.wait_for(asyncio.shield(link.opened), common.CHANNEL_OPEN_TIMEOUT)
        except (TimeoutError, PeerDeskError, asyncio.CancelledError) as exc:
            self._pending.pop(req.peer, None)
            self._early.pop(link, None)
            await services.close()
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
        if old is not None:  # the same participant again: the new agent takes the seat
            old.link.send(
                ch.Refused(
                    code="replaced",
                    message="you joined this session again from another PeerDesk agent: "
                    "this one has left it",
                )
            )
            await asyncio.sleep(0.1)  # let the old agent read why, then close
            await old.services.close()
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
        if old is not None:
            self._emit(status.Rejoined(peer=pid, role=req.role, name=req.name, sas=req.sas))
        else:
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
        if other is None:  # they left meanwhile; the roster tells the sender so
            log.info("introduction of %s to %s, who has left: dropped", pid, msg.peer)
            return
        if not allowed:
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
