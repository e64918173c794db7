"""The spool's locks: flocks shared with ``flock(1)``, reentrant within one thread.

A lock is waited for as long as its owner says: the command line waits (a script's ``flock`` is
short), the engine waits a moment and gives up with :class:`Locked`, then comes back later, so a
script holding one run's lock never freezes the watcher for every other run.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import filelock

from occoord.errors import Locked

__all__ = ["DirLock"]


class DirLock:
    """``with lock:`` holds the flock on ``path``; ``timeout`` None waits for ever."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self._lock = filelock.FileLock(path, mode=0o600, timeout=-1 if timeout is None else timeout)

    def __enter__(self) -> DirLock:
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise Locked(str(self.path), self.timeout or 0.0) from None
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()
