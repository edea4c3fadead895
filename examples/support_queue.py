"""A support queue: two customers wait, a CSR takes the first and transfers it with a note.

Run: python examples/support_queue.py

It starts a signaling server on a free loopback port with a team CSR token, lets two
customers wait in "support" (each hears its position), has CSR carol list the queue
and take the customer who asked first into her session's room, then transfer that
customer to the "billing" queue with a message (at most 345 characters; a longer one
is refused), where CSR dave takes it and reads carol's note.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from signaling.server import ServerConfig, start_server

TOKEN = "example-team-token-0123"


class Wire:
    """One WebSocket speaking the signaling wire as JSON."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, who: str) -> None:
        self.ws, self.who = ws, who

    async def send(self, **body: Any) -> None:
        await self.ws.send_str(json.dumps(body))

    async def next(self, kind: str) -> dict[str, Any]:
        """The next message of type ``kind``; queue pushes on the way are skipped."""
        while True:
            body: dict[str, Any] = json.loads((await self.ws.receive(timeout=5)).data)
            if body["type"] == kind:
                return body
            if body["type"] == "error":
                raise RuntimeError(f"{self.who}: {body['message']}")


async def main() -> None:
    runner, port = await start_server("127.0.0.1", 0, ServerConfig(csr_token=TOKEN))
    url = f"http://127.0.0.1:{port}/ws"
    try:
        async with aiohttp.ClientSession() as http:

            async def connect(who: str) -> Wire:
                return Wire(await http.ws_connect(url), who)

            alice, bob = await connect("alice"), await connect("bob")
            for c, name in ((alice, "Alice"), (bob, "Bob")):
                await c.send(type="wait", queue="support", name=name)
                waiting = await c.next("waiting")
                print(f"{name} waits in support at position {waiting['position']}")

            carol = await connect("carol")
            await carol.send(type="serve", name="carol", queues=["support"], token=TOKEN)
            await carol.send(type="list", queue="support")
            listed = await carol.next("queue")
            while listed["queue"] != "support":  # serve also sends her own queue, @carol
                listed = await carol.next("queue")
            print("carol sees:", [t["name"] for t in listed["waiting"]])
            await carol.send(type="take", queue="support", room="482913")
            taken = await carol.next("taken")
            print(f"carol took {taken['name']} (ticket {taken['ticket']})")
            assigned = await alice.next("assigned")
            print(f"Alice hears: CSR {assigned['csr']} will help in room {assigned['room']}")
            print(f"Bob moves up to position {(await bob.next('waiting'))['position']}")

            await carol.send(
                type="transfer", ticket=taken["ticket"], queue="billing", message="x" * 346
            )
            error = json.loads((await carol.ws.receive(timeout=5)).data)
            while error["type"] != "error":
                error = json.loads((await carol.ws.receive(timeout=5)).data)
            print(f"a 346-character message is refused: {error['message']}")
            note = "Printer fixed. The last invoice charges twice; please refund one."
            await carol.send(type="transfer", ticket=taken["ticket"], queue="billing", message=note)
            moved = await carol.next("transferred")
            print(f"carol handed ticket {moved['ticket']} to {moved['queue']}")

            dave = await connect("dave")
            await dave.send(type="serve", name="dave", queues=["billing"], token=TOKEN)
            await dave.send(type="take", queue="billing", room="771204")
            taken = await dave.next("taken")
            print(f"dave took {taken['name']} with carol's note: {taken['note']!r}")
            print(f"Alice hears: CSR {(await alice.next('assigned'))['csr']} will help")
            for c in (alice, bob, carol, dave):
                await c.ws.close()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
