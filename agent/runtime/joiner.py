"""An agent that joins a session: the customer, or an assistant CSR (``role="csr"``),
with their direct link and the take-over after the primary's loss."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from agent import status
from agent.errors import (
    CodeBurned,
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
from agent.protocol.code import JoinLink
from agent.protocol.handshake import peer_id
from agent.protocol.wire import b64, b64d
from agent.runtime import common
from agent.runtime.common import Emit, Outbox, on_team
from agent.runtime.host import CsrSession
from agent.services.csr import CsrServices
from agent.services.customer import CustomerOptions, CustomerServices
from agent.services.record import SessionRecord
from agent.session import handshake as hsk
from agent.session.roster import no_such_recipient

log = logging.getLogger(__name__)


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
        self.successor: CsrSession | None = None
        """The session this agent hosts once it took over (a new room and codes, so that
        people can join again); commands, chat and the end go to it."""
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
        self.services.me = self.me
        self._closing: asyncio.Future[None] | None = None
        self._signal_closing: asyncio.Future[None] | None = None
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
            await asyncio.wait_for(asyncio.shield(link.opened), common.CHANNEL_OPEN_TIMEOUT)
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
        outbox = Outbox(client)
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
                    recv_task = asyncio.ensure_future(client.recv(strict=True))
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
            self._signal_closing = asyncio.ensure_future(self._close_signaling(outbox, client))

    @staticmethod
    async def _close_signaling(outbox: Outbox, client: SignalingClient) -> None:
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
            if msg.code in ("room_burned", "room_expired"):
                burned = msg.code == "room_burned"
                raise CodeBurned(
                    "this code was burned after too many wrong attempts; ask your support "
                    "representative for a new one"
                    if burned
                    else "this code expired unused; ask your support representative for a new one",
                    code="code_burned" if burned else "code_expired",
                )
            if msg.code == "room_ended":
                raise LocalProtocolError(
                    f"the session {self.code.room} has ended; ask for a new code if you "
                    "still need help",
                    code="no_such_session",
                )
            if msg.code == "room_not_found":
                raise LocalProtocolError(
                    f"no session {self.code.room} on {self.signal_url}: check the code "
                    "(it may have expired or ended)",
                    code="no_such_session",
                )
            code = msg.code if msg.code in sig.JOINER_ERRORS else sig.OTHER_SERVER_ERROR
            raise RemoteProtocolError(f"the signaling server said: {msg.message}", code=code)
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
        return await asyncio.shield(self._done)  # a waiter cancelled is not the session

    async def closed(self, within: float = 3.0) -> None:
        """Until what this session opened is closed: the signaling connection (after a
        failed join as after a good one) and, once it ended, its links (bounded)."""
        for closing in (self._signal_closing, self._closing):
            if closing is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(closing), within)

    # -- commands

    def chat(self, text: str, to: tuple[str, ...] | None = None) -> None:
        if self.successor is not None:
            self.successor.chat(text, to)
            return
        assert self._link is not None
        unknown = [pid for pid in to or () if pid not in self._known and pid != self.host]
        if unknown:
            raise no_such_recipient(unknown, self._known.values())
        if self.record is not None:
            self.record.chat(self.identity.name, text, to)
        if self.leading:  # we lead now: our lines are ours, not relayed
            self._link.send(ch.Chat(text=text, to=None, sender=self.me, name=self.identity.name))
            return
        self._link.send(ch.Chat(text=text, to=to))

    def services_for(self, to: str | None) -> CsrServices:
        """An assistant's services towards the primary customer, over their direct link
        (what the dashboard reads the screen from); ``to`` None means that customer."""
        acting = self.acting
        if self.role != "csr" or acting is None or to not in (None, acting.customer):
            raise LocalProtocolError("no direct link with that customer", code="no_customer")
        return acting

    def make_primary(self, pid: str) -> None:
        raise LocalProtocolError("only a CSR can choose the primary customer")

    async def command(self, command: cmds.Command) -> None:
        """Carry out one command (headless, console, tray and dashboard all come here)."""
        if self.successor is not None:  # we host the session now
            await self.successor.command(command)
        elif isinstance(command, cmds.ChatCommand):
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
        elif self.role == "csr":
            if not await self._direct_command(command):  # the customer's, over our link
                self._assistant_command(command)  # the primary's (transfer, relayed input)
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
        elif isinstance(command, cmds.ScreenModeCommand):
            self.services.set_screen_mode(command.mode)
        elif isinstance(command, cmds.FileCommand) and command.kind in (
            "accept_file",
            "reject_file",
        ):
            self.services.answer_file(command.id, command.kind == "accept_file")
        else:
            raise LocalProtocolError(f'"{command.cmd}" is a CSR command', code="not_allowed")

    async def leave(self) -> None:
        if self.successor is not None:  # the agent is stopped: the session it hosts ends
            await self.successor.end("stopped", force=True)
            await self._done
            return
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
        if self.successor is not None:
            await self.successor.end(reason)
            return
        if self.leading and self._link is not None:  # we lead since a take-over
            self._leaving = True  # the customer closing its end is no loss now
            if self.record is not None:  # the customer's copy gets the end first
                await self.record.end(reason)
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
        elif isinstance(command, cmds.ReleaseCommand):
            acting.release(command.cap)
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
                cmds.RequestCommand
                | cmds.ReleaseCommand
                | cmds.SnapshotCommand
                | cmds.SimpleCommand
                | cmds.MonitorCommand
                | cmds.ScreenModeCommand
                | cmds.FileCommand,
            ):
                raise LocalProtocolError(
                    "no direct link with the customer yet", code="no_direct_link"
                )
            return False
        if isinstance(command, cmds.RequestCommand) and command.cap != "control":
            acting.request(command.cap)  # control comes from the primary, by transfer
        elif isinstance(command, cmds.ReleaseCommand):
            acting.release(command.cap)
        elif isinstance(command, cmds.SnapshotCommand):
            self._emit(await acting.snapshot(command.path))
        elif isinstance(command, cmds.SimpleCommand):
            if command.name == "keyframe":
                acting.keyframe()
            else:
                acting.request("sysinfo" if command.name == "sysinfo" else "view")
        elif isinstance(command, cmds.MonitorCommand):
            acting.select_monitor(command.index)
        elif isinstance(command, cmds.ScreenModeCommand):
            acting.screen_mode(command.mode)
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
        elif isinstance(msg, ch.Refused) and msg.code == "replaced":
            self._leaving = True  # the CSR closes this link: that is no loss
            self._finish(status.Ended(reason="replaced"), 0)
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
        task.add_done_callback(self._direct_done)

    def _direct_done(self, task: asyncio.Task[None]) -> None:
        self._direct_tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._done.done() or self._leaving:  # the session is over: nothing to report
            log.info("after the end: %r", task.exception())
        else:
            log.error("session task failed", exc_info=task.exception())

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
            made = self.direct.get(msg.peer)
            if made is None:  # it ended (the peer left, we stop) while the answer was made
                log.info("no direct link with %s: it ended while connecting", msg.peer)
                return
            await asyncio.wait_for(asyncio.shield(made.opened), common.CHANNEL_OPEN_TIMEOUT)
            self._direct_opened(msg.peer, made)
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
        if lost is not None and lost != assistant:
            if lost_at is None:  # the log's election came before our link's silence
                self._emit(status.Left(peer=lost, reason="lost"))
            self._known.pop(lost, None)  # said once: not again when the new roster comes
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
        self._spawn_direct(self._become_host(customer, link))

    async def _become_host(self, customer: str, link: PeerLink) -> None:
        """After the take-over: host the session (a new room, new codes; see
        ``CsrSession.successor``) so that the new primary can invite people again."""
        record, acting = self.record, self.acting
        if record is None or acting is None:
            self._emit(
                status.Error(
                    reason="nobody new can join this session: this agent keeps no session log",
                    code="no_room",
                )
            )
            return
        name = self._known[customer].name if customer in self._known else customer
        try:
            host = await CsrSession.successor(
                self.identity,
                self.signal_url,
                self._emit,  # our emit: it feeds the log we keep sequencing
                record=record,
                customer=(customer, name, link, acting),
                download_dir=self.services.download_dir,
            )
        except (PeerDeskError, TimeoutError) as exc:
            why = exc.message if isinstance(exc, PeerDeskError) else "the server did not answer"
            self._emit(
                status.Error(
                    reason=f"nobody new can join this session ({why}); it goes on for those in it",
                    code="no_room",
                )
            )
            return
        if self.direct.get(customer) is link:
            del self.direct[customer]  # the link is the hosted session's now
        self.successor = host
        if self._leaving or self._finishing or self._done.done():
            await host.end("ended", force=True)
        self._spawn_direct(self._follow_successor(host))

    async def _follow_successor(self, host: CsrSession) -> None:
        """The hosted session ended: so does this agent (it wrote the report)."""
        code = await host.wait()
        self.record = None  # finished by the hosted session
        if self._tick_task is not None:
            self._tick_task.cancel()
        await self.services.close()
        for other in list(self.direct.values()):
            await other.close()
        self.direct.clear()
        if not self._done.done():
            self._done.set_result(code)

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
