"""The agent's identity: an Ed25519 key made on first run, and a display name.

Files live in the platform's user data dir (``platformdirs``), or in ``$PEERDESK_HOME``
when set, so several agents can run side by side on one machine. The private key is
written with mode 0600 through a temporary file and a rename, so a crash never
leaves half a key behind; a key file that does not parse is an error, never
silently replaced.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from agent.errors import LocalProtocolError
from agent.protocol.handshake import MAX_NAME_CHARS, peer_id

KEY_FILE = "identity.pem"
CONFIG_FILE = "config.json"


def home() -> Path:
    """Where this agent keeps its files: ``$PEERDESK_HOME`` or the platform data dir."""
    env = os.environ.get("PEERDESK_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("peerdesk", appauthor=False))


def clean_name(name: str) -> str:
    """A display name fit to show others: printable, trimmed, at most 64 characters."""
    cleaned = "".join(c for c in name if c.isprintable()).strip()
    if not cleaned:
        raise LocalProtocolError("a display name must have at least one printable character")
    return cleaned[:MAX_NAME_CHARS]


ROLE_LABELS = {"csr": "Support", "customer": "Customer"}
"How a default name says the role, so that a CSR and a customer never look alike."


def default_name(role: str | None = None) -> str:
    """``user@host``, prefixed with the role when one is given (``Support root@vm``,
    ``Customer root@vm``): two agents on one machine must not look the same."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    label = ROLE_LABELS.get(role or "", "")
    return clean_name(f"{label} {user}@{socket.gethostname()}".strip())


def configured_name(directory: Path | None = None) -> str | None:
    """The name stored with ``peerdesk id --name`` (or asked at the first start), if any."""
    directory = directory or home()
    with _usable(directory):
        name = _load_config(directory / CONFIG_FILE).get("name")
    return clean_name(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class Identity:
    """An agent's signing key and display name."""

    key: Ed25519PrivateKey
    name: str

    @property
    def public_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def peer_id(self) -> str:
        """The short id others see for this agent."""
        return peer_id(self.public_bytes)

    def with_name(self, name: str | None) -> Identity:
        return self if name is None else Identity(self.key, clean_name(name))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_config(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LocalProtocolError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    if not isinstance(data, dict):
        raise LocalProtocolError(f"{path} must hold a JSON object")
    return data


@contextlib.contextmanager
def _usable(directory: Path) -> Iterator[None]:
    """Turn a data directory that cannot be used (a file, read-only, no permission)
    into one clear error instead of a traceback."""
    try:
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(20, "it is not a directory")
        yield
    except OSError as exc:
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(directory) else ""
        raise LocalProtocolError(
            f"cannot use {directory} as PeerDesk's data directory ({what}{where}); "
            "set PEERDESK_HOME to a directory you can write",
            code="home_unusable",
        ) from None


def load(
    directory: Path | None = None, *, create: bool = True, role: str | None = None
) -> Identity:
    """Load this agent's identity, making it on first run. Without a stored name the
    name is ``default_name(role)``."""
    directory = directory or home()
    with _usable(directory):
        return _load(directory, create=create, role=role)


def _load(directory: Path, *, create: bool, role: str | None = None) -> Identity:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = directory / KEY_FILE
    try:
        pem = key_path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise LocalProtocolError(f"no identity in {directory}") from None
        key = Ed25519PrivateKey.generate()
        _write_private(
            key_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
    else:
        try:
            loaded = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise LocalProtocolError(
                f"{key_path} is not a valid identity key ({exc}); it was left untouched"
            ) from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise LocalProtocolError(f"{key_path} holds a key that is not Ed25519")
        key = loaded
    config = _load_config(directory / CONFIG_FILE)
    name = config.get("name")
    return Identity(key, clean_name(name) if isinstance(name, str) else default_name(role))


def set_name(name: str, directory: Path | None = None) -> Identity:
    """Store a new display name for this agent."""
    directory = directory or home()
    identity = load(directory)
    with _usable(directory):
        config = _load_config(directory / CONFIG_FILE)
        config["name"] = clean_name(name)
        tmp = directory / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, directory / CONFIG_FILE)
    return identity.with_name(name)
