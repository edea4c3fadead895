"""Support queues (the seeds' WebACD), as one signaling node holds them; no I/O.

A customer ``wait``s in a queue and is told its position whenever it changes. CSRs
``serve`` queues under a name (with the team's CSR token when the server has one);
each also has a personal queue ``@name``. A serving CSR sees who waits (``list``, and a
``queue`` message pushed on every change), ``take``s the longest-waiting customer (or a
chosen ticket) into the room of its session, and may ``transfer`` a ticket it holds to
a queue or to a named CSR with a message of at most 345 characters, which lets go of it.

Invariants:

- a ticket is in at most one queue's ``waiting`` list, ordered by ``since`` (the time
  the customer first asked, kept across transfers), and then has no ``holder``;
- a held ticket (``holder`` set) is in no waiting list;
- a customer connection has at most one ticket; the ticket goes when it disconnects;
- a CSR name is served by at most one connection at a time; tickets are held by name,
  so a CSR who reconnects under its name (with the token) still holds them.

The server relays nothing secret here: ``assigned`` names the public room id of the
CSR's session; the code's secret half still reaches the customer only from the CSR
(read aloud, or typed), and the join is the usual PAKE.
"""

from __future__ import annotations

import bisect
import hmac
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.protocol.signaling import (
    MAX_LISTED,
    MAX_TRANSFER_MESSAGE,
    Assigned,
    Error,
    ListQueue,
    QueuedTicket,
    QueueState,
    Serve,
    ServerMessage,
    Take,
    Taken,
    Transfer,
    Transferred,
    Wait,
    Waiting,
)

if TYPE_CHECKING:
    from signaling.server import Connection

QueueMessage = Wait | Serve | ListQueue | Take | Transfer
Out = list[tuple["Connection", ServerMessage]]

MAX_QUEUES = 1000
"Queues one node holds at once (personal ones included)."
MAX_WAITING = 1000
"Customers one queue holds; the next ``wait`` gets ``queue_full``."


@dataclass(frozen=True)
class Remember:
    """Store ``ticket``'s place (queue, first arrival, note) where other nodes find it, so
    that its customer keeps its place if this node dies (see ``Wait.ticket``)."""

    ticket: str
    queue: str
    since: float
    note: str


@dataclass(frozen=True)
class Forget:
    """``ticket`` was taken: a later ``wait`` with it is a new one."""

    ticket: str


@dataclass(frozen=True)
class Recalled:
    """A stored place, for ``Queues.wait``: ``since`` is on this node's clock."""

    ticket: str
    queue: str
    since: float
    note: str


@dataclass(eq=False)
class Ticket:
    id: str
    queue: str
    customer: Connection
    name: str
    since: float
    note: str = ""
    holder: str | None = None
    told: int = 0
    "The position the customer was last told (0: none yet)."

    def key(self) -> tuple[float, str]:
        return (self.since, self.id)


@dataclass
class _Csr:
    name: str
    conn: Connection
    queues: frozenset[str] = field(default_factory=frozenset)


def _err(conn: Connection, code: str, message: str) -> Out:
    return [(conn, Error(code=code, message=message))]


class Queues:
    """Every queue, ticket and serving CSR of one node."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.waiting: dict[str, list[Ticket]] = {}
        self.tickets: dict[str, Ticket] = {}
        self.by_customer: dict[Connection, Ticket] = {}
        self.csrs: dict[str, _Csr] = {}
        self.by_conn: dict[Connection, _Csr] = {}
        self.store: list[Remember | Forget] = []
        "What the shared store should learn; the hub drains it after each call."

    # -- input

    def handle(self, conn: Connection, msg: QueueMessage, now: float) -> Out:
        """Act on one queue message from ``conn``."""
        if isinstance(msg, Wait):
            return self._wait(conn, msg, now)
        if isinstance(msg, Serve):
            return self._serve(conn, msg, now)
        csr = self.by_conn.get(conn)
        if csr is None:
            return _err(conn, "not_serving", "send serve (your CSR name and queues) first")
        if isinstance(msg, ListQueue):
            if not self._may_see(csr, msg.queue):
                return _err(conn, "not_your_queue", f"you do not serve queue {msg.queue}")
            return [(conn, self._state(msg.queue, now))]
        if isinstance(msg, Take):
            return self._take(csr, msg, now)
        return self.transfer(csr.name, msg, now)

    def involves(self, conn: Connection) -> bool:
        """Whether ``conn`` waits in a queue or serves queues here."""
        return conn in self.by_customer or conn in self.by_conn

    def disconnect(self, conn: Connection, now: float) -> Out:
        """``conn`` went away: its ticket leaves, or it stops serving."""
        out: Out = []
        ticket = self.by_customer.pop(conn, None)
        if ticket is not None:
            del self.tickets[ticket.id]
            if ticket.holder is None:
                out += self._remove(ticket, now)
        csr = self.by_conn.pop(conn, None)
        if csr is not None and self.csrs.get(csr.name) is csr:
            del self.csrs[csr.name]
        return out

    # -- messages

    def wait(self, conn: Connection, msg: Wait, recalled: Recalled | None, now: float) -> Out:
        """``msg`` from ``conn``, with the place its ticket had if the store remembered it."""
        return self._wait(conn, msg, now, recalled)

    def _wait(
        self, conn: Connection, msg: Wait, now: float, recalled: Recalled | None = None
    ) -> Out:
        if conn in self.by_customer:
            return _err(conn, "already_waiting", "this connection already waits in a queue")
        if msg.queue.startswith("@"):
            return _err(conn, "personal_queue", "a customer cannot wait in a CSR's own queue")
        if self._full(conn, msg.queue) is not None:
            return self._full(conn, msg.queue) or []
        name = "".join(c if c.isprintable() else "?" for c in msg.name)
        if (
            recalled is not None
            and recalled.ticket == msg.ticket
            and recalled.queue == msg.queue
            and recalled.ticket not in self.tickets  # never two customers on one ticket
        ):
            since = min(now, recalled.since)
            ticket = Ticket(recalled.ticket, msg.queue, conn, name, since, recalled.note)
        else:
            ticket_id = secrets.token_hex(6)
            while ticket_id in self.tickets:
                ticket_id = secrets.token_hex(6)
            ticket = Ticket(ticket_id, msg.queue, conn, name, now)
        self.tickets[ticket.id] = ticket
        self.by_customer[conn] = ticket
        self.store.append(Remember(ticket.id, ticket.queue, ticket.since, ticket.note))
        return self._insert(ticket, now)

    def _serve(self, conn: Connection, msg: Serve, now: float) -> Out:
        if self.token is not None and not hmac.compare_digest(
            msg.token.encode("utf-8"), self.token.encode("utf-8")
        ):
            return _err(conn, "bad_token", "serving queues needs the team's CSR token")
        other = self.csrs.get(msg.name)
        if other is not None and other.conn is not conn:
            return _err(conn, "name_taken", f"CSR {msg.name} is already serving from elsewhere")
        old = self.by_conn.get(conn)
        if old is not None and old.name != msg.name:
            self.csrs.pop(old.name, None)
        csr = _Csr(msg.name, conn, frozenset(msg.queues) | {f"@{msg.name}"})
        self.csrs[msg.name] = csr
        self.by_conn[conn] = csr
        return [(conn, self._state(q, now)) for q in sorted(csr.queues)]

    def _take(self, csr: _Csr, msg: Take, now: float) -> Out:
        conn = csr.conn
        if not self._may_see(csr, msg.queue):
            return _err(conn, "not_your_queue", f"you do not serve queue {msg.queue}")
        line = self.waiting.get(msg.queue, [])
        if msg.ticket:
            found = [t for t in line if t.id == msg.ticket]
            if not found:
                return _err(conn, "no_ticket", f"ticket {msg.ticket} is not waiting in {msg.queue}")
            ticket = found[0]
        elif line:
            ticket = line[0]
        else:
            return _err(conn, "queue_empty", f"nobody is waiting in {msg.queue}")
        out = self._remove(ticket, now)
        ticket.holder = csr.name
        ticket.told = 0
        self.store.append(Forget(ticket.id))
        out.append((ticket.customer, Assigned(ticket=ticket.id, room=msg.room, csr=csr.name)))
        out.append(
            (conn, Taken(ticket=ticket.id, queue=msg.queue, name=ticket.name, note=ticket.note))
        )
        return out

    def transfer(self, holder: str, msg: Transfer, now: float) -> Out:
        """CSR ``holder`` hands ``msg.ticket`` on (also the API for a server-side tool)."""
        csr = self.csrs.get(holder)
        if csr is None:
            return []
        conn = csr.conn
        if len(msg.message) > MAX_TRANSFER_MESSAGE:
            return _err(
                conn,
                "too_long",
                f"the transfer message has {len(msg.message)} characters; "
                f"at most {MAX_TRANSFER_MESSAGE} are allowed",
            )
        ticket = self.tickets.get(msg.ticket)
        if ticket is None or ticket.holder != holder:
            return _err(conn, "not_holder", f"you do not hold ticket {msg.ticket}")
        if msg.csr:
            if msg.csr not in self.csrs:
                return _err(conn, "no_such_csr", f"CSR {msg.csr} is not serving now")
            target = f"@{msg.csr}"
        else:
            if msg.queue.startswith("@"):
                return _err(conn, "personal_queue", 'name the CSR with "csr", not a queue')
            target = msg.queue
        full = self._full(conn, target)
        if full is not None:
            return full
        ticket.holder = None
        ticket.queue = target
        ticket.note = msg.message
        self.store.append(Remember(ticket.id, ticket.queue, ticket.since, ticket.note))
        out: Out = [(conn, Transferred(ticket=ticket.id, queue=target))]
        return out + self._insert(ticket, now)

    # -- state

    def _full(self, conn: Connection, queue: str) -> Out | None:
        if queue not in self.waiting and len(self.waiting) >= MAX_QUEUES:
            return _err(conn, "server_full", "this server holds as many queues as it can")
        if len(self.waiting.get(queue, ())) >= MAX_WAITING:
            return _err(conn, "queue_full", f"queue {queue} is full; try again later")
        return None

    def _may_see(self, csr: _Csr, queue: str) -> bool:
        return queue in csr.queues

    def _insert(self, ticket: Ticket, now: float) -> Out:
        line = self.waiting.setdefault(ticket.queue, [])
        keys = [t.key() for t in line]
        line.insert(bisect.bisect(keys, ticket.key()), ticket)
        return self._changed(ticket.queue, now)

    def _remove(self, ticket: Ticket, now: float) -> Out:
        line = self.waiting.get(ticket.queue)
        if line is None or ticket not in line:
            return []
        line.remove(ticket)
        out = self._changed(ticket.queue, now)
        if not line:
            del self.waiting[ticket.queue]
        return out

    def _changed(self, queue: str, now: float) -> Out:
        """Tell the customers of ``queue`` whose position moved, and its CSRs the list."""
        out: Out = []
        for pos, t in enumerate(self.waiting.get(queue, []), start=1):
            if t.told != pos:
                t.told = pos
                out.append((t.customer, Waiting(queue=queue, ticket=t.id, position=pos)))
        state = self._state(queue, now)
        for csr in self.csrs.values():
            if queue in csr.queues:
                out.append((csr.conn, state))
        return out

    def _state(self, queue: str, now: float) -> QueueState:
        line = self.waiting.get(queue, [])
        shown = tuple(
            QueuedTicket(ticket=t.id, name=t.name, waited=int(max(0.0, now - t.since)), note=t.note)
            for t in line[:MAX_LISTED]
        )
        return QueueState(queue=queue, waiting=shown, total=len(line))
