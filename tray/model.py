"""What the tray shows, as pure functions of status values (no pystray, no I/O here).

``fold(view, sid, event)`` folds one status value into a ``TrayView``; ``menu(view)``
and ``tooltip(view)`` turn a view into the menu and the hover text. The tray (and its
tests) call them; the icon for each ``State`` is drawn by ``tray.icons``.

Invariant: the view's ``state`` is derived from its other fields by ``_state`` only,
after every fold, so a view never says "controlled" without a control holder.
"""

from __future__ import annotations

import dataclasses
import enum
import urllib.parse
from dataclasses import dataclass

from agent import status


class State(enum.Enum):
    IDLE = "idle"
    SESSION = "session"
    VIEWED = "viewed"
    CONTROLLED = "controlled"
    PROMPT = "prompt"


@dataclass(frozen=True)
class Action:
    """What a menu item does: ``kind`` (``start``, ``end``, ``transfer``...) and its argument."""

    kind: str
    arg: str = ""


@dataclass(frozen=True)
class Item:
    label: str
    action: Action | None = None
    enabled: bool = True
    children: tuple[Item, ...] = ()
    separator: bool = False
    default: bool = False


SEPARATOR = Item("-", separator=True)


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    role: str
    primary: bool


@dataclass(frozen=True)
class TrayView:
    """Everything the tray shows, for the session it follows (the newest one)."""

    role: str = "csr"
    "``csr`` or ``customer``."
    session: str | None = None
    code: str = ""
    link: str = ""
    web: str = ""
    "The signaling server's web page for the code (customers without PeerDesk)."
    me: str = ""
    people: tuple[Person, ...] = ()
    viewing: bool = False
    "View is granted (CSR: we see the customer; customer: we are being watched)."
    holder: str | None = None
    "Who holds control of the customer's machine."
    prompts: int = 0
    "Open questions for this user (consent requests, assistants asking to join)."
    csr_name: str = ""
    "Customer: the verified CSR's name."
    sas: str = ""
    "Customer: the check code for the CSR."
    ended: bool = False
    state: State = State.IDLE


def _state(v: TrayView) -> State:
    if v.session is None or v.ended:
        return State.IDLE
    if v.prompts:
        return State.PROMPT
    if v.holder is not None:
        return State.CONTROLLED
    if v.viewing:
        return State.VIEWED
    return State.SESSION


def fold(view: TrayView, sid: str, event: status.Status) -> TrayView:
    """The view after ``event`` happened in session ``sid`` (a new session takes over)."""
    v = view
    if isinstance(event, status.SessionStarted):
        v = TrayView(
            role="csr", session=sid, code=event.code, link=event.link, web=event.web, me=event.me
        )
    elif sid != v.session:
        if isinstance(event, status.Joined) and v.session is None:
            v = TrayView(role="customer", session=sid, me=event.me)
        else:
            return view
    if isinstance(event, status.Joined) and v.role == "customer" and event.role == "csr":
        if event.sas is not None or not v.csr_name:
            v = dataclasses.replace(v, csr_name=event.name, sas=event.sas or v.sas)
    elif isinstance(event, status.RosterChanged):
        people = tuple(
            Person(str(p["id"]), str(p["name"]), str(p["role"]), bool(p["primary"]))
            for p in event.participants
        )
        v = dataclasses.replace(v, people=people)
    elif isinstance(event, status.ConsentChanged) and event.cap == "view":
        v = dataclasses.replace(v, viewing=event.state == "granted")
    elif isinstance(event, status.ConsentChanged) and event.cap == "control":
        if event.state != "granted":
            v = dataclasses.replace(v, holder=None)
    elif isinstance(event, status.ControlChanged):
        v = dataclasses.replace(v, holder=event.holder)
    elif isinstance(event, status.ConsentRequest | status.AssistantRequest):
        v = dataclasses.replace(v, prompts=v.prompts + 1)
    elif isinstance(event, status.Ended):
        v = dataclasses.replace(v, ended=True, holder=None, viewing=False, prompts=0)
    answered = (
        isinstance(event, status.ConsentChanged)
        and v.role == "customer"
        and event.state != "pending"
    ) or (isinstance(event, status.Joined) and v.role == "csr" and event.role == "csr")
    if answered and v.prompts:
        v = dataclasses.replace(v, prompts=v.prompts - 1)
    return dataclasses.replace(v, state=_state(v))


def _name(v: TrayView, pid: str | None) -> str:
    if pid is None:
        return "nobody"
    if pid == v.me:
        return "you"
    return next((p.name for p in v.people if p.id == pid), pid)


def menu(v: TrayView) -> tuple[Item, ...]:
    """The tray menu for this view."""
    return _customer_menu(v) if v.role == "customer" else _csr_menu(v)


def _csr_menu(v: TrayView) -> tuple[Item, ...]:
    live = v.session is not None and not v.ended
    invite = (
        Item("Copy link", Action("copy_link")),
        Item("Copy web page link", Action("copy_web")),
        Item("Email the link…", Action("email")),
        Item(f"Show code ({v.code})" if v.code else "Show code", Action("show_code")),
    )
    assistants = tuple(p for p in v.people if p.role == "csr" and p.id != v.me)
    targets = tuple(
        Item(
            f"{p.name}{' ✓' if v.holder == p.id else ''}",
            Action("transfer", p.id),
            enabled=v.holder != p.id,
        )
        for p in assistants
    )
    if live and v.holder is not None and v.holder != v.me:
        targets = (Item("Take control back", Action("transfer", v.me)), *targets)
    return (
        Item("Open dashboard", Action("dashboard"), default=True),
        SEPARATOR,
        Item("Start session", Action("start")),
        Item("Join as assistant…", Action("join_assistant")),
        Item("Invite", children=invite, enabled=live) if live else Item("Invite", enabled=False),
        Item("Transfer control", children=targets, enabled=True)
        if live and targets
        else Item("Transfer control", enabled=False),
        Item("End session", Action("end"), enabled=live),
        SEPARATOR,
        Item("Quit PeerDesk", Action("quit")),
    )


def _customer_menu(v: TrayView) -> tuple[Item, ...]:
    live = v.session is not None and not v.ended
    sharing = v.viewing or v.holder is not None
    return (
        Item(
            "Stop sharing (revoke everything)",
            Action("stop_sharing"),
            enabled=live and sharing,
            default=sharing,
        ),
        Item("Leave session", Action("leave"), enabled=live),
        Item(
            "Session info",
            Action("info"),
            enabled=v.session is not None,
            default=not sharing,
        ),
        SEPARATOR,
        Item("Quit PeerDesk", Action("quit")),
    )


_WORDS = {
    State.IDLE: "idle",
    State.SESSION: "in a session",
    State.VIEWED: "screen is being viewed",
    State.CONTROLLED: "being controlled",
    State.PROMPT: "waiting for your answer",
}


def tooltip(v: TrayView) -> str:
    """The icon's hover text."""
    if v.role == "customer" and v.state is State.CONTROLLED:
        return f"PeerDesk: {_name(v, v.holder)} is CONTROLLING this computer"
    if v.role == "customer" and v.state is State.VIEWED:
        return f"PeerDesk: {v.csr_name or 'the CSR'} can SEE your screen"
    if v.role == "csr" and v.state is State.CONTROLLED:
        return f"PeerDesk: control is with {_name(v, v.holder)}"
    return f"PeerDesk: {_WORDS[v.state]}"


def info(v: TrayView) -> str:
    """Customer: the session in a few lines (Session info)."""
    lines = [f"Support by {v.csr_name or '?'}"]
    if v.sas:
        lines.append(f"Check code: {v.sas[:3]} {v.sas[3:]}")
    lines.append("Screen: " + ("shared" if v.viewing else "not shared"))
    lines.append("Control: " + (_name(v, v.holder) if v.holder else "nobody"))
    return "\n".join(lines)


def mailto(v: TrayView) -> str:
    """A mailto: address for the invitation, for the user's own mail program."""
    web = f"Without PeerDesk, open {v.web}\n" if v.web else ""
    body = (
        "Hello,\n\nto let me help you, install PeerDesk and run:\n\n"
        f"  peerdesk join {v.link}\n\nor enter the code {v.code}.\n{web}"
        "I will read you a six-digit check code on the phone.\n"
    )
    query = urllib.parse.urlencode(
        {"subject": "Join my PeerDesk support session", "body": body},
        quote_via=urllib.parse.quote,
    )
    return f"mailto:?{query}"
