"""Disk work for file transfers: reading sources, partial files, commit, listings.

Everything here blocks; the runtime calls it through ``asyncio.to_thread`` (one
request at a time per store). ``FileStore.perform`` runs the disk requests of
``agent.session.filetransfer`` and returns their results, so wiring is a loop::

    while (req := core.next_io()) is not None:
        core.io_done(await asyncio.to_thread(store.perform, req), now())

A partial file lives in the target directory as ``.NAME.ID.peerdesk-part`` beside a
small ``.NAME.ID.peerdesk-part.json`` that records the transfer (id, size, SHA-256)
and the *verified* offset: bytes written and fsynced. After a crash or a drop,
``open`` truncates the file to that offset and re-hashes the prefix, so the final
SHA-256 covers every byte. Every path is built from a sanitized name inside the
directory; files are opened with ``O_NOFOLLOW`` where the OS has it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.files.errors import UnsafeFileName
from agent.files.names import MAX_NAME_BYTES, safe_join, sanitize_name
from agent.protocol import files as fw
from agent.session import filetransfer as ft

SYNC_EVERY = 32 * 1024 * 1024
"Bytes written between two fsyncs (each moves the verified offset on)."
READ_BLOCK = 1024 * 1024
PART_SUFFIX = ".peerdesk-part"
META_SUFFIX = ".json"
_NAME_IN_PART = 100
"UTF-8 bytes of the file name kept in a partial file's name."

_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


def describe(path: str | os.PathLike[str]) -> FileInfo:
    """Size and SHA-256 of a file to offer (reads it all once)."""
    with FileReader(path) as reader:
        h = hashlib.sha256()
        buf = bytearray(READ_BLOCK)
        view = memoryview(buf)
        offset = 0
        while (n := reader.read_into(offset, view)) > 0:
            h.update(view[:n])
            offset += n
        return FileInfo(offset, h.hexdigest())


class FileReader:
    """A file opened for sending; positional reads, safe to share with one other thread."""

    def __init__(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> None:
        flags = os.O_RDONLY | _O_BINARY | _O_CLOEXEC | (0 if follow_symlinks else _O_NOFOLLOW)
        self.fd = os.open(path, flags)
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(f"{os.fspath(path)} is not a regular file")
        except BaseException:
            os.close(self.fd)
            raise
        self.size = st.st_size
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        buf = bytearray(length)
        n = self.read_into(offset, memoryview(buf))
        del buf[n:]
        return bytes(buf)

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` from ``offset``; returns the bytes read (0 at the end)."""
        got = 0
        with self._lock:  # close() waits: a closed descriptor's number is never reused here
            if self.fd < 0:
                raise ValueError("read from a closed file")
            while got < len(buf):
                n = _pread_into(self.fd, buf[got:], offset + got)
                if n == 0:
                    break
                got += n
        return got

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def __enter__(self) -> FileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Positional read into ``buf``; callers hold the file's lock (Windows seeks)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, len(buf))
    buf[: len(data)] = data
    return len(data)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        if hasattr(os, "pwrite"):
            n = os.pwrite(fd, view, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            n = os.write(fd, view)
        view = view[n:]
        offset += n


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate_utf8(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


class PartialFile:
    """A file being received: append-only writes, a running SHA-256, periodic fsync.

    ``offset`` is the end of what was written, ``verified`` the end of what was
    also fsynced and recorded in the sidecar (what a resume may trust).
    """

    def __init__(
        self,
        path: Path,
        meta_path: Path,
        *,
        transfer_id: str,
        name: str,
        size: int,
        sha256: str,
        sync_every: int,
    ) -> None:
        self.path = path
        self.meta_path = meta_path
        self.id = transfer_id
        self.name = name
        self.size = size
        self.sha256 = sha256
        self._sync_every = sync_every
        self._hash = hashlib.sha256()
        self.offset = 0
        self.verified = 0
        self.fd = -1
        self._lock = threading.Lock()

    # -- opening

    def start(self) -> None:
        """Create the file empty (any stale partial of this name is replaced)."""
        for p in (self.path, self.meta_path):
            _unlink_quietly(p)
        self.fd = os.open(
            self.path,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_NOFOLLOW | _O_CLOEXEC,
            0o666,
        )
        self._write_meta()

    def resume(self, verified: int) -> None:
        """Reopen the existing partial file at ``verified`` bytes and re-hash them."""
        self.fd = os.open(self.path, os.O_RDWR | _O_BINARY | _O_NOFOLLOW | _O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            raise IsADirectoryError(f"{self.path.name} is not a regular file")
        os.ftruncate(self.fd, verified)
        buf = bytearray(READ_BLOCK)
        view = memoryview(buf)
        pos = 0
        while pos < verified:
            n = _pread_into(self.fd, view[: min(READ_BLOCK, verified - pos)], pos)
            if n == 0:
                raise OSError(f"{self.path.name} is shorter than its recorded {verified} bytes")
            self._hash.update(view[:n])
            pos += n
        self.offset = self.verified = verified

    # -- writing

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Append ``data``, which must start at ``offset == self.offset``.

        Safe against a ``close`` from another thread (the fast path writes from a
        worker thread while the store may discard the transfer): it then raises.
        """
        with self._lock:
            if self.fd < 0:
                raise ValueError("write to a closed partial file")
            if offset != self.offset:
                raise ValueError(f"write at {offset}, but the partial file ends at {self.offset}")
            if offset + len(data) > self.size:
                raise ValueError("write past the announced size")
            _pwrite_all(self.fd, data, offset)
            self._hash.update(data)
            self.offset += len(data)
            if self.offset - self.verified >= self._sync_every:
                self._sync()

    def sync(self) -> None:
        """fsync and record the verified offset."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        if self.fd < 0 or self.offset == self.verified:
            return
        os.fsync(self.fd)
        self.verified = self.offset
        self._write_meta()

    def digest(self) -> str:
        with self._lock:
            return self._hash.hexdigest()

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def _write_meta(self) -> None:
        tmp = _meta_tmp(self.meta_path)
        body = json.dumps(
            {
                "id": self.id,
                "name": self.name,
                "size": self.size,
                "sha256": self.sha256,
                "verified": self.verified,
            }
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_NOFOLLOW | _O_CLOEXEC, 0o666)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.meta_path)


def _meta_tmp(meta_path: Path) -> Path:
    return meta_path.with_name(meta_path.name + ".tmp")


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _read_meta(path: Path) -> dict[str, object] | None:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        raw = path.read_bytes()
        obj = json.loads(raw) if len(raw) < 4096 else None
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _default_free_space(directory: str) -> int:
    return shutil.disk_usage(directory).free


class FileStore:
    """Receives files into one target directory; also lists and describes files to send."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        free_space: Callable[[str], int] | None = None,
        sync_every: int = SYNC_EVERY,
    ) -> None:
        self.directory = Path(directory).resolve(strict=True)
        if not self.directory.is_dir():
            raise NotADirectoryError(f"{self.directory} is not a directory")
        self._free_space = free_space or _default_free_space
        self._sync_every = sync_every
        self._open: dict[str, PartialFile] = {}
        self._lock = threading.Lock()

    # -- the core's requests

    def perform(self, request: ft.IoRequest) -> ft.IoResult:
        """Run one disk request of the transfer core; OS errors become ``IoFailed``."""
        try:
            with self._lock:
                return self._perform(request)
        except KeyError:
            return ft.IoFailed(request.id, "no open partial file for this transfer")
        except (OSError, ValueError, UnsafeFileName) as exc:
            return ft.IoFailed(request.id, str(exc) or type(exc).__name__)

    def _perform(self, request: ft.IoRequest) -> ft.IoResult:
        if isinstance(request, ft.Write):
            part = self._open[request.id]
            part.write(request.offset, request.data)
            return ft.Written(request.id, part.offset)
        if isinstance(request, ft.Prepare):
            free = self._free_space(str(self.directory))
            offset = self._resumable(request.id, request.name, request.size, request.sha256)
            return ft.Prepared(request.id, free, offset)
        if isinstance(request, ft.Open):
            part = self.open_partial(request.id, request.name, request.size, request.sha256)
            return ft.Opened(request.id, part.offset)
        if isinstance(request, ft.Finish):
            return ft.Finished(request.id, self.finish(request.id))
        if isinstance(request, ft.Commit):
            return ft.Committed(request.id, self.commit(request.id, request.name))
        self.discard(request.id, request.name, keep=request.keep)
        return ft.Discarded(request.id)

    # -- partial files

    def part_paths(self, transfer_id: str, name: str) -> tuple[Path, Path]:
        """The partial file and its sidecar for a transfer."""
        sanitize_name(name)
        if not fw.TRANSFER_ID_RE.fullmatch(transfer_id):
            raise ValueError("not a transfer id")
        short = _truncate_utf8(name, _NAME_IN_PART)
        part = self.directory / f".{short}.{transfer_id}{PART_SUFFIX}"
        return part, part.with_name(part.name + META_SUFFIX)

    def _resumable(self, transfer_id: str, name: str, size: int, sha256: str) -> int:
        part, meta_path = self.part_paths(transfer_id, name)
        meta = _read_meta(meta_path)
        if meta is None:
            return 0
        verified = meta.get("verified")
        if (
            meta.get("id") != transfer_id
            or meta.get("sha256") != sha256
            or meta.get("size") != size
            or not isinstance(verified, int)
            or isinstance(verified, bool)
            or not 0 <= verified <= size
        ):
            return 0
        try:
            st = os.lstat(part)
        except OSError:
            return 0
        if not stat.S_ISREG(st.st_mode) or st.st_size < verified:
            return 0
        return verified

    def open_partial(self, transfer_id: str, name: str, size: int, sha256: str) -> PartialFile:
        """Open the temporary file for a transfer: resume a matching one or start afresh."""
        self._drop(transfer_id, keep=True)
        part_path, meta_path = self.part_paths(transfer_id, name)
        part = PartialFile(
            part_path,
            meta_path,
            transfer_id=transfer_id,
            name=name,
            size=size,
            sha256=sha256,
            sync_every=self._sync_every,
        )
        verified = self._resumable(transfer_id, name, size, sha256)
        try:
            if verified > 0:
                part.resume(verified)
            else:
                part.start()
        except BaseException:
            part.close()
            raise
        self._open[transfer_id] = part
        return part

    def partial(self, transfer_id: str) -> PartialFile:
        """The open partial file of a transfer (the fast path writes into it)."""
        return self._open[transfer_id]

    def finish(self, transfer_id: str) -> str:
        """fsync the complete partial file; its SHA-256 (hex)."""
        part = self._open[transfer_id]
        if part.offset != part.size:
            raise ValueError(f"the file has {part.offset} of its {part.size} bytes")
        part.sync()
        return part.digest()

    def commit(self, transfer_id: str, name: str) -> str:
        """Move a finished partial file into place without replacing anything: ``name``,
        else ``name (1).ext``, ``name (2).ext``, ... Returns the name used."""
        part = self._open.pop(transfer_id)
        part.close()
        for candidate in _candidates(sanitize_name(name)):
            target = self.directory / candidate
            if _place(part.path, target):
                _unlink_quietly(part.meta_path)
                _fsync_dir(self.directory)
                return candidate
        raise FileExistsError(f"no free name for {name!r} in the target directory")

    def discard(self, transfer_id: str, name: str, *, keep: bool) -> None:
        """Close a partial file; delete it (and its sidecar) unless ``keep``."""
        self._drop(transfer_id, keep=keep)
        if not keep:
            part, meta = self.part_paths(transfer_id, name)
            for p in (part, meta, _meta_tmp(meta)):
                _unlink_quietly(p)

    def _drop(self, transfer_id: str, *, keep: bool) -> None:
        part = self._open.pop(transfer_id, None)
        if part is None:
            return
        try:
            if keep:
                part.sync()
        finally:
            part.close()
            if not keep:
                _unlink_quietly(part.path)
                _unlink_quietly(part.meta_path)

    def close(self) -> None:
        """Close every open partial file, keeping them for resume."""
        for tid in list(self._open):
            self._drop(tid, keep=True)


def list_directory(
    root: str | os.PathLike[str], relative: str, start: int = 0
) -> tuple[list[fw.Entry], bool]:
    """Entries of ``root/relative`` (advanced browse) from index ``start``, directories
    first, at most ``MAX_LIST_ENTRIES``; and whether more follow. ``relative`` comes
    from the wire and goes through ``safe_join``; entries that could not travel, that
    are neither files nor directories, or that lead outside ``root`` through a
    symlink are left out."""
    base = Path(root).resolve(strict=True)
    directory = safe_join(base, relative)
    entries: list[fw.Entry] = []
    with os.scandir(directory) as it:
        for item in it:
            if not fw.listing_name_ok(item.name):
                continue
            try:
                if item.is_symlink():
                    real = Path(item.path).resolve(strict=True)
                    if real != base and base not in real.parents:
                        continue
                st = item.stat()
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if not is_dir and not stat.S_ISREG(st.st_mode):
                continue
            entries.append(_entry(item.name, st, is_dir))
    entries.sort(key=lambda e: (not e.is_dir, e.name.casefold(), e.name))
    return _page(entries, start)


def catalogue_listing(
    published: Mapping[str, str | os.PathLike[str]], start: int = 0
) -> tuple[list[fw.Entry], bool]:
    """Entries for the basic "published files" catalogue (name -> path); files that
    vanished are left out."""
    entries = []
    for name, path in sorted(published.items(), key=lambda kv: kv[0].casefold()):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and fw.listing_name_ok(name):
            entries.append(_entry(name, st, False))
    return _page(entries, start)


def _entry(name: str, st: os.stat_result, is_dir: bool) -> fw.Entry:
    mtime = min(max(int(st.st_mtime), 0), fw.MAX_MTIME)
    return fw.Entry(name=name, size=0 if is_dir else st.st_size, is_dir=is_dir, mtime=mtime)


def _page(entries: list[fw.Entry], start: int) -> tuple[list[fw.Entry], bool]:
    page = entries[start : start + fw.MAX_LIST_ENTRIES]
    return page, start + len(page) < len(entries)


def _candidates(name: str) -> Iterable[str]:
    yield name
    stem, ext = os.path.splitext(name)
    for n in range(1, 10_000):
        suffix = f" ({n}){ext}"
        room = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
        yield _truncate_utf8(stem, room) + suffix


def _place(source: Path, target: Path) -> bool:
    """Give ``source`` the name ``target`` unless ``target`` exists; never replaces."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (FAT, some network shares): reserve, then replace
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o666)
        except FileExistsError:
            return False
        os.close(fd)
        os.replace(source, target)
        return True
    os.unlink(source)
    return True
