"""Drive PeerDesk agents from a script: stdin at its end, signals, error codes.

Run: python examples/headless_service.py

A helpdesk integration starts the CSR's agent (``peerdesk start --headless --json``)
and a customer's agent the way a service manager does: stdin on /dev/null. The end
of stdin does not mean "leave", so the customer stays in the session; a mistyped
code gets an ``error`` with the stable code ``wrong_code``; SIGTERM makes the
customer leave and the CSR end the session, each with exit status 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any


def agent(home: Path, *args: str, stdin: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    env = {**os.environ, "PEERDESK_HOME": str(home), "PEERDESK_LAN_INTERFACES": "127.0.0.1"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args, "--headless", "--json"],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )


def until(proc: subprocess.Popen[str], event: str) -> dict[str, Any]:
    """Read JSON events until one named ``event`` (the agents' stdout is the API)."""
    out: IO[str] | None = proc.stdout
    assert out is not None
    for line in out:
        obj: dict[str, Any] = json.loads(line)
        if obj.get("event") == event:
            return obj
    raise SystemExit(f"the agent exited before {event!r}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        csr = agent(base / "csr", "start", "--port", "0", "--name", "Carol")
        session = until(csr, "session")
        print("session code:", session["code"], "| web page:", session["web"])

        typo = session["code"][:-1] + str((int(session["code"][-1]) + 1) % 10)
        wrong = agent(base / "typo", "join", typo, "--signal", session["signal"])
        error = until(wrong, "error")
        print("a mistyped code:", error["code"], "-", error["reason"])
        print("  exit status", wrong.wait(timeout=20))

        # stdin on /dev/null, as a service manager gives it: the customer stays
        customer = agent(
            base / "alice", "join", session["link"], "--name", "Alice", stdin=subprocess.DEVNULL
        )
        me = until(customer, "joined")["me"]
        until(csr, "joined")
        assert csr.stdin is not None
        csr.stdin.write(json.dumps({"cmd": "chat", "text": "still with me?"}) + "\n")
        csr.stdin.flush()
        print("the customer, with no stdin, still hears:", until(customer, "chat")["text"])

        customer.send_signal(signal.SIGTERM)  # leaves cleanly
        print("customer:", until(customer, "left"), "exit status", customer.wait(timeout=20))
        print("the CSR saw:", until(csr, "left")["peer"] == me and "Alice left")
        csr.send_signal(signal.SIGTERM)  # ends the session for everyone
        print("CSR:", until(csr, "ended"), "exit status", csr.wait(timeout=20))


if __name__ == "__main__":
    main()
