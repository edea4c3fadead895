"""The Linux installer, for real, in a throwaway HOME.

install.sh makes a private virtualenv with the Python a fresh machine has (the
interpreter this test venv was made from; only its standard library and venv are
used: pip builds and installs this checkout and its dependencies from the package
registry, as on a user's machine), a menu entry and the peerdesk://
handler; xdg-mime names our desktop file; the desktop file's Exec line, run with a
link as a desktop would run it, joins a running session with the *installed* agent;
uninstall.sh leaves HOME exactly as it was.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.procs import Proc, returning, start_signal_server

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "installers" / "linux" / "install.sh"
PIP_CACHE = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")


def clean_env(home: Path) -> dict[str, str]:
    """What a desktop session would give: HOME and PATH, none of this test run's Python."""
    return {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def snapshot(home: Path) -> dict[str, bytes | None]:
    """Every path under ``home`` with its content (None for directories)."""
    out: dict[str, bytes | None] = {}
    for path in sorted(home.rglob("*")):
        rel = str(path.relative_to(home))
        if path.is_symlink():
            out[rel] = b"-> " + os.readlink(path).encode()
        else:
            out[rel] = None if path.is_dir() else path.read_bytes()
    return out


def install(home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "bash",
            str(INSTALL),
            "--source",
            str(ROOT),
            *extra,
        ],
        # The interpreter the test venv was made from: what a fresh machine has.
        env={
            **clean_env(home),
            "PYTHON": getattr(sys, "_base_executable", sys.executable),
            "PIP_CACHE_DIR": PIP_CACHE,  # outside the throwaway HOME: wheels come once
        },
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
    )


def uninstall(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(home / ".local/share/peerdesk-agent/uninstall.sh")],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )


def exec_line(desktop: Path) -> list[str]:
    (line,) = [x for x in desktop.read_text().splitlines() if x.startswith("Exec=")]
    return shlex.split(line.removeprefix("Exec="))


def test_install_open_a_link_through_the_desktop_file_and_uninstall(
    procs: list[Proc], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    before = snapshot(home)

    r = install(home, "--autostart")
    assert r.returncode == 0, r.stdout + r.stderr
    apps = home / ".local/share/applications"
    link_desktop = apps / "peerdesk-link.desktop"
    autostart = home / ".config/autostart/peerdesk.desktop"
    for desktop in (apps / "peerdesk.desktop", link_desktop, autostart):
        v = subprocess.run(["desktop-file-validate", str(desktop)], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
    assert "MimeType=x-scheme-handler/peerdesk;" in link_desktop.read_text()
    q = subprocess.run(
        ["xdg-mime", "query", "default", "x-scheme-handler/peerdesk"],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert q.stdout.strip() == "peerdesk-link.desktop", q.stdout + q.stderr

    # the installed agent is its own copy, not this checkout through PYTHONPATH
    argv = exec_line(link_desktop)
    assert argv[1:] == ["join", "--", "%u"]
    where = subprocess.run(
        [str(Path(argv[0]).parent / "python"), "-c", "import agent; print(agent.__file__)"],
        env=clean_env(home),
        cwd=home,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert where.stdout.startswith(str(home / ".local/share/peerdesk-agent/venv")), where

    # a session is running; the desktop opens a peerdesk:// link with our Exec line
    server, url = start_signal_server()
    procs.append(server)
    csr = Proc(
        ["agent", "start", "--signal", url, "--headless", "--json", "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
    )
    procs.append(csr)
    session = csr.expect("session")
    returning(tmp_path / "customer")  # the first-run warning is tested in test_customer_panel
    opened = subprocess.Popen(
        [session["link"] if a == "%u" else a for a in argv],
        env={**clean_env(home), "PEERDESK_HOME": str(tmp_path / "customer")},
        cwd=home,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        joined = csr.expect("joined", timeout=30)
        assert joined["role"] == "customer"
        csr.send({"cmd": "end"})
        out, err = opened.communicate(timeout=30)
    finally:
        if opened.poll() is None:
            opened.kill()
            opened.wait(timeout=10)
    assert opened.returncode == 0, out + err
    assert joined["sas"] in re.sub(r"\s", "", out), out
    assert csr.wait() == 0

    r = uninstall(home)
    assert r.returncode == 0, r.stdout + r.stderr
    # the agent's own user data (its download folder) is the user's: uninstall keeps it
    user_data = {"Downloads": None, "Downloads/PeerDesk": None}
    assert snapshot(home) == {**before, **user_data}


def test_uninstall_puts_back_what_was_there(tmp_path: Path) -> None:
    """An existing mimeapps.list keeps its other lines and its previous peerdesk handler.

    HOME has a space, so the Exec lines must quote the program. (xdg-mime itself
    cannot query under such a HOME: xdg-utils 1.1 splits its search path on spaces.)
    """
    home = tmp_path / "a home"
    (home / ".config").mkdir(parents=True)
    (home / ".local/bin").mkdir(parents=True)
    (home / ".config/mimeapps.list").write_text(
        "[Added Associations]\ntext/plain=vim.desktop;\n\n"
        "[Default Applications]\ntext/html=firefox.desktop\n"
        "x-scheme-handler/peerdesk=old-peerdesk.desktop\n"
    )
    (home / ".local/bin/other-tool").write_text("#!/bin/sh\n")
    before = snapshot(home)

    r = install(home)
    assert r.returncode == 0, r.stdout + r.stderr
    mime = (home / ".config/mimeapps.list").read_text()
    assert "x-scheme-handler/peerdesk=peerdesk-link.desktop" in mime
    assert "text/html=firefox.desktop" in mime
    argv = exec_line(home / ".local/share/applications/peerdesk-link.desktop")
    assert Path(argv[0]).is_file() and argv[1:] == ["join", "--", "%u"]
    version = subprocess.run(
        [argv[0], "--version"], env=clean_env(home), cwd=home, capture_output=True, text=True
    )
    assert version.stdout.startswith("peerdesk "), version
    again = install(home)
    assert again.returncode == 2 and "already installed" in again.stderr

    r = uninstall(home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert snapshot(home) == before


def test_installer_refuses_bad_options(tmp_path: Path) -> None:
    r = subprocess.run(
        ["bash", str(INSTALL), "--frobnicate"],
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "unknown option --frobnicate" in r.stderr
    assert not any(tmp_path.iterdir())
    odd = tmp_path / "100%"  # would need escaping in the desktop file: refused, nothing made
    odd.mkdir()
    r = subprocess.run(
        ["bash", str(INSTALL)], env=clean_env(odd), capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "not supported" in r.stderr
    assert not any(odd.iterdir())


def test_installer_scripts_are_executable() -> None:
    for script in ("install.sh", "uninstall.sh"):
        assert os.access(ROOT / "installers" / "linux" / script, os.X_OK)
