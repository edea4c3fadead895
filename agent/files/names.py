"""File names and paths that come from the other side, checked before they touch a disk.

``sanitize_name`` refuses (it never "repairs") a name that could leave the target
directory or do something surprising on any of the three desktop systems: a name
accepted here is one plain path component on Linux, macOS and Windows alike.
``safe_join`` confines a relative browse path to a granted directory, symlinks
included.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from agent.files.errors import PathOutsideDirectory, UnsafeFileName

MAX_NAME_BYTES = 255
"Longest name in UTF-8 bytes (ext4, APFS and NTFS all stop near here)."

_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"]
)
"Windows device names: reserved with any extension, in any case (``con.txt`` too)."

_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')
"Characters Windows refuses in a name (``:`` also opens NTFS alternate data streams)."

_SEPARATOR_LOOKALIKES = frozenset("\u2044\u2215\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c")
"Characters that look like / or \\ (and that best-fit code pages may turn into one)."

_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"Embeddings, overrides and isolates: they can show ``exe.txt`` for ``txt.exe``."


def _refuse(name: str, why: str) -> UnsafeFileName:
    shown = name if len(name) <= 60 else name[:57] + "..."
    return UnsafeFileName(f"refused the file name {shown!r}: {why}")


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"  # C0, DEL and C1


def sanitize_name(name: str) -> str:
    """Return ``name`` unchanged if it is one safe file name, else raise ``UnsafeFileName``.

    Refused: empty names, ``.`` and ``..``, any ``/`` or ``\\`` (or a look-alike),
    NUL and other control characters, bidirectional overrides, the characters Windows
    forbids (``<>:"|?*``), trailing dots or spaces, Windows device names (CON, PRN,
    AUX, NUL, COM0-9, LPT0-9, CONIN$, CONOUT$, with or without an extension, in any
    case), lone surrogates, and names longer than 255 bytes in UTF-8.
    """
    if not isinstance(name, str):
        raise UnsafeFileName("a file name must be text")
    if not name:
        raise UnsafeFileName("refused an empty file name")
    if name in (".", ".."):
        raise _refuse(name, "it names a directory, not a file")
    if "/" in name or "\\" in name:
        raise _refuse(name, "it contains a path separator")
    if "\x00" in name:
        raise _refuse(name, "it contains a NUL character")
    for ch in name:
        if _is_control(ch):
            raise _refuse(name, f"it contains the control character U+{ord(ch):04X}")
        if ch in _SEPARATOR_LOOKALIKES:
            raise _refuse(name, f"it contains U+{ord(ch):04X}, which looks like a path separator")
        if ch in _BIDI_CONTROLS:
            raise _refuse(name, f"it contains the text-direction control U+{ord(ch):04X}")
        if ch in _WINDOWS_FORBIDDEN:
            raise _refuse(name, f"it contains {ch!r}, which Windows does not allow in names")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refuse(name, "it is not valid Unicode text") from None
    if size > MAX_NAME_BYTES:
        raise _refuse(name, f"it is {size} bytes long; the limit is {MAX_NAME_BYTES}")
    if name[-1] in ". ":
        raise _refuse(name, "it ends with a dot or a space")
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED:
        raise _refuse(name, "it is a reserved device name on Windows")
    return name


def split_relative(relative: str) -> list[str]:
    """The components of a ``/``-separated relative browse path ("" is the root itself).

    Refuses absolute paths, drive letters, backslashes, empty, ``.`` and ``..``
    components, NUL and control characters.
    """
    if not relative:
        return []
    if relative.startswith("/") or (len(relative) >= 2 and relative[1] == ":"):
        raise UnsafeFileName(f"refused the path {relative[:60]!r}: it is not relative")
    parts = relative.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeFileName(
                f"refused the path {relative[:60]!r}: empty, '.' or '..' component"
            )
        if "\\" in part or any(ch == "\x00" or _is_control(ch) for ch in part):
            raise UnsafeFileName(
                f"refused the path {relative[:60]!r}: a backslash or control character"
            )
    return parts


def safe_join(directory: str | os.PathLike[str], relative: str) -> Path:
    """``directory/relative`` with symlinks resolved, refused if it ends up outside.

    ``relative`` is a ``/``-separated path from the wire. The result may not exist
    yet. Raises ``UnsafeFileName`` for a malformed path and ``PathOutsideDirectory``
    when the resolved path leaves ``directory`` (for example through a symlink).
    A symlink swapped in after this check is not caught; open the result with
    ``O_NOFOLLOW`` where that matters.
    """
    root = Path(directory).resolve(strict=True)
    parts = split_relative(relative)
    target = root.joinpath(*parts).resolve(strict=False)
    if target != root and root not in target.parents:
        raise PathOutsideDirectory(
            f"refused the path {relative[:60]!r}: it leads outside the granted directory"
        )
    return target
