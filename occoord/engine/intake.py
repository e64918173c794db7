"""incoming/: which files are complete, and accepting them.

A file is taken once its writer is done (PROTOCOL section 6): renamed in or closed after writing
(the watcher says so), or unchanged for a quiet period (found by a scan). A file seen being written
but never seen closed (a lost inotify event) is taken after a longer quiet period, so a writer that
merely pauses is waited for. An incomplete file is never rejected.

A big manifest is accepted in a worker thread (10,000 tasks are 10,000 files: most of a second), so
the loop keeps serving every other run meanwhile; its outcome comes back to the loop, which
activates the run from the plan in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from occoord.engine.ports import Clock, Scheduler
from occoord.engine.watcher import Hint
from occoord.errors import OccoordError
from occoord.manifest.model import Manifest
from occoord.spool.accept import AcceptOutcome, accept_file
from occoord.spool.layout import Spool

__all__ = ["Intake", "IntakeSettings"]

log = logging.getLogger(__name__)

# A manifest this big (~300 tasks) takes tens of milliseconds to accept: done off the loop. Smaller
# ones are accepted at once, inline, sparing the thread hop on the drop -> first dispatch path.
OFF_LOOP_BYTES = 16 * 1024


@dataclass(frozen=True)
class IntakeSettings:
    settle_seconds: float = 2.0
    open_writer_seconds: float = 60.0


class Intake:
    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        settings: IntakeSettings,
        accepted: Callable[[str, Manifest | None], None],
        scheduler: Scheduler | None = None,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.settings = settings
        self.accepted = accepted  # called with each new run's id and its plan
        self.unsettled: dict[Path, float] = {}  # path -> when it was last seen changing
        self.writing: set[Path] = set()  # written to and not yet closed (a `cp` in progress)
        self.problems: dict[Path, str] = {}  # files that cannot be accepted yet, and why
        self.scheduler = scheduler  # None: every file is accepted inline
        self.busy: set[Path] = set()  # being accepted in a worker thread: not looked at again meanwhile

    def hint(self, hint: Hint) -> None:
        if hint.path is None:
            return
        if hint.settled:
            self.writing.discard(hint.path)
            self.accept(hint.path, settled=True)
            return
        if hint.writing:
            self.writing.add(hint.path)
        self.unsettled.setdefault(hint.path, self.clock.monotonic())

    def quiet_needed(self, path: Path) -> float:
        """How long an incoming file must stay unchanged before it is taken as complete."""
        if path in self.writing:
            return max(self.settings.settle_seconds, self.settings.open_writer_seconds)
        return self.settings.settle_seconds

    def accept(self, path: Path, *, settled: bool) -> None:
        if path in self.busy:
            return  # its worker's outcome is on its way
        if self.scheduler is not None and settled and _size(path) >= OFF_LOOP_BYTES:
            self.busy.add(path)
            self.scheduler.spawn(self._accept_off_loop(path))
            return
        try:
            outcome = accept_file(self.spool, path, settled=settled)
        except (OccoordError, OSError) as exc:
            self._cannot(path, exc)
            return
        self._outcome(path, outcome)

    async def _accept_off_loop(self, path: Path) -> None:
        arriving: list[str] = []

        def publishing(run_id: str) -> None:  # in the worker, just before the run becomes visible
            arriving.append(run_id)
            self.spool.arriving.add(run_id)

        try:
            try:
                outcome = await asyncio.to_thread(
                    accept_file, self.spool, path, settled=True, publishing=publishing
                )
            except (OccoordError, OSError) as exc:
                self._cannot(path, exc)
                return
            finally:
                self.busy.discard(path)
            self._outcome(path, outcome)
        finally:
            # Activated from its plan by now (or not accepted): loading it from its files is fine.
            self.spool.arriving.difference_update(arriving)

    def _cannot(self, path: Path, exc: Exception) -> None:
        # Left where it is, and looked at again one quiet period later (the disk may have room
        # by then); the watcher keeps serving everything else.
        log.error("cannot accept %s yet: %s", path.name, exc)
        self.problems[path] = f"cannot accept incoming/{path.name} yet: {exc}"
        self.unsettled[path] = self.clock.monotonic()

    def _outcome(self, path: Path, outcome: AcceptOutcome) -> None:
        self.problems.pop(path, None)
        if outcome.kind == "not_ready":
            self.unsettled.setdefault(path, self.clock.monotonic())
            return
        self.unsettled.pop(path, None)
        self.writing.discard(path)
        if outcome.kind == "accepted" and outcome.run_id:
            self.accepted(outcome.run_id, outcome.manifest)

    def scan(self) -> None:
        """The listing is the truth: look at everything waiting in incoming/."""
        for path in self.spool.incoming_files():
            self.accept(path, settled=self.spool.is_settled(path, self.quiet_needed(path)))

    def next_deadline(self) -> float | None:
        deadlines = [seen + self.quiet_needed(path) for path, seen in self.unsettled.items()]
        return min(deadlines) if deadlines else None

    def tick(self, now: float) -> None:
        for path, seen in list(self.unsettled.items()):
            if path in self.busy:
                continue
            quiet = self.quiet_needed(path)
            if now - seen < quiet:
                continue
            if self.spool.is_settled(path, quiet):
                self.accept(path, settled=True)
            elif not path.exists():
                self.unsettled.pop(path, None)
                self.writing.discard(path)
                self.problems.pop(path, None)
            else:
                self.unsettled[path] = now  # still changing: look again one quiet period later


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0  # gone, or unreadable: accept_file says which, inline
