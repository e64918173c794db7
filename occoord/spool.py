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

A task's state changes only by renaming its state file (see ``taskfiles``). Anyone may signal
``T.pending -> T.done|T.failed`` with ``mv`` (ideally under ``flock runs/<run>/.lock``) or
``occoord signal``; requeue with ``mv T.failed T.queued``. The listing is the truth.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from occoord.errors import ManifestError, NotFound, SpoolError
from occoord.fsutil import (
    DIR_MODE,
    atomic_write,
    fsync_dir,
    make_private,
    move_noclobber,
    rename_noreplace,
)
from occoord.journal import Event, append_event, iso
from occoord.manifest import Manifest, load_manifest, manifest_from_plan
from occoord.names import (
    format_rejected,
    format_run_id,
    is_ignored_incoming,
    parse_run_id,
    printable,
)
from occoord.recovery import TMP_MAX_AGE
from occoord.state import Actor, TaskState
from occoord.taskfiles import TASKS_DIR, RunTasks, TaskRecord

__all__ = ["PROTOCOL_LINE", "TMP_MAX_AGE", "AcceptOutcome", "Run", "Spool"]

log = logging.getLogger(__name__)
PROTOCOL_LINE = "occoord-spool 1"
SETTLE_SECONDS = 2.0  # a file unchanged this long is taken as completely written


@dataclass(frozen=True)
class AcceptOutcome:
    """What happened to one file in incoming/: accepted, rejected, not_ready, ignored or gone."""

    kind: str
    path: Path
    run_id: str | None = None
    reason: str = ""
    manifest: Manifest | None = None  # accepted: the plan just written (saves re-reading run.json)


class Run:
    """One run directory: its plan and its task files."""

    def __init__(self, spool: Spool, run_id: str, plan: Manifest | None = None) -> None:
        """``plan``: the run's manifest when the caller has just written it: run.json is then not
        read again (it can be megabytes) until ``accepted_at`` is asked for."""
        self.id = run_id
        self.dir = spool.runs / run_id
        self._accepted_at: str | None = None
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
            self.dir, [t.id for t in self.manifest.tasks], durable=spool.durable, clock=spool.clock
        )

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.dir / "run.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(str(self.dir), "no such run") from None
        except ValueError as exc:
            raise SpoolError(str(self.dir / "run.json"), f"unreadable run plan: {exc}") from exc
        if not isinstance(meta, dict):
            raise SpoolError(str(self.dir / "run.json"), "unreadable run plan: not a JSON object")
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
        return {t.id: self.tasks.read(t.id) for t in self.manifest.tasks}

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
    ) -> None:
        self.root = Path(root).absolute()
        self.durable = durable
        self.clock = clock
        self.incoming = self.root / "incoming"
        self.tmp = self.root / "tmp"
        self.runs = self.root / "runs"
        self.rejected = self.root / "rejected"
        self.lock = FileLock(self.root / ".lock", mode=0o600)

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

    def run(self, run_id: str, plan: Manifest | None = None) -> Run:
        if not parse_run_id(run_id) or not (self.runs / run_id).is_dir():
            known = self.run_ids()
            hint = f"; latest: {known[-1]}" if known else "; the spool has no runs"
            raise NotFound(str(self.runs / run_id), f"no such run{hint}")
        return Run(self, run_id, plan)

    # -- submitting and accepting ----------------------------------------------------------

    def submit(self, source: Path) -> Path:
        """Validate ``source`` and put a copy into incoming/ atomically (tmp/, then rename).

        The copy is published by a rename that never replaces a file already there, so a watcher
        sees a moved-to (a complete file) and takes it at once: ``renameat2(RENAME_NOREPLACE)``, or,
        where that is missing, a plain rename under the spool lock after checking the name is free.
        """
        load_manifest(source)  # fail here, where the user is, rather than in rejected/
        data = source.read_bytes()
        staging = self.tmp / f".{source.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        atomic_write(staging, data, durable=self.durable)
        stem, suffix = source.stem, source.suffix
        for n in range(1, 1000):
            target = self.incoming / (source.name if n == 1 else f"{stem}-{n}{suffix}")
            try:
                if not rename_noreplace(staging, target):
                    # No atomic no-clobber rename here. link + unlink would publish a link, which a
                    # watcher cannot tell from a `cp` still writing; so: a plain rename, under the
                    # lock every accept and reject holds, of a name checked free.
                    with self.lock:
                        if os.path.lexists(target):
                            continue
                        os.rename(staging, target)
            except FileExistsError:
                continue
            if self.durable:
                fsync_dir(self.incoming)
            return target
        raise SpoolError(str(self.incoming), f"too many files named like {source.name}")

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

    def accept(self, path: Path, *, settled: bool) -> AcceptOutcome:
        """Turn one file in incoming/ into a run, or reject it with its reasons beside it.

        ``settled`` says the writer is done (close-write or rename seen, or quiet for a while); an
        unsettled file is left for later, so a half-copied manifest is never rejected by mistake.
        """
        from occoord.accept import accept_file

        return accept_file(self, path, settled=settled)

    def new_run_id(self, stem: str) -> str:
        when = self.clock()
        for n in range(1, 10_000):
            run_id = format_run_id(when, stem, n)
            if not (self.runs / run_id).exists() and not (self.runs / f".{run_id}.partial").exists():
                return run_id
        raise SpoolError(str(self.runs), "cannot find a free run id")

    def build_run(self, run_id: str, manifest: Manifest, source_name: str) -> Path:
        """Write a run's files into a hidden staging directory; return it (not yet visible)."""
        staging = self.runs / f".{run_id}.partial"
        staging.mkdir(mode=DIR_MODE)
        (staging / TASKS_DIR).mkdir(mode=DIR_MODE)
        (staging / "results").mkdir(mode=DIR_MODE)
        now = iso(self.clock())
        meta = {
            "protocol": 1,
            "run": run_id,
            "source_name": source_name,
            "accepted_at": now,
            "plan": manifest.to_json(),
        }
        atomic_write(
            staging / "run.json",
            json.dumps(meta, indent=1).encode() + b"\n",
            durable=self.durable,
            sync_dir=False,
        )
        tasks = RunTasks(staging, [t.id for t in manifest.tasks], durable=self.durable)
        append_event(staging, Event(now, "run", reason=f"accepted {source_name}"), durable=False)
        for spec in manifest.tasks:
            tasks.create(spec.id, TaskRecord(spec.id, TaskState.QUEUED, since=now, reason="accepted"))
            append_event(
                staging,
                Event(
                    now,
                    "transition",
                    spec.id,
                    None,
                    "queued",
                    Actor.COORDINATOR.value,
                    0,
                    "accepted",
                ),
                durable=False,
            )
        if self.durable:
            for path in (staging / TASKS_DIR, staging / "events.jsonl"):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return staging

    def reject(self, path: Path, reason: str) -> AcceptOutcome:
        """Move a bad manifest to rejected/ with ``<name>.error`` beside it (error first: no loss).

        Called under the spool lock. A crash between the two leaves a ``.error`` without its
        manifest, which :meth:`recover` removes (the manifest, still in incoming/, is rejected again).
        """
        name = path.name
        shown = printable(name)
        # The reason names the file too (ManifestError's source): escape the name as a whole first,
        # then whatever else each line holds; the reason's own line breaks stay.
        reason = "\n".join(printable(line) for line in reason.replace(name, shown).split("\n"))
        when = self.clock()
        for n in range(1, 1000):
            base = format_rejected(when, name, n)
            target = self.rejected / base
            error = self.rejected / f"{base}.error"
            if os.path.lexists(target) or os.path.lexists(error):
                continue
            text = f"{shown} was rejected at {iso(self.clock())}:\n{reason}\n"
            atomic_write(error, text.encode("utf-8", "replace"), durable=self.durable)
            try:
                move_noclobber(path, target)
            except FileExistsError:
                os.unlink(error)
                continue
            except FileNotFoundError:
                os.unlink(error)
                return AcceptOutcome("gone", path)
            _make_private(target)
            if self.durable:
                fsync_dir(self.rejected)
                fsync_dir(self.incoming)
            log.warning("rejected %s: %s", shown, reason.replace("\n", "; "))
            return AcceptOutcome("rejected", target, reason=reason)
        raise SpoolError(str(self.rejected), f"too many rejections named {shown}")

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """After a crash: undo half-built runs and interrupted rejections, clean old temp files,
        reconcile every unfinished run (see ``recovery``)."""
        from occoord.recovery import recover

        return recover(self)

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


def _make_private(path: Path) -> None:
    """Give a manifest moved into the spool mode 0600 (it kept its author's until now)."""
    try:
        make_private(path)
    except OSError as exc:
        log.warning("cannot make %s private: %s", printable(str(path)), exc.strerror)
