"""watchdog glue: turn filesystem events under the spool into hints for the coordinator.

Events are hints, the listing is the truth: the handler only classifies a path and enqueues a
:class:`Hint`; the coordinator re-reads the files. watchdog runs handlers in its observer thread
and an exception there kills the observer for good, so the handler catches everything and the
coordinator checks :meth:`SpoolWatcher.alive` and restarts it (then rescans: events were lost).
One recursive watch over the whole spool: a rename from incoming/ into runs/ pairs at once
(a watch on incoming/ alone would hold every later event for ~0.5 s behind the unpaired move).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from occoord.engine.inotify import DirModifiedOverflow, InotifyTree, available
from occoord.spool.names import is_ignored_incoming, parse_run_id, parse_state

__all__ = ["Hint", "SpoolWatcher", "classify"]

log = logging.getLogger(__name__)


# The events a hint can come from. Leaving out opens, reads (close-no-write) and modifications
# keeps them out of the kernel's inotify mask: every record occoord reads and every block it
# writes would otherwise wake the observer thread (a `cp` still ends with a close-write).
WATCHED = (
    FileCreatedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
)


_STAGING = ".partial" + os.sep  # inside a hidden runs/.RUN.partial/ (spool.accept)


@dataclass(frozen=True)
class Hint:
    """Something may have changed. ``kind``: incoming | task | run | hold | servers | rescan."""

    kind: str
    path: Path | None = None
    run_id: str | None = None
    task: str | None = None
    settled: bool = False  # for incoming: the writer is done (renamed in or closed)
    writing: bool = False  # for incoming: written to and not yet closed (a `cp` in progress)


def _hint_for(root: Path, path: str, *, settled: bool) -> Hint | None:
    # By string, not pathlib: this runs for every event (several per task lifecycle).
    base = str(root)
    if not path.startswith(base) or path[len(base) : len(base) + 1] != "/":
        return None
    rel = path[len(base) + 1 :]
    parts = tuple(part for part in rel.split("/") if part and part != ".")
    if parts == ("hold",):
        return Hint("hold")  # put on hold or resumed: the next tick dispatches (or not)
    if parts == ("servers",) or (
        len(parts) == 2
        and parts[0] == "servers"
        and parts[1].endswith(".json")
        and not parts[1].startswith(".")
    ):
        # A server file added, changed or removed (or the whole folder): the service re-reads it.
        return Hint("servers", path=root / rel)
    if len(parts) == 2 and parts[0] == "incoming":
        if is_ignored_incoming(parts[1]):
            return None
        return Hint("incoming", path=root / rel, settled=settled)
    if len(parts) >= 2 and parts[0] == "runs" and parse_run_id(parts[1]):
        run_id = parts[1]
        if len(parts) == 4 and parts[2] == "tasks":
            name = parts[3]
            parsed = parse_state(name)
            if parsed is not None:
                return Hint("task", run_id=run_id, task=parsed.task)
            if name.startswith(".") and name.endswith(".claim"):
                return None  # our own transitions in flight
            return None
        if len(parts) == 3 and (parts[2] == "cancel" or parts[2].startswith("cancel.")):
            return Hint("run", run_id=run_id)
        if len(parts) == 2:
            return Hint("run", run_id=run_id)
    return None


def classify(root: Path, event: FileSystemEvent) -> list[Hint]:
    """The hints one watchdog event gives (a move gives one for each end)."""
    hints: list[Hint] = []
    if event.event_type in ("opened", "closed_no_write"):
        return hints
    if _STAGING in str(event.src_path)[len(str(root)) :]:
        # A run being built (runs/.RUN.partial/...), or, once published, watchdog's one "moved"
        # event per file inside it: 10,000 task hints for files whose state the loop knows already.
        # The publishing rename of the directory itself still hints the run.
        return hints
    if event.is_directory and event.event_type == "modified":
        # watchdog adds "parent directory modified" to every create, delete, move and close-write.
        # Each change inside runs/RUN has its own event; this one only echoed our own writes: the
        # run lock's close-write hinted the run again, whose reconcile took the lock again, forever
        # (a busy loop that re-read every finished run).
        return hints
    if isinstance(event, FileMovedEvent | DirMovedEvent):
        # An end outside the watched tree is "" (a move in from, or out to, elsewhere).
        src = _hint_for(root, str(event.src_path), settled=True) if event.src_path else None
        dst = _hint_for(root, str(event.dest_path), settled=True) if event.dest_path else None
        if src is not None and src.kind != "incoming":  # a file leaving incoming/ is no news
            hints.append(src)
        if dst is not None:
            hints.append(dst)
    else:
        settled = isinstance(event, FileClosedEvent)
        hint = _hint_for(root, str(event.src_path), settled=settled)
        if hint is not None and not (hint.kind == "incoming" and event.event_type == "deleted"):
            if hint.kind == "incoming" and event.event_type in ("created", "modified"):
                hint = replace(hint, writing=True)
            hints.append(hint)
    return hints


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, sink: Callable[[Hint], object]) -> None:
        self.root = root
        self.sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            for hint in classify(self.root, event):
                self.sink(hint)
        except Exception:  # an exception here would stop the observer thread for good
            log.exception("watcher: cannot handle %r", event)


class SpoolWatcher:
    """A recursive watch over the spool that calls ``sink`` (thread-safe!) with each hint, or
    ``sink_many`` with each batch of them (one hand-over to the loop per batch)."""

    def __init__(
        self,
        root: Path,
        sink: Callable[[Hint], object],
        *,
        polling: bool = False,
        sink_many: Callable[[list[Hint]], object] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.root = root
        self.loop = loop  # given: inotify is read on it and the sinks are called there
        self.sink = sink
        self.sink_many = sink_many
        self.polling = polling
        self._observer: BaseObserver | None = None
        self._tree: InotifyTree | None = None

    def _deliver(self, events: list[FileSystemEvent]) -> None:
        hints: dict[Hint, None] = {}  # in order, each once: a hint only says "look again"
        for event in events:
            if isinstance(event, DirModifiedOverflow):
                log.warning("watcher: the kernel dropped events (queue overflow); rescanning")
                hints[Hint("rescan")] = None
                continue
            for hint in classify(self.root, event):
                hints[hint] = None
        if not hints:
            return
        if self.sink_many is not None:
            self.sink_many(list(hints))
        else:
            for hint in hints:
                self.sink(hint)

    def start(self) -> None:
        if not self.polling and Observer is InotifyObserver and available():
            tree = InotifyTree(str(self.root), self._deliver, self.loop)
            tree.start()
            self._tree = tree
            return
        observer: BaseObserver
        if self.polling:
            observer = PollingObserver(timeout=1.0)
        elif Observer is InotifyObserver:
            # Full events: a file renamed in from outside the spool (the textbook atomic publish)
            # arrives as a move, i.e. complete, instead of a "created" that looks like a `cp` still
            # writing (which waited the open-writer period, 60 s).
            observer = InotifyObserver(generate_full_events=True)
        else:
            observer = Observer()
        observer.schedule(
            _Handler(self.root, self.sink), str(self.root), recursive=True, event_filter=list(WATCHED)
        )
        observer.daemon = True
        observer.start()
        self._observer = observer

    def alive(self) -> bool:
        if self._tree is not None:
            return self._tree.alive()
        return self._observer is not None and self._observer.is_alive()

    def restart(self) -> None:
        log.warning("watcher: observer stopped; restarting it (a rescan follows)")
        self.stop()
        self.start()

    def stop(self) -> None:
        if self._tree is not None:
            self._tree.stop()
            self._tree = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
