"""Small, careful filesystem primitives: atomic publish, no-clobber moves, bounded safe reads.

Every OSError that is an expected outcome (lost race, file gone) is handled by the caller; this
module only makes the primitives explicit and durable.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "NotRegularFile",
    "TooLarge",
    "append_line",
    "atomic_write",
    "fsync_dir",
    "is_atomic_write_temp",
    "make_private",
    "move_noclobber",
    "read_limited",
    "rename_noreplace",
    "sync_all",
    "syncfs",
    "write_new",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


#: the temporary names atomic_write uses: ``.<name>.<8 hex digits>.tmp``
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp", re.DOTALL)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


class NotRegularFile(Exception):
    """The path is a FIFO, device, directory or symlink: never read it."""


class TooLarge(Exception):
    """The file is larger than the caller allows."""


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True, sync_dir: bool = True) -> None:
    """Publish ``data`` at ``path``: hidden temp file in the same directory, fsync, rename.

    Readers see the old content or the new, never a half file. The temp name starts with a dot and
    ends ``.tmp`` so watchers and ``ls`` ignore it, and crash cleanup can find it.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # see is_atomic_write_temp
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable and sync_dir:
        fsync_dir(path.parent)


def is_atomic_write_temp(name: str) -> bool:
    """True for a name :func:`atomic_write` gives its temp files (what crash cleanup may delete)."""
    return _TEMP_NAME.fullmatch(name) is not None


def _load_renameat2() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2: Callable[..., int] | None = _load_renameat2()


def rename_noreplace(src: Path, dst: Path) -> bool:
    """``renameat2(src, dst, RENAME_NOREPLACE)``: one atomic rename that refuses an existing ``dst``.

    Returns False, having done nothing, where the kernel, the C library or the filesystem lacks it
    (Linux < 3.15, glibc < 2.28, some filesystems); raises FileExistsError if ``dst`` exists and
    OSError for any other failure, like ``os.rename``.
    """
    global _renameat2
    func = _renameat2
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        _renameat2 = None  # the kernel has no renameat2: never ask again
        return False
    if err == errno.EINVAL:
        return False  # this filesystem does not support the flag
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def move_noclobber(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists.

    ``os.rename`` silently overwrites. ``renameat2(RENAME_NOREPLACE)`` refuses an existing target in
    one atomic step; where it is missing, link + unlink does the same in two steps (a crash between
    them leaves both names: recovery drops the source when the target holds the same inode). The
    fallback works for files only (directories cannot be hard-linked).
    """
    if rename_noreplace(src, dst):
        return
    os.link(src, dst, follow_symlinks=False)
    try:
        os.unlink(src)
    except FileNotFoundError:
        # Someone else removed the source after our link: the move still happened once.
        pass


def make_private(path: Path) -> None:
    """chmod a regular file to 0600 (symbolic links and other entries are left as they are)."""
    if stat.S_ISREG(os.lstat(path).st_mode):
        os.chmod(path, FILE_MODE)


def read_limited(path: Path, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes without following symlinks or blocking on FIFOs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile("is a symbolic link") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile("is not a regular file")
        if info.st_size > limit:
            raise TooLarge(f"{info.st_size} bytes, over the limit of {limit}")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 16):
            total += len(chunk)
            if total > limit:
                raise TooLarge(f"over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def append_line(path: Path, line: bytes, *, durable: bool = True) -> None:
    """Append one line with a single O_APPEND write, so concurrent appenders never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, line)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist) holding ``data``, without fsync: for files nobody can see
    yet, or that are made durable together afterwards (:func:`sync_all`)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[..., int] | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs  # glibc >= 2.14
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_syncfs: Callable[..., int] | None = None
_syncfs_loaded = False


def syncfs(path: Path) -> bool:
    """``syncfs(2)`` on the filesystem holding ``path``: every file written there, data and names,
    durable in one call. False, having done nothing, where it is missing; OSError if it fails."""
    global _syncfs, _syncfs_loaded
    if not _syncfs_loaded:  # loaded on first use: no work at import time
        _syncfs, _syncfs_loaded = _load_syncfs(), True
    func = _syncfs
    if func is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if func(fd) == 0:
            return True
        err = ctypes.get_errno()
    finally:
        os.close(fd)
    if err == errno.ENOSYS:
        _syncfs = None
        return False
    raise OSError(err, os.strerror(err), str(path))


def sync_all(files: Iterable[Path], dirs: Iterable[Path]) -> None:
    """Make many files just written (and the directories naming them) durable: one ``syncfs``
    where there is one (thousands of fsyncs cost seconds), else an fsync of each."""
    dirs = list(dirs)
    if dirs and syncfs(dirs[0]):
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for path in dirs:
        fsync_dir(path)
