"""``peerdesk queue``: support queues on a signaling server, for customers and CSRs.

peerdesk queue wait QUEUE --signal URL --name NAME       customer: wait, hear position and CSR
peerdesk queue wait peerdesk://help/QUEUE?signal=URL --name NAME   the same, from a "get help" link
peerdesk queue list QUEUE --signal URL --as CSR           who waits, longest first
peerdesk queue take QUEUE --room ROOM --signal URL --as CSR [--ticket T]
peerdesk queue transfer TICKET (--to-queue Q | --to-csr CSR) --message TEXT --signal URL --as CSR

CSR commands take ``--token`` (or PEERDESK_CSR_TOKEN) when the server has a CSR token.
``--json`` prints JSON lines. ``take`` hands the customer the public room id of your
session (the first six digits of its code); tell the customer the code's other six
digits yourself: they never go through any server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from urllib.parse import unquote

from agent.errors import PeerDeskError
from agent.net.signaling_client import SignalingClient
from agent.protocol import signaling as sig
from agent.protocol.code import check_signal_url

REPLY_TIMEOUT = 10.0
LOST = 3
"Exit status when the server went away."
HELP_PREFIX = "peerdesk://help/"


def parse_help_link(link: str) -> tuple[str, str | None]:
    """(queue, signaling URL or None) from ``peerdesk://help/QUEUE?signal=URL``, or from a
    bare queue name; raises ``ValueError`` with a message for the person who pasted it."""
    if not link.startswith(HELP_PREFIX):
        return link, None
    if len(link) > 1024:
        raise ValueError("the help link is too long")
    rest = link[len(HELP_PREFIX) :]
    queue, _, query = rest.partition("?")
    signal = None
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        if key == "signal":
            signal = check_signal_url(unquote(value))
    return queue.rstrip("/"), signal


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peerdesk queue",
        description="Support queues on a signaling server: customers wait, CSRs list, take "
        "and transfer them (with a message of at most 345 characters).",
    )
    sub = p.add_subparsers(dest="action", required=True)

    def common(sp: argparse.ArgumentParser, csr: bool) -> None:
        sp.add_argument("--signal", required=True, metavar="URL", help="signaling server")
        sp.add_argument("--json", action="store_true", help="JSON lines on stdout")
        if csr:
            sp.add_argument("--as", dest="csr", required=True, metavar="NAME", help="your CSR name")
            sp.add_argument("--token", help="the team's CSR token (or PEERDESK_CSR_TOKEN)")
            sp.add_argument(
                "--serves",
                action="append",
                default=[],
                metavar="QUEUE",
                help="more queues you serve (the named one is always included)",
            )

    wait = sub.add_parser("wait", help="wait in a queue as a customer")
    wait.add_argument("queue", help="a queue name, or a peerdesk://help/... link")
    wait.add_argument("--name", required=True, help="how CSRs see you")
    wait.add_argument("--signal", metavar="URL", help="signaling server (else from the link)")
    wait.add_argument("--json", action="store_true", help="JSON lines on stdout")
    lst = sub.add_parser("list", help="who waits in a queue")
    lst.add_argument("queue")
    common(lst, csr=True)
    take = sub.add_parser("take", help="take the longest waiting customer (or --ticket)")
    take.add_argument("queue")
    take.add_argument("--room", required=True, help="the public room id of your session")
    take.add_argument("--ticket", default="")
    common(take, csr=True)
    tr = sub.add_parser("transfer", help="hand a customer you hold to a queue or a CSR")
    tr.add_argument("ticket")
    where = tr.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-queue", default="")
    where.add_argument("--to-csr", default="")
    tr.add_argument(
        "--message",
        required=True,
        help=f"for whoever takes it next, at most {sig.MAX_TRANSFER_MESSAGE} characters",
    )
    common(tr, csr=True)
    return p


def _check(args: argparse.Namespace) -> str | None:
    """A clear error for input we can refuse before talking to any server."""
    if args.action == "wait":
        try:
            args.queue, from_link = parse_help_link(args.queue)
        except (ValueError, PeerDeskError) as exc:
            return str(exc)
        args.signal = args.signal or from_link
        if not args.signal:
            return "give --signal URL, or a peerdesk://help/QUEUE?signal=URL link"
    if args.action == "transfer" and len(args.message) > sig.MAX_TRANSFER_MESSAGE:
        return (
            f"the transfer message has {len(args.message)} characters; "
            f"at most {sig.MAX_TRANSFER_MESSAGE} are allowed"
        )
    queues = [args.queue] if args.action in ("wait", "list", "take") else []
    queues += [args.to_queue] if getattr(args, "to_queue", "") else []
    queues += list(getattr(args, "serves", []))
    for q in queues:
        if not sig.QUEUE_RE.fullmatch(q):
            return f"{q!r} is not a queue name (letters, digits, . _ -, at most 32)"
    for name in [getattr(args, "csr", None), getattr(args, "to_csr", None)]:
        if name and not sig.CSR_RE.fullmatch(name):
            return f"{name!r} is not a CSR name (letters, digits, . _ -, at most 32)"
    if args.action == "take" and not sig.ROOM_RE.fullmatch(args.room.replace("-", "")[:6]):
        return "--room is the six-digit public room id (the first six digits of the code)"
    if getattr(args, "ticket", "") and not sig.TICKET_RE.fullmatch(args.ticket):
        return f"{args.ticket!r} is not a ticket (12 hex digits)"
    return None


def _emit(args: argparse.Namespace, msg: sig.ServerMessage) -> None:
    body = json.loads(sig.encode(msg))
    if args.json:
        body["event"] = body.pop("type")
        print(json.dumps(body), flush=True)
        return
    if isinstance(msg, sig.Waiting):
        print(f"waiting in {msg.queue}: position {msg.position} (ticket {msg.ticket})", flush=True)
    elif isinstance(msg, sig.Assigned):
        print(
            f"CSR {msg.csr} will help you: ask them for the code of session {msg.room}, "
            f"then run: peerdesk join <code> --signal {args.signal}",
            flush=True,
        )
    elif isinstance(msg, sig.QueueState):
        print(f"{msg.queue}: {msg.total} waiting")
        for t in msg.waiting:
            note = f"  note: {t.note}" if t.note else ""
            print(f"  {t.ticket}  {t.waited:>5} s  {t.name}{note}")
    elif isinstance(msg, sig.Taken):
        note = f"\n  note: {msg.note}" if msg.note else ""
        print(f"you hold ticket {msg.ticket}: {msg.name} from {msg.queue}{note}")
    elif isinstance(msg, sig.Transferred):
        print(f"ticket {msg.ticket} now waits in {msg.queue}; you no longer hold it")


async def _until(
    client: SignalingClient,
    args: argparse.Namespace,
    done: type[sig.ServerMessage] | None,
    seen: list[sig.ServerMessage] | None = None,
) -> int:
    """Print what the server says until a ``done`` message (or an error, or the end);
    ``seen`` collects every message."""
    while True:
        try:
            msg = await asyncio.wait_for(client.recv(), None if done is None else REPLY_TIMEOUT)
        except TimeoutError:
            print("peerdesk queue: the signaling server did not answer", file=sys.stderr)
            return 1
        if msg is None:
            print("peerdesk queue: the signaling server closed the connection", file=sys.stderr)
            return LOST
        if seen is not None:
            seen.append(msg)
        if isinstance(msg, sig.Error):
            if args.json:
                print(json.dumps({"event": "error", "code": msg.code, "message": msg.message}))
            print(f"peerdesk queue: {msg.message} ({msg.code})", file=sys.stderr)
            return 1
        if done is None or isinstance(msg, done):
            _emit(args, msg)
        if done is not None and isinstance(msg, done):
            return 0


RECONNECTS = 5
"Times ``wait`` reconnects after losing its server (a node of several stopped or died)."


async def _wait(args: argparse.Namespace, url: str) -> int:
    """Wait in the queue; when the server goes away, reconnect (a load balancer sends us
    to a live node) and wait again, a few times, before giving up."""
    seen: list[sig.ServerMessage] = []
    for attempt in range(RECONNECTS + 1):
        if seen and isinstance(seen[-1], sig.Assigned):
            # a CSR took us: we are in their session, not in line any more
            return 0
        if attempt:
            await asyncio.sleep(min(5.0, 0.5 * 2**attempt))
            if args.json:
                print(json.dumps({"event": "reconnecting", "attempt": attempt}), flush=True)
            else:
                print("lost the server; waiting again", flush=True)
        try:
            client = await SignalingClient.connect(url)
        except PeerDeskError:
            continue
        try:
            # back in line with our ticket: with several nodes we keep our place
            last = next((m for m in reversed(seen) if isinstance(m, sig.Waiting)), None)
            ticket, queue = (last.ticket, last.queue) if last is not None else ("", args.queue)
            await client.send(sig.Wait(queue=queue, name=args.name, ticket=ticket))
            code = await _until(client, args, None, seen)
        except PeerDeskError:
            continue
        finally:
            await client.close()
        if code != LOST:
            return code
    return LOST


async def _run(args: argparse.Namespace) -> int:
    url = check_signal_url(args.signal)
    if args.action == "wait":
        return await _wait(args, url)
    client = await SignalingClient.connect(url)
    try:
        token = args.token or os.environ.get("PEERDESK_CSR_TOKEN", "")
        queue = args.queue if args.action in ("list", "take") else ""
        served = tuple(dict.fromkeys([q for q in [queue, *args.serves] if q]))
        await client.send(sig.Serve(name=args.csr, queues=served, token=token))
        # serve answers with one ``queue`` message per served queue (or an error)
        for _ in range(len(set(served) | {f"@{args.csr}"})):
            msg = await asyncio.wait_for(client.recv(), REPLY_TIMEOUT)
            if isinstance(msg, sig.Error) or msg is None:
                why = msg.message if msg is not None else "the server closed the connection"
                print(f"peerdesk queue: {why}", file=sys.stderr)
                return 1
        if args.action == "list":
            await client.send(sig.ListQueue(queue=args.queue))
            return await _until(client, args, sig.QueueState)
        if args.action == "take":
            room = args.room.replace("-", "")[:6]
            await client.send(sig.Take(queue=args.queue, room=room, ticket=args.ticket))
            return await _until(client, args, sig.Taken)
        await client.send(
            sig.Transfer(
                ticket=args.ticket, message=args.message, queue=args.to_queue, csr=args.to_csr
            )
        )
        return await _until(client, args, sig.Transferred)
    finally:
        await client.close()


def main(argv: Sequence[str]) -> int:
    """Entry point of ``peerdesk queue``."""
    args = _parser().parse_args(list(argv))
    problem = _check(args)
    if problem is not None:
        print(f"peerdesk queue: {problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except PeerDeskError as exc:
        print(f"peerdesk queue: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
