"""A CSR and a customer in one process: PAKE-authenticated join, SAS, chat both ways, end.

Run: python examples/chat_session.py

It starts a signaling server on a free loopback port, hosts a session, joins it with
the session code as a customer, prints the short authentication string both sides
computed, exchanges a chat line each way and ends the session.
"""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from signaling.server import start_server


async def main() -> None:
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    heard: asyncio.Queue[status.ChatReceived] = asyncio.Queue()

    def on_event(who: str):  # type: ignore[no-untyped-def]
        def emit(event: status.Status) -> None:
            print(f"{who:>8}: {event.to_json()}")
            if isinstance(event, status.ChatReceived):
                heard.put_nowait(event)

        return emit

    # Real agents keep their key in PEERDESK_HOME; here both are made in memory.
    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol (CSR)"), url, on_event("csr"))
    code = await csr.start()
    print(f"session code {code}: read it to the customer")

    customer = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Alice"),
        JoinLink(code, url),
        url,
        on_event("customer"),
    )
    await customer.join()  # raises WrongCode, CodeBurned, ... with a readable message

    customer.chat("Hi, my printer is offline.")
    print("CSR heard:", (await asyncio.wait_for(heard.get(), 5)).text)
    csr.chat("Let's have a look together.")
    print("customer heard:", (await asyncio.wait_for(heard.get(), 5)).text)

    await csr.end()
    assert await asyncio.wait_for(customer.wait(), 5) == 0
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
