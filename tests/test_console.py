"""The console, as a person uses it: each role's own commands, /help, /send FILE,
readable lines (never raw JSON), prompts only on the side that answers them, and
errors in the user's terms."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.procs import ConsoleProc, Proc


def test_the_console_speaks_to_people(procs: list[Proc], tmp_path: Path) -> None:
    carol = ConsoleProc(
        ["agent", "start", "--headless", "--port", "0", "--name", "Carol"],
        home=tmp_path / "carol",
        name="carol",
    )
    procs.append(carol)
    assert carol.line("Session code:", timeout=20).split()[-1].count("-") == 2
    link = carol.line("Link:").split()[-1]
    carol.line("Web page:")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    alice = ConsoleProc(
        ["agent", "join", link, "--headless", "--name", "Alice", "--download-dir", str(downloads)],
        home=tmp_path / "alice",
        name="alice",
    )
    procs.append(alice)
    check = alice.line("joined as csr", timeout=20)
    assert "Carol" in check and "check code" in check
    assert "Alice" in carol.line("joined as customer")
    roster = carol.line("in the session:")
    assert "Carol [" in roster and "(CSR)" in roster and "(customer, primary)" in roster

    # each side has its own commands
    carol.type("/help")
    assert "/end" in carol.line("/end ")
    alice.type("/help")
    alice.line("/grant ID")
    alice.type("/end")
    err = alice.line("is not a command here")
    assert "/end is not a command here" in err and "/leave" in err
    carol.type("/request VIEW")  # case does not matter
    alice.line("asks for view")
    carol.type("/request screen")
    assert "screen is not a capability; choose view" in carol.line("is not a capability")
    carol.type("/to nobody hello")
    err = carol.line("no one in this session has the id")
    assert "nobody" in err and "Alice [" in err

    # a file: the prompt shows where it is answered, with a human size
    payload = os.urandom(5_000_000)
    path = tmp_path / "report.bin"
    path.write_bytes(payload)
    carol.type("/request files")
    asked = alice.line("asks for files")
    alice.type(asked.split(": ")[-1].split(" or ")[0])  # "/grant rN", as the prompt says
    carol.line("files: granted")
    carol.type(f"/send {path}")
    prompt = alice.line("offers you the file", timeout=20)
    assert "report.bin (4.8 MB)" in prompt and "/accept" in prompt
    file_id = prompt.split("/accept ")[1].split()[0]
    alice.type(f"/accept {file_id}")
    done = alice.line("received, saved as", timeout=30)
    saved = Path(done.split("saved as ")[1].split(" (SHA-256")[0])
    assert hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(payload).digest()
    carol.line("report.bin (4.8 MB) sent", timeout=15)

    carol.type("hello from the console")
    assert alice.line("hello from the console").startswith("<Carol>")
    carol.type("/end")
    alice.line("the session has ended", timeout=15)
    assert carol.wait(timeout=20) == 0 and alice.wait(timeout=20) == 0
    for who in (carol, alice):
        lines = who.all_lines()
        assert not [x for x in lines if x.lstrip().startswith("{")], lines  # no raw JSON
        who.quiet()
    assert not [x for x in carol.all_lines() if "/accept" in x]  # not the sender's to answer
