"""The run book: the runs the engine serves, and the one path every task transition takes.

Whether occoord moved a task (``move``) or someone else did (``observe``: an agent's signal, a
script's ``mv``, a requeue), the same bookkeeping follows: the cache, failing the dependents of a
failed task, requeueing the dependents of a requeued one, the ``on_task_end`` hook, and the end of
the run (summary, journal, ``on_run_end``). The files are the truth; the book is their cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from occoord.backoff import Backoff
from occoord.engine.attempts import Attempt, AttemptTable
from occoord.engine.hooks import run_facts, run_hook, task_facts
from occoord.engine.ports import Clock, Scheduler
from occoord.engine.runs import ActiveRun
from occoord.errors import Locked, SpoolError, TransitionConflict
from occoord.manifest.model import Manifest
from occoord.spool.journal import Event, append_event, iso
from occoord.spool.layout import Run, Spool
from occoord.spool.names import format_state
from occoord.spool.records import TaskRecord
from occoord.spool.requeue import blocked_reason, requeue_dependents
from occoord.spool.states import Actor, TaskState
from occoord.spool.summary import write_summary

__all__ = ["BookListener", "BookSettings", "RunBook"]

log = logging.getLogger(__name__)


class BookListener(Protocol):
    """What the book tells the rest of the engine (the coordinator wires it to the settler)."""

    def activated(self, active: ActiveRun) -> None: ...
    def decided_outside(self, attempt: Attempt, state: TaskState) -> None: ...
    def run_finished(self, run_id: str) -> None: ...


@dataclass(frozen=True)
class BookSettings:
    retry: Backoff
    hook_timeout: float


class RunBook:
    def __init__(
        self,
        spool: Spool,
        table: AttemptTable,
        clock: Clock,
        scheduler: Scheduler,
        settings: BookSettings,
        listener: BookListener,
    ) -> None:
        self.spool = spool
        self.table = table
        self.clock = clock
        self.scheduler = scheduler
        self.settings = settings
        self.listener = listener
        self.runs: dict[str, ActiveRun] = {}
        self.finished: set[str] = set()  # run ids known finished (summary written)
        self.broken: set[str] = set()  # run ids that could not be loaded
        # Worktree tasks decided from outside whose on_task_end waits for their result commit
        # (Settler.settle_worktree runs it): the hook may read results/T.diff and the branch.
        self.hook_after_result: set[tuple[str, str]] = set()

    # -- loading -------------------------------------------------------------------------------

    def activate(self, run_id: str, plan: Manifest | None = None) -> ActiveRun | None:
        """Load a run into the cache (``plan``: just accepted, built by us, nothing to repair)."""
        active = self.runs.get(run_id)
        if active is not None:
            return active
        if run_id in self.broken:
            return None
        try:
            run = self.spool.run(run_id, plan)
            if plan is None:
                run.tasks.reconcile()
            active = ActiveRun(run)
            self._unblock(active)
        except Locked:
            raise  # a script holds its lock: not broken, loaded again later
        except (SpoolError, OSError) as exc:
            log.error("run %s cannot be loaded (left alone until restart): %s", run_id, exc)
            self.broken.add(run_id)
            return None
        except Exception:  # a bug must not stop every other run: this one waits for a restart
            log.exception("run %s cannot be loaded (left alone until restart)", run_id)
            self.broken.add(run_id)
            return None
        if active.finished() and (run.dir / "summary.json").exists():
            self.finished.add(run_id)
            return None
        self.finished.discard(run_id)
        self.runs[run_id] = active
        (run.dir / "summary.json").unlink(missing_ok=True)  # running again: no stale verdict
        (run.dir / "summary.md").unlink(missing_ok=True)
        log.info("run %s: active (%d tasks)", run_id, len(active.specs))
        self.listener.activated(active)
        return active

    def _unblock(self, active: ActiveRun) -> None:
        """Requeue the tasks that failed only because a dependency failed that is no longer failed
        (it was requeued by `mv` or `occoord retry`, perhaps while no watcher ran)."""
        for task, state in list(active.states.items()):
            if state is TaskState.FAILED:
                continue
            if any(active.states.get(child) is TaskState.FAILED for child in active.dependents.get(task, ())):
                for child in requeue_dependents(active.run, task, Actor.COORDINATOR):
                    active.set_state(child, TaskState.QUEUED)

    def may_resume(self, run_id: str, task: str) -> bool:
        """A hint about a finished run: only a requeued task (or a lost summary) makes it active
        again. Checked by name, without loading the run."""
        if run_id not in self.finished:
            return run_id not in self.broken
        run_dir = self.spool.runs / run_id
        if not (run_dir / "summary.json").exists():
            return True
        tasks = run_dir / "tasks"
        visible = [s for s in TaskState if os.path.lexists(tasks / format_state(task, s))]
        if len(visible) != 1:
            # A `touch T.done` beside T.failed after the run ended (or a deleted file): loading the
            # run reconciles it, as it would have while the run was active.
            return True
        try:
            record = TaskRecord.from_bytes((tasks / format_state(task, visible[0])).read_bytes())
        except OSError:
            return True
        if record is None or record.state is not visible[0]:
            return True  # renamed or rewritten from outside: reconciled (accepted or reverted)
        return visible[0] in (TaskState.QUEUED, TaskState.PENDING)

    def consume_cancel_requests(self, run_id: str) -> bool:
        """A cancel request for a finished run has nothing to cancel: consume it, so it cannot
        strike later if the run is requeued. True if the run was finished."""
        run_dir = self.spool.runs / run_id
        if run_id not in self.finished or not (run_dir / "summary.json").exists():
            return False
        for name in os.listdir(run_dir):
            if name == "cancel" or name.startswith("cancel."):
                (run_dir / name).unlink(missing_ok=True)
                log.info("run %s is finished: ignored the request %s", run_id, name)
        return True

    # -- transitions ---------------------------------------------------------------------------

    def observe(self, run_id: str, task: str) -> None:
        """A task's files may have changed (a hint, or a lost race): re-read them and follow up."""
        if run_id not in self.runs and not self.may_resume(run_id, task):
            return
        active = self.runs.get(run_id) or self.activate(run_id)
        if active is None or task not in active.specs:
            return
        active.run.tasks.reconcile([task])
        state = active.run.tasks.current(task)
        old = active.states.get(task)
        if state is None or state is old:
            return
        attempt = self.table.get(run_id, task)
        if attempt is not None and state is not TaskState.PENDING:
            # An outside writer (usually the agent itself) decided this attempt.
            self.table.drop(attempt)
            if active.specs[task].worktree and active.run.manifest.hooks.on_task_end:
                self.hook_after_result.add((run_id, task))
            self.listener.decided_outside(attempt, state)
        self._changed(active, task, old, state)

    def move(
        self, active: ActiveRun, task: str, source: TaskState, target: TaskState, reason: str, **changes: Any
    ) -> TaskRecord | None:
        """transition() plus the bookkeeping; None if someone else changed the task first."""
        try:
            record = active.run.tasks.transition(task, source, target, reason=reason, **changes)
        except TransitionConflict as exc:
            log.info("%s: lost a race (%s); re-reading", active.id, exc)
            self.observe(active.id, task)
            return None
        self._changed(active, task, source, target)
        return record

    def moved_together(self, active: ActiveRun, records: Sequence[TaskRecord], old: TaskState) -> None:
        """The bookkeeping of transitions made as one batch (spool.bulk): the cache first, so that
        no task of the batch is failed again as another's dependent, then each one's follow-up."""
        for record in records:
            active.set_state(record.task, record.state)
        for record in records:
            self._changed(active, record.task, old, record.state)

    def _changed(self, active: ActiveRun, task: str, old: TaskState | None, new: TaskState) -> None:
        active.set_state(task, new)
        if old is not None and old.terminal and new is TaskState.QUEUED:
            self.hook_after_result.discard((active.id, task))
            for child in requeue_dependents(active.run, task, Actor.COORDINATOR):
                active.set_state(child, TaskState.QUEUED)
        if new is TaskState.FAILED:
            for child in active.dependents.get(task, ()):
                self.fail_queued(active, child, blocked_reason(task))
        if new.terminal:
            self._task_ended(active, task)

    def fail_queued(self, active: ActiveRun, task: str, reason: str) -> None:
        if active.states.get(task) is TaskState.QUEUED:
            self.move(active, task, TaskState.QUEUED, TaskState.FAILED, reason)

    def retry_later(self, active: ActiveRun, record: TaskRecord, reason: str, *, counts: bool = True) -> None:
        """Back to the queue after a backoff. ``counts``: the failure was the task's own and uses up
        one of its retries; a server that could not be reached is not the task's failure."""
        key = "failures" if counts else "unreachable"
        tries = int(record.details.get(key, 0)) + 1
        delay = self.settings.retry.delay(tries)
        not_before = iso(self.clock.wall() + timedelta(seconds=delay))
        what = f"retry {tries}" if counts else "server unreachable; trying again"
        moved = self.move(
            active,
            record.task,
            TaskState.PENDING,
            TaskState.QUEUED,
            f"{what} in {delay:.0f} s: {reason}",
            not_before=not_before,
            details={**record.details, key: tries},
        )
        if moved is not None:
            self.scheduler.wake_at(self.clock.monotonic() + delay)  # to dispatch it then

    def not_before(self, record: TaskRecord) -> float | None:
        """Monotonic time before which a queued task must wait, or None if it may start now."""
        if not record.not_before:
            return None
        try:
            when = datetime.fromisoformat(record.not_before.replace("Z", "+00:00"))
        except ValueError:
            return None
        wait = (when - self.clock.wall()).total_seconds()
        return self.clock.monotonic() + wait if wait > 0 else None

    # -- ends ----------------------------------------------------------------------------------

    def _task_ended(self, active: ActiveRun, task: str) -> None:
        if (active.id, task) not in self.hook_after_result:
            self.task_hook(active.run, task)
        if active.finished():
            self.run_finished(active)

    def task_hook(self, run: Run, task: str) -> None:
        """Start the run's ``on_task_end`` for the task's current record (if it has one)."""
        self.hook_after_result.discard((run.id, task))
        hook = run.manifest.hooks.on_task_end
        if hook:
            record = run.tasks.read(task)
            if record is not None:
                facts = task_facts(self.spool.root, run.dir, record)
                self.scheduler.spawn(run_hook(hook, facts, timeout=self.settings.hook_timeout))

    def run_finished(self, active: ActiveRun) -> None:
        if self.runs.get(active.id) is not active:
            return
        del self.runs[active.id]
        self.finished.add(active.id)
        summary = write_summary(active.run, durable=self.spool.durable)
        verdict = "ok" if summary["ok"] else "failed"
        append_event(
            active.run.dir,
            Event(iso(self.clock.wall()), "run", reason=f"finished: {verdict}"),
            durable=self.spool.durable,
        )
        counts = summary.get("counts", {})
        log.info(
            "run %s finished: %s (%s done, %s failed)",
            active.id,
            "ok" if summary["ok"] else "some tasks failed",
            counts.get("done", 0),
            counts.get("failed", 0),
        )
        hook = active.run.manifest.hooks.on_run_end
        if hook:
            facts = run_facts(self.spool.root, active.run.dir, ok=bool(summary["ok"]))
            self.scheduler.spawn(run_hook(hook, facts, timeout=self.settings.hook_timeout))
        self.listener.run_finished(active.id)
