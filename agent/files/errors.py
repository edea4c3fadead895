"""Errors of the file-transfer capability, subclassing the shared ones in ``agent.errors``.

Kept here so that the capability stays one self-contained package; each class says
whether it is the peer's misbehaviour (``RemoteProtocolError``) or a local condition
(``LocalProtocolError``), and carries a stable ``code`` that also travels in
``reject``/``abort`` messages.
"""

from __future__ import annotations

from agent.errors import LocalProtocolError, RemoteProtocolError


class UnsafeFileName(RemoteProtocolError):
    """A file name that could escape the target directory or misbehave on some OS."""

    code = "unsafe_name"


class PathOutsideDirectory(UnsafeFileName):
    """A browse path that leads (through ``..`` or a symlink) outside the granted directory."""

    code = "outside_directory"


class TransferFailed(RemoteProtocolError):
    """The peer broke a transfer: wrong offset, more bytes than offered, hash mismatch."""

    code = "transfer_failed"


class InsufficientSpace(LocalProtocolError):
    """The target disk has not enough free space for the offered file."""

    code = "no_space"


class FastPathError(RemoteProtocolError):
    """The direct TCP fast path failed: could not connect, bad key, cut short, timed out."""

    code = "fastpath"
