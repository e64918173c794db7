"""The spool directory: occoord's public interface (protocol v1; full spec in docs/PROTOCOL.md).

Layout::

    spool/
      PROTOCOL                 "occoord-spool 1": the protocol version of this spool
      .lock                    spool lock (flock): held while a manifest is accepted or rejected
      incoming/                drop manifests here (*.json, *.yaml, *.yml); names starting "." or
                               ending .tmp ~ .swp .part are ignored while being written
      tmp/                     writers create files here, then rename them into incoming/
      rejected/<stamp>-<name>  a manifest that failed validation, beside <stamp>-<name>.error (a
                               name too long for that is shortened and given a hash)
      runs/<run-id>/           one accepted manifest; run id = <UTC yyyymmddThhmmssZ>-<stem>[-<n>]
        manifest.<ext>         the original manifest, moved here by rename
        run.json               the resolved plan (JSON, "protocol": 1)
        .lock                  run lock (flock): held for every change under tasks/
        tasks/<task>.<state>   exactly one per task; state = queued|pending|done|failed
        events.jsonl           every transition and repair, one JSON object per line
        results/<task>.md      the agent's final answer (written by the coordinator)

A task's state changes only by renaming its state file (see ``tasks``). Anyone may signal
``T.pending -> T.done|T.failed`` with ``mv`` (ideally under ``flock runs/<run>/.lock``) or
``occoord signal``; requeue with ``mv T.failed T.queued``. The listing is the truth.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from occoord.errors import Locked, ManifestError, NotFound, SpoolError
from occoord.fsutil import DIR_MODE, atomic_write
from occoord.manifest.load import manifest_from_plan
from occoord.manifest.model import Manifest
from occoord.spool.locking import DirLock
from occoord.spool.names import format_run_id, is_ignored_incoming, parse_run_id
from occoord.spool.records import TaskRecord
from occoord.spool.states import Actor, TaskState
from occoord.spool.tasks import RunTasks

__all__ = ["PROTOCOL_LINE", "SETTLE_SECONDS", "Run", "Spool"]

log = logging.getLogger(__name__)
PROTOCOL_LINE = "occoord-spool 1"
SETTLE_SECONDS = 2.0  # a file unchanged this long is taken as completely written


class Run:
    """One run directory: its plan and its task files."""

    def __init__(self, spool: Spool, run_id: str, plan: Manifest | None = None) -> None:
        """``plan``: the run's manifest when the caller has just written it: run.json is then not
        read again (it can be megabytes) until ``accepted_at`` is asked for."""
        self.id = run_id
        self.dir = spool.runs / run_id
        self._accepted_at: str | None = None
        # Just built by accept (``plan`` given): every task queued as written, so the engine's first
        # look at it needs no listing of its 10,000 files.
        self.fresh = plan is not None
        if plan is not None:
            self.manifest: Manifest = plan
        else:
            meta = self._meta()
            try:
                self.manifest = manifest_from_plan(meta["plan"], source=f"{run_id}/run.json")
            except (KeyError, ManifestError) as exc:
                raise SpoolError(str(self.dir / "run.json"), f"unreadable run plan: {exc}") from exc
            self._accepted_at = str(meta.get("accepted_at", ""))
        self.tasks = RunTasks(
            self.dir,
            [t.id for t in self.manifest.tasks],
            durable=spool.durable,
            clock=spool.clock,
            lock_timeout=spool.lock_timeout,
        )

    def _meta(self) -> dict[str, Any]:
        return Run._read_meta(self.dir)

    @staticmethod
    def _read_meta(run_dir: Path) -> dict[str, Any]:
        try:
            meta = json.loads((run_dir / "run.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(str(run_dir), "no such run") from None
        except ValueError as exc:
            raise SpoolError(str(run_dir / "run.json"), f"unreadable run plan: {exc}") from exc
        if not isinstance(meta, dict):
            raise SpoolError(str(run_dir / "run.json"), "unreadable run plan: not a JSON object")
        return meta

    @property
    def accepted_at(self) -> str:
        if self._accepted_at is None:
            self._accepted_at = str(self._meta().get("accepted_at", ""))
        return self._accepted_at

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    def records(self) -> dict[str, TaskRecord | None]:
        """Every task's record, as ``tasks.read`` gives it, with one listing for the states instead
        of a stat per possible state of each task (a 10,000-task summary spent seconds on them)."""
        states = self.tasks.states()
        out: dict[str, TaskRecord | None] = {}
        for spec in self.manifest.tasks:
            state = states.get(spec.id)
            record: TaskRecord | None = None
            if state is not None:
                try:
                    data = self.tasks.path(spec.id, state).read_bytes()
                except FileNotFoundError:
                    pass  # moved since the listing: read() looks again
                else:
                    record = TaskRecord.from_bytes(data) or TaskRecord(spec.id, state)
                    if record.state is not state:
                        record = replace(record, state=state)
            out[spec.id] = record if record is not None else self.tasks.read(spec.id)
        return out

    def finished(self) -> bool:
        states = self.tasks.states()
        return all(states.get(t.id, TaskState.QUEUED).terminal for t in self.manifest.tasks)

    def signal(self, task: str, target: TaskState, message: str = "") -> TaskRecord:
        """An outside writer's signal: move ``task`` to ``target`` (done, failed or queued)."""
        if task not in self.tasks.task_ids:
            raise NotFound(str(self.dir), f"run has no task {task!r}")
        self.tasks.reconcile([task])
        current = self.tasks.current(task)
        record = self.tasks.read(task)
        if current is target and record is not None:
            return record
        if current is None:
            raise SpoolError(str(self.dir), f"task {task} has no state file")
        return self.tasks.transition(
            task,
            current,
            target,
            actor=Actor.OUTSIDE,
            reason=message or f"signalled {target} by occoord signal",
        )


class Spool:
    """A spool directory. Creating the object does no I/O; :meth:`init` makes the layout."""

    def __init__(
        self,
        root: Path,
        *,
        durable: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lock_timeout: float | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.durable = durable
        self.clock = clock
        # How long the spool's and each run's lock is waited for (None: for ever); past it, Locked.
        self.lock_timeout = lock_timeout
        self.incoming = self.root / "incoming"
        self.tmp = self.root / "tmp"
        self.runs = self.root / "runs"
        self.rejected = self.root / "rejected"
        self.lock = DirLock(self.root / ".lock", lock_timeout)
        # Runs this process is accepting in a worker thread: visible in runs/ before its loop has
        # activated them from the plan in memory. Until then loading one from its files (10,000 of
        # them) is refused with Locked, which callers already meet with "again a moment later".
        self.arriving: set[str] = set()

    def waiting_at_most(self, seconds: float) -> Spool:
        """The same spool, seen by a caller that waits at most ``seconds`` for a lock."""
        spool = Spool(self.root, durable=self.durable, clock=self.clock, lock_timeout=seconds)
        spool.arriving = self.arriving  # one process, one set of runs arriving
        return spool

    # -- layout ----------------------------------------------------------------------------

    def init(self) -> Spool:
        """Create the layout (0700), check the protocol version and that renames stay atomic."""
        try:
            for path in (self.root, self.incoming, self.tmp, self.runs, self.rejected):
                path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(str(self.root), f"cannot create the spool: {exc.strerror}") from exc
        marker = self.root / "PROTOCOL"
        try:
            line = marker.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            atomic_write(marker, f"{PROTOCOL_LINE}\n".encode(), durable=self.durable)
            line = PROTOCOL_LINE
        except (OSError, UnicodeDecodeError) as exc:
            raise SpoolError(str(marker), f"unreadable protocol marker: {exc}") from exc
        if line != PROTOCOL_LINE:
            raise SpoolError(str(marker), f"spool speaks {line!r}; this occoord speaks {PROTOCOL_LINE!r}")
        devices = {
            p: os.stat(p).st_dev for p in (self.root, self.incoming, self.tmp, self.runs, self.rejected)
        }
        if len(set(devices.values())) != 1:
            odd = [str(p) for p, d in devices.items() if d != devices[self.root]]
            raise SpoolError(
                ", ".join(odd),
                "is on another filesystem than the spool; renames between them would not be atomic",
            )
        return self

    def check(self) -> None:
        """Raise SpoolError unless the spool exists and speaks our protocol."""
        if not (self.root / "PROTOCOL").is_file():
            raise SpoolError(
                str(self.root),
                "not an occoord spool (no PROTOCOL file); run `occoord init` or any command that creates it",
            )
        self.init()

    def run_ids(self) -> list[str]:
        """Every run, oldest first (run ids sort by time)."""
        try:
            names = os.listdir(self.runs)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if parse_run_id(n) and (self.runs / n).is_dir())

    def run_dir_checked(self, run_id: str) -> Path:
        """``runs/<run_id>``; NotFound (naming the latest run) if there is no such run."""
        if not parse_run_id(run_id) or not (self.runs / run_id).is_dir():
            known = self.run_ids()
            hint = f"; latest: {known[-1]}" if known else "; the spool has no runs"
            raise NotFound(str(self.runs / run_id), f"no such run{hint}")
        return self.runs / run_id

    def run(self, run_id: str, plan: Manifest | None = None) -> Run:
        self.run_dir_checked(run_id)
        if plan is None and run_id in self.arriving:
            raise Locked(str(self.runs / run_id), 0.0)
        return Run(self, run_id, plan)

    def task_ids(self, run_id: str) -> list[str]:
        """A run's task ids from its run.json, without building (and checking) its whole plan."""
        self.run_dir_checked(run_id)
        meta = Run._read_meta(self.runs / run_id)
        try:
            return [str(t["id"]) for t in meta["plan"]["tasks"]]
        except (KeyError, TypeError) as exc:
            raise SpoolError(str(self.runs / run_id / "run.json"), f"unreadable run plan: {exc}") from exc

    def incoming_files(self) -> list[Path]:
        try:
            names = sorted(os.listdir(self.incoming))
        except FileNotFoundError:
            return []
        return [self.incoming / n for n in names if not is_ignored_incoming(n)]

    def is_settled(self, path: Path, quiet: float = SETTLE_SECONDS) -> bool:
        """True when the file has not changed for ``quiet`` seconds (a plain ``cp`` has finished)."""
        try:
            return time.time() - path.lstat().st_mtime >= quiet
        except FileNotFoundError:
            return False

    def new_run_id(self, stem: str) -> str:
        when = self.clock()
        for n in range(1, 10_000):
            run_id = format_run_id(when, stem, n)
            if not (self.runs / run_id).exists() and not (self.runs / f".{run_id}.partial").exists():
                return run_id
        raise SpoolError(str(self.runs), "cannot find a free run id")

    def looks_finished(self, run_id: str) -> bool:
        """True for a finished run nobody has touched since: it has its summary and ``tasks/`` holds
        only terminal state files (no claim, no temp file, no requeued task). One listing."""
        run_dir = self.runs / run_id
        if not (run_dir / "summary.json").exists():
            return False
        try:
            names = os.listdir(run_dir / "tasks")
        except FileNotFoundError:
            return False
        return all(not name.startswith(".") and name.endswith((".done", ".failed")) for name in names)
