"""LAN discovery glue: advertise a session's signaling endpoint, find one by room id.

Thin asyncio glue around python-zeroconf; the record format and its parsing live in
``agent.protocol.lan``. Discovery is untrusted: it only says where to knock, and the
same SPAKE2 join runs afterwards, so a spoofed answer costs a failed join, never a
connection to the wrong party.

``LanAdvertiser`` is a start/stop service. ``agent.net.endpoint.HostedEndpoint``
starts it wherever this agent hosts a session's signaling endpoint (``peerdesk
start`` after ``CsrSession.start()``; a new primary after a take-over, when the
session's server died with the old one, with its new room)::

    adv = LanAdvertiser(room, port, name=me.name)
    await adv.start()
    ...
    await adv.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.errors import DecodeError, LocalProtocolError
from agent.protocol.lan import SERVICE_TYPE, LanRecord, LanSession, decode_txt, encode_txt
from agent.protocol.lan import signal_urls as _signal_urls

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Interfaces = Sequence[str] | None
"Addresses of the interfaces to use (such as 127.0.0.1), or None for all of them."

LAN_UNAVAILABLE = "lan_unavailable"
"Error code when no interface can do multicast DNS."

MAX_ANSWERS = 64
"Records considered per browse; a LAN flooding more is ignored past this."


def _addresses() -> Iterator[tuple[int, IPAddress]]:
    """(interface index, address) for every address of this machine's interfaces."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                yield adapter.index or 0, ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue


def _v4_first(addresses: Iterable[IPAddress]) -> list[str]:
    """Distinct addresses as text, IPv4 first, order kept within each family."""
    unique = dict.fromkeys(str(a) for a in addresses)
    return [a for a in unique if ":" not in a] + [a for a in unique if ":" in a]


def lan_addresses() -> list[str]:
    """This machine's addresses others on the LAN can reach: IPv4 first, then IPv6.

    Loopback and link-local addresses are left out.
    """
    return _v4_first(
        addr
        for _, addr in _addresses()
        if not (addr.is_loopback or addr.is_link_local or addr.is_multicast)
    )


def configured_interfaces() -> Interfaces:
    """The interfaces ``PEERDESK_LAN_INTERFACES`` names (addresses, comma-separated), or all.

    ``PEERDESK_LAN_INTERFACES=192.168.1.20`` keeps announcements and lookups on one
    network; the tests set ``127.0.0.1`` so that they never talk to the host's LAN.
    """
    raw = os.environ.get("PEERDESK_LAN_INTERFACES", "").strip()
    if not raw:
        return None
    out: list[str] = []
    for part in raw.split(","):
        try:
            out.append(str(ipaddress.ip_address(part.strip())))
        except ValueError:
            raise LocalProtocolError(
                f"PEERDESK_LAN_INTERFACES: {part.strip()!r} is not an IP address"
            ) from None
    return out


def instance_name(room: str) -> str:
    """The DNS-SD instance a session announces: a joiner can ask for it directly."""
    return f"PeerDesk {room}.{SERVICE_TYPE}"


def _can_multicast(address: str, index: int) -> bool:
    """Whether multicast DNS can leave through this interface: a UDP ``connect`` to
    the mDNS group asks the kernel for a route without sending anything. A machine
    with IPv6 but no IPv6 route (most VMs and containers) fails here; without the
    check, zeroconf logs a traceback for every packet it cannot send."""
    v6 = ":" in address
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            if v6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                probe.connect(("ff02::fb", 5353, 0, index))
            else:
                probe.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address)
                )
                probe.connect(("224.0.0.251", 5353))
    except OSError:
        return False
    return True


def multicast_interfaces(wanted: Interfaces = None) -> list[str]:
    """The addresses (of ``wanted``, or of every interface) that multicast DNS can use.

    IPv4 first. An interface without a route for the mDNS group is left out quietly:
    it could not reach anyone anyway.
    """
    keep = {ipaddress.ip_address(a) for a in wanted} if wanted is not None else None
    usable: list[IPAddress] = []
    skipped: list[str] = []
    for index, addr in _addresses():
        if keep is not None and addr not in keep:
            continue
        if _can_multicast(str(addr), index):
            usable.append(addr)
        else:
            skipped.append(str(addr))
    if skipped:
        log.debug("no multicast route through %s: not used for LAN discovery", skipped)
    return _v4_first(usable)


def _zeroconf(interfaces: Interfaces) -> AsyncZeroconf:
    usable = multicast_interfaces(interfaces)
    if not usable:
        which = ", ".join(interfaces) if interfaces is not None else "any interface"
        raise LocalProtocolError(
            f"cannot use the LAN for discovery: no route for multicast DNS on {which}",
            code=LAN_UNAVAILABLE,
        )
    try:
        return AsyncZeroconf(interfaces=usable)  # IP versions: those of the list
    except (OSError, RuntimeError) as exc:  # zeroconf: "No interfaces to listen on", ...
        raise LocalProtocolError(
            f"cannot use the LAN for discovery: {exc}", code=LAN_UNAVAILABLE
        ) from None


class LanAdvertiser:
    """Announces one room's signaling endpoint with zeroconf until stopped.

    ``addresses`` default to ``lan_addresses()`` (loopback when there is none). The
    TXT record holds the room id and display name, never any secret. ``instance``
    overrides the DNS-SD instance label (default ``PeerDesk ROOM``).
    """

    def __init__(
        self,
        room: str,
        port: int,
        *,
        name: str = "",
        addresses: Sequence[str] | None = None,
        interfaces: Interfaces = None,
        instance: str | None = None,
    ) -> None:
        self.room = room
        self.instance = instance
        self.port = port
        self.name = name
        self.addresses = list(addresses) if addresses is not None else None
        self.interfaces = interfaces if interfaces is not None else configured_interfaces()
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None

    @property
    def running(self) -> bool:
        return self._zc is not None

    async def start(self) -> None:
        """Register the service (probing for a unique name takes about a second)."""
        if self._zc is not None:
            return
        properties = encode_txt(LanRecord(room=self.room, name=self.name))
        addresses = self.addresses if self.addresses is not None else lan_addresses()
        if self.interfaces is not None and self.addresses is None:
            addresses = [a for a in self.interfaces if a not in ("0.0.0.0", "::")]  # noqa: S104
        if not addresses:
            addresses = ["127.0.0.1"]
        tag = secrets.token_hex(3)
        # taken? zeroconf renames ours "... (2)"
        instance = f"{self.instance}.{SERVICE_TYPE}" if self.instance else instance_name(self.room)
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            instance,
            parsed_addresses=addresses,
            port=self.port,
            properties=properties,
            server=f"peerdesk-{self.room}-{tag}.local.",
        )
        zc = _zeroconf(self.interfaces)
        try:
            await (await zc.async_register_service(info, allow_name_change=True))
        except BaseException:
            await zc.async_close()
            raise
        self._zc, self._info = zc, info
        log.info("advertising room %s on %s port %s", self.room, addresses, self.port)

    async def stop(self) -> None:
        """Withdraw the advertisement (goodbye packets) and close the sockets."""
        zc, info = self._zc, self._info
        self._zc = self._info = None
        if zc is None:
            return
        try:
            if info is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(zc.async_unregister_service(info), 3.0)
        finally:
            await zc.async_close()


async def browse(
    within: float,
    *,
    room: str | None = None,
    interfaces: Interfaces = None,
) -> list[LanSession]:
    """Sessions announced on the LAN within ``within`` seconds.

    With ``room`` it returns as soon as a session with that room id answers (all
    answers that arrived by then, matching first). It then also asks for the room's
    instance by name: a unique record is answered at once, while a browse waits for
    the responders' random 20-120 ms delay.
    """
    azc = _zeroconf(interfaces if interfaces is not None else configured_interfaces())
    found: dict[str, LanSession] = {}
    pending: set[asyncio.Task[None]] = set()
    match = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        left = max(deadline - loop.time(), 0.05)
        if not await info.async_request(azc.zeroconf, left * 1000):
            return
        try:
            record = decode_txt(info.properties)
        except DecodeError as exc:
            log.info("ignoring %s: %s", name, exc.message)
            return
        if info.port is None:
            return
        urls = _signal_urls(info.parsed_scoped_addresses(), info.port, record.path)
        if not urls:
            return
        found[name] = LanSession(room=record.room, name=record.name, urls=urls, instance=name)
        if room is not None and record.room == room:
            match.set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            found.pop(name, None)
            return
        if len(pending) + len(found) >= MAX_ANSWERS:
            return
        task = asyncio.ensure_future(resolve(name))
        pending.add(task)
        task.add_done_callback(pending.discard)

    handlers: list[Any] = [on_change]
    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=handlers)
    if room is not None:
        direct = asyncio.ensure_future(resolve(instance_name(room)))
        pending.add(direct)
        direct.add_done_callback(pending.discard)
    try:
        with contextlib.suppress(TimeoutError):
            if room is None:
                await asyncio.sleep(within)
            else:
                await asyncio.wait_for(match.wait(), within)
    finally:
        for task in list(pending):
            task.cancel()
        await browser.async_cancel()
        await azc.async_close()
    sessions = sorted(found.values(), key=lambda s: (s.room != room, s.room, s.instance))
    return sessions


async def find_session(
    room: str, within: float = 4.0, *, interfaces: Interfaces = None
) -> list[str]:
    """Signaling URLs of sessions announcing ``room``, in the order to try them."""
    sessions = await _sessions(room, within, interfaces)
    return list(dict.fromkeys(url for s in sessions for url in s.urls))


async def join_candidates(
    room: str, within: float = 4.0, *, interfaces: Interfaces = None, first: bool = True
) -> list[str]:
    """One reachable signaling URL per session announcing ``room``, in the order to try.

    One per session, so that a mistyped code costs one attempt, not one per address.
    ``first``: return at the first answer for the room; else listen ``within`` seconds.
    """
    out: list[str] = []
    for session in await _sessions(room, within, interfaces, first):
        ok = await reachable(session.urls)
        if ok:
            out.append(ok[0])
    return out


async def _sessions(
    room: str, within: float, interfaces: Interfaces, first: bool = True
) -> list[LanSession]:
    started = time.monotonic()
    try:
        answers = await browse(within, room=room if first else None, interfaces=interfaces)
    except LocalProtocolError as exc:
        if exc.code != LAN_UNAVAILABLE:
            raise
        log.warning("%s", exc.message)
        return []
    sessions = [s for s in answers if s.room == room]
    log.info(
        "LAN lookup of room %s: %d session(s) in %.0f ms",
        room,
        len(sessions),
        (time.monotonic() - started) * 1000,
    )
    return sessions


async def reachable(urls: Sequence[str], within: float = 1.5) -> list[str]:
    """The ``urls`` whose host accepts a TCP connection within ``within`` s, order kept."""

    async def probe(url: str) -> bool:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        if host is None:
            return False
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    ok = await asyncio.gather(*(probe(u) for u in urls))
    return [u for u, good in zip(urls, ok, strict=True) if good]
