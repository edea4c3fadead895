"""Send a file to a customer who granted ``files``; it arrives verified by SHA-256.

Run: python examples/send_file.py

A CSR and a customer agent run in this process (with their own temporary folders).
The customer pre-accepts files (like ``peerdesk join --accept files``); the CSR asks
for the capability, offers a 20 MB file, and both sides report the same hash. The
bytes take the fast path (direct TCP sealed with AES-256-GCM under the join's key).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from agent.services.customer import CustomerOptions
from signaling.server import start_server


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="peerdesk-example-"))
    source, downloads = work / "installer.bin", work / "downloads"
    downloads.mkdir()
    source.write_bytes(os.urandom(20 * 1024 * 1024))
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    done: asyncio.Future[status.FileProgress] = asyncio.get_running_loop().create_future()
    granted = asyncio.Event()

    def csr_events(event: status.Status) -> None:
        if isinstance(event, status.ConsentChanged) and event.state == "granted":
            granted.set()

    def customer_events(event: status.Status) -> None:
        final = isinstance(event, status.FileProgress) and event.state in ("done", "failed")
        if final and not done.done():
            done.set_result(event)  # type: ignore[arg-type]

    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, csr_events)
    code = await csr.start()
    customer = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Alice"),
        JoinLink(code, url),
        url,
        customer_events,
        options=CustomerOptions(accept=frozenset({"files"}), download_dir=downloads),
    )
    await customer.join()
    await asyncio.sleep(0.2)  # the CSR's side sees the join
    services = csr.services_for(None)
    services.request("files")
    await asyncio.wait_for(granted.wait(), 10)
    await services.send_file(str(source))
    result = await asyncio.wait_for(done, 60)
    print(f"{result.name}: {result.state}, {result.size} bytes over {result.transport}")
    print(f"  sent     sha256 {hashlib.sha256(source.read_bytes()).hexdigest()}")
    print(f"  received sha256 {result.sha256}  -> {result.path}")
    assert result.sha256 == hashlib.sha256((downloads / source.name).read_bytes()).hexdigest()
    await csr.end()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
