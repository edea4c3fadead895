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
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__, identity, status
from agent.errors import LocalProtocolError, PeerDeskError
from agent.headless import console_emitter, json_emitter, read_commands
from agent.net.endpoint import DEFAULT_PORT as DEFAULT_PORT  # re-exported: the tray uses it
from agent.net.endpoint import HostedEndpoint
from agent.protocol.code import JoinLink, SessionCode, check_signal_url, parse_code_or_link
from agent.services.customer import CustomerOptions
from agent.session import handshake as hsk

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("peerdesk")

LAN_LOOKUP_S = 4.0
"How long ``join`` without a server listens on the LAN for the session's announcement."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="peerdesk",
        description="Open, local-first remote support. Run with no command for the tray agent.",
    )
    p.add_argument("--version", action="version", version=f"peerdesk {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logs on stderr")
    sub = p.add_subparsers(dest="command")

    def front(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--signal", metavar="URL", help="signaling server (ws:// or wss://)")
        sp.add_argument("--headless", action="store_true", help="no tray: use stdin/stdout")
        sp.add_argument("--json", action="store_true", help="JSON lines on stdin/stdout")
        sp.add_argument("--name", help="display name for this session")

    start = sub.add_parser("start", help="start a support session (CSR)")
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
    join = sub.add_parser("join", help="join a session with a code or link (customer)")
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
    join.add_argument("--monitor", type=int, default=1, help="monitor to share (1 = first)")
    join.add_argument("--codec", choices=("vp8", "h264"), default="vp8", help="video codec")
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
        "failover, lan (root: two network namespaces), signaling, dashboard, all (default: join)",
    )
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument("--record", metavar="FILE", help="append the figures to this Markdown file")
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


async def _embedded_server(port: int) -> tuple[web.AppRunner, str]:
    """The embedded signaling server and its URL (``HostedEndpoint`` without the LAN
    announcement; for callers that manage the runner themselves, such as the tray)."""
    endpoint = await HostedEndpoint.start(port)
    return endpoint.runner, endpoint.url


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _directory(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


async def _start(args: argparse.Namespace) -> int:
    from agent.runtime import CsrSession

    emit = json_emitter() if args.json else console_emitter()
    me = identity.load().with_name(args.name)
    endpoint: HostedEndpoint | None = None
    if args.signal and args.lan:
        raise LocalProtocolError("--lan hosts the signaling endpoint in this agent: drop --signal")
    if args.signal:
        url = check_signal_url(args.signal)
    else:
        endpoint = await HostedEndpoint.start(args.port)
        url = endpoint.url
    session = CsrSession(me, url, emit, download_dir=_directory(args.download_dir))
    try:
        code = await session.start()
    except PeerDeskError as exc:
        emit(status.Error(reason=exc.message, code=exc.code))
        if endpoint is not None:
            await endpoint.stop()
        return 1
    if endpoint is not None and not args.no_advertise:
        endpoint.advertise(code.room, me.name, emit)
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    reader = asyncio.ensure_future(read_commands(session, emit, json_mode=args.json))
    stopper = asyncio.ensure_future(stop.wait())
    done = asyncio.ensure_future(session.wait())
    await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not done.done():
        await session.end("stopped", force=True)
    reader.cancel()
    stopper.cancel()
    if endpoint is not None:
        await endpoint.stop()
    return done.result()


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
        found = await lan.join_candidates(room, LAN_LOOKUP_S if first else 1.5, first=first)
        for url in found:
            if url not in tried:
                tried.add(url)
                yield url
    yield f"ws://127.0.0.1:{DEFAULT_PORT}"


async def _join(args: argparse.Namespace) -> int:
    from agent.runtime import CustomerSession

    emit = json_emitter() if args.json else console_emitter()
    room_only = (
        args.role == "assistant" and args.code.strip().isdigit() and len(args.code.strip()) == 6
    )
    if room_only:  # an assistant on the team roster joins by room id alone
        link = JoinLink(SessionCode(args.code.strip(), ""), None)
    else:
        link = parse_code_or_link(args.code)
    me = identity.load().with_name(args.name)
    role = "csr" if args.role == "assistant" else "customer"
    options = _customer_options(args)
    panel = None
    if role == "customer" and not (args.headless or args.json):
        from tray.customer import open_panel

        panel = await open_panel(identity.home(), also=emit)  # prompts in the browser
        emit = panel.emit
    on_lan = not (args.signal or link.signal)
    if args.signal:
        urls: AsyncIterator[str] = _one(check_signal_url(args.signal))
    elif link.signal:
        urls = _one(link.signal)
    else:  # no server configured: find the session on the LAN by its room id
        urls = _lan_candidates(link.code.room)
    failure: PeerDeskError | None = None
    async for url in urls:
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
            break
        except PeerDeskError as exc:
            if failure is None or failure.code != "wrong_code":
                failure = exc
            # Discovery is untrusted: another answer for this room id (a second
            # session, or someone squatting the id) may be the one that knows the code.
            if on_lan and exc.code in ("signal_unreachable", "no_such_session", "wrong_code"):
                log.info("no session %s at %s (%s); next", link.code.room, url, exc.message)
                continue
            emit(status.Error(reason=exc.message, code=exc.code))
            if panel is not None:
                await panel.stop()
            return 1
    else:
        if failure is None or failure.code in ("signal_unreachable", "no_such_session"):
            failure = LocalProtocolError(
                f"no session {link.code.room} found on the LAN or on this machine. "
                "Pass --signal URL or use the full link the CSR sent",
                code="no_such_session",
            )
        emit(status.Error(reason=failure.message, code=failure.code))
        if panel is not None:
            await panel.stop()
        return 1

    stop = asyncio.Event()
    _install_signal_handlers(stop)
    reader = asyncio.ensure_future(read_commands(session, emit, json_mode=args.json))
    stopper = asyncio.ensure_future(stop.wait())
    done = asyncio.ensure_future(session.wait())
    await asyncio.wait({done, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not done.done():
        await session.leave()
    reader.cancel()
    stopper.cancel()
    if panel is not None:
        await asyncio.sleep(0.3)  # the page shows "ended" before its server goes
        await panel.stop()
    return done.result()


if __name__ == "__main__":
    sys.exit(main())
