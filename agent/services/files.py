"""File transfer glue for one peer link: the transfer core, the disk, the fast path.

``FileLink`` feeds ``agent.session.filetransfer.FileTransfers`` with the files channel,
runs its disk requests one at a time in a thread (``agent.files.store``), streams
chunks over the data channel with backpressure, and prefers the fast path
(``agent.net.fastpath``: direct TCP sealed with AES-256-GCM under keys derived from
the join's PAKE session key) when the peers can reach each other. What may happen is
the owner's decision, asked through ``Policy``: the customer's agent answers from
its consent grants at the moment a request arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent import status
from agent.errors import LocalProtocolError, PeerDeskError
from agent.files import store as fs
from agent.files.errors import FastPathError
from agent.files.names import safe_join
from agent.net.fastpath import FastPathSender, receive_file
from agent.net.peer import PeerLink
from agent.protocol import files as fw
from agent.session import filetransfer as ft
from agent.session.fileyield import FileYield

log = logging.getLogger(__name__)

Emit = Callable[[status.Status], None]
SYNC_EVERY = 4 * 1024 * 1024
"Bytes between two fsyncs of a received file: how much a dropped transfer can lose."
HIGH_WATER = 1024 * 1024
"Bytes queued on the files channel above which we stop reading chunks."
DC_QUEUED_SLICES = 2
"""Chunks a paced data-channel file keeps waiting in the association's queue: one
leaving, one ready; a chat line or a click sent meanwhile waits behind no more."""


class Policy(Protocol):
    """What the link's owner allows, asked at the moment of use."""

    def may_take(self, offer: ft.OfferReceived) -> str | None:
        """None to go on (ask or auto-accept), or a reason to refuse a pushed file."""

    def auto_accept(self, offer: ft.OfferReceived) -> bool: ...
    def serve_root(self, scope: str) -> Path | None:
        """The directory a ``list``/``get`` of ``scope`` may read, or None to refuse."""

    def published(self) -> dict[str, Path]: ...
    def ask_before_serving(self) -> bool:
        """Whether each ``get`` waits for the person's ``accept_file``."""


@dataclass
class _Send:
    name: str
    path: Path
    size: int
    direction: str


class FileLink:
    """Every file transfer with one peer."""

    def __init__(
        self,
        peer: str,
        link: PeerLink,
        session_key: bytes,
        download_dir: Path,
        policy: Policy,
        emit: Emit,
        screen_live: Callable[[], bool] | None = None,
    ) -> None:
        self.peer = peer
        self._screen_live = screen_live
        "Whether a screen is live on this link: fast-path files yield to it while it is."
        self.link = link
        self._key = session_key
        self._policy = policy
        self._emit = emit
        self.core = ft.FileTransfers()
        download_dir.mkdir(parents=True, exist_ok=True)
        self.download_dir = download_dir
        self._stores: dict[str, fs.FileStore] = {}
        "transfer id -> the store an incoming transfer writes into"
        self._default_store = fs.FileStore(download_dir, sync_every=SYNC_EVERY)
        self._sends: dict[str, _Send] = {}
        self._names: dict[str, str] = {}
        self._sizes: dict[str, int] = {}
        self._transport: dict[str, str] = {}
        self._fast: dict[str, asyncio.Task[None]] = {}
        self._asked_gets: dict[str, Path] = {}
        "get ids waiting for the person's answer -> the file to send"
        self._io_wake = asyncio.Event()
        self._chunks_wake = asyncio.Event()
        self._dc_pace = FileYield()
        self._dc_yields = not os.environ.get("PEERDESK_NO_YIELD")
        self._tasks = [
            asyncio.ensure_future(self._io_loop()),
            asyncio.ensure_future(self._chunk_loop()),
        ]
        channel = link.channels["files"]
        channel.bufferedAmountLowThreshold = HIGH_WATER // 4
        channel.on("bufferedamountlow", self._chunks_wake.set)

    # -- commands

    async def send(
        self, path: Path, *, direction: str = "push", transfer_id: str | None = None
    ) -> str:
        """Offer a local file to the peer; returns the transfer id."""
        info = await asyncio.to_thread(fs.describe, path)
        if transfer_id is None:
            # The same file to the same peer gets the same id, so a re-send after a
            # dropped connection resumes from the receiver's verified offset.
            seed = f"{info.sha256}:{info.size}:{path.name}:{self.peer}".encode()
            transfer_id = hashlib.sha256(seed).hexdigest()[:16]
            state = self.core.send_state(transfer_id)
            if state in (ft.SendState.DONE, ft.SendState.FAILED):
                transfer_id = None  # sent before: a fresh transfer
            elif state is not None:
                raise LocalProtocolError(f"{path.name} is already being sent")
        tid = self.core.send_file(
            path.name,
            info.size,
            info.sha256,
            str(path),
            time.monotonic(),
            transfer_id=transfer_id,
            direction=direction,
        )
        self._sends[tid] = _Send(path.name, path, info.size, direction)
        self._names[tid] = path.name
        self._sizes[tid] = info.size
        self._file_event(tid, "send", "offered", 0)
        self._pump()
        return tid

    def fetch(self, scope: str, path: str, dest: Path) -> str:
        """Ask the peer for a file (``published`` catalogue or a ``browse`` path)."""
        dest.mkdir(parents=True, exist_ok=True)
        tid = self.core.request(scope, path, time.monotonic())
        # The core prepares the answer's partial file without asking (it is ours), so
        # the store must be in place before the offer comes.
        self._stores[tid] = fs.FileStore(dest, sync_every=SYNC_EVERY)
        self._pump()
        return tid

    def browse(self, path: str = "", start: int = 0) -> str:
        tid = self.core.list_files("browse", path, start)
        self._pump()
        return tid

    def answer(self, tid: str, take: bool) -> None:
        """The person's answer to an offered file, or to a request for one of theirs."""
        now = time.monotonic()
        asked = self._asked_gets.pop(tid, None)
        if asked is not None:
            if take:
                self._spawn_send(asked, tid)
            else:
                self.core.refuse(tid, "declined", "the customer declined")
                self._pump()
            return
        if take:
            self.core.accept(tid, now)
        else:
            self.core.reject(tid, now, reason="declined", message="the customer declined")
        self._pump()

    def knows(self, tid: str) -> bool:
        return tid in self._names or tid in self._asked_gets

    def on_data(self, data: str | bytes) -> None:
        if not isinstance(data, str):  # a chunk: its transfer comes on the data channel
            tid = fw.transfer_id_of(data)
            if tid is not None and tid in self._names:  # (no entry for a made-up id)
                self._transport[tid] = "datachannel"
        self.core.receive(data, time.monotonic())
        self._pump()

    async def close(self) -> None:
        self.core.connection_lost(time.monotonic())
        self._pump()
        for task in [*self._fast.values(), *self._tasks]:
            task.cancel()
        await asyncio.sleep(0)
        self._default_store.close()
        for store in self._stores.values():
            store.close()

    # -- the pump

    def _pump(self) -> None:
        for text in self.core.messages_to_send():
            self.link.send_raw("files", text)
        self._io_wake.set()
        self._chunks_wake.set()
        while (event := self.core.next_event()) is not None:
            try:
                self._on_event(event)
            except PeerDeskError as exc:
                self._emit(status.Error(reason=exc.message, code=exc.code))
        for text in self.core.messages_to_send():
            self.link.send_raw("files", text)

    def _on_event(self, e: ft.Event) -> None:
        now = time.monotonic()
        if isinstance(e, ft.OfferReceived):
            self._names[e.id] = e.name
            self._sizes[e.id] = e.size
            refusal = self._policy.may_take(e)
            if refusal is not None:
                self.core.reject(e.id, now, reason="no_grant", message=refusal)
                self._file_event(e.id, "receive", "rejected", 0, reason=refusal)
                return
            self._file_event(e.id, "receive", "offered", 0)
            if self._policy.auto_accept(e):
                self.core.accept(e.id, now)
        elif isinstance(e, ft.SendReady):
            old = self._fast.pop(e.id, None)
            if old is not None:
                old.cancel()
            elif self._transport.get(e.id) != "datachannel":
                self._start_fast_send(e)
        elif isinstance(e, ft.FastPathOffered):
            self._fast[e.id] = asyncio.ensure_future(self._fast_receive(e))
        elif isinstance(e, ft.Progress):
            self._file_event(e.id, e.role.value, "active", e.done, rate=e.rate, eta=e.eta)
        elif isinstance(e, ft.Completed):
            path = None
            if e.role is ft.Role.RECEIVE:
                store = self._stores.pop(e.id, self._default_store)
                path = str(store.directory / e.name)
            self._file_event(
                e.id, e.role.value, "done", e.size, sha256=e.sha256, path=path, name=e.name
            )
        elif isinstance(e, ft.Failed):
            self._file_event(e.id, e.role.value, "failed", 0, reason=e.message or e.reason)
        elif isinstance(e, ft.Interrupted):
            self._file_event(e.id, e.role.value, "interrupted", e.offset)
        elif isinstance(e, ft.FileRequested):
            self._serve_get(e)
        elif isinstance(e, ft.ListRequested):
            self._serve_list(e)
        elif isinstance(e, ft.ListingReceived):
            listing = e.listing
            self._emit(
                status.FileListing(
                    peer=self.peer,
                    path=listing.path,
                    entries=tuple(vars(x) for x in listing.entries),
                    truncated=listing.truncated,
                )
            )
        elif isinstance(e, ft.PeerError):
            log.warning("files: %s", e.message)

    def _serve_get(self, e: ft.FileRequested) -> None:
        root = self._policy.serve_root(e.scope)
        if root is None:
            self.core.refuse(e.id, "no_grant", "files are not shared with you")
            return
        try:
            if e.scope == "published":
                path = self._policy.published()[e.path]
            else:
                path = safe_join(root, e.path)
        except KeyError:
            self.core.refuse(e.id, "not_found", f"{e.path} is not published")
            return
        except PeerDeskError as exc:
            self.core.refuse(e.id, exc.code, exc.message)
            return
        if not path.is_file():
            self.core.refuse(e.id, "not_found", f"{e.path} is not a file")
            return
        if self._policy.ask_before_serving():
            self._asked_gets[e.id] = path
            self._names[e.id] = path.name
            self._sizes[e.id] = path.stat().st_size
            self._file_event(e.id, "send", "requested", 0)
            return
        self._spawn_send(path, e.id)

    def _spawn_send(self, path: Path, tid: str) -> None:
        async def run() -> None:
            try:
                await self.send(path, direction="pull", transfer_id=tid)
            except (PeerDeskError, OSError) as exc:
                message = exc.message if isinstance(exc, PeerDeskError) else str(exc)
                self.core.refuse(tid, "io_error", message)
                self._pump()

        self._fast[f"get-{tid}"] = asyncio.ensure_future(run())

    def _serve_list(self, e: ft.ListRequested) -> None:
        root = self._policy.serve_root(e.scope)
        if root is None:
            self.core.refuse(e.id, "no_grant", "files are not shared with you")
            return
        try:
            if e.scope == "published":
                entries, more = fs.catalogue_listing(self._policy.published(), e.start)
            else:
                entries, more = fs.list_directory(root, e.path, e.start)
        except (PeerDeskError, OSError) as exc:
            message = exc.message if isinstance(exc, PeerDeskError) else str(exc)
            self.core.refuse(e.id, "not_found", message)
            return
        self.core.send_listing(
            fw.Listing(
                id=e.id,
                scope=e.scope,
                path=e.path,
                entries=tuple(entries),
                start=e.start,
                truncated=more,
            )
        )

    # -- disk and chunks

    async def _io_loop(self) -> None:
        while True:
            await self._io_wake.wait()
            self._io_wake.clear()
            while (request := self.core.next_io()) is not None:
                store = self._stores.get(request.id, self._default_store)
                result = await asyncio.to_thread(store.perform, request)
                self.core.io_done(result, time.monotonic())
                self._pump()

    async def _chunk_loop(self) -> None:
        """Chunks on the data channel, paced: the data channels share one association and
        its one queue, so a file sent as fast as SCTP takes it made every chat line and
        click wait behind it (3.5 s p50 on a 2 Mbit/s link). The file yields as the fast
        path does while a screen is live (``fileyield``), here always, with SCTP's own
        round trip as the queue's measure, in chunks of a few ms of its rate."""
        pace = self._dc_pace
        while True:
            await self._chunks_wake.wait()
            self._chunks_wake.clear()
            while True:
                now = time.monotonic()
                pace.set_live(self._dc_yields, now)
                if (rtt := self.link.rtt()) is not None:
                    pace.on_rtt(rtt, now)
                size = min(pace.slice_bytes(), fw.DEFAULT_CHUNK_DATA)
                cap = DC_QUEUED_SLICES * size if pace.live else HIGH_WATER
                if self.link.buffered("files") >= cap:  # woken when a chunk has left
                    self.link.channels["files"].bufferedAmountLowThreshold = (
                        cap - size if pace.live else HIGH_WATER // 4
                    )
                    break
                if (wait := pace.wait(now)) > 0:
                    await asyncio.sleep(wait)
                    continue
                self.core.chunk_size = size
                rc = self.core.next_chunk(time.monotonic())
                if rc is None:
                    break
                self._transport.setdefault(rc.id, "datachannel")
                data = await asyncio.to_thread(_read, rc.source, rc.offset, rc.length)
                frame = rc.frame(data)
                if not self.link.send_raw("files", frame):
                    break
                pace.on_sent(len(frame), time.monotonic())
                for text in self.core.messages_to_send():
                    self.link.send_raw("files", text)
            self._pump_events_only()

    def _pump_events_only(self) -> None:
        while (event := self.core.next_event()) is not None:
            self._on_event(event)

    # -- fast path

    def _start_fast_send(self, e: ft.SendReady) -> None:
        """Offer the fast path at once, before any chunk can leave on the data channel."""
        send = self._sends.get(e.id)
        hosts = self._local_hosts()
        if send is None or not hosts or os.environ.get("PEERDESK_NO_FASTPATH"):
            self._fallback(e.id)
            return
        try:
            sender = FastPathSender.listen(self._key, e.id, host=hosts[0])
        except (OSError, FastPathError) as exc:
            log.info("fast path unavailable: %s", exc)
            self._fallback(e.id)
            return
        start = self.core.offer_fast_path(e.id, sender.port, sender.nonce, hosts)
        self._transport[e.id] = "fastpath"
        self._fast[e.id] = asyncio.ensure_future(self._fast_send(e, sender, send.path, start))

    async def _fast_send(
        self, e: ft.SendReady, sender: FastPathSender, path: Path, start: int
    ) -> None:
        delivered = 0
        try:
            with fs.FileReader(path) as reader:
                delivered = await sender.send(
                    reader,
                    offset=start,
                    size=e.size,
                    progress=lambda n: self._fast_progress(e.id, n),
                    yield_to=None if os.environ.get("PEERDESK_NO_YIELD") else self._screen_live,
                )
        except (FastPathError, OSError) as exc:
            log.info("fast path for %s failed, falling back: %s", path.name, exc)
            self._transport[e.id] = "datachannel"
        finally:
            sender.close()
        self.core.fast_path_sent(e.id, delivered, time.monotonic())
        self._pump()

    def _fallback(self, tid: str) -> None:
        self._transport[tid] = "datachannel"
        self._chunks_wake.set()

    async def _fast_receive(self, e: ft.FastPathOffered) -> None:
        store = self._stores.get(e.id, self._default_store)
        part = store.partial(e.id)
        hosts = e.hosts or tuple(h for h in [self._remote_host()] if h)
        self._transport[e.id] = "fastpath"
        with contextlib.suppress(FastPathError, OSError):
            await receive_file(
                hosts,
                e.port,
                session_key=self._key,
                transfer_id=e.id,
                nonce=e.nonce,
                sink=part,
                offset=e.offset,
                size=e.size,
                progress=lambda n: self._fast_progress(e.id, n),
            )
        self.core.fast_path_received(e.id, part.offset, time.monotonic())
        self._pump()

    def _fast_progress(self, tid: str, offset: int) -> None:
        self.core.fast_path_progress(tid, offset, time.monotonic())
        self._pump_events_only()

    def _pair(self) -> Any:
        """The nominated ICE candidate pair (aioice internals, read defensively)."""
        sctp = self.link.pc.sctp
        try:
            ice = sctp.transport.transport  # type: ignore[union-attr]
            return next(iter(ice._connection._nominated.values()), None)
        except AttributeError:
            return None

    def _local_hosts(self) -> tuple[str, ...]:
        pair = self._pair()
        if pair is None:
            return ()
        return (pair.local_candidate.host,)

    def _remote_host(self) -> str | None:
        pair = self._pair()
        return None if pair is None else str(pair.remote_candidate.host)

    # -- status

    def _file_event(
        self,
        tid: str,
        direction: str,
        state: str,
        done: int,
        *,
        rate: float = 0.0,
        eta: float | None = None,
        sha256: str | None = None,
        path: str | None = None,
        reason: str = "",
        name: str | None = None,
    ) -> None:
        self._emit(
            status.FileProgress(
                id=tid,
                name=name or self._names.get(tid, ""),
                direction=direction,
                peer=self.peer,
                state=state,
                bytes=done,
                size=self._sizes.get(tid, 0),
                rate=round(rate, 1),
                eta=None if eta is None else round(eta, 2),
                sha256=sha256,
                path=path,
                reason=reason,
                transport=self._transport.get(tid, ""),
            )
        )


def _read(source: str, offset: int, length: int) -> bytes:
    with fs.FileReader(source) as reader:
        return reader.read(offset, length)
