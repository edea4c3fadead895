"""LAN without cloud: a CSR announces its session with zeroconf, a customer finds it by code.

Run: python examples/lan_session.py

The CSR's agent hosts the signaling endpoint itself and announces the room id as
``_peerdesk._tcp.local.`` (the secret half of the code never leaves the agent);
the customer, given only the code, looks the room up, joins with the same PAKE as
always and chats. To stay on this machine the example announces and listens on the
loopback interface only; ``peerdesk start --lan`` and ``peerdesk join CODE`` use
every interface of the LAN. It also prints the one-click landing page link.
"""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.net.lan import LanAdvertiser, browse, find_session
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from signaling.server import start_server

LOOPBACK = ["127.0.0.1"]


async def main() -> None:
    # the CSR: an embedded signaling endpoint, a session, and the announcement
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    heard: asyncio.Queue[str] = asyncio.Queue()

    def on_event(event: status.Status) -> None:
        if isinstance(event, status.ChatReceived):
            heard.put_nowait(event.text)

    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol (CSR)"), url, on_event)
    code = await csr.start()
    advertiser = LanAdvertiser(code.room, port, name="Carol", interfaces=LOOPBACK)
    await advertiser.start()
    print(f"session code {code} announced on the LAN as room {code.room}")
    print(f"one-click page: http://127.0.0.1:{port}/j/{code.room}#{code.secret}")

    # peerdesk discover
    for session in await browse(1.0, interfaces=LOOPBACK):
        print(f"discovered: room {session.room} by {session.name!r} at {', '.join(session.urls)}")

    # the customer: only the code; the room id finds the endpoint, the PAKE checks the rest
    urls = await find_session(code.room, 5.0, interfaces=LOOPBACK)
    print(f"room {code.room} found at {urls[0]}")
    customer = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Alice"), JoinLink(code, None), urls[0], on_event
    )
    await customer.join()
    customer.chat("Found you on the LAN.")
    print("CSR heard:", await asyncio.wait_for(heard.get(), 5))

    await csr.end()
    assert await asyncio.wait_for(customer.wait(), 5) == 0
    await advertiser.stop()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
