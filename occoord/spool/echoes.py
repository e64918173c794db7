"""The renames the coordinator itself makes in ``tasks/``, so its watcher can drop their echoes.

Every transition occoord makes comes back as inotify events whose hints only re-read what the run
book already knows (~5 per task lifecycle, each a probe and a parse of the record). The writer
says what it is about to do (:meth:`Echoes.expect`, *before* the rename) and the watcher's thread
consumes one expectation per matching event (:meth:`Echoes.consume`).

Why an outside rename is never lost: expectations are counted per (direction, path) and an
expectation is only made for a rename that follows it. An outside event that takes an expectation
in place of ours leaves our own event unmatched, and that later event gives the hint; a rename of
ours that fails is withdrawn and its caller re-reads the task anyway (TransitionConflict). An
expectation whose event never came (an overflow: the rescan follows) lapses after ``TTL`` s.
Off (every call a no-op) unless a watcher in this process turned it on.
"""

from __future__ import annotations

import threading
import time

__all__ = ["ECHOES", "Echoes"]

TTL = 5.0


class Echoes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: dict[tuple[bool, str], list[float]] = {}  # (moved_to?, path) -> deadlines
        self.users = 0
        self._made = 0

    @property
    def on(self) -> bool:
        return self.users > 0

    def enable(self) -> None:
        with self._lock:
            self.users += 1

    def disable(self) -> None:
        with self._lock:
            self.users = max(0, self.users - 1)
            if not self.users:
                self._expected.clear()

    def expect(self, source: str | None, target: str | None) -> None:
        """``rename(source, target)`` is about to happen (absolute paths; None: that end gives no
        hint, e.g. a hidden temp file)."""
        if not self.users:
            return
        now = time.monotonic()
        with self._lock:
            self._made += 1
            if self._made % 4096 == 0:
                self._purge(now)
            for key in _keys(source, target):
                self._expected.setdefault(key, []).append(now + TTL)

    def withdraw(self, source: str | None, target: str | None) -> None:
        """The rename announced did not happen."""
        if not self.users:
            return
        with self._lock:
            for key in _keys(source, target):
                stamps = self._expected.get(key)
                if stamps:
                    stamps.pop()
                    if not stamps:
                        del self._expected[key]

    def _purge(self, now: float) -> None:
        for key in [k for k, stamps in self._expected.items() if stamps[-1] < now]:
            del self._expected[key]

    def consume(self, moved_to: bool, path: str) -> bool:
        """True if this end of a rename was announced (and is now used up)."""
        if not self._expected:
            return False
        key = (moved_to, path)
        with self._lock:
            stamps = self._expected.get(key)
            if not stamps:
                return False
            now = time.monotonic()
            while stamps and stamps[0] < now:
                stamps.pop(0)  # lapsed
            found = bool(stamps)
            if found:
                stamps.pop(0)
            if not stamps:
                del self._expected[key]
            return found

    def pending(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._expected.values())


def _keys(source: str | None, target: str | None) -> list[tuple[bool, str]]:
    keys = [] if source is None else [(False, source)]
    return keys if target is None else [*keys, (True, target)]


ECHOES = Echoes()
