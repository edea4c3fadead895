"""View and control a customer's desktop: consent first, then a snapshot and a click.

Run: python examples/remote_desktop.py

Needs Xvfb (``apt-get install xvfb``): the customer's desktop is a private virtual
screen this script starts. The customer pre-accepts view and control here, as
``peerdesk join --accept view,control`` does; a real customer answers a prompt.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.capture.xvfb import Canvas, Xvfb
from agent.identity import Identity
from agent.protocol import commands as cmds
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from agent.services.customer import CustomerOptions
from signaling.server import start_server


async def main() -> None:
    with Xvfb(1280, 800) as screen, Canvas(screen.display) as canvas:
        os.environ["DISPLAY"] = screen.display  # the customer's desktop
        canvas.fill(0, 0, 640, 400, (200, 30, 30))
        canvas.sync()
        runner, port = await start_server("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}"
        controlling = asyncio.Event()

        def csr_saw(event: status.Status) -> None:
            if isinstance(event, status.ControlChanged) and event.holder is not None:
                controlling.set()

        csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, csr_saw)
        code = await csr.start()
        customer = CustomerSession(
            Identity(Ed25519PrivateKey.generate(), "Alice"),
            JoinLink(code, url),
            url,
            lambda e: print("customer:", e.to_json()),
            options=CustomerOptions(accept=frozenset({"view", "control"})),
        )
        await customer.join()
        await asyncio.sleep(0.2)
        for cap in ("view", "control"):
            await csr.command(cmds.RequestCommand(cap=cap))

        await asyncio.wait_for(controlling.wait(), 10)
        shot = Path(tempfile.mkdtemp()) / "customer.png"
        await csr.command(cmds.SnapshotCommand(path=str(shot)))
        print(f"snapshot of the customer's screen: {shot}")
        await csr.command(cmds.InputCommand(kind="click", x=0.25, y=0.5))
        await asyncio.sleep(0.3)
        where = canvas.dpy.screen().root.query_pointer()
        print(
            f"the CSR clicked at (0.25, 0.5); the customer's pointer is at "
            f"({where.root_x}, {where.root_y}) on their 1280x800 screen"
        )
        await csr.end()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
