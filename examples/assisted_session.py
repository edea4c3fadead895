"""An assisted session in one process: a primary CSR, a customer and an assistant CSR
who joins with the CSR code; chat, a sealed note, and three copies of one signed log.

Run: python examples/assisted_session.py

It starts a signaling server on a free loopback port and keeps every agent's data in
a temporary directory. The primary admits the assistant when it asks (in a real
session the CSR reads the SAS aloud first). At the end each agent has its own copy of
the session log; the example checks that all three verify and are the same, entry
for entry, and that the customer's copy holds the note sealed.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.identity import Identity
from agent.logverify import verify
from agent.protocol.code import JoinLink
from agent.runtime import CsrSession, CustomerSession
from agent.store.logstore import LogStore
from signaling.server import start_server


async def main() -> None:
    os.environ["PEERDESK_HOME"] = tempfile.mkdtemp(prefix="peerdesk-example-")
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"
    asking: asyncio.Queue[status.AssistantRequest] = asyncio.Queue()
    reports: dict[str, status.ReportWritten] = {}

    def on_event(who: str):  # type: ignore[no-untyped-def]
        def emit(event: status.Status) -> None:
            print(f"{who:>9}: {event.to_json()}")
            if isinstance(event, status.AssistantRequest):
                asking.put_nowait(event)
            elif isinstance(event, status.ReportWritten):
                reports[who] = event

        return emit

    carol = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, on_event("primary"))
    code = await carol.start()
    alice = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Alice"),
        JoinLink(code, url),
        url,
        on_event("customer"),
    )
    await alice.join()

    # The assistant joins with the CSR code (the customer's code never makes a CSR).
    dan = CustomerSession(
        Identity(Ed25519PrivateKey.generate(), "Dan"),
        JoinLink(carol.csr_code, url),
        url,
        on_event("assistant"),
        role="csr",
    )
    joining = asyncio.ensure_future(dan.join())
    request = await asyncio.wait_for(asking.get(), 10)
    print(f"Dan asks to assist; SAS {request.sas} (read it aloud)")
    carol.admit(request.peer, True)
    await asyncio.wait_for(joining, 15)

    alice.chat("Hi, my printer is offline.")
    carol.chat("Dan from the printer team is with us.")
    dan.chat("Hello Alice.")
    await asyncio.sleep(0.5)
    carol.note("driver 4.2 was missing; reinstalled")
    await asyncio.sleep(0.5)

    await carol.end()
    for session in (alice, dan):
        await asyncio.wait_for(session.wait(), 10)
    await runner.cleanup()
    check(reports)


def check(reports: dict[str, status.ReportWritten]) -> None:
    """Three copies of one log: each verifies, all are the same, the note is sealed."""
    copies = {who: Path(r.log) for who, r in reports.items()}
    digests = {}
    for who, path in copies.items():
        report = verify(path)
        print(f"{who:>9}: {report.summary()}")
        assert report.ok, report.summary()
        with LogStore(path) as store:
            digests[who] = [e.digest for e in store.load()]
    assert digests["primary"] == digests["assistant"] == digests["customer"]
    with LogStore(copies["customer"]) as store:
        chats = [e.body["text"] for e in store.load() if e.kind == "chat"]
    assert len(chats) == 3, chats  # each line written by its own author
    notes = {
        who: json.loads(Path(r.json).read_text())["notes"][0]["text"] for who, r in reports.items()
    }
    print("the note as each agent's report shows it:", notes)
    assert notes == {
        "primary": "driver 4.2 was missing; reinstalled",
        "assistant": "driver 4.2 was missing; reinstalled",
        "customer": None,  # sealed for the CSRs
    }


if __name__ == "__main__":
    asyncio.run(main())
