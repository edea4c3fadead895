"""The CSR dashboard's API from a script: what the page does, over its websocket.

Run: python examples/dashboard_session.py

It starts a signaling server and the dashboard server (a ``Hub`` of sessions behind
``Dashboard``) on loopback, then talks to the dashboard the way its page does: with
the per-launch token, a session is started, a customer (in this process) joins with
the code, chat goes both ways, a note goes into the signed log, and the session ends
with its report. Open the printed address in a browser while it runs to watch.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

os.environ.setdefault("PEERDESK_HOME", tempfile.mkdtemp(prefix="peerdesk-example-"))

from agent import status
from agent.identity import Identity
from agent.protocol.code import parse_code_or_link
from agent.runtime import CustomerSession
from signaling.server import start_server
from tray.dashboard import Dashboard
from tray.hub import Hub


async def main() -> None:
    runner, port = await start_server("127.0.0.1", 0)
    hub = Hub(Identity(Ed25519PrivateKey.generate(), "Carol (CSR)"), f"ws://127.0.0.1:{port}")
    dashboard = Dashboard(hub)
    url = await dashboard.start()
    print(f"dashboard: {url}")
    base, token = url.split("/?t=")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as refused:
            print(f"without the token: HTTP {refused.status}")
        ws = await http.ws_connect(f"{base}/ws?t={token}", origin=base)

        async def next_event(name: str) -> dict[str, Any]:
            while True:
                msg = await asyncio.wait_for(ws.receive_json(), 10)
                if msg["type"] == "error":
                    raise RuntimeError(msg["reason"])
                if msg["type"] == "status" and msg["event"]["event"] == name:
                    event: dict[str, Any] = msg["event"]
                    return event

        await ws.send_str(json.dumps({"op": "start"}))
        started = await next_event("session")
        sid = "s1"
        print(f"session code {started['code']}: read it to the customer")

        def customer_emit(event: status.Status) -> None:
            if isinstance(event, status.ChatReceived):
                print(f"customer heard: {event.text}")

        link = parse_code_or_link(started["link"])
        customer = CustomerSession(
            Identity(Ed25519PrivateKey.generate(), "Alice"), link, started["signal"], customer_emit
        )
        await customer.join()
        joined = await next_event("joined")
        print(f"{joined['name']} joined, check code {joined['sas']}")

        async def page(op: dict[str, Any]) -> None:
            await ws.send_str(json.dumps({"session": sid, **op}))

        await page({"op": "cmd", "cmd": {"cmd": "chat", "text": "Hello Alice, how can I help?"}})
        customer.chat("My printer says the driver is out of date.")
        print(f"dashboard heard: {(await next_event('chat'))['text']}")
        await page({"op": "note", "text": "Printer driver out of date; walked her through it."})
        await page({"op": "cmd", "cmd": {"cmd": "end"}})
        report = await next_event("report")
        print(f"report: {report['html']}")
        await asyncio.wait_for(customer.wait(), 10)
        await ws.close()

    await dashboard.stop()
    await hub.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
