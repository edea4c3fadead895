"""``peerdesk``: the command line.

peerdesk                      the tray agent (no tray host: the dashboard in the browser)
peerdesk dashboard [--no-browser] [--json]   the CSR dashboard without a tray
peerdesk start [--signal URL | --lan] [--headless --json]
peerdesk join CODE|LINK [--signal URL] [--headless --json] [--name NAME]
peerdesk discover [--timeout S] [--json]
peerdesk signal [--host H] [--port P] [--redis URL] [--turn-url URL --turn-secret S] [--drain S]
peerdesk queue wait|list|take|transfer ...   support queues (see agent/queue_cli.py)
peerdesk id [--name NAME]
peerdesk bench [join]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agent import __version__, identity, status
from agent.errors import LocalProtocolError, PeerDeskError
from agent.headless import console_emitter, json_emitter, read_commands
from agent.net.endpoint import DEFAULT_PORT as DEFAULT_PORT  # re-exported: the tray uses it
from agent.protocol.code import JoinLink, SessionCode, check_signal_url, parse_code_or_link
from agent.services.customer import CustomerOptions
from agent.session import handshake as hsk

log = logging.getLogger("peerdesk")

LAN_LOOKUP_S = 4.0
"How long ``join`` without a server listens on the LAN for the session's announcement."
LAN_SURVEY_S = 3.0
"""How long it then listens for every announcement of the room, when the first answers
led nowhere (a squatted room id). 1.5 s missed the real session's answer on a busy
machine: the join ended in ``no_such_session`` beside a session that was there."""
LOCAL_FALLBACK = "ws://127.0.0.1:{port}"
"Where ``join`` looks last when the LAN knows no session for the room: this machine."
T = TypeVar("T")
Emit = Callable[[status.Status], None]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peerdesk",
        description="Open, local-first remote support. Run with no command for the tray agent.",
    )
    p.add_argument("--version", action="version", version=f"peerdesk {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logs on stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def front(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--signal", metavar="URL", help="signaling server (ws:// or wss://)")
        sp.add_argument("--headless", action="store_true", help="no tray: use stdin/stdout")
        sp.add_argument("--json", action="store_true", help="JSON lines on stdin/stdout")
        sp.add_argument("--name", help="display name for this session")
        sp.add_argument(
            "--exit-on-eof",
            action="store_true",
            help="leave (customer, assistant) or end (CSR) the session when stdin ends; "
            "by default the agent carries on without commands (a terminal's Ctrl-D "
            "always leaves)",
        )

    start = sub.add_parser(
        "start",
        help="start a support session (CSR)",
        description="Start a support session as its CSR and print the code and links to "
        "give the customer. Without --signal the agent hosts the signaling endpoint itself "
        "and announces the session on the LAN.",
    )
    front(start)
    start.add_argument(
        "--download-dir", metavar="DIR", help="where files fetched from customers land"
    )
    start.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the embedded signaling server (default {DEFAULT_PORT}, else any free one)",
    )
    start.add_argument(
        "--lan",
        action="store_true",
        help="host the signaling endpoint in this agent and announce it on the LAN "
        "(zeroconf); the default when no --signal is given",
    )
    start.add_argument(
        "--no-advertise",
        action="store_true",
        help="host the signaling endpoint but do not announce it on the LAN",
    )
    join = sub.add_parser(
        "join",
        help="join a session with a code or link (customer)",
        description="Join a session with the 12-digit code or the link the CSR gave you "
        "(as the customer), or with a CSR code (--as assistant). Without --signal and "
        "without a link, the session is looked up on the LAN by its code.",
    )
    join.add_argument(
        "code",
        metavar="CODE|LINK|ROOM",
        help="session code or link (ROOM: assistants on the team roster)",
    )
    front(join)
    join.add_argument(
        "--accept",
        default="",
        metavar="CAPS",
        help="pre-grant these capabilities to the CSR, comma-separated "
        "(view,control,files,files_advanced,sysinfo): for scripted and unattended use",
    )
    join.add_argument("--download-dir", metavar="DIR", help="where files from the CSR land")
    join.add_argument("--share-dir", metavar="DIR", help="the directory files_advanced exposes")
    join.add_argument(
        "--monitor", type=int, default=1, help="monitor to share (default 1: the first)"
    )
    join.add_argument(
        "--codec", choices=("vp8", "h264"), default="vp8", help="video codec (default vp8)"
    )
    join.add_argument(
        "--as",
        dest="role",
        choices=("customer", "assistant"),
        default="customer",
        help="join as the customer (default) or as an assistant CSR, with the CSR code",
    )

    disc = sub.add_parser("discover", help="list PeerDesk sessions announced on the LAN")
    disc.add_argument("--timeout", type=float, default=3.0, help="seconds to listen (default 3)")
    disc.add_argument("--json", action="store_true", help="one JSON object per session")
    from tray.app import add_arguments

    for name, text in (
        ("tray", "the tray agent (what peerdesk with no command starts)"),
        ("dashboard", "serve the CSR dashboard on 127.0.0.1 and open it in the browser"),
    ):
        add_arguments(sub.add_parser(name, help=text))

    sig = sub.add_parser("signal", help="run a signaling server")
    sig.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")  # noqa: S104
    sig.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    from signaling.options import add_arguments as add_signal_arguments

    add_signal_arguments(sig)

    ident = sub.add_parser("id", help="show (or name) this agent's identity")
    ident.add_argument("--name", help="set the display name")

    for name, text in (
        ("log", "verify FILE: check a session log offline and say where it breaks"),
        ("team", "the team roster of trusted CSR keys: add, list, remove, export, import"),
        ("sessions", "list past sessions and their reports"),
        ("report", "show one session's activity report"),
        ("queue", "support queues: wait (customer), list, take, transfer (CSR)"),
    ):
        passthrough = sub.add_parser(name, help=text, add_help=False)
        passthrough.add_argument("rest", nargs=argparse.REMAINDER)

    bench = sub.add_parser("bench", help="measure performance against in-run baselines")
    bench.add_argument(
        "which",
        nargs="*",
        default=["join"],
        help="figures to measure: join, control, files, screen, log, idle, transfer, "
        "failover, lan (root: two network namespaces), links (root: the screen over 1-8 Mbit/s "
        "bottlenecks), viewers (root: two viewers, one behind 1 Mbit/s), signaling, dashboard, "
        "all (default: join)",
    )
    bench.add_argument("--runs", type=int, default=20, help="repetitions per figure (default 20)")
    bench.add_argument("--record", metavar="FILE", help="append the figures to this Markdown file")
    for action in sub._choices_actions:  # the one-line help also heads each --help
        choice = sub.choices[action.dest]
        if choice.description is None and action.help:
            choice.description = action.help[0].upper() + action.help[1:] + "."
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``peerdesk`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "log":  # log verify FILE | log export DB OUT
        from agent import logverify

        return logverify.main(argv[1:])
    if argv and argv[0] == "queue":  # support queues: wait, list, take, transfer
        from agent import queue_cli

        return queue_cli.main(argv[1:])
    if argv and argv[0] in ("team", "sessions", "report"):
        from agent import report, team

        handler = {
            "team": team.cmd_team,
            "sessions": report.cmd_sessions,
            "report": report.cmd_report,
        }[argv[0]]
        return handler(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "signal":
        from signaling.server import options, run

        try:
            config, redis_url, turn = options(args)
        except ValueError as exc:
            print(f"peerdesk signal: {exc}", file=sys.stderr)
            return 2
        try:  # JSON-line logs on stderr
            run(args.host, args.port, config, redis_url=redis_url, turn=turn)
        except ConnectionError as exc:
            print(f"peerdesk signal: {exc}", file=sys.stderr)
            return 1
        return 0
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = args.command or "tray"
    try:
        if command in ("tray", "dashboard"):
            from tray import app

            if args.command is None:
                args = _parser().parse_args(["tray"])
            return app.tray_main(args) if command == "tray" else app.dashboard_main(args)
        if command == "id":
            return _id(args)
        if command == "discover":
            return asyncio.run(_discover(args))
        if command == "bench":
            from bench.run import main as bench_main

            return bench_main(args.which, runs=args.runs, record=args.record)
        if command == "start":
            if args.command is None:
                args = _parser().parse_args(["start"])
            return asyncio.run(_start(args))
        return asyncio.run(_join(args))
    except PeerDeskError as exc:
        _fail(args, exc)
        return 2
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: PeerDeskError) -> None:
    if getattr(args, "json", False):
        json_emitter()(status.Error(reason=exc.message, code=exc.code))
    else:
        print(f"peerdesk: {exc.message}", file=sys.stderr)


def _id(args: argparse.Namespace) -> int:
    me = identity.set_name(args.name) if args.name else identity.load()
    print(f"id:   {me.peer_id}")
    print(f"name: {me.name}")
    print(f"key:  {me.public_bytes.hex()}")
    print(f"home: {identity.home()}")
    return 0


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
"Signals that stop an agent cleanly: a customer leaves, a CSR ends its session."
STOP_WITHIN = 10.0
"Seconds leaving or ending may take once stopped; past that the agent says so and exits."


class Stopper:
    """SIGINT, SIGTERM and SIGHUP — and, when asked, the end of stdin — as one event."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.why = ""
        "What stopped us: a signal's name, or ``eof``."
        self._installed: list[int] = []

    def __enter__(self) -> Stopper:
        loop = asyncio.get_running_loop()
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is None:
                continue
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(number, self.stop, name)
                self._installed.append(number)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for number in self._installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(number)

    def stop(self, why: str) -> None:
        if not self.event.is_set():
            log.info("stopping: %s", why)
            self.why = why
            self.event.set()

    async def race(self, work: Awaitable[T]) -> tuple[bool, T | None]:
        """Run ``work`` unless we are stopped first (then it is cancelled and awaited):
        ``(True, result)`` or ``(False, None)``. Its errors propagate."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, PeerDeskError, TimeoutError):
            await asyncio.wait_for(task, STOP_WITHIN)
        return False, None


def _console_role(session: Any) -> str:
    """``csr`` (this agent hosts), ``assistant`` or ``customer``: which console commands."""
    from agent.runtime import CsrSession

    if isinstance(session, CsrSession):
        return "csr"
    return "assistant" if session.role == "csr" else "customer"


async def _live(
    session: Any,
    emit: Emit,
    args: argparse.Namespace,
    stopper: Stopper,
    stop: Callable[[], Awaitable[None]],
) -> int:
    """Serve a started or joined session until it ends or we are stopped; the exit status.

    Commands come from stdin. Its end stops the session only with ``--exit-on-eof``, or
    from a terminal in console mode (Ctrl-D); otherwise the agent goes on without
    commands (a service with stdin on /dev/null stays in its session). Stopped, ``stop``
    leaves or ends the session for everyone, within ``STOP_WITHIN`` seconds.
    """
    at_terminal = not args.json and sys.stdin is not None and sys.stdin.isatty()

    role = _console_role(session)

    async def commands() -> None:
        await read_commands(session, emit, json_mode=args.json, role=role)
        if args.exit_on_eof or at_terminal:
            stopper.stop("eof")

    reader = asyncio.ensure_future(commands())
    try:
        finished, code = await stopper.race(session.wait())
        if finished:
            return int(code or 0)
        try:
            await asyncio.wait_for(stop(), STOP_WITHIN)
            return int(await asyncio.wait_for(session.wait(), STOP_WITHIN))
        except TimeoutError:
            emit(
                status.Error(
                    reason=f"stopped ({stopper.why}), but the session did not finish closing "
                    f"within {STOP_WITHIN:g} s",
                    code="stop_timeout",
                )
            )
            return 1
        except PeerDeskError as exc:
            emit(status.Error(reason=exc.message, code=exc.code))
            return 1
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


def _me(args: argparse.Namespace, role: str) -> identity.Identity:
    """This agent's identity and the name others see: ``--name``, the stored name,
    asked once at a terminal (and remembered), else a default that says the role."""
    if args.name:
        return identity.load(role=role).with_name(args.name)
    if identity.configured_name() is None and _at_terminal(args):
        asked = _ask_name(role)
        if asked:
            return identity.set_name(asked)
    return identity.load(role=role)


def _at_terminal(args: argparse.Namespace) -> bool:
    if args.json or getattr(args, "headless", False):
        return False
    return bool(sys.stdin and sys.stdin.isatty() and sys.stdout and sys.stdout.isatty())


def _ask_name(role: str) -> str:
    who = "the customers you help" if role == "csr" else "your support representative"
    try:
        answer = input(f"Your name, as {who} will see it (Enter: {identity.default_name(role)}): ")
    except (EOFError, KeyboardInterrupt):
        print()
        return ""
    try:
        return identity.clean_name(answer) if answer.strip() else ""
    except LocalProtocolError:
        return ""


def _directory(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


async def _start(args: argparse.Namespace) -> int:
    from agent.runtime.hosting import Hosting, HostOptions

    emit = json_emitter() if args.json else console_emitter(role="csr")
    me = _me(args, "csr")
    if args.signal and args.lan:
        raise LocalProtocolError("--lan hosts the signaling endpoint in this agent: drop --signal")
    hosting = Hosting(
        HostOptions(
            signal=args.signal,
            port=args.port,
            advertise=not args.no_advertise,
            download_dir=_directory(args.download_dir),
        )
    )
    with Stopper() as stopper:
        try:
            started, session = await stopper.race(hosting.start_session(me, emit))
            if not started or session is None:
                emit(status.Ended(reason="stopped"))
                return 0
            live = session

            async def end() -> None:
                await live.end("stopped", force=True)

            return await _live(live, emit, args, stopper, end)
        except PeerDeskError as exc:
            emit(status.Error(reason=exc.message, code=exc.code))
            return 1
        finally:
            await hosting.close()


async def _discover(args: argparse.Namespace) -> int:
    import json

    from agent.net import lan

    if not 0 < args.timeout <= 60:
        raise LocalProtocolError("--timeout must be between 0 and 60 seconds")
    sessions = await lan.browse(args.timeout)
    for s in sessions:
        if args.json:
            print(json.dumps(s.to_json()), flush=True)
        else:
            print(f"{s.room}  {s.name or '-':<24}  {' '.join(s.urls)}")
    if not sessions and not args.json:
        print(f"no PeerDesk session announced on the LAN within {args.timeout:g} s")
    return 0


def _customer_options(args: argparse.Namespace) -> CustomerOptions:
    from agent.session.consent import AVAILABLE

    accept = frozenset(c.strip() for c in args.accept.split(",") if c.strip())
    unknown = accept - set(AVAILABLE)
    if unknown:
        raise LocalProtocolError(
            f"--accept: unknown capability {', '.join(sorted(unknown))}; "
            f"choose from {','.join(AVAILABLE)}"
        )
    if not 1 <= args.monitor <= 16:
        raise LocalProtocolError("--monitor must be between 1 and 16")

    def directory(value: str | None, flag: str) -> Path | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_dir():
            raise LocalProtocolError(f"{flag}: {value} is not a directory")
        return path.resolve()

    return CustomerOptions(
        accept=accept,
        download_dir=directory(args.download_dir, "--download-dir"),
        share_dir=directory(args.share_dir, "--share-dir"),
        monitor=args.monitor,
        video_codec=args.codec,
    )


async def _one(url: str) -> AsyncIterator[str]:
    yield url


async def _lan_candidates(room: str) -> AsyncIterator[str]:
    """Where to try a room with no server given: the LAN's answers, then this machine.

    The first lookup returns at the first answer (fast); if none of those holds the
    session, a second one listens for every answer, for squatted room ids.
    """
    from agent.net import lan

    tried: set[str] = set()
    for first in (True, False):
        within = LAN_LOOKUP_S if first else LAN_SURVEY_S
        found = await lan.join_candidates(room, within, first=first)
        for url in found:
            if url not in tried:
                tried.add(url)
                yield url
    yield LOCAL_FALLBACK.format(port=DEFAULT_PORT)


async def _join(args: argparse.Namespace) -> int:
    from agent.runtime import CustomerSession

    label = "assistant" if args.role == "assistant" else "customer"
    emit = json_emitter() if args.json else console_emitter(role=label)
    room_only = (
        args.role == "assistant" and args.code.strip().isdigit() and len(args.code.strip()) == 6
    )
    if room_only:  # an assistant on the team roster joins by room id alone
        link = JoinLink(SessionCode(args.code.strip(), ""), None)
    else:
        link = parse_code_or_link(args.code)
    role = "csr" if args.role == "assistant" else "customer"
    me = _me(args, role)
    options = _customer_options(args)
    panel = None
    with Stopper() as stopper:
        if role == "customer" and not (args.headless or args.json):
            from tray.customer import open_panel

            panel = await open_panel(identity.home(), also=emit)  # prompts in the browser
            emit = panel.emit
            # The first time, the warning about support scams comes before the join:
            # nobody can ask this machine for anything until it was read.
            answered, go_on = await stopper.race(panel.wait_for_warning())
            if not answered or not go_on:
                emit(status.Ended(reason="stopped" if not answered else "left"))
                await panel.stop()
                return 0
        try:
            joining = _join_one(args, link, me, role, options, emit, panel)
            joined, session = await stopper.race(joining)
            if not joined or session is None:
                emit(status.Ended(reason="stopped"))
                return 0
            live: CustomerSession = session

            async def leave() -> None:
                await live.leave()

            try:
                return await _live(live, emit, args, stopper, leave)
            finally:
                await live.closed()
        except PeerDeskError as exc:
            emit(status.Error(reason=exc.message, code=exc.code))
            return 1
        finally:
            if panel is not None:
                await asyncio.sleep(0.3)  # the page shows "ended" before its server goes
                await panel.stop()


async def _join_one(
    args: argparse.Namespace,
    link: JoinLink,
    me: identity.Identity,
    role: str,
    options: CustomerOptions,
    emit: Emit,
    panel: Any,
) -> Any:
    """Join through the first signaling server that holds the room; the joined session.

    With no server given, the LAN's answers for the room id are tried in turn, then
    this machine's default port. A wrong code stops the search where the room was
    found: trying the same session again by another path would count the mistyped
    code twice (a squatter's room and the real one are different announcements, and
    each of those is tried). Raises the ``PeerDeskError`` that says why nothing worked.
    """
    from agent.runtime import CustomerSession

    on_lan = not (args.signal or link.signal)
    if args.signal:
        urls: AsyncIterator[str] = _one(check_signal_url(args.signal))
    elif link.signal:
        urls = _one(link.signal)
    else:  # no server configured: find the session on the LAN by its room id
        urls = _lan_candidates(link.code.room)
    failure: PeerDeskError | None = None
    async for url in urls:
        if failure is not None and url == LOCAL_FALLBACK.format(port=DEFAULT_PORT):
            break  # the LAN answered for the room: this machine's server is no other path
        session = CustomerSession(
            me,
            link,
            url,
            emit,
            role=role,
            options=options,
            timeout=hsk.DECISION_TTL if role == "csr" else hsk.JOIN_TIMEOUT,
        )
        if panel is not None:
            panel.session = session
        try:
            await session.join()
            return session
        except BaseException as exc:
            await session.closed()
            if not isinstance(exc, PeerDeskError) or not on_lan:
                raise
            if exc.code in ("signal_unreachable", "no_such_session"):
                log.info("no session %s at %s (%s); next", link.code.room, url, exc.message)
                continue
            # Discovery is untrusted: another announcement for this room id (a second
            # session, or someone squatting the id) may be the one that knows the code.
            if exc.code != "wrong_code":
                raise
            failure = exc
    if failure is None:
        raise LocalProtocolError(
            f"no session {link.code.room} found on the LAN or on this machine. "
            "Pass --signal URL or use the full link the CSR sent",
            code="no_such_session",
        )
    raise failure


if __name__ == "__main__":
    sys.exit(main())
