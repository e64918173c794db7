"""Small, careful filesystem primitives: atomic publish, no-clobber moves, bounded safe reads.

Every OSError that is an expected outcome (lost race, file gone) is handled by the caller; this
module only makes the primitives explicit and durable.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "NotRegularFile",
    "TooLarge",
    "append_line",
    "atomic_write",
    "fsync_dir",
    "move_noclobber",
    "read_limited",
]

DIR_MODE = 0o700
FILE_MODE = 0o600


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
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
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


def move_noclobber(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with FileExistsError if ``dst`` exists.

    ``os.rename`` silently overwrites; link + unlink refuses an existing target. Works for files
    only (directories cannot be hard-linked).
    """
    os.link(src, dst, follow_symlinks=False)
    try:
        os.unlink(src)
    except FileNotFoundError:
        # Someone else removed the source after our link: the move still happened once.
        pass


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
