"""File transfers over the files channel, sans-I/O: offers, consent, offsets, resume, verdicts.

One ``FileTransfers`` serves one peer link in both directions. Drive it like the
handshake core: feed ``receive(data, now)`` with every files-channel message and
``io_done(result, now)`` with the result of every disk request; drain
``messages_to_send()`` (control messages, text), ``next_io()`` (disk requests, to run
one at a time, in order, e.g. ``FileStore.perform`` through ``asyncio.to_thread``)
and ``next_event()`` (what happened, for the person and the session log). The
sender side hands out chunks only when asked, ``next_chunk(now)``, so the caller
applies backpressure by asking only while the transport's buffer is low; it reads
the bytes and sends ``ReadChunk.frame(data)``.

Invariants (everything that affects these machines lives in this file):

* Nothing is written before the receiver decided to take a file, and a decision is
  only possible once its name passed ``sanitize_name`` and the store reported enough
  free space. Every path the store touches is built from a sanitized name.
* The receiver accepts exactly the bytes ``[offset, size)`` in order: a chunk at any
  other offset, past ``size``, for an unknown transfer, or before ``accept`` aborts
  the transfer (``abort`` to the peer, the temporary file removed).
* A file is committed (renamed into place under a name that does not exist yet)
  only after the store's SHA-256 over all of it, the re-hashed resumed prefix
  included, equals the offered one. Then, and only then, ``done`` goes back.
* A dropped connection (``connection_lost``) keeps partial files for resume; the
  store keeps the offset that was written and fsynced. A new ``offer`` with the same
  id and SHA-256 continues from there without asking the person again.
* Bulk bytes may bypass the channel through the fast path; then the caller reports
  offsets with ``fast_path_*`` and this core keeps deciding what happens next.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from dataclasses import dataclass

from agent.errors import DecodeError, LocalProtocolError, UnknownMessage
from agent.files.errors import UnsafeFileName
from agent.files.names import sanitize_name
from agent.protocol import files as fw

DEFAULT_KEEP_FREE = 8 * 1024 * 1024
"Bytes a received file must leave free on the target disk."
PROGRESS_INTERVAL = 0.25
"Seconds between two progress events of one transfer."
RATE_WINDOW = 3.0
"Seconds of history behind the rate in a progress event."
_ENDED_MEMORY = 256


class Role(enum.Enum):
    SEND = "send"
    RECEIVE = "receive"
    LIST = "list"


class SendState(enum.Enum):
    OFFERED = "offered"
    "The offer went out; waiting for accept or reject."
    STREAMING = "streaming"
    "Chunks go out over the channel from ``offset``."
    FAST = "fast"
    "Bytes go over the fast path."
    PAUSED = "paused"
    "The fast path ended early; waiting for the receiver's accept with its offset."
    SENT = "sent"
    "Every byte went out; waiting for done."
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    "The connection dropped; ``resume`` offers the file again."


class ReceiveState(enum.Enum):
    PREPARING = "preparing"
    "Asked the store for free space and a resumable partial file."
    ASKING = "asking"
    "Waiting for the person to accept or reject."
    OPENING = "opening"
    "The store opens (or resumes) the temporary file."
    RECEIVING = "receiving"
    "Chunks expected at ``expected``."
    FAST = "fast"
    "Bytes come over the fast path."
    FINISHING = "finishing"
    "All bytes are in; the store fsyncs and hashes."
    COMMITTING = "committing"
    "The hash matched; the store renames the file into place."
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


_SEND_ACTIVE = frozenset(
    {SendState.OFFERED, SendState.STREAMING, SendState.FAST, SendState.PAUSED, SendState.SENT}
)
_SEND_ENDED = frozenset({SendState.DONE, SendState.FAILED})
_RECEIVE_ACTIVE = frozenset(
    {
        ReceiveState.PREPARING,
        ReceiveState.ASKING,
        ReceiveState.OPENING,
        ReceiveState.RECEIVING,
        ReceiveState.FAST,
        ReceiveState.FINISHING,
        ReceiveState.COMMITTING,
    }
)

# Transition tables: state -> {input: next state}. Inputs not listed are refused.
# "abort" (either side) and "lost" (connection dropped) apply to every active state.
_SEND_TABLE: dict[SendState, dict[str, SendState]] = {
    SendState.OFFERED: {
        "accept": SendState.STREAMING,
        "reject": SendState.FAILED,
        "done": SendState.DONE,  # a re-offer of a file the receiver already stored
    },
    SendState.STREAMING: {
        "accept": SendState.STREAMING,
        "last_chunk": SendState.SENT,
        "fast": SendState.FAST,
    },
    SendState.FAST: {
        "accept": SendState.STREAMING,
        "fast_sent": SendState.SENT,
        "fast_short": SendState.PAUSED,
        "done": SendState.DONE,
    },
    SendState.PAUSED: {"accept": SendState.STREAMING},
    SendState.SENT: {"accept": SendState.STREAMING, "done": SendState.DONE},
    SendState.INTERRUPTED: {"resume": SendState.OFFERED},
}
_RECEIVE_TABLE: dict[ReceiveState, dict[str, ReceiveState]] = {
    ReceiveState.PREPARING: {
        "ask": ReceiveState.ASKING,
        "open": ReceiveState.OPENING,
        "refuse": ReceiveState.FAILED,
    },
    ReceiveState.ASKING: {"accept": ReceiveState.OPENING, "reject": ReceiveState.FAILED},
    ReceiveState.OPENING: {"opened": ReceiveState.RECEIVING, "complete": ReceiveState.FINISHING},
    ReceiveState.RECEIVING: {
        "chunk": ReceiveState.RECEIVING,
        "complete": ReceiveState.FINISHING,
        "fast": ReceiveState.FAST,
    },
    ReceiveState.FAST: {"fast_short": ReceiveState.RECEIVING, "complete": ReceiveState.FINISHING},
    ReceiveState.FINISHING: {"verified": ReceiveState.COMMITTING},
    ReceiveState.COMMITTING: {"committed": ReceiveState.DONE},
}


# --- disk requests and their results (performed by agent.files.store.FileStore) ------


@dataclass(frozen=True)
class Prepare:
    """Report free space and whether a resumable partial file of this transfer exists.
    Must not create or change anything."""

    id: str
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Open:
    """Open the temporary file: resume a matching partial one (truncated to its verified
    offset and re-hashed) or start an empty one."""

    id: str
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Write:
    """Write ``data`` at ``offset`` of the temporary file (always its current end)."""

    id: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class Finish:
    """fsync the temporary file and report the SHA-256 of everything in it."""

    id: str


@dataclass(frozen=True)
class Commit:
    """Move the verified file into place as ``name``, or ``name (1).ext`` etc. if taken."""

    id: str
    name: str


@dataclass(frozen=True)
class Discard:
    """Close the temporary file; delete it unless ``keep`` (resumable after a drop)."""

    id: str
    name: str
    keep: bool


IoRequest = Prepare | Open | Write | Finish | Commit | Discard


@dataclass(frozen=True)
class Prepared:
    id: str
    free: int
    "Free bytes on the target disk."
    resume_offset: int
    "Verified bytes of a matching partial file (0: none)."


@dataclass(frozen=True)
class Opened:
    id: str
    offset: int
    "Where the file continues (the verified prefix, re-hashed)."


@dataclass(frozen=True)
class Written:
    id: str
    end: int
    "Offset just past the bytes written."


@dataclass(frozen=True)
class Finished:
    id: str
    sha256: str
    "Lowercase hex SHA-256 of the whole temporary file."


@dataclass(frozen=True)
class Committed:
    id: str
    name: str
    "The name the file got in the target directory."


@dataclass(frozen=True)
class Discarded:
    id: str


@dataclass(frozen=True)
class IoFailed:
    id: str
    message: str
    "What the operating system said, for a person."


IoResult = Prepared | Opened | Written | Finished | Committed | Discarded | IoFailed


# --- sender reads ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReadChunk:
    """Read ``length`` bytes at ``offset`` of ``source`` and send ``frame(data)``."""

    id: str
    offset: int
    length: int
    source: str
    "What the caller gave ``send_file`` (usually a path)."

    def frame(self, data: bytes | memoryview) -> bytes:
        """The binary chunk message for the bytes read."""
        return fw.encode_chunk(self.id, self.offset, data)


# --- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferReceived:
    """A peer offers a file; ask the person, then call ``accept`` or ``reject``."""

    id: str
    name: str
    "Sanitized."
    size: int
    sha256: str


@dataclass(frozen=True)
class SendReady:
    """The receiver wants bytes from ``offset``: pump ``next_chunk`` or use the fast path.

    Comes again when the receiver asks to continue from another offset (after a drop
    or a failed fast path): stop any fast path still running for this transfer.
    """

    id: str
    offset: int
    size: int


@dataclass(frozen=True)
class FastPathOffered:
    """The sender listens on ``port``; connect, receive into the open partial file from
    ``offset`` and report with ``fast_path_progress``/``fast_path_received``."""

    id: str
    port: int
    nonce: bytes
    hosts: tuple[str, ...]
    offset: int
    size: int


@dataclass(frozen=True)
class Progress:
    id: str
    role: Role
    done: int
    "Bytes sent (handed to the transport) or written, from 0."
    size: int
    rate: float
    "Bytes per second over the last few seconds."
    eta: float | None
    "Seconds left at that rate; None while unknown."


@dataclass(frozen=True)
class Completed:
    """A transfer ended well: the receiver verified and stored the file."""

    id: str
    role: Role
    name: str
    "Sender: the offered name. Receiver: the name the file got on disk."
    size: int
    sha256: str


@dataclass(frozen=True)
class Failed:
    """A transfer (or a ``get``/``list`` request) ended badly; ``reason`` is a machine
    code (declined, unsafe_name, no_space, offset_mismatch, too_much_data,
    hash_mismatch, unknown_transfer, io_error, cancelled, ...)."""

    id: str
    role: Role
    reason: str
    message: str
    resumable: bool = False


@dataclass(frozen=True)
class Interrupted:
    """The connection dropped during a transfer; it can resume from ``offset``."""

    id: str
    role: Role
    offset: int


@dataclass(frozen=True)
class FileRequested:
    """The peer asks for a file (``get``): answer with ``send_file(..., id=id,
    direction="pull")`` or ``refuse(id, ...)``. Check the grant first."""

    id: str
    scope: str
    path: str


@dataclass(frozen=True)
class ListRequested:
    """The peer asks for a listing: answer with ``send_listing`` or ``refuse``."""

    id: str
    scope: str
    path: str
    start: int


@dataclass(frozen=True)
class ListingReceived:
    listing: fw.Listing


@dataclass(frozen=True)
class PeerError:
    """A message that could not be used and blamed on no transfer (logged, dropped)."""

    code: str
    message: str


Event = (
    OfferReceived
    | SendReady
    | FastPathOffered
    | Progress
    | Completed
    | Failed
    | Interrupted
    | FileRequested
    | ListRequested
    | ListingReceived
    | PeerError
)


# --- bookkeeping ---------------------------------------------------------------------------


class _Meter:
    """Progress rate over a sliding window, and when the next progress event is due."""

    def __init__(self, done: int, now: float) -> None:
        self.samples: deque[tuple[float, int]] = deque([(now, done)])
        self.last_emit = now

    def update(self, done: int, now: float) -> None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()

    def rate(self) -> float:
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def due(self, now: float) -> bool:
        if now - self.last_emit >= PROGRESS_INTERVAL:
            self.last_emit = now
            return True
        return False


@dataclass
class _Outgoing:
    id: str
    name: str
    size: int
    sha256: str
    source: str
    direction: str
    state: SendState
    offset: int
    meter: _Meter


@dataclass
class _Incoming:
    id: str
    name: str
    size: int
    sha256: str
    direction: str
    state: ReceiveState
    expected: int = 0
    "Next byte offset the peer must send."
    written: int = 0
    "Bytes the store reported written."
    open_file: bool = False
    "An Open went to the store and no Commit/Discard yet."
    meter: _Meter | None = None


def _send_step(state: SendState, what: str) -> SendState:
    nxt = _SEND_TABLE.get(state, {}).get(what)
    if nxt is None:
        raise LocalProtocolError(f'"{what}" is not allowed while sending is {state.value}')
    return nxt


def _recv_step(state: ReceiveState, what: str) -> ReceiveState:
    nxt = _RECEIVE_TABLE.get(state, {}).get(what)
    if nxt is None:
        raise LocalProtocolError(f'"{what}" is not allowed while receiving is {state.value}')
    return nxt


class FileTransfers:
    """Every file transfer with one peer, both directions, sans-I/O."""

    def __init__(
        self,
        *,
        auto_accept: bool = False,
        chunk_size: int = fw.DEFAULT_CHUNK_DATA,
        keep_free: int = DEFAULT_KEEP_FREE,
    ) -> None:
        if not 1 <= chunk_size <= fw.MAX_CHUNK_DATA:
            raise LocalProtocolError(f"chunk_size must be 1..{fw.MAX_CHUNK_DATA} bytes")
        self.auto_accept = auto_accept
        "Take pushed files without asking (pulls we asked for never ask)."
        self.chunk_size = chunk_size
        self.keep_free = keep_free
        self._outgoing: dict[str, _Outgoing] = {}
        self._incoming: dict[str, _Incoming] = {}
        self._requests: dict[str, tuple[str, str]] = {}
        self._lists: set[str] = set()
        self._ended: OrderedDict[str, str] = OrderedDict()
        "Recently ended incoming ids -> sha256 if completed, else ''."
        self._rr: deque[str] = deque()
        self._out: deque[str] = deque()
        self._io: deque[IoRequest] = deque()
        self._events: deque[Event] = deque()

    # -- output

    def messages_to_send(self) -> list[str]:
        """Control messages (text) to send on the files channel, in order."""
        out = list(self._out)
        self._out.clear()
        return out

    def next_io(self) -> IoRequest | None:
        """The next disk request; run them one at a time, in order, then ``io_done``."""
        return self._io.popleft() if self._io else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def send_state(self, transfer_id: str) -> SendState | None:
        t = self._outgoing.get(transfer_id)
        return t.state if t else None

    def receive_state(self, transfer_id: str) -> ReceiveState | None:
        t = self._incoming.get(transfer_id)
        return t.state if t else None

    # -- sender API

    def send_file(
        self,
        name: str,
        size: int,
        sha256: str,
        source: str,
        now: float,
        *,
        transfer_id: str | None = None,
        direction: str = "push",
    ) -> str:
        """Offer a file; returns the transfer id. ``size`` and ``sha256`` describe the
        file as it is (``FileStore.describe``); ``source`` comes back in ``ReadChunk``.
        For a ``pull`` pass the id of the ``FileRequested``. Raises ``UnsafeFileName``
        if the receiver would refuse the name anyway."""
        sanitize_name(name)
        if not 0 <= size <= fw.MAX_FILE_SIZE or not fw.SHA256_RE.fullmatch(sha256):
            raise LocalProtocolError("send_file needs a size in range and a hex SHA-256")
        if direction not in ("push", "pull"):
            raise LocalProtocolError('direction is "push" or "pull"')
        tid = transfer_id or fw.new_transfer_id()
        if not fw.TRANSFER_ID_RE.fullmatch(tid):
            raise LocalProtocolError("a transfer id is 16 lowercase hex digits")
        old = self._outgoing.get(tid)
        if old is not None and old.state in _SEND_ACTIVE:
            raise LocalProtocolError(f"transfer {tid} is already under way")
        t = _Outgoing(
            tid, name, size, sha256, source, direction, SendState.OFFERED, 0, _Meter(0, now)
        )
        self._outgoing[tid] = t
        if len(self._outgoing) > _ENDED_MEMORY:
            for old_id in [k for k, v in self._outgoing.items() if v.state in _SEND_ENDED]:
                if len(self._outgoing) <= _ENDED_MEMORY:
                    break
                del self._outgoing[old_id]
        self._send_offer(t)
        return tid

    def resume(self, transfer_id: str, now: float) -> None:
        """Offer an interrupted file again (after reconnecting); the receiver answers
        with the offset it has."""
        t = self._outgoing.get(transfer_id)
        if t is None:
            raise LocalProtocolError(f"no transfer {transfer_id} to resume")
        t.state = _send_step(t.state, "resume")
        t.meter = _Meter(t.offset, now)
        self._send_offer(t)

    def next_chunk(self, now: float) -> ReadChunk | None:
        """The next piece to read and send, round-robin over streaming transfers; call
        only while the transport can take more. None when nothing is due."""
        for _ in range(len(self._rr)):
            tid = self._rr[0]
            self._rr.rotate(-1)
            t = self._outgoing.get(tid)
            if t is None or t.state is not SendState.STREAMING:
                self._rr.remove(tid)
                continue
            length = min(self.chunk_size, t.size - t.offset)
            read = ReadChunk(t.id, t.offset, length, t.source)
            t.offset += length
            self._progress_send(t, now)
            if t.offset >= t.size:
                self._send_to(t, "last_chunk")
            return read
        return None

    def offer_fast_path(
        self, transfer_id: str, port: int, nonce: bytes, hosts: tuple[str, ...] = ()
    ) -> int:
        """Move a streaming transfer to the fast path and tell the receiver where to
        connect (``FastPathSender.port``/``nonce``). Returns the offset the fast path
        starts at: chunks handed out since ``SendReady`` went over the channel."""
        t = self._outgoing.get(transfer_id)
        if t is None:
            raise LocalProtocolError(f"no transfer {transfer_id}")
        self._send_to(t, "fast")
        self._out.append(
            fw.encode(fw.FastPath(id=t.id, port=port, nonce=nonce, hosts=tuple(hosts)))
        )
        return t.offset

    def fast_path_sent(self, transfer_id: str, delivered: int, now: float) -> None:
        """The fast path ended on the sending side: ``delivered`` is what
        ``FastPathSender.send`` returned, or 0 if it raised. Short of the size, the
        transfer waits for the receiver's accept with the offset it really has."""
        t = self._outgoing.get(transfer_id)
        if t is None or t.state is not SendState.FAST:
            return
        t.offset = min(max(delivered, 0), t.size)
        self._send_to(t, "fast_sent" if t.offset == t.size else "fast_short")
        self._progress_send(t, now, force=True)

    # -- receiver API

    def accept(self, transfer_id: str, now: float) -> None:
        """The person takes the offered file (after ``OfferReceived``)."""
        t = self._incoming.get(transfer_id)
        if t is None:
            raise LocalProtocolError(f"no offer {transfer_id}")
        if t.state not in _RECEIVE_ACTIVE:
            return  # the peer withdrew meanwhile; a Failed event said so
        self._recv_to(t, "accept")
        self._open(t)

    def reject(
        self, transfer_id: str, now: float, *, reason: str = "declined", message: str = ""
    ) -> None:
        """The person refuses the offered file (after ``OfferReceived``)."""
        t = self._incoming.get(transfer_id)
        if t is None:
            raise LocalProtocolError(f"no offer {transfer_id}")
        if t.state not in _RECEIVE_ACTIVE:
            return
        self._recv_to(t, "reject")
        message = message or "the person declined the file"
        self._out.append(fw.encode(fw.Reject(id=t.id, reason=reason, message=message)))
        self._end_incoming(t, "")
        self._events.append(Failed(t.id, Role.RECEIVE, reason, message))

    def request(self, scope: str, path: str, now: float) -> str:
        """Ask the peer for a file (basic: a published name; advanced: a path under the
        granted directory). Returns the transfer id its offer will carry."""
        tid = fw.new_transfer_id()
        self._requests[tid] = (scope, path)
        self._out.append(fw.encode(fw.Get(id=tid, scope=scope, path=path)))
        return tid

    def fast_path_received(self, transfer_id: str, written: int, now: float) -> None:
        """The fast path ended on the receiving side with ``written`` bytes in the
        partial file: all of them finishes the file, fewer continues over the channel."""
        t = self._incoming.get(transfer_id)
        if t is None or t.state is not ReceiveState.FAST:
            return
        t.written = t.expected = min(max(written, 0), t.size)
        self._progress_recv(t, now, force=True)
        if t.written == t.size:
            self._recv_to(t, "complete")
            self._io.append(Finish(t.id))
        else:
            self._recv_to(t, "fast_short")
            self._out.append(fw.encode(fw.Accept(id=t.id, offset=t.expected)))

    # -- both sides

    def fast_path_progress(self, transfer_id: str, offset: int, now: float) -> None:
        """Bytes sent (sender) or written (receiver) so far over the fast path."""
        out = self._outgoing.get(transfer_id)
        if out is not None and out.state is SendState.FAST:
            out.offset = min(offset, out.size)
            self._progress_send(out, now)
            return
        inc = self._incoming.get(transfer_id)
        if inc is not None and inc.state is ReceiveState.FAST:
            inc.written = inc.expected = min(offset, inc.size)
            self._progress_recv(inc, now)

    def abort(
        self, transfer_id: str, now: float, *, reason: str = "cancelled", message: str = ""
    ) -> None:
        """End a transfer from this side (the person cancelled, the source file changed)."""
        message = message or "the transfer was cancelled"
        out = self._outgoing.get(transfer_id)
        if out is not None and out.state in _SEND_ACTIVE:
            self._fail_send(out, reason, message, notify=True)
            return
        inc = self._incoming.get(transfer_id)
        if inc is not None and inc.state in _RECEIVE_ACTIVE:
            self._fail_recv(inc, reason, message, notify=True)

    def refuse(self, request_id: str, reason: str, message: str) -> None:
        """Answer a ``FileRequested`` or ``ListRequested`` with a refusal."""
        self._out.append(fw.encode(fw.Reject(id=request_id, reason=reason, message=message)))

    def list_files(self, scope: str, path: str = "", start: int = 0) -> str:
        """Ask the peer for its published catalogue or a directory listing; returns the id."""
        lid = fw.new_transfer_id()
        self._lists.add(lid)
        self._out.append(fw.encode(fw.ListFiles(id=lid, scope=scope, path=path, start=start)))
        return lid

    def send_listing(self, listing: fw.Listing) -> None:
        """Answer a ``ListRequested`` (build it with ``FileStore.list_directory``)."""
        self._out.append(fw.encode(listing))

    def connection_lost(self, now: float) -> None:
        """The files channel is gone: interrupt every transfer, keeping partial files."""
        self._out.clear()
        self._requests.clear()
        self._lists.clear()
        for out in self._outgoing.values():
            if out.state in _SEND_ACTIVE:
                out.state = SendState.INTERRUPTED
                self._events.append(Interrupted(out.id, Role.SEND, out.offset))
        for inc in self._incoming.values():
            if inc.state in (ReceiveState.FINISHING, ReceiveState.COMMITTING):
                continue  # all bytes are here: finish locally
            if inc.state in _RECEIVE_ACTIVE:
                inc.state = ReceiveState.INTERRUPTED
                if inc.open_file:
                    inc.open_file = False
                    self._io.append(Discard(inc.id, inc.name, keep=True))
                self._events.append(Interrupted(inc.id, Role.RECEIVE, inc.written))

    # -- input

    def receive(self, data: str | bytes, now: float) -> None:
        """Handle one message from the files channel (text or binary)."""
        try:
            msg = fw.decode(data)
        except UnknownMessage as exc:
            self._events.append(PeerError(exc.code, exc.message))
            return
        except DecodeError as exc:
            self._malformed(data, exc)
            return
        if isinstance(msg, fw.Chunk):
            self._on_chunk(msg, now)
        elif isinstance(msg, fw.Offer):
            self._on_offer(msg, now)
        elif isinstance(msg, fw.Accept):
            self._on_accept(msg, now)
        elif isinstance(msg, fw.Reject):
            self._on_reject(msg)
        elif isinstance(msg, fw.Done):
            self._on_done(msg, now)
        elif isinstance(msg, fw.Abort):
            self._on_abort(msg)
        elif isinstance(msg, fw.FastPath):
            self._on_fast_path(msg)
        elif isinstance(msg, fw.Get):
            self._events.append(FileRequested(msg.id, msg.scope, msg.path))
        elif isinstance(msg, fw.ListFiles):
            self._events.append(ListRequested(msg.id, msg.scope, msg.path, msg.start))
        elif isinstance(msg, fw.Listing):
            if msg.id in self._lists:
                self._lists.discard(msg.id)
                self._events.append(ListingReceived(msg))
            else:
                self._events.append(PeerError("unexpected", "a listing nobody asked for"))

    def io_done(self, result: IoResult, now: float) -> None:
        """The result of a request from ``next_io``."""
        t = self._incoming.get(result.id)
        if t is None:
            return
        if isinstance(result, IoFailed):
            if t.state in _RECEIVE_ACTIVE:
                self._fail_recv(t, "io_error", f"could not store the file: {result.message}")
        elif isinstance(result, Prepared) and t.state is ReceiveState.PREPARING:
            self._on_prepared(t, result)
        elif isinstance(result, Opened) and t.state is ReceiveState.OPENING:
            self._on_opened(t, result, now)
        elif isinstance(result, Written) and t.state in (
            ReceiveState.RECEIVING,
            ReceiveState.FINISHING,
        ):
            t.written = result.end
            self._progress_recv(t, now)
        elif isinstance(result, Finished) and t.state is ReceiveState.FINISHING:
            if result.sha256 == t.sha256:
                self._recv_to(t, "verified")
                self._io.append(Commit(t.id, t.name))
            else:
                self._fail_recv(
                    t,
                    "hash_mismatch",
                    f"the file's SHA-256 is {result.sha256[:16]}…, "
                    f"the sender announced {t.sha256[:16]}…: the file was discarded",
                )
        elif isinstance(result, Committed) and t.state is ReceiveState.COMMITTING:
            self._recv_to(t, "committed")
            t.open_file = False
            t.written = t.size
            self._out.append(fw.encode(fw.Done(id=t.id, sha256=t.sha256)))
            self._end_incoming(t, t.sha256)
            self._events.append(Completed(t.id, Role.RECEIVE, result.name, t.size, t.sha256))

    # -- receiving side

    def _on_offer(self, msg: fw.Offer, now: float) -> None:
        old = self._incoming.get(msg.id)
        if old is not None and old.state in _RECEIVE_ACTIVE:
            self._out.append(
                fw.encode(fw.Reject(id=msg.id, reason="duplicate", message="id already in use"))
            )
            self._events.append(PeerError("duplicate", f"a second offer for transfer {msg.id}"))
            return
        if self._ended.get(msg.id) == msg.sha256:  # finished while our done was lost
            self._out.append(fw.encode(fw.Done(id=msg.id, sha256=msg.sha256)))
            return
        requested = self._requests.pop(msg.id, None)
        if msg.direction == "pull" and requested is None:
            self._refuse_offer(msg.id, "unexpected", "an answer to a request we did not make")
            return
        try:
            name = sanitize_name(msg.name)
        except UnsafeFileName as exc:
            self._refuse_offer(msg.id, exc.code, exc.message)
            return
        t = _Incoming(msg.id, name, msg.size, msg.sha256, msg.direction, ReceiveState.PREPARING)
        self._incoming[t.id] = t
        self._ended.pop(t.id, None)
        self._io.append(Prepare(t.id, name, t.size, t.sha256))

    def _refuse_offer(self, tid: str, reason: str, message: str) -> None:
        self._out.append(fw.encode(fw.Reject(id=tid, reason=reason, message=message)))
        if tid not in self._incoming:
            self._remember_ended(tid, "")
        self._events.append(Failed(tid, Role.RECEIVE, reason, message))

    def _on_prepared(self, t: _Incoming, result: Prepared) -> None:
        needed = t.size - min(result.resume_offset, t.size)
        if needed > max(result.free - self.keep_free, 0):
            self._recv_to(t, "refuse")
            message = (
                f"not enough free space for {t.name!r}: it needs {needed} bytes, "
                f"{result.free} are free"
            )
            self._out.append(fw.encode(fw.Reject(id=t.id, reason="no_space", message=message)))
            self._end_incoming(t, "")
            self._events.append(Failed(t.id, Role.RECEIVE, "no_space", message))
        elif result.resume_offset > 0 or t.direction == "pull" or self.auto_accept:
            self._recv_to(t, "open")
            self._open(t)
        else:
            self._recv_to(t, "ask")
            self._events.append(OfferReceived(t.id, t.name, t.size, t.sha256))

    def _open(self, t: _Incoming) -> None:
        t.open_file = True
        self._io.append(Open(t.id, t.name, t.size, t.sha256))

    def _on_opened(self, t: _Incoming, result: Opened, now: float) -> None:
        offset = min(result.offset, t.size)
        t.expected = t.written = offset
        t.meter = _Meter(offset, now)
        self._out.append(fw.encode(fw.Accept(id=t.id, offset=offset)))
        if offset == t.size:
            self._recv_to(t, "complete")
            self._io.append(Finish(t.id))
        else:
            self._recv_to(t, "opened")

    def _on_chunk(self, msg: fw.Chunk, now: float) -> None:
        t = self._incoming.get(msg.id)
        if t is None or t.state not in _RECEIVE_ACTIVE:
            if t is None and msg.id not in self._ended:
                message = f"a chunk for transfer {msg.id}, which does not exist"
                self._out.append(
                    fw.encode(fw.Abort(id=msg.id, reason="unknown_transfer", message=message))
                )
                self._events.append(Failed(msg.id, Role.RECEIVE, "unknown_transfer", message))
            return  # a chunk in flight when the transfer ended
        if t.state is not ReceiveState.RECEIVING:
            self._fail_recv(
                t, "unexpected_chunk", f"a chunk arrived while the transfer was {t.state.value}"
            )
        elif msg.offset != t.expected:
            self._fail_recv(
                t,
                "offset_mismatch",
                f"a chunk at offset {msg.offset} arrived where {t.expected} was expected",
            )
        elif msg.offset + len(msg.data) > t.size:
            self._fail_recv(
                t,
                "too_much_data",
                f"the sender sent more than the {t.size} bytes it offered",
            )
        else:
            self._io.append(Write(t.id, msg.offset, msg.data))
            t.expected += len(msg.data)
            if t.expected == t.size:
                self._recv_to(t, "complete")
                self._io.append(Finish(t.id))

    def _on_fast_path(self, msg: fw.FastPath) -> None:
        t = self._incoming.get(msg.id)
        if t is None or t.state not in _RECEIVE_ACTIVE:
            return
        if t.state is not ReceiveState.RECEIVING:
            self._fail_recv(t, "unexpected", f"a fast path offer while {t.state.value}")
            return
        self._recv_to(t, "fast")
        self._events.append(
            FastPathOffered(t.id, msg.port, msg.nonce, msg.hosts, t.expected, t.size)
        )

    def _recv_to(self, t: _Incoming, what: str) -> None:
        t.state = _recv_step(t.state, what)

    def _fail_recv(self, t: _Incoming, reason: str, message: str, *, notify: bool = True) -> None:
        if notify:
            self._out.append(fw.encode(fw.Abort(id=t.id, reason=reason, message=message)))
        self._io = deque(op for op in self._io if op.id != t.id)  # pointless now
        if t.open_file:
            t.open_file = False
            self._io.append(Discard(t.id, t.name, keep=False))
        self._end_incoming(t, "")
        self._events.append(Failed(t.id, Role.RECEIVE, reason, message))

    def _end_incoming(self, t: _Incoming, sha256: str) -> None:
        if t.state is not ReceiveState.DONE:
            t.state = ReceiveState.FAILED
        self._remember_ended(t.id, sha256)

    def _remember_ended(self, tid: str, sha256: str) -> None:
        self._ended[tid] = sha256
        self._ended.move_to_end(tid)
        while len(self._ended) > _ENDED_MEMORY:
            old, _ = self._ended.popitem(last=False)
            gone = self._incoming.get(old)
            if gone is not None and gone.state not in _RECEIVE_ACTIVE:
                del self._incoming[old]

    def _progress_recv(self, t: _Incoming, now: float, *, force: bool = False) -> None:
        if t.meter is None:
            t.meter = _Meter(t.written, now)
        t.meter.update(t.written, now)
        if t.meter.due(now) or force:
            self._events.append(_progress(t.id, Role.RECEIVE, t.written, t.size, t.meter))

    # -- sending side

    def _send_offer(self, t: _Outgoing) -> None:
        self._out.append(
            fw.encode(
                fw.Offer(id=t.id, name=t.name, size=t.size, sha256=t.sha256, direction=t.direction)
            )
        )

    def _send_to(self, t: _Outgoing, what: str) -> None:
        t.state = _send_step(t.state, what)

    def _on_accept(self, msg: fw.Accept, now: float) -> None:
        t = self._outgoing.get(msg.id)
        if t is None or t.state not in _SEND_ACTIVE:
            if t is None:
                self._unknown(msg.id, "an accept")
            return
        if msg.offset > t.size:
            self._fail_send(
                t,
                "bad_offset",
                f"the receiver asked for offset {msg.offset} of a {t.size}-byte file",
            )
            return
        self._send_to(t, "accept")
        t.offset = msg.offset
        t.meter = _Meter(t.offset, now)
        if t.id not in self._rr:
            self._rr.append(t.id)
        self._events.append(SendReady(t.id, t.offset, t.size))
        if t.offset == t.size:
            self._send_to(t, "last_chunk")

    def _on_reject(self, msg: fw.Reject) -> None:
        if msg.id in self._lists:
            self._lists.discard(msg.id)
            self._events.append(Failed(msg.id, Role.LIST, msg.reason, msg.message))
            return
        if self._requests.pop(msg.id, None) is not None:
            self._events.append(Failed(msg.id, Role.RECEIVE, msg.reason, msg.message))
            return
        t = self._outgoing.get(msg.id)
        if t is not None and t.state in _SEND_ACTIVE:
            self._fail_send(t, msg.reason, msg.message or "the receiver refused", notify=False)

    def _on_done(self, msg: fw.Done, now: float) -> None:
        t = self._outgoing.get(msg.id)
        if t is None or t.state not in _SEND_ACTIVE:
            if t is None:
                self._unknown(msg.id, "a done")
            return
        if t.state not in (SendState.SENT, SendState.FAST, SendState.OFFERED):
            self._fail_send(t, "unexpected", f"done arrived while the transfer was {t.state.value}")
        elif msg.sha256 != t.sha256:
            self._fail_send(t, "hash_mismatch", "the receiver stored a file with another SHA-256")
        else:
            self._send_to(t, "done")
            t.offset = t.size
            self._events.append(Completed(t.id, Role.SEND, t.name, t.size, t.sha256))

    def _on_abort(self, msg: fw.Abort) -> None:
        message = msg.message or "the peer ended the transfer"
        if self._requests.pop(msg.id, None) is not None:
            self._events.append(Failed(msg.id, Role.RECEIVE, msg.reason, message))
        out = self._outgoing.get(msg.id)
        if out is not None and out.state in _SEND_ACTIVE:
            self._fail_send(out, msg.reason, message, notify=False)
        inc = self._incoming.get(msg.id)
        if inc is not None and inc.state in _RECEIVE_ACTIVE:
            self._fail_recv(inc, msg.reason, message, notify=False)

    def _fail_send(self, t: _Outgoing, reason: str, message: str, *, notify: bool = True) -> None:
        if notify:
            self._out.append(fw.encode(fw.Abort(id=t.id, reason=reason, message=message)))
        t.state = SendState.FAILED
        self._events.append(Failed(t.id, Role.SEND, reason, message))

    def _unknown(self, tid: str, what: str) -> None:
        self._events.append(PeerError("unknown_transfer", f"{what} for unknown transfer {tid}"))

    def _progress_send(self, t: _Outgoing, now: float, *, force: bool = False) -> None:
        t.meter.update(t.offset, now)
        if t.meter.due(now) or force or t.offset == t.size:
            self._events.append(_progress(t.id, Role.SEND, t.offset, t.size, t.meter))

    # -- errors

    def _malformed(self, data: str | bytes, exc: DecodeError) -> None:
        tid = fw.transfer_id_of(data)
        inc = self._incoming.get(tid) if tid else None
        out = self._outgoing.get(tid) if tid else None
        if inc is not None and inc.state in _RECEIVE_ACTIVE:
            self._fail_recv(inc, "malformed", exc.message)
        elif out is not None and out.state in _SEND_ACTIVE:
            self._fail_send(out, "malformed", exc.message)
        else:
            self._events.append(PeerError(exc.code, exc.message))


def _progress(tid: str, role: Role, done: int, size: int, meter: _Meter) -> Progress:
    rate = meter.rate()
    eta = (size - done) / rate if rate > 0 else (0.0 if done >= size else None)
    return Progress(tid, role, done, size, rate, eta)
