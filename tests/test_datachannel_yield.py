"""A file on the data channel leaves chat and control their turn, on a 2 Mbit/s link.

When the peers cannot reach each other directly, a file goes on the data channel, and
aiortc's data channels share one SCTP association with one queue: sent as fast as
SCTP took it, a file made every chat line (and every click) wait behind it, measured
here at 3.5 s p50 and 6.4 s at worst. Paced by its round trip (``fileyield``), the
chat takes 3 ms p50 (63 ms at worst) and the file still gets 1.4 of the 2 Mbit/s.
Real agents in a network namespace shaped with tbf, the fast path switched off.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from bench.netns import ShapedNamespace
from tests.procs import Proc
from tests.test_files_cli import make_file, sha

MIB = 3


def test_chat_passes_a_data_channel_file_on_a_slow_link(
    procs: list[Proc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERDESK_NO_FASTPATH", "1")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    src = tmp_path / "driver.bin"
    digest = make_file(src, MIB)
    with ShapedNamespace("2mbit") as ns:
        csr = Proc(
            ["agent", "start", "--headless", "--json", "--port", "0"],
            home=tmp_path / "csr", name="csr", wrap=ns.exec,
        )  # fmt: skip
        procs.append(csr)
        link = csr.expect("session", timeout=30)["link"]
        cust = Proc(
            ["agent", "join", link, "--headless", "--json", "--accept", "files",
             "--download-dir", str(downloads)],
            home=tmp_path / "cust", name="customer", wrap=ns.exec,
        )  # fmt: skip
        procs.append(cust)
        cust.expect("joined", timeout=30)
        csr.send({"cmd": "request", "cap": "files"})
        csr.expect("consent", lambda e: e["cap"] == "files" and e["state"] == "granted")

        started = time.monotonic()
        csr.send({"cmd": "send_file", "path": str(src)})
        cust.expect("file", lambda e: e["state"] == "active", timeout=30)
        took = []
        for i in range(10):  # while the file goes (it takes over 10 s at 2 Mbit/s)
            sent = time.monotonic()
            csr.send({"cmd": "chat", "text": f"still there? {i}"})
            cust.expect("chat", lambda e, i=i: e["text"] == f"still there? {i}", timeout=20)
            took.append(time.monotonic() - sent)
            time.sleep(0.3)
        done = cust.expect("file", lambda e: e["state"] in ("done", "failed"), timeout=120)
        elapsed = time.monotonic() - started
        sent_done = csr.expect("file", lambda e: e["state"] in ("done", "failed"), timeout=30)
    assert done["state"] == "done" and done["sha256"] == digest, done
    assert sent_done["transport"] == "datachannel", sent_done
    assert done["transport"] == "datachannel", done  # the receiving side says so too
    assert sha(downloads / "driver.bin") == digest
    assert statistics.median(took) < 0.1, took  # unpaced: 3.5 s
    assert max(took) < 0.5, took
    kbps = MIB * 1024 * 1024 * 8 / elapsed / 1000
    assert kbps > 1000, kbps  # at least half the link (with the join's seconds counted)


pytestmark = pytest.mark.timeout(180)
