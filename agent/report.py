"""CSR activity reports: what happened in a session, read from its log.

The session log is the session's record (DESIGN.md, "Session state"). :func:`build`
turns its entries into a :class:`Report`; :func:`to_json` and :func:`to_html` render
it; :func:`write_reports` stores both under ``identity.home()/"sessions"`` as
``<session_id>.json`` and ``<session_id>.html``, which ``peerdesk sessions`` and
``peerdesk report ID`` read back.

Every string in a log is hostile input: names and chat come from other people's
machines. :func:`build` never raises on a malformed entry (it leaves it out and
says so in ``warnings``), drops control characters from every string (so a chat
line cannot drive a terminal), and :func:`to_html` escapes every string it prints
and forbids scripts and remote loads with a Content-Security-Policy.

Log entries, as the log writes them (unknown fields are ignored)::

    {"v": 1, "epoch": E, "seq": S, "prev": HEX, "author": PEER_ID, "key": B64,
     "ts": UNIX_SECONDS, "kind": KIND, "body": {...}, "sig": B64}

Report JSON (``to_json``; ``"peerdesk_report": 1``). Times are ISO 8601 UTC with
milliseconds (``"2025-03-04T10:15:02.125Z"``) or ``null`` when unknown; peer ids
are the 10-character ids of ``peer_id``. Fields marked *derived* are written for
readers and ignored by :func:`from_json`::

    peerdesk_report  1
    session_id       "20250304-101502-482913"   (also the file name)
    room             "482913"
    title            "Support session 482913: Carol with Alice"
    started, ended   time | null     (ended null: no session_end, unfinished)
    last_activity    time | null     (the newest entry's time)
    end_reason       str | null      ended_by  id | null
    primary_csr      id | null       (after any failover)
    entries          int             (log entries read)
    names            {id: name}      (everyone the log names)
    participants     [{id, name, role: csr|assistant|customer|unknown, primary: bool,
                       stints: [{joined, left, how: left|lost|end|null}],
                       joined, left, how_left (derived)}]
    timeline         [{at, kind, text}]          (human sentences, log order)
    grants           [{id, cap, csr, customer, requested, state, history: [{at, state}]}]
                       state: requested|pending|granted|denied|revoked
    control          [{at, holder: id|null, by: id|null, token: [epoch, seq]|null}]
    files            [{id, name, size|null, sha256, direction, by, state, first, last}]
    chat             [{at, sender, name, text, to: [id]|null}]   (null: everyone)
    notes            [{at, by, text|null, sealed: bool}]         (text null: still sealed)
    sysinfo          [{at, customer, items: [[label, value]]}]
    epochs           [{at, epoch, sequencer, votes: [id], takeover: bool}]
    warnings         [str]           (entries left out, and why)
    duration_s       float | null    (derived)   finished  bool (derived)

Example::

    python3 -c "from agent import report; print(report.list_sessions(report.sessions_dir()))"
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import re
import sys
import types
import unicodedata
import webbrowser
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from agent import __version__, identity
from agent.errors import LocalProtocolError, PeerDeskError

FORMAT_VERSION = 1
SESSIONS_DIR = "sessions"
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
MAX_REPORT_BYTES = 64 * 1024 * 1024
"A report file larger than this is refused."
MAX_TEXT = 16 * 1024
"Chat lines and notes longer than this many characters are cut."
MAX_NAME = 64
ROLES = ("csr", "assistant", "customer")
CONSENT_STATES = ("pending", "granted", "denied", "revoked")
CAP_LABELS = {
    "view": "screen viewing",
    "control": "remote control",
    "files": "file transfer",
    "files_advanced": "file browsing and transfer",
    "sysinfo": "system information",
    "clipboard": "clipboard",
    "recording": "session recording",
}

NoteOpener = Callable[[Mapping[str, Any]], "str | None"]
"Given a note entry whose body is ``{sealed, by}``, return its plaintext or ``None``."


# --- the report -------------------------------------------------------------------


@dataclass(frozen=True)
class Stint:
    """One stretch of time a participant spent in the session."""

    joined: datetime | None
    "``None`` when the log does not say (e.g. it starts with them leaving)."
    left: datetime | None
    "``None``: still there when the log ends (the session's end closes every stint)."
    how: str | None
    """``left`` (said goodbye), ``lost`` (connection lost), ``end`` (there until the
    session ended) or ``None``."""


@dataclass(frozen=True)
class Participant:
    """Someone who took part: a CSR, an assistant CSR or a customer."""

    _derived: ClassVar[tuple[str, ...]] = ("joined", "left", "how_left")
    id: str
    name: str
    role: str
    "``csr``, ``assistant``, ``customer`` or ``unknown``."
    primary: bool
    "Primary (CSR or customer) when last seen."
    stints: tuple[Stint, ...]

    @property
    def joined(self) -> datetime | None:
        """When they first joined."""
        return self.stints[0].joined if self.stints else None

    @property
    def left(self) -> datetime | None:
        """When they last left; ``None`` while still present at the end."""
        return self.stints[-1].left if self.stints else None

    @property
    def how_left(self) -> str | None:
        return self.stints[-1].how if self.stints else None


@dataclass(frozen=True)
class Event:
    """One line of the timeline."""

    at: datetime | None
    kind: str
    "The log entry's kind (``participant``, ``consent``, ``control``, ...)."
    text: str
    "A sentence for people, with names resolved."


@dataclass(frozen=True)
class GrantChange:
    at: datetime | None
    state: str


@dataclass(frozen=True)
class Grant:
    """One capability request and what the customer did with it."""

    id: str
    cap: str
    csr: str
    customer: str
    requested: datetime | None
    state: str
    "Latest state: ``requested``, ``pending``, ``granted``, ``denied`` or ``revoked``."
    history: tuple[GrantChange, ...]


@dataclass(frozen=True)
class ControlChange:
    at: datetime | None
    holder: str | None
    "Who holds control from now on; ``None``: released."
    by: str | None
    token: tuple[int, int] | None
    "The control token ``(epoch, seq)``."


@dataclass(frozen=True)
class FileRecord:
    """A file sent to or fetched from the customer; the latest of its entries."""

    id: str
    name: str
    size: int | None
    "Bytes."
    sha256: str
    direction: str
    "``to_customer`` or ``from_customer``."
    by: str
    state: str
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True)
class ChatLine:
    at: datetime | None
    sender: str
    name: str
    text: str
    to: tuple[str, ...] | None
    "Recipients' ids, or ``None`` for everyone."


@dataclass(frozen=True)
class Note:
    at: datetime | None
    by: str
    text: str | None
    "``None`` when the note is sealed and no plaintext was given."
    sealed: bool


@dataclass(frozen=True)
class SysInfo:
    at: datetime | None
    customer: str
    items: tuple[tuple[str, str], ...]
    "``(label, value)`` pairs summarising the customer's machine."


@dataclass(frozen=True)
class EpochChange:
    at: datetime | None
    epoch: int
    sequencer: str
    "The CSR who orders the log (the primary CSR) from this epoch on."
    votes: tuple[str, ...]
    takeover: bool
    "True when votes were cast: a take-over after the primary vanished (a failover)."


@dataclass(frozen=True)
class Report:
    """Everything a team lead wants to know about one session."""

    _derived: ClassVar[tuple[str, ...]] = ("duration_s", "finished")
    session_id: str
    room: str
    title: str
    started: datetime | None
    ended: datetime | None
    "``None`` when the log has no ``session_end``: unfinished, or cut short."
    last_activity: datetime | None
    end_reason: str | None
    ended_by: str | None
    primary_csr: str | None
    entries: int
    names: tuple[tuple[str, str], ...] = field(metadata={"json": "object"})
    participants: tuple[Participant, ...]
    timeline: tuple[Event, ...]
    grants: tuple[Grant, ...]
    control: tuple[ControlChange, ...]
    files: tuple[FileRecord, ...]
    chat: tuple[ChatLine, ...]
    notes: tuple[Note, ...]
    sysinfo: tuple[SysInfo, ...]
    epochs: tuple[EpochChange, ...]
    warnings: tuple[str, ...]

    @property
    def finished(self) -> bool:
        """True when the log records the session's end."""
        return self.ended is not None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end; ``None`` while unfinished."""
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()

    def name_of(self, pid: str | None) -> str:
        """A person's display name, or their id when the log never named them."""
        if pid is None:
            return "nobody"
        return dict(self.names).get(pid, pid)

    @property
    def customers(self) -> tuple[Participant, ...]:
        """Customers, primary first."""
        people = [p for p in self.participants if p.role == "customer"]
        return tuple(sorted(people, key=lambda p: not p.primary))

    @property
    def csrs(self) -> tuple[Participant, ...]:
        """CSRs and assistant CSRs, the primary first."""
        people = [p for p in self.participants if p.role in ("csr", "assistant")]
        return tuple(sorted(people, key=lambda p: p.id != self.primary_csr))


# --- reading the log --------------------------------------------------------------

_STRIP = {0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
"What :func:`build` never leaves in a string, so a report file holding it was not ours."


def _clean_text(value: object, limit: int = MAX_TEXT, *, multiline: bool = True) -> str:
    """A log string fit to show: no control or bidi-override characters, cut to ``limit``."""
    if not isinstance(value, str):
        return ""
    out = []
    for ch in value[: limit * 2]:
        if ch in "\n\t" and multiline:
            out.append(ch)
        elif ch in "\r\n\t":
            out.append(" ")
        elif ord(ch) in _STRIP or unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            continue
        else:
            out.append(ch)
    text = "".join(out)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clean_line(value: object, limit: int = 200) -> str:
    return _clean_text(value, limit, multiline=False).strip()


def _clean_name(value: object) -> str:
    return _clean_line(value, MAX_NAME)


def _ident(value: object) -> str:
    """An id from the log: a short printable string (ints are accepted as ids)."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value)
    return _clean_line(value, 64)


def _ms_time(ts: object) -> datetime | None:
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return None
    if not math.isfinite(ts) or not 0 <= ts < 1e11:
        return None
    ms = round(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=(ms % 1000) * 1000)


def _int(value: object) -> int | None:
    """An integer from the log, or ``None`` (bools, floats and absurd sizes are not)."""
    return value if type(value) is int and -(2**63) <= value < 2**63 else None


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # pragma: no cover


def _cap(cap: str) -> str:
    return CAP_LABELS.get(cap, cap or "an unnamed capability")


def _summarize_sysinfo(data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``(label, value)`` lines for the fields of ``agent.sysinfo.collect()``; other
    top-level fields are shown as compact JSON."""

    def sub(key: str) -> Mapping[str, Any]:
        v = data.get(key)
        return v if isinstance(v, Mapping) else {}

    def txt(v: object) -> str:
        if isinstance(v, bool) or v is None:
            return ""
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, int):
            return str(v) if _int(v) is not None else "?"
        return _clean_line(v)

    def num(v: object) -> int | None:
        if isinstance(v, float) and math.isfinite(v) and abs(v) < 2**63:
            return int(v)
        return _int(v)

    def rows(key: str) -> list[Mapping[str, Any]]:
        v = data.get(key)
        return [r for r in v if isinstance(r, Mapping)][:16] if isinstance(v, list) else []

    items: list[tuple[str, str]] = []
    os_ = sub("os")
    if os_:
        system = " ".join(x for x in (txt(os_.get("system")), txt(os_.get("release"))) if x)
        machine = txt(os_.get("machine"))
        items.append(("Operating system", f"{system} ({machine})" if machine else system))
        if txt(os_.get("hostname")):
            items.append(("Hostname", txt(os_.get("hostname"))))
        uptime = num(os_.get("uptime_s"))
        if uptime is not None:
            items.append(("Uptime", _duration(float(uptime))))
    cpu = sub("cpu")
    if cpu:
        parts = [txt(cpu.get("model"))]
        if num(cpu.get("logical")) is not None:
            parts.append(f"{num(cpu.get('logical'))} logical cores")
        if num(cpu.get("load_percent")) is not None:
            parts.append(f"{txt(cpu.get('load_percent'))}% busy")
        items.append(("CPU", ", ".join(p for p in parts if p)))
    mem = sub("memory")
    if mem:
        total, avail = num(mem.get("total")), num(mem.get("available"))
        value = _size(total)
        if avail is not None:
            value += f", {_size(avail)} available"
        items.append(("Memory", value))
    disks = rows("disks")
    if disks:
        items.append(
            (
                "Disks",
                "; ".join(
                    f"{txt(d.get('mount'))} {_size(num(d.get('free')))} free "
                    f"of {_size(num(d.get('total')))}"
                    for d in disks
                ),
            )
        )
    if "displays" in data:
        shown = [
            f"{num(d.get('width'))}x{num(d.get('height'))}"
            for d in rows("displays")
            if num(d.get("width")) is not None
        ]
        items.append(("Displays", ", ".join(shown) or "none"))
    nets = [
        n
        for n in rows("network")
        if n.get("up") is not False and txt(n.get("name")) not in ("lo", "lo0", "")
    ]
    if nets:
        shown = []
        for n in nets[:8]:
            addrs = n.get("addresses")
            first = txt(addrs[0]) if isinstance(addrs, list) and addrs else ""
            shown.append(f"{txt(n.get('name'))} {first}".strip())
        items.append(("Network", ", ".join(shown)))
    agent = sub("agent")
    if agent:
        items.append(
            ("Agent", f"PeerDesk {txt(agent.get('version'))} (Python {txt(agent.get('python'))})")
        )
    known = {"os", "cpu", "memory", "disks", "displays", "network", "agent"}
    for key in list(data)[:32]:
        if key not in known:
            try:
                value = json.dumps(data[key], ensure_ascii=False, default=str)
            except (TypeError, ValueError, RecursionError):
                value = "?"
            items.append((_clean_line(key, 40) or "?", _clean_line(value)))
    return tuple(items)


class _Builder:
    """One pass over the log; see :func:`build`."""

    def __init__(self, open_note: NoteOpener | None) -> None:
        self.open_note = open_note
        self.names: dict[str, str] = {}
        self.room = ""
        self.started: datetime | None = None
        self.ended: datetime | None = None
        self.last: datetime | None = None
        self.end_reason: str | None = None
        self.ended_by: str | None = None
        self.primary_csr: str | None = None
        self.people: dict[str, dict[str, Any]] = {}
        self.timeline: list[Event] = []
        self.grants: dict[tuple[str, str, str], dict[str, Any]] = {}
        "(customer, csr, request id) -> the grant's fields."
        self.control: list[ControlChange] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.chat: list[ChatLine] = []
        self.notes: list[Note] = []
        self.sysinfo: list[SysInfo] = []
        self.epochs: list[EpochChange] = []
        self.warnings: list[str] = []
        self.unknown: dict[str, int] = {}
        self.first_ts: datetime | None = None
        self.n = 0
        self.entry: Mapping[str, Any] = {}
        self.author = ""
        self.opener = ""

    def name(self, pid: str | None) -> str:
        if not pid:
            return "someone"
        return self.names.get(pid) or pid

    def learn_names(self, entries: Sequence[object]) -> None:
        for e in entries:
            if not isinstance(e, Mapping) or not isinstance(e.get("body"), Mapping):
                continue
            body, kind = e["body"], e.get("kind")
            pairs = {
                "session_start": ("primary", "name"),
                "participant": ("peer", "name"),
                "chat": ("from", "name"),
            }.get(kind if isinstance(kind, str) else "")
            if pairs:
                pid, name = _ident(body.get(pairs[0])), _clean_name(body.get(pairs[1]))
                if pid and name:
                    self.names[pid] = name

    def event(self, at: datetime | None, kind: str, text: str) -> None:
        self.timeline.append(Event(at, kind, text))

    def person(self, pid: str, role: str | None = None) -> dict[str, Any]:
        p = self.people.get(pid)
        if p is None:
            p = {"role": role or "unknown", "primary": False, "stints": []}
            self.people[pid] = p
        elif role and (p["role"] == "unknown" or role != p["role"]):
            p["role"] = role
        return p

    def make_primary(self, pid: str) -> None:
        role = self.people[pid]["role"]
        group = ("customer",) if role == "customer" else ("csr", "assistant")
        for other_id, other in self.people.items():
            if other["role"] in group:
                other["primary"] = other_id == pid
        if role != "customer":
            self.people[pid]["role"] = "csr"  # an assistant who takes over is the primary CSR
            self.primary_csr = pid

    def feed(self, n: int, entry: object) -> None:
        if not isinstance(entry, Mapping):
            self.warnings.append(f"entry {n} is not an object; left out")
            return
        kind = entry.get("kind")
        body = entry.get("body")
        if not isinstance(kind, str):
            self.warnings.append(f"entry {n} has no kind; left out")
            return
        kind = _clean_line(kind, 40)
        if not isinstance(body, Mapping):
            self.warnings.append(f"entry {n} ({kind}) has no body; left out")
            return
        at = _ms_time(entry.get("ts"))
        if at is None:
            self.warnings.append(f"entry {n} ({kind}) has no valid time")
        else:
            self.last = at if self.last is None else max(self.last, at)
            self.first_ts = at if self.first_ts is None else min(self.first_ts, at)
        handler = getattr(self, f"on_{kind}", None)
        if handler is None:
            self.unknown[kind] = self.unknown.get(kind, 0) + 1
            return
        self.n, self.entry, self.author = n, entry, _ident(entry.get("author"))
        try:
            handler(at, body)
        except _Skip as exc:
            self.warnings.append(f"entry {n} ({kind}): {exc}; left out")

    # One handler per kind: (time, body); self.n, self.entry and self.author describe
    # the entry being read. A malformed body raises _Skip.

    def on_session_start(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        if self.started is not None or self.room:
            raise _Skip("a second session_start")
        self.room = _clean_line(body.get("room"), 64)
        self.started = at
        primary = _ident(body.get("primary")) or self.author
        self.opener = primary
        if primary:
            p = self.person(primary, "csr")
            p["stints"].append([at, None, None])
            self.make_primary(primary)
        room = f" in room {self.room}" if self.room else ""
        self.event(at, "session_start", f"Session started by {self.name(primary)}{room}")

    def on_participant(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        pid = _ident(body.get("peer"))
        if not pid:
            raise _Skip("no peer")
        role = body.get("role") if body.get("role") in ROLES else None
        action = body.get("action")
        p = self.person(pid, role)
        stints: list[list[Any]] = p["stints"]
        who = self.name(pid)
        if action == "joined":
            if not stints or stints[-1][1] is not None:
                stints.append([at, None, None])
            if isinstance(body.get("primary"), bool):
                if body["primary"]:
                    self.make_primary(pid)
                else:
                    p["primary"] = False
            label = _role_label(p["role"], p["primary"])
            self.event(at, "participant", f"{who} joined as {label}")
        elif action in ("left", "lost"):
            if stints and stints[-1][1] is None:
                stints[-1][1], stints[-1][2] = at, action
            else:
                stints.append([None, at, action])
            text = "left" if action == "left" else "lost the connection"
            self.event(at, "participant", f"{who} {text}")
        elif action == "promoted":
            self.make_primary(pid)
            what = "customer" if p["role"] == "customer" else "CSR"
            self.event(at, "participant", f"{who} became the primary {what}")
        else:
            raise _Skip("unknown participant action")

    def on_request(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        gid = _ident(body.get("id"))
        if not gid:
            raise _Skip("no request id")
        cap = _clean_line(body.get("cap"), 40)
        csr = _ident(body.get("csr")) or self.author
        customer = _ident(body.get("customer"))
        g = self.grants.setdefault(
            (customer, csr, gid),
            {"id": gid, "cap": cap, "csr": csr, "customer": customer, "requested": at,
             "history": []},
        )  # fmt: skip
        g["requested"] = g["requested"] or at
        g["history"].append(GrantChange(at, "requested"))
        self.event(at, "request", f"{self.name(csr)} asked {self.name(customer)} for {_cap(cap)}")

    def on_consent(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        gid = _ident(body.get("id"))
        state = body.get("state")
        if not gid or state not in CONSENT_STATES:
            raise _Skip("no id or an unknown state")
        csr = _ident(body.get("csr"))
        customer = _ident(body.get("customer")) or self.author
        # Request ids restart with every customer's agent (and every CSR's): a grant is
        # the request of one CSR to one customer.
        g = self.grants.setdefault(
            (customer, csr, gid),
            {
                "id": gid,
                "cap": _clean_line(body.get("cap"), 40),
                "csr": csr,
                "customer": customer,
                "requested": None,
                "history": [],
            },
        )
        g["history"].append(GrantChange(at, state))
        csr, customer, cap = self.name(g["csr"]), self.name(g["customer"]), _cap(g["cap"])
        text = {
            "pending": f"{customer} was asked to allow {cap} for {csr}",
            "granted": f"{customer} allowed {cap} for {csr}",
            "denied": f"{customer} refused {cap} to {csr}",
            "revoked": f"{customer} stopped {cap} for {csr}",
        }[state]
        why = _clean_line(body.get("reason"), 200)
        own = why in ("left", "stopped sharing", "no answer", "pre-accepted")
        if why == "released" and state == "revoked":
            text = f"{csr} stopped {cap} on {customer}'s machine"
        elif why and state == "revoked" and not own:  # not the customer's choice: it could not
            text = f"{cap.capitalize()} for {csr} could not be given on {customer}'s machine: {why}"
        elif why:
            text += f" ({why})"
        self.event(at, "consent", text)

    def on_control(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        holder_raw = body.get("holder")
        holder = None if holder_raw is None else _ident(holder_raw)
        if holder == "":
            raise _Skip("holder is not an id")
        by = _ident(body.get("by")) or self.author or None
        token_raw = body.get("token")
        token: tuple[int, int] | None = None
        if isinstance(token_raw, list) and len(token_raw) == 2:
            e, s = _int(token_raw[0]), _int(token_raw[1])
            token = (e, s) if e is not None and s is not None else None
        self.control.append(ControlChange(at, holder, by, token))
        if holder is None:
            text = f"Control released by {self.name(by)}" if by else "Control released"
        elif by and by != holder:
            text = f"{self.name(by)} passed control to {self.name(holder)}"
        else:
            text = f"{self.name(holder)} took control"
        self.event(at, "control", text)

    def on_chat(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        sender = _ident(body.get("from")) or self.author
        text = _clean_text(body.get("text"))
        if not isinstance(body.get("text"), str):
            raise _Skip("no text")
        to_raw = body.get("to")
        to: tuple[str, ...] | None = None
        if isinstance(to_raw, list):
            to = tuple(t for t in (_ident(x) for x in to_raw[:64]) if t)
        name = _clean_name(body.get("name")) or self.name(sender)
        self.chat.append(ChatLine(at, sender, name, text, to))

    def on_note(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        by = _ident(body.get("by")) or self.author
        if isinstance(body.get("text"), str):
            self.notes.append(Note(at, by, _clean_text(body["text"]), sealed=False))
            return
        if not isinstance(body.get("sealed"), str):
            raise _Skip("neither text nor sealed")
        plain: str | None = None
        if self.open_note is not None:
            try:
                opened = self.open_note(self.entry)
            except Exception as exc:  # the caller's decryption; any failure keeps it sealed
                problem = _clean_line(str(exc)) or type(exc).__name__
                self.warnings.append(f"entry {self.n} (note) could not be opened: {problem}")
                opened = None
            plain = _clean_text(opened) if isinstance(opened, str) else None
        self.notes.append(Note(at, by, plain, sealed=True))

    def on_file(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        fid = _ident(body.get("id"))
        if not fid:
            raise _Skip("no file id")
        size = _int(body.get("size"))
        new = {
            "name": _clean_line(body.get("name"), 255),
            "size": size if size is not None and size >= 0 else None,
            "sha256": _clean_line(body.get("sha256"), 64).lower(),
            "direction": body.get("direction")
            if body.get("direction") in ("to_customer", "from_customer")
            else "unknown",
            "by": _ident(body.get("by")) or self.author,
            "state": _clean_line(body.get("state"), 40) or "unknown",
        }
        f = self.files.get(fid)
        if f is None:
            f = self.files[fid] = {**new, "first": at, "last": at}
        else:
            for k, v in new.items():
                if v not in ("", None, "unknown"):
                    f[k] = v
            f["last"] = at
        where = "to the customer" if f["direction"] == "to_customer" else "from the customer"
        text = f"File {f['name'] or fid} ({_size(f['size'])}) {where}: {f['state']}"
        self.event(at, "file", text)

    def on_sysinfo(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        data = body.get("data")
        if not isinstance(data, Mapping):
            raise _Skip("no data")
        customer = _ident(body.get("customer")) or self.author
        self.sysinfo.append(SysInfo(at, customer, _summarize_sysinfo(data)))
        self.event(at, "sysinfo", f"System information received from {self.name(customer)}")

    def on_epoch(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        epoch = _int(body.get("epoch"))
        sequencer = _ident(body.get("sequencer"))
        if epoch is None or not sequencer:
            raise _Skip("no epoch number or sequencer")
        raw_votes = body.get("votes")
        votes: list[str] = []
        if isinstance(raw_votes, list):
            for v in raw_votes[:64]:
                if isinstance(v, Mapping):
                    v = v.get("peer", v.get("voter", v.get("by")))
                if _ident(v):
                    votes.append(_ident(v))
        takeover = bool(votes)
        self.epochs.append(EpochChange(at, epoch, sequencer, tuple(votes), takeover))
        p = self.person(sequencer, None)
        if p["role"] in ("unknown", "customer"):
            p["role"] = "csr"
        self.make_primary(sequencer)
        who = self.name(sequencer)
        if takeover:
            voters = ", ".join(self.name(v) for v in votes)
            text = f"Epoch {epoch}: {who} took over as primary CSR (failover; votes: {voters})"
        else:
            text = f"Epoch {epoch}: the primary CSR role passed to {who}"
        self.event(at, "epoch", text)

    def on_session_end(self, at: datetime | None, body: Mapping[str, Any]) -> None:
        if self.ended is not None:
            raise _Skip("a second session_end")
        self.ended = at or self.last
        self.ended_by = _ident(body.get("by")) or self.author or None
        self.end_reason = _clean_line(body.get("reason")) or None
        reason = f" ({self.end_reason})" if self.end_reason else ""
        self.event(at, "session_end", f"Session ended by {self.name(self.ended_by)}{reason}")
        for person in self.people.values():  # everyone still there was there until the end
            stints = person["stints"]
            if stints and stints[-1][1] is None:
                stints[-1][1], stints[-1][2] = self.ended, "end"

    def finish(self, count: int, session_id: str | None) -> Report:
        if self.started is None:
            self.started = self.first_ts
            if self.started is not None:
                self.warnings.append("the log has no session_start; times start at its first entry")
        for kind, k in sorted(self.unknown.items()):
            self.warnings.append(
                f"{k} entr{'y' if k == 1 else 'ies'} of unknown kind {kind!r} left out"
            )
        participants = tuple(
            Participant(
                pid,
                self.names.get(pid, pid),
                p["role"],
                p["primary"],
                tuple(Stint(j, left, how) for j, left, how in p["stints"]),
            )
            for pid, p in self.people.items()
        )
        grants = tuple(
            Grant(
                g["id"],
                g["cap"],
                g["csr"],
                g["customer"],
                g["requested"],
                g["history"][-1].state,
                tuple(g["history"]),
            )
            for g in self.grants.values()
        )
        files = tuple(
            FileRecord(
                fid,
                f["name"],
                f["size"],
                f["sha256"],
                f["direction"],
                f["by"],
                f["state"],
                f["first"],
                f["last"],
            )
            for fid, f in self.files.items()
        )
        if session_id is None:
            session_id = _derive_id(self.started, self.room)
        elif not SESSION_ID_RE.fullmatch(session_id):
            raise LocalProtocolError(
                f"{session_id!r} cannot be a session id (letters, digits, '-' and '_' only)"
            )
        names = self.names
        csr = names.get(self.opener or self.primary_csr or "", "")
        customers = [
            names.get(pid, pid) for pid, p in self.people.items() if p["role"] == "customer"
        ]
        title = f"Support session {self.room or session_id}"
        if csr and customers:
            title += f": {csr} with {', '.join(customers[:3])}"
        elif csr:
            title += f": {csr}"
        return Report(
            session_id=session_id,
            room=self.room,
            title=title,
            started=self.started,
            ended=self.ended,
            last_activity=self.last,
            end_reason=self.end_reason,
            ended_by=self.ended_by,
            primary_csr=self.primary_csr,
            entries=count,
            names=tuple(sorted(self.names.items())),
            participants=participants,
            timeline=tuple(self.timeline),
            grants=grants,
            control=tuple(self.control),
            files=files,
            chat=tuple(self.chat),
            notes=tuple(self.notes),
            sysinfo=tuple(self.sysinfo),
            epochs=tuple(self.epochs),
            warnings=tuple(self.warnings),
        )


class _Skip(Exception):
    """A malformed entry: left out of the report, with a warning."""


def _role_label(role: str, primary: bool) -> str:
    if role == "csr":
        return "primary CSR" if primary else "CSR"
    if role == "assistant":
        return "assistant CSR"
    if role == "customer":
        return "primary customer" if primary else "customer"
    return "participant"


def _derive_id(started: datetime | None, room: str) -> str:
    safe_room = re.sub(r"[^A-Za-z0-9]", "", room)[:32] or "room"
    if started is None:
        return f"session-{safe_room}"
    return f"{started:%Y%m%d-%H%M%S}-{safe_room}"


def build(
    entries: Sequence[Mapping[str, Any]],
    *,
    session_id: str | None = None,
    open_note: NoteOpener | None = None,
) -> Report:
    """The report of one session from its log entries, in log order.

    ``session_id`` defaults to ``YYYYMMDD-HHMMSS-ROOM`` from the session's start (UTC).
    ``open_note(entry)`` may return the plaintext of a sealed note; without it sealed
    notes show as "(encrypted note)". Malformed entries are left out with a warning;
    an empty log raises ``LocalProtocolError``.
    """
    if not entries:
        raise LocalProtocolError("the session log is empty: there is nothing to report")
    b = _Builder(open_note)
    b.learn_names(entries)
    for n, entry in enumerate(entries, start=1):
        b.feed(n, entry)
    return b.finish(len(entries), session_id)


# --- JSON -------------------------------------------------------------------------


def _iso(dt: datetime) -> str:
    dt = dt.astimezone(UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


def _encode(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            v = getattr(value, f.name)
            out[f.name] = {k: n for k, n in v} if f.metadata.get("json") == "object" else _encode(v)
        for name in getattr(type(value), "_derived", ()):
            out[name] = _encode(getattr(value, name))
        return out
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, float):
        return round(value, 3)
    return value


def to_dict(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data (see the module docstring for the schema)."""
    data: dict[str, Any] = {"peerdesk_report": FORMAT_VERSION}
    data.update(_encode(report))
    return data


def to_json(report: Report) -> str:
    """The report as JSON: fixed key order, two-space indent, UTF-8 text."""
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


class _BadReport(Exception):
    pass


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _decode(inner, value, where)
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise _BadReport(f"{where} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _BadReport(f"{where} must have {len(args)} items")
        return tuple(
            _decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if tp is datetime:
        if not isinstance(value, str) or len(value) > 40:
            raise _BadReport(f"{where} must be a time")
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _BadReport(f"{where} is not an ISO 8601 time") from None
        if dt.tzinfo is None:
            raise _BadReport(f"{where} has no time zone")
        return dt.astimezone(UTC)
    if tp is bool:
        if not isinstance(value, bool):
            raise _BadReport(f"{where} must be true or false")
        return value
    if tp is int:
        if type(value) is not int:
            raise _BadReport(f"{where} must be a whole number")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _BadReport(f"{where} must be text")
        if _UNSAFE.search(value):
            raise _BadReport(f"{where} holds control characters")
        return value
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, dict):
            raise _BadReport(f"{where} must be an object")
        hints = get_type_hints(tp)
        kwargs: dict[str, Any] = {}
        for f in fields(tp):
            if f.name not in value:
                raise _BadReport(f"{where}.{f.name} is missing")
            v = value[f.name]
            if f.metadata.get("json") == "object":
                if not isinstance(v, dict):
                    raise _BadReport(f"{where}.{f.name} must be an object")
                v = [[k, n] for k, n in v.items()]
            kwargs[f.name] = _decode(hints[f.name], v, f"{where}.{f.name}")
        return tp(**kwargs)
    raise TypeError(f"cannot decode {tp!r}")  # pragma: no cover - a bug here, not bad input


def from_json(text: str | bytes, source: str = "report") -> Report:
    """A report back from :func:`to_json` output. Raises ``LocalProtocolError`` naming
    the problem when the text is not a report this agent can read."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise LocalProtocolError(f"{source} is nested too deeply", code="bad_report") from None
    except ValueError as exc:
        raise LocalProtocolError(f"{source} is not valid JSON ({exc})", code="bad_report") from None
    if not isinstance(data, dict) or "peerdesk_report" not in data:
        raise LocalProtocolError(f"{source} is not a PeerDesk session report", code="bad_report")
    if data["peerdesk_report"] != FORMAT_VERSION or type(data["peerdesk_report"]) is not int:
        raise LocalProtocolError(
            f"{source} is a report of version {data['peerdesk_report']!r}; this agent reads "
            f"version {FORMAT_VERSION}",
            code="bad_report",
        )
    try:
        report: Report = _decode(Report, data, "report")
    except (_BadReport, RecursionError) as exc:
        raise LocalProtocolError(f"{source}: {exc}", code="bad_report") from None
    if not SESSION_ID_RE.fullmatch(report.session_id):
        raise LocalProtocolError(f"{source}: the session id is not valid", code="bad_report")
    return report


# --- rendering helpers ------------------------------------------------------------


def _local(dt: datetime, tz: tzinfo | None) -> datetime:
    return dt.astimezone(tz) if tz is not None else dt.astimezone()


def _when(dt: datetime | None, tz: tzinfo | None) -> str:
    """``2025-03-04 10:15:02 UTC`` (or the local zone's name)."""
    if dt is None:
        return "unknown"
    d = _local(dt, tz)
    zone = d.tzname() or d.strftime("%z")
    return f"{d:%Y-%m-%d %H:%M:%S} {zone}"


def _clock(dt: datetime | None, tz: tzinfo | None, day: datetime | None = None) -> str:
    """``10:15:02``, with the date in front when it is not ``day``'s date."""
    if dt is None:
        return "--:--:--"
    d = _local(dt, tz)
    if day is not None and _local(day, tz).date() != d.date():
        return f"{d:%Y-%m-%d %H:%M:%S}"
    return f"{d:%H:%M:%S}"


def _duration(seconds: float | None) -> str:
    """``1:02:05`` (hours:minutes:seconds), ``2 d 1:02:05`` past a day."""
    if seconds is None:
        return "unknown"
    s = max(0, round(seconds))
    days, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    clock = f"{h}:{m:02d}:{s:02d}"
    return f"{days} d {clock}" if days else clock


def _offset(report: Report, dt: datetime | None) -> str:
    if dt is None or report.started is None:
        return ""
    return "+" + _duration((dt - report.started).total_seconds())


def _ended_text(report: Report, tz: tzinfo | None) -> str:
    if report.ended is not None:
        return _when(report.ended, tz)
    last = f"; last activity {_when(report.last_activity, tz)}" if report.last_activity else ""
    return f"unknown (unfinished{last})"


def _time_in_session(report: Report, p: Participant) -> float | None:
    total = 0.0
    for s in p.stints:
        start = s.joined or report.started
        end = s.left or report.ended or report.last_activity
        if start is None or end is None:
            return None
        total += max(0.0, (end - start).total_seconds())
    return total


def _stint_text(report: Report, s: Stint, tz: tzinfo | None) -> str:
    """``10:15:02 to 10:19:02 (connection lost)``, ``10:20:02 to the end``."""
    day = report.started
    start = _clock(s.joined, tz, day) if s.joined else "the start"
    if s.how == "end":
        return f"{start} to the end"
    if s.left is not None:
        end = _clock(s.left, tz, day) + (" (connection lost)" if s.how == "lost" else "")
        return f"{start} to {end}"
    return f"{start} to the end" if report.finished else f"since {start}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _people(report: Report, people: Sequence[Participant]) -> str:
    out = []
    for p in people:
        label = _role_label(p.role, p.primary)
        out.append(f"{p.name} ({label})")
    return ", ".join(out) or "none"


def _grant_outcome(report: Report, g: Grant, tz: tzinfo | None) -> str:
    day = report.started
    return ", ".join(f"{c.state} {_clock(c.at, tz, day)}" for c in g.history)


# --- text -------------------------------------------------------------------------


def to_text(report: Report, tz: tzinfo | None = None) -> str:
    """The report for a terminal. ``tz`` defaults to this machine's local time."""
    day = report.started
    lines = [
        report.title,
        "",
        f"session:   {report.session_id}",
        f"room:      {report.room or 'unknown'}",
        f"customer:  {_people(report, report.customers)}",
        f"CSRs:      {_people(report, report.csrs)}",
        f"started:   {_when(report.started, tz)}",
        f"ended:     {_ended_text(report, tz)}",
    ]
    if report.ended is not None:
        reason = f": {report.end_reason}" if report.end_reason else ""
        lines.append(f"ended by:  {report.name_of(report.ended_by)}{reason}")
    lines.append(f"duration:  {_duration(report.duration_s)}")

    def section(title: str, rows: list[str], empty: str) -> None:
        lines.extend(["", title])
        if rows:
            lines.extend(f"  {r}" for r in rows)
        else:
            lines.append(f"  ({empty})")

    section(
        "Timeline",
        [f"{_clock(e.at, tz, day)}  {_offset(report, e.at):>9}  {e.text}" for e in report.timeline],
        "nothing happened",
    )
    chat_rows = []
    for c in report.chat:
        to = f" → {', '.join(report.name_of(t) for t in c.to)}" if c.to is not None else ""
        text = c.text.replace("\n", "\n" + " " * 14)
        chat_rows.append(f"{_clock(c.at, tz, day)}  {c.name}{to}: {text}")
    section("Chat", chat_rows, "no messages")
    section(
        "Files",
        [
            f"{f.name or f.id}  {_size(f.size)}  "
            f"{'to' if f.direction == 'to_customer' else 'from'} the customer  "
            f"by {report.name_of(f.by)}  {f.state}"
            for f in report.files
        ],
        "no files",
    )
    section(
        "Notes",
        [
            f"{_clock(n.at, tz, day)}  {report.name_of(n.by)}: "
            + (n.text.replace("\n", "\n" + " " * 14) if n.text is not None else "(encrypted note)")
            for n in report.notes
        ],
        "no notes",
    )
    for info in report.sysinfo:
        section(
            f"System information from {report.name_of(info.customer)} ({_clock(info.at, tz, day)})",
            [f"{label}: {value}" for label, value in info.items],
            "empty",
        )
    if report.epochs:
        section(
            "Epochs",
            [
                f"{_clock(e.at, tz, day)}  epoch {e.epoch}: {report.name_of(e.sequencer)}"
                + (" (failover)" if e.takeover else "")
                for e in report.epochs
            ],
            "",
        )
    if report.warnings:
        section("Warnings", list(report.warnings), "")
    return "\n".join(lines) + "\n"


# --- HTML -------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; --ink: #1d2430; --muted: #5b6575; --line: #d9dee7;
  --band: #f4f6f9; --accent: #2456a6; --warn: #8a4b00; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 60rem; padding: 1.5rem; color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 2rem 0 .5rem; padding-bottom: .25rem;
  border-bottom: 2px solid var(--accent); }
.sub { color: var(--muted); margin: 0 0 1rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem;
  margin: 0; padding: .75rem 1rem; background: var(--band); border-radius: 6px; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
table { width: 100%; border-collapse: collapse; font-size: .93rem; }
th, td { text-align: left; vertical-align: top; padding: .3rem .5rem;
  border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
th { background: var(--band); font-weight: 600; }
td.t, th.t { white-space: nowrap; font-variant-numeric: tabular-nums; width: 1%; }
.muted, .id { color: var(--muted); } .id { font-size: .8em; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .85em; }
.chat .text, .note .text { white-space: pre-wrap; }
.private { color: var(--warn); font-size: .85em; }
.badge { display: inline-block; padding: 0 .4rem; border-radius: 3px; font-size: .8em;
  background: var(--band); border: 1px solid var(--line); }
.failover { color: var(--warn); font-weight: 600; }
.empty { color: var(--muted); font-style: italic; }
.warnings li { color: var(--warn); }
footer { margin-top: 2.5rem; color: var(--muted); font-size: .8rem; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  h2 { break-after: avoid; } tr { break-inside: avoid; }
  dl.facts { background: none; border: 1px solid var(--line); }
  @page { margin: 15mm; }
}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _who(report: Report, pid: str | None) -> str:
    if pid is None:
        return '<span class="muted">nobody</span>'
    name = report.name_of(pid)
    if name == pid:
        return f'<span class="mono">{_e(pid)}</span>'
    return f'{_e(name)} <span class="id">{_e(pid)}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """``rows`` hold HTML already escaped; a header starting with ``t:`` is a time column."""
    if not rows:
        return f'<p class="empty">{_e(empty)}</p>'
    cls = ["t" if h.startswith("t:") else "" for h in headers]
    head = "".join(
        f'<th class="{c}">{_e(h.removeprefix("t:"))}</th>' if c else f"<th>{_e(h)}</th>"
        for h, c in zip(headers, cls, strict=True)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{c}">{v}</td>' if c else f"<td>{v}</td>"
            for v, c in zip(r, cls, strict=True)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: Report, tz: tzinfo | None = None) -> str:
    """The report as one self-contained, printable HTML page (inline CSS, no scripts,
    no external assets). Every string from the log is escaped. ``tz`` defaults to this
    machine's local time."""
    r = report
    day = r.started
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(r.title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        "<header>",
        f"<h1>{_e(r.title)}</h1>",
        f'<p class="sub">PeerDesk activity report · session <span class="mono">'
        f"{_e(r.session_id)}</span></p>",
        '<dl class="facts">',
    ]
    ended_by = ""
    if r.ended is not None:
        reason = f" — {_e(r.end_reason)}" if r.end_reason else ""
        ended_by = f" by {_who(r, r.ended_by)}{reason}"
    facts = [
        ("Customer", _e(_people(r, r.customers))),
        ("CSRs", _e(_people(r, r.csrs))),
        ("Started", _e(_when(r.started, tz))),
        ("Ended", _e(_ended_text(r, tz)) + ended_by),
        ("Duration", _e(_duration(r.duration_s))),
        ("Room", _e(r.room or "unknown")),
    ]
    if r.epochs:
        failovers = sum(1 for e in r.epochs if e.takeover)
        facts.append(
            (
                "Epochs",
                _e(f"{_plural(len(r.epochs), 'epoch change')}, {_plural(failovers, 'failover')}"),
            )
        )

    out.extend(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    out.append("</dl></header>")

    def section(sid: str, title: str, body: str) -> None:
        out.append(f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>')

    section(
        "participants",
        "Participants",
        _table(
            ["Name", "Role", "t:Present", "t:Time in session"],
            [
                [
                    _who(r, p.id),
                    _e(_role_label(p.role, p.primary)),
                    "<br>".join(_e(_stint_text(r, s, tz)) for s in p.stints),
                    _e(_duration(_time_in_session(r, p))),
                ]
                for p in r.participants
            ],
            "Nobody joined.",
        ),
    )
    section(
        "timeline",
        "Timeline",
        _table(
            ["t:Time", "t:Elapsed", "Event"],
            [
                [
                    _e(_clock(ev.at, tz, day)),
                    _e(_offset(r, ev.at)),
                    f'<span class="failover">{_e(ev.text)}</span>'
                    if ev.kind == "epoch" and "failover" in ev.text
                    else _e(ev.text),
                ]
                for ev in r.timeline
            ],
            "Nothing happened.",
        ),
    )
    section(
        "permissions",
        "Permissions",
        _table(
            ["Capability", "CSR", "Customer", "History", "Final"],
            [
                [
                    _e(_cap(g.cap)),
                    _who(r, g.csr),
                    _who(r, g.customer),
                    _e(_grant_outcome(r, g, tz)),
                    f'<span class="badge">{_e(g.state)}</span>',
                ]
                for g in r.grants
            ],
            "No permissions were requested.",
        ),
    )
    section(
        "control",
        "Control",
        _table(
            ["t:Time", "Holder", "By"],
            [[_e(_clock(c.at, tz, day)), _who(r, c.holder), _who(r, c.by)] for c in r.control],
            "Nobody took control.",
        ),
    )
    chat_rows = []
    for c in r.chat:
        to = ""
        if c.to is not None:
            names = ", ".join(r.name_of(t) for t in c.to) or "nobody"
            to = f' <span class="private">(private to {_e(names)})</span>'
        chat_rows.append(
            [
                _e(_clock(c.at, tz, day)),
                f"{_e(c.name)}{to}",
                f'<span class="text">{_e(c.text)}</span>',
            ]
        )
    section(
        "chat",
        "Chat transcript",
        '<div class="chat">'
        + _table(["t:Time", "From", "Message"], chat_rows, "No messages.")
        + "</div>",
    )
    section(
        "files",
        "Files",
        _table(
            ["Name", "Direction", "Size", "By", "State", "SHA-256"],
            [
                [
                    _e(f.name or f.id),
                    _e("to the customer" if f.direction == "to_customer" else "from the customer"),
                    _e(_size(f.size)),
                    _who(r, f.by),
                    _e(f.state),
                    f'<span class="mono">{_e(f.sha256)}</span>',
                ]
                for f in r.files
            ],
            "No files were exchanged.",
        ),
    )
    section(
        "notes",
        "Notes",
        '<div class="note">'
        + _table(
            ["t:Time", "By", "Note"],
            [
                [
                    _e(_clock(n.at, tz, day)),
                    _who(r, n.by),
                    f'<span class="text">{_e(n.text)}</span>'
                    if n.text is not None
                    else '<span class="muted">(encrypted note)</span>',
                ]
                for n in r.notes
            ],
            "No notes.",
        )
        + "</div>",
    )
    if r.sysinfo:
        parts = []
        for info in r.sysinfo:
            rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in info.items)
            parts.append(
                f"<h3>{_who(r, info.customer)} · {_e(_clock(info.at, tz, day))}</h3>"
                f'<dl class="facts">{rows}</dl>'
            )
        section("sysinfo", "System information", "".join(parts))
    if r.epochs:
        section(
            "epochs",
            "Epochs and failovers",
            _table(
                ["t:Time", "Epoch", "Primary CSR", "How", "Votes"],
                [
                    [
                        _e(_clock(ep.at, tz, day)),
                        _e(ep.epoch),
                        _who(r, ep.sequencer),
                        '<span class="failover">failover (take-over)</span>'
                        if ep.takeover
                        else "transfer",
                        _e(", ".join(r.name_of(v) for v in ep.votes) or "—"),
                    ]
                    for ep in r.epochs
                ],
                "",
            ),
        )
    if r.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in r.warnings)
        section("warnings", "Warnings", f'<ul class="warnings">{items}</ul>')
    out.append(
        f"<footer>Generated by PeerDesk {_e(__version__)} from {r.entries} log "
        f"entr{'y' if r.entries == 1 else 'ies'}. Times are {_e(_zone_name(r, tz))}.</footer>"
    )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _zone_name(report: Report, tz: tzinfo | None) -> str:
    ref = report.started or datetime.now(UTC)
    d = _local(ref, tz)
    return d.tzname() or d.strftime("UTC%z")


# --- files ------------------------------------------------------------------------


def sessions_dir() -> Path:
    """Where session reports are kept: ``identity.home()/"sessions"``."""
    return identity.home() / SESSIONS_DIR


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(report: Report, directory: Path, tz: tzinfo | None = None) -> tuple[Path, Path]:
    """Write ``<session_id>.json`` and ``.html`` for a built report (mode 0600, atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    json_path = directory / f"{report.session_id}.json"
    html_path = directory / f"{report.session_id}.html"
    _write_private(json_path, to_json(report))
    _write_private(html_path, to_html(report, tz))
    return json_path, html_path


def write_reports(
    entries: Sequence[Mapping[str, Any]],
    directory: Path,
    *,
    session_id: str | None = None,
    open_note: NoteOpener | None = None,
    tz: tzinfo | None = None,
) -> tuple[Path, Path]:
    """Build the report of a log and write it as ``<session_id>.json`` and
    ``<session_id>.html`` in ``directory`` (made 0700 if missing; files 0600, written
    through a temporary file and a rename). Returns ``(json_path, html_path)``."""
    return write_report(build(entries, session_id=session_id, open_note=open_note), directory, tz)


def load_report(path: Path) -> Report:
    """Read a report JSON file; ``LocalProtocolError`` when it is not one."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise LocalProtocolError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_REPORT_BYTES:
        raise LocalProtocolError(f"{path} is too large to be a session report", code="bad_report")
    return from_json(data, str(path))


@dataclass(frozen=True)
class SessionSummary:
    """One line of ``peerdesk sessions``."""

    id: str
    room: str
    title: str
    started: datetime | None
    ended: datetime | None
    "``None``: the session did not finish (or its end was not recorded)."
    participants: tuple[str, ...]
    "Display names, CSRs first."
    path: Path


def list_sessions(sessions_dir: Path, problems: list[str] | None = None) -> list[SessionSummary]:
    """Summaries of the ``<session_id>.json`` reports in a directory, newest first.

    Files that are not readable reports are skipped; if ``problems`` is given, a
    sentence for each is appended to it. A missing directory has no sessions.
    """
    directory = Path(sessions_dir)
    try:
        candidates = sorted(directory.glob("*.json"))
    except OSError:
        return []
    out: list[SessionSummary] = []
    for path in candidates:
        if not SESSION_ID_RE.fullmatch(path.stem) or not path.is_file():
            continue
        try:
            r = load_report(path)
        except PeerDeskError as exc:
            if problems is not None:
                problems.append(f"skipped {path.name}: {exc.message}")
            continue
        if r.session_id != path.stem:
            if problems is not None:
                problems.append(f"skipped {path.name}: it holds session {r.session_id}")
            continue
        people = tuple(p.name for p in (*r.csrs, *r.customers))
        out.append(SessionSummary(r.session_id, r.room, r.title, r.started, r.ended, people, path))
    never = datetime.min.replace(tzinfo=UTC)
    out.sort(key=lambda s: (s.started or never, s.id), reverse=True)
    return out


def _summary_json(s: SessionSummary) -> dict[str, Any]:
    return {
        "id": s.id,
        "room": s.room,
        "title": s.title,
        "started": _iso(s.started) if s.started else None,
        "ended": _iso(s.ended) if s.ended else None,
        "participants": list(s.participants),
        "path": str(s.path),
    }


def cmd_sessions(argv: list[str]) -> int:
    """``peerdesk sessions [--json]``: the stored session reports, newest first."""
    p = argparse.ArgumentParser(
        prog="peerdesk sessions",
        description="List the sessions recorded on this machine (their signed logs and "
        "activity reports), newest first.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    directory = sessions_dir()
    problems: list[str] = []
    sessions = list_sessions(directory, problems)
    for problem in problems:
        print(f"peerdesk sessions: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps([_summary_json(s) for s in sessions], indent=2, ensure_ascii=False))
        return 0
    if not sessions:
        print(f"no session reports yet (they are kept in {directory})")
        return 0
    for s in sessions:
        started = _when(s.started, None)
        length = (
            _duration((s.ended - s.started).total_seconds())
            if s.started and s.ended
            else "unfinished"
        )
        who = ", ".join(s.participants) or "nobody"
        print(f"{s.id}  {started}  {length:>10}  room {s.room or '?'}  {who}")
    return 0


def _resolve(directory: Path, wanted: str) -> Path:
    if not SESSION_ID_RE.fullmatch(wanted):
        raise LocalProtocolError(f"{wanted!r} is not a session id (see: peerdesk sessions)")
    exact = directory / f"{wanted}.json"
    if exact.is_file():
        return exact
    sessions = list_sessions(directory)
    if wanted in ("last", "latest") and sessions:
        return sessions[0].path
    matches = [s for s in sessions if s.id.startswith(wanted)] or [
        s for s in sessions if s.room == wanted
    ][:1]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        ids = ", ".join(s.id for s in matches[:5])
        raise LocalProtocolError(f"{wanted!r} matches several sessions: {ids}")
    raise LocalProtocolError(
        f"no session report {wanted!r} in {directory} (see: peerdesk sessions)"
    )


def cmd_report(argv: list[str]) -> int:
    """``peerdesk report ID [--json | --html] [--open]``: show one session's report.

    ``ID`` is a session id, a unique prefix of one, a room number (its latest
    session) or ``last``. Prints the text report, the JSON (``--json``), or writes the
    HTML page if needed and prints its path (``--html``); ``--open`` also opens it in
    the web browser."""
    p = argparse.ArgumentParser(
        prog="peerdesk report", description="Show one session's activity report."
    )
    p.add_argument("id", metavar="ID", help="session id, a unique prefix, a room number or 'last'")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report's JSON")
    fmt.add_argument("--html", action="store_true", help="write the HTML page and print its path")
    p.add_argument("--open", action="store_true", help="open the HTML page in a web browser")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if args.json and args.open:
        print(
            "peerdesk report: --open shows the HTML page; it does not go with --json",
            file=sys.stderr,
        )
        return 2
    try:
        path = _resolve(sessions_dir(), args.id)
        report = load_report(path)
        if args.json:
            sys.stdout.write(to_json(report))
            return 0
        if not (args.html or args.open):
            sys.stdout.write(to_text(report))
            return 0
        html_path = path.with_suffix(".html")
        if not html_path.is_file() or html_path.stat().st_mtime < path.stat().st_mtime:
            _write_private(html_path, to_html(report))
        print(html_path)
        if args.open and not webbrowser.open(html_path.resolve().as_uri()):
            print("peerdesk report: no web browser could be started", file=sys.stderr)
            return 1
        return 0
    except PeerDeskError as exc:
        print(f"peerdesk report: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"peerdesk report: {exc.strerror or exc}", file=sys.stderr)
        return 1


__all__ = [
    "ChatLine",
    "ControlChange",
    "EpochChange",
    "Event",
    "FileRecord",
    "Grant",
    "GrantChange",
    "Note",
    "Participant",
    "Report",
    "SessionSummary",
    "Stint",
    "SysInfo",
    "build",
    "cmd_report",
    "cmd_sessions",
    "from_json",
    "list_sessions",
    "load_report",
    "sessions_dir",
    "to_dict",
    "to_html",
    "to_json",
    "to_text",
    "write_report",
    "write_reports",
]
