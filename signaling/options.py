"""Command-line options of a signaling node, shared by ``python -m signaling`` and
``peerdesk signal`` (argparse only: cheap to import for every ``peerdesk`` command)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a signaling node beyond where it listens (``peerdesk signal`` too)."""
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share rooms with other nodes through this Redis (redis://host:6379/0); "
        "default: rooms in memory, one node",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM refuse newcomers and wait this long for joins in progress "
        "before closing (default 10)",
    )
    parser.add_argument(
        "--turn-url",
        action="append",
        metavar="URL",
        help="a TURN server agents may relay through (turn:host:3478); repeatable",
    )
    parser.add_argument(
        "--turn-secret",
        metavar="SECRET",
        help="coturn's static-auth-secret, to mint time-limited TURN credentials "
        "(or the PEERDESK_TURN_SECRET environment variable)",
    )
    parser.add_argument(
        "--turn-ttl",
        type=int,
        default=3600,
        help="seconds TURN credentials stay valid (default 3600)",
    )
    parser.add_argument(
        "--csr-token",
        metavar="TOKEN",
        help="the team's token CSRs give to serve queues (or PEERDESK_CSR_TOKEN); "
        "without one anyone may serve",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=20_000,
        metavar="N",
        help="WebSockets this node holds at once (default 20000)",
    )
    parser.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=64,
        metavar="N",
        help="WebSockets one client address holds at once; raise it for customers behind "
        "one NAT (default 64)",
    )
