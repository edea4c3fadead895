"""What a mistyped code does: the join fails on both sides, and three failures burn the code.

Run: python examples/wrong_code.py
"""

from __future__ import annotations

import asyncio

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import status
from agent.errors import PeerDeskError
from agent.identity import Identity
from agent.protocol.code import JoinLink, SessionCode
from agent.runtime import CsrSession, CustomerSession
from signaling.server import start_server


async def main() -> None:
    runner, port = await start_server("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}"

    def csr_saw(event: status.Status) -> None:
        if isinstance(event, status.AttemptFailed | status.CodeClosed):
            print(f"     CSR sees: {event.to_json()}")

    csr = CsrSession(Identity(Ed25519PrivateKey.generate(), "Carol"), url, csr_saw)
    code = await csr.start()
    wrong = SessionCode(code.room, f"{(int(code.secret) + 1) % 10**6:06d}")
    for attempt in (1, 2, 3):
        me = Identity(Ed25519PrivateKey.generate(), f"guesser {attempt}")
        joiner = CustomerSession(me, JoinLink(wrong, url), url, lambda e: None, timeout=5)
        try:
            await joiner.join()
        except PeerDeskError as exc:
            print(f"attempt {attempt}: {exc.code}: {exc.message}")
        await asyncio.sleep(0.2)
    me = Identity(Ed25519PrivateKey.generate(), "the real customer")
    late = CustomerSession(me, JoinLink(code, url), url, lambda e: None, timeout=5)
    try:
        await late.join()
    except PeerDeskError as exc:
        print(f"right code after the burn: {exc.code}: {exc.message}")
    await csr.end()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
