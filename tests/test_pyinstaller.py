"""The one-file Linux build: PyInstaller makes ``peerdesk`` from this checkout; it runs.

The build takes a few minutes on two cores, so it is cached under the temp dir,
keyed by a hash of everything that goes into it (sources, spec, Python and
PyInstaller versions): a run with unchanged sources reuses it. The smoke run:
``--version``, then the frozen binary joins a session through a local signaling
server in headless mode and chats, and joins by code alone on a LAN of two network
namespaces (zeroconf's compiled parts made it into the build).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from bench.netns import NetnsPair
from tests.procs import Proc, start_signal_server

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "installers" / "linux" / "peerdesk.spec"
BUILD_TIMEOUT = 900
# The build runs in the first test's setup: it gets the build's bound, not the default.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 120)


def source_hash() -> str:
    import PyInstaller

    h = hashlib.sha256()
    h.update(f"{sys.version} {platform.machine()} {PyInstaller.__version__}".encode())
    files = [SPEC, ROOT / "installers" / "pyinstaller" / "entry.py", ROOT / "pyproject.toml"]
    for package in ("agent", "signaling", "bench"):
        files += sorted((ROOT / package).rglob("*.py"))
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def frozen() -> Path:
    """The built binary, from the cache when the sources did not change."""
    return build()


def build() -> Path:
    """Build (or find in the cache) the binary; a concurrent call waits for the same build.

    ``tests/run`` starts this in the background while lint and type checks run
    (``python -m tests.test_pyinstaller``), so the fixture usually finds it built."""
    cache = Path(tempfile.gettempdir()) / "peerdesk-pyinstaller" / source_hash()
    binary = cache / "dist" / "peerdesk"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run waits for the same build
        if not binary.exists():
            build = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN"]
            build += ["--distpath", str(cache / "dist"), "--workpath", str(cache / "build")]
            r = subprocess.run(
                [*build, str(SPEC)],
                cwd=cache,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
            )
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert binary.stat().st_size > 1_000_000
    _prune(cache)
    return binary


def _prune(keep: Path, newest: int = 3) -> None:
    """Drop all but the ``newest`` builds of other sources (each is ~250 MB)."""
    import shutil

    others = [d for d in keep.parent.iterdir() if d.is_dir() and d != keep]
    for old in sorted(others, key=lambda d: d.stat().st_mtime, reverse=True)[newest - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def frozen_env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "PEERDESK_HOME": str(home / "pd")}


def test_frozen_binary_reports_its_version(frozen: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [str(frozen), "--version"],
        env=frozen_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"peerdesk {__version__}"


def test_frozen_binary_joins_a_session_headless(
    frozen: Path, procs: list[Proc], tmp_path: Path
) -> None:
    server, url = start_signal_server()
    procs.append(server)
    csr = Proc(
        ["agent", "start", "--signal", url, "--headless", "--json", "--name", "Carol"],
        home=tmp_path / "csr",
        name="csr",
    )
    procs.append(csr)
    session = csr.expect("session")
    customer = Proc(
        ["join", session["link"], "--headless", "--json", "--name", "Frozen"],
        name="frozen",
        exe=[str(frozen)],
        env=frozen_env(tmp_path),
    )
    procs.append(customer)
    joined = customer.expect("joined", timeout=60)
    assert joined["name"] == "Carol"
    assert csr.expect("joined", timeout=30)["name"] == "Frozen"
    customer.send({"cmd": "chat", "text": "from the one-file build"})
    assert csr.expect("chat")["text"] == "from the one-file build"
    csr.send({"cmd": "end"})
    customer.expect("ended")
    assert customer.wait(30) == 0 and csr.wait() == 0


def test_frozen_binary_finds_a_session_on_the_lan(
    frozen: Path, procs: list[Proc], tmp_path: Path
) -> None:
    with NetnsPair() as lan:
        csr = Proc(
            ["agent", "start", "--lan", "--port", "0", "--headless", "--json"],
            home=tmp_path / "csr",
            name="csr",
            wrap=lan.a.exec,
        )
        procs.append(csr)
        session = csr.expect("session", timeout=30)
        customer = Proc(
            ["join", session["code"], "--headless", "--json"],
            name="frozen",
            exe=[str(frozen)],
            wrap=lan.b.exec,
            env=frozen_env(tmp_path),
        )
        procs.append(customer)
        customer.expect("joined", timeout=60)
        csr.expect("joined", timeout=30)
        csr.send({"cmd": "end"})
        customer.expect("ended")
        assert customer.wait(30) == 0 and csr.wait() == 0


class _Recorder:
    """Stands in for PyInstaller's spec globals and records what the spec builds."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}

    def __getattr__(self, name: str) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            import types

            self.calls[name] = {"args": args, **kwargs}
            return types.SimpleNamespace(pure=[], scripts=[], binaries=[], datas=[])

        return build


def run_spec(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Execute a spec file with recording stand-ins (no build): what would it make?"""
    import types

    hooks = types.ModuleType("PyInstaller.utils.hooks")
    hooks.collect_all = lambda package: ([], [], [package])  # type: ignore[attr-defined]
    hooks.collect_submodules = lambda package: [package]  # type: ignore[attr-defined]
    hooks.collect_data_files = lambda package, includes=(): []  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "PyInstaller.utils.hooks", hooks)
    rec = _Recorder()
    names = ("Analysis", "PYZ", "EXE", "COLLECT", "BUNDLE")
    scope: dict[str, Any] = {"SPECPATH": str(path.parent), **{n: getattr(rec, n) for n in names}}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return rec.calls


def test_macos_bundle_declares_the_url_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = run_spec(ROOT / "installers" / "macos" / "peerdesk.spec", monkeypatch)
    plist = calls["BUNDLE"]["info_plist"]
    (url_type,) = plist["CFBundleURLTypes"]
    assert url_type["CFBundleURLSchemes"] == ["peerdesk"]
    assert calls["EXE"]["argv_emulation"] is True  # the clicked link arrives as an Apple Event
    entry = calls["Analysis"]["args"][0][0]
    assert Path(entry) == ROOT / "installers" / "pyinstaller" / "entry.py"


def test_windows_registers_the_url_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = run_spec(ROOT / "installers" / "windows" / "peerdesk.spec", monkeypatch)
    assert calls["EXE"]["name"] == "peerdesk"
    reg = (ROOT / "installers" / "windows" / "peerdesk-url.reg").read_text()
    assert "[HKEY_CURRENT_USER\\Software\\Classes\\peerdesk]" in reg
    assert '"URL Protocol"=""' in reg
    assert 'peerdesk.exe\\" join -- \\"%1\\""' in reg
    ps1 = (ROOT / "installers" / "windows" / "install.ps1").read_text()
    assert 'join -- `"%1`"' in ps1 and "HKCU:\\Software\\Classes\\peerdesk" in ps1


def test_a_lone_link_argument_means_join(tmp_path: Path) -> None:
    """What macOS passes the bundle: just the link; anything else is a normal command line."""
    entry = ROOT / "installers" / "pyinstaller" / "entry.py"
    r = subprocess.run(
        [sys.executable, str(entry), "peerdesk://evil/1234-5678-9012"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PEERDESK_HOME": str(tmp_path)},
    )
    assert r.returncode == 2 and "unknown link action" in r.stderr


if __name__ == "__main__":
    print(build())
