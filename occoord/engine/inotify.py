"""A recursive inotify watch of the spool in one thread, without watchdog's three.

Why: measured at 1,000 tasks, watchdog's threads (the inotify reader, the emitter that holds every
``IN_MOVED_FROM`` in a delayed queue to pair it, the dispatcher) took ~4 ms of CPU per task lifecycle
and three GIL hand-offs per event before a hint reached the loop. Here one thread polls the inotify
descriptor, turns each buffer of events into hints (the same :func:`classify` as before) and hands
the whole batch over at once, duplicates dropped (a hint only says "look again").

A rename is reported as its two ends (each end gives the hint it gives anyway). A directory that
appears (created, or moved in or within) is walked: its subdirectories are watched, and when it was
created the files already in it are reported as created (they were made before the watch was). A
directory that moves away loses its watches; ``IN_Q_OVERFLOW`` becomes a ``rescan`` hint.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import select
import struct
import threading
from collections.abc import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

from occoord.spool.echoes import ECHOES

__all__ = ["InotifyTree", "available"]

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# The events a hint can come from (no opens, reads or modifications: see watcher.WATCHED).
MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF
_HEADER = struct.Struct("iIII")
_READ_SIZE = 1 << 16

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


def available() -> bool:
    """inotify can be used here (Linux, and the C library has it)."""
    try:
        return hasattr(_lib(), "inotify_init1")
    except OSError:
        return False


Batch = Callable[[list[FileSystemEvent]], object]


class InotifyTree:
    """Watches ``root`` and everything below it; ``deliver`` gets each buffer's events, in order:
    from ``loop`` when one is given (the descriptor is one of its readers), else from a thread.

    On the loop is the engine's choice: measured, a reader thread woke a dozen times while one
    manifest was accepted and each wake-up took the GIL from the loop (accepting took 4.4 ms in
    place of 1.9). Events wait in the kernel while the loop works (a loop that stalls long enough
    to overflow its queue gets the ``rescan`` hint)."""

    def __init__(self, root: str, deliver: Batch, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.root = root.rstrip("/") or "/"
        self.deliver = deliver
        self.loop = loop
        self._reading = False
        self._fd = -1
        self._wake_r, self._wake_w = -1, -1
        self._paths: dict[int, str] = {}  # watch descriptor -> directory path
        self._wds: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._echoes = False

    def start(self) -> None:
        self.root = os.path.abspath(self.root)  # how RunTasks names its renames (echoes.py)
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        if self._add(self.root, top=True) is None:
            raise FileNotFoundError(errno.ENOENT, "cannot watch", self.root)
        self._walk(self.root, created=False, out=[])
        ECHOES.enable()
        self._echoes = True
        if self.loop is not None:
            self.loop.add_reader(self._fd, self._readable)
            self._reading = True
            return
        self._thread = threading.Thread(target=self._run, name="occoord-inotify", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        if self.loop is not None:
            return self._reading
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stopping = True
        if self._reading and self.loop is not None:
            self._reading = False
            self.loop.remove_reader(self._fd)
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1
        if self._echoes:
            self._echoes = False
            ECHOES.disable()

    # -- watches -------------------------------------------------------------------------------

    def _add(self, path: str, *, top: bool = False) -> int | None:
        mask = MASK | IN_ONLYDIR | (0 if top else IN_DONT_FOLLOW)
        wd = int(_lib().inotify_add_watch(self._fd, os.fsencode(path), mask))
        if wd < 0:
            return None  # gone again, or not a directory (a symlink): nothing to watch
        old = self._paths.get(wd)
        if old is not None and old != path:
            self._wds.pop(old, None)
        self._paths[wd] = path
        self._wds[path] = wd
        return wd

    def _walk(self, path: str, *, created: bool, out: list[FileSystemEvent]) -> None:
        """Watch every directory below ``path``; for a new one, report the files already there."""
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            child = f"{path}/{entry.name}"
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                if self._add(child) is not None:
                    if created:
                        out.append(DirCreatedEvent(child))
                    self._walk(child, created=created, out=out)
            elif created:
                out.append(FileCreatedEvent(child))
                out.append(FileClosedEvent(child))  # complete or not, it was closed or is seen later

    def _forget(self, path: str) -> None:
        prefix = path + "/"
        for gone in [p for p in self._wds if p == path or p.startswith(prefix)]:
            wd = self._wds.pop(gone)
            if self._paths.get(wd) == gone:
                del self._paths[wd]
                _lib().inotify_rm_watch(self._fd, wd)

    # -- reading -------------------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._stopping  # set by stop() from another thread

    def _readable(self) -> None:
        events: list[FileSystemEvent] = []
        try:
            while True:
                data = os.read(self._fd, _READ_SIZE)
                events += self._events(data)
        except BlockingIOError:
            pass
        except OSError as exc:
            log.error("inotify: cannot read: %s", exc)
            self._reading = False  # alive() says so: the coordinator restarts the watch, rescans
            if self.loop is not None:
                self.loop.remove_reader(self._fd)
        if events:
            try:
                self.deliver(events)
            except Exception:
                log.exception("inotify: cannot handle a batch")

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                poller.poll()
                if self._stopped():
                    return
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("inotify: cannot read: %s", exc)
                return
            try:
                self.deliver(self._events(data))
            except Exception:  # the thread must live on: the coordinator rescans anyway
                log.exception("inotify: cannot handle a batch")

    def _events(self, data: bytes) -> list[FileSystemEvent]:
        out: list[FileSystemEvent] = []
        moved_away: list[str] = []
        offset, end = 0, len(data)
        while offset + _HEADER.size <= end:
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            raw = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                out.append(DirModifiedOverflow(self.root))
                continue
            base = self._paths.get(wd)
            if base is None:
                continue
            if mask & IN_IGNORED:
                self._paths.pop(wd, None)
                if self._wds.get(base) == wd:
                    del self._wds[base]
                continue
            if not raw:
                continue  # about the directory itself (DELETE_SELF): its parent reports it too
            is_dir = bool(mask & IN_ISDIR)
            if raw[:1] == b".":
                # Temp files, claims, locks: no hidden file gives a hint (classify). Nor is a hidden
                # directory watched: a run being built (runs/.RUN.partial/) makes one event per
                # file, 10,000 for a big manifest; once renamed into place it is walked as any.
                continue
            path = f"{base}/{os.fsdecode(raw)}"
            if mask & IN_CREATE:
                if is_dir:
                    out.append(DirCreatedEvent(path))
                    if self._add(path) is not None:
                        self._walk(path, created=True, out=out)
                else:
                    out.append(FileCreatedEvent(path))
            elif mask & IN_CLOSE_WRITE:
                out.append(FileClosedEvent(path))
            elif mask & IN_MOVED_FROM:
                if not is_dir and ECHOES.consume(False, path):
                    continue  # our own transition: the book knows already
                if is_dir:
                    # Its watches follow the directory: a rename within the tree (.partial ->
                    # runs/RUN) re-points them below; one that left the tree is forgotten then.
                    moved_away.append(path)
                    out.append(DirMovedEvent(path, ""))
                else:
                    out.append(FileMovedEvent(path, ""))
            elif mask & IN_MOVED_TO:
                if not is_dir and ECHOES.consume(True, path):
                    continue
                if is_dir:
                    out.append(DirMovedEvent("", path))
                    if self._add(path) is not None:
                        self._walk(path, created=False, out=out)
                else:
                    out.append(FileMovedEvent("", path))
            elif mask & IN_DELETE:
                if is_dir:
                    self._forget(path)
                out.append(DirDeletedEvent(path) if is_dir else FileDeletedEvent(path))
        for path in moved_away:
            if path in self._wds:  # not re-pointed by a move within the tree: it left
                self._forget(path)
        return out


class DirModifiedOverflow(DirCreatedEvent):
    """The kernel's queue overflowed: events were lost (the watcher turns it into a rescan)."""
