"""The coordinator: turns runs in the spool into OpenCode sessions and their outcomes into files.

One asyncio loop owns all state changes. It wakes on three things only: hints from the spool
watcher, events from the OpenCode event stream, and its own deadlines (timeouts, retry backoff,
a slow safety rescan). Events are hints; the files are the truth: every hint is followed by
re-reading (and reconciling) the files it names.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from occoord.engine.attempts import Attempt, backoff
from occoord.engine.runs import ActiveRun
from occoord.engine.watcher import Hint
from occoord.errors import OccoordError, SpoolError, TransitionConflict
from occoord.manifest.model import Manifest
from occoord.spool.accept import accept_file
from occoord.spool.journal import Event, append_event, iso
from occoord.spool.layout import Spool
from occoord.spool.names import format_state
from occoord.spool.records import TaskRecord
from occoord.spool.recovery import recover
from occoord.spool.states import Actor, TaskState

__all__ = ["Coordinator", "CoordinatorConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorConfig:
    workdir: Path = field(default_factory=Path.cwd)
    max_sessions: int = 8
    start_timeout: float = 120.0  # a prompt accepted (204) but no turn visible
    idle_timeout: float = 900.0  # a busy session with no event at all
    task_timeout: float = 3600.0  # wall clock per attempt, unless the manifest says otherwise
    retry_base: float = 5.0
    retry_cap: float = 300.0
    rescan_interval: float = 30.0
    settle_seconds: float = 2.0
    # A file seen being written but never seen closed (a lost inotify event) is taken as complete
    # after this long unchanged; a writer that merely pauses is waited for.
    open_writer_seconds: float = 60.0
    hook_timeout: float = 60.0
    signal_grace: float = 30.0  # a session still busy this long after its task was signalled is aborted
    server_version: str = ""
    agent_permissions: bool = True  # let agents signal through the spool without an ask


class Coordinator:
    """Owns the spool's runs while it runs (one active coordinator per spool: see service)."""

    def __init__(
        self,
        spool: Spool,
        client: Any,
        config: CoordinatorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from occoord.engine.dispatch import SessionDriver

        self.spool = spool
        self.config = config
        self.clock = clock
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.runs: dict[str, ActiveRun] = {}
        self.attempts: dict[tuple[str, str], Attempt] = {}
        self.by_session: dict[str, Attempt] = {}
        self.unsettled: dict[Path, float] = {}
        self.finished: set[str] = set()  # run ids known finished (summary written)
        self.broken: set[str] = set()  # run ids that could not be loaded
        self.writing: set[Path] = set()  # incoming files written to and not yet closed
        self.finished_runs: asyncio.Queue[str] = asyncio.Queue()
        self.driver = SessionDriver(self, client)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_rescan = 0.0

    # -- plumbing ----------------------------------------------------------------------------

    def post(self, item: object) -> None:
        """Thread-safe enough for the loop's own thread; the watcher posts via call_soon_threadsafe."""
        self.queue.put_nowait(item)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("coordinator task failed", exc_info=task.exception())

    async def run(self, stop: asyncio.Event) -> None:
        """Start up (recover, scan, re-attach), then serve until ``stop`` is set."""
        await self.startup()
        while not stop.is_set():
            wait = max(0.0, min(self.next_deadline() - self.clock(), self.config.rescan_interval))
            getter = asyncio.ensure_future(self.queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter in done:
                await self.handle(getter.result())
                while not self.queue.empty() and not stop.is_set():
                    await self.handle(self.queue.get_nowait())
            else:
                getter.cancel()
            await self.tick()
        for task in list(self._tasks):
            task.cancel()

    async def startup(self) -> None:
        for repair in recover(self.spool):
            log.warning("recovery: %s", repair)
        self.rescan(initial=True)
        for active in list(self.runs.values()):
            for task, state in active.states.items():
                if state is TaskState.PENDING:
                    record = active.run.tasks.read(task)
                    if record is not None:
                        # Registered now (it holds a session slot), re-attached in the background
                        # so a slow server does not hold up the spool.
                        self.spawn(self.driver.reattach(active, record, self.driver.adopt(active, record)))
        await self.tick()

    # -- wakeups -------------------------------------------------------------------------------

    async def handle(self, item: object) -> None:
        try:
            if isinstance(item, Hint):
                self.handle_hint(item)
            else:
                await self.driver.handle_event(item)
        except OccoordError as exc:
            log.error("while handling %r: %s", item, exc)
        except OSError as exc:
            log.error("while handling %r: %s", item, exc)

    def handle_hint(self, hint: Hint) -> None:
        if hint.kind == "incoming" and hint.path is not None:
            if hint.settled:
                self.writing.discard(hint.path)
                self.accept(hint.path, settled=True)
            else:
                if hint.writing:
                    self.writing.add(hint.path)
                self.unsettled.setdefault(hint.path, self.clock())
        elif hint.kind == "task" and hint.run_id and hint.task:
            self.task_changed(hint.run_id, hint.task)
        elif hint.kind == "run" and hint.run_id:
            run_dir = self.spool.runs / hint.run_id
            if hint.run_id in self.finished and (run_dir / "summary.json").exists():
                # A cancel request for a finished run has nothing to cancel: consume it, so it
                # cannot strike later if the run is requeued.
                for name in os.listdir(run_dir):
                    if name == "cancel" or name.startswith("cancel."):
                        (run_dir / name).unlink(missing_ok=True)
                        log.info("run %s is finished: ignored the request %s", hint.run_id, name)
                return
            active = self.activate(hint.run_id)
            if active is not None:
                self.driver.check_cancel(active)
        elif hint.kind == "rescan":
            self.rescan()

    def accept(self, path: Path, *, settled: bool) -> None:
        outcome = accept_file(self.spool, path, settled=settled)
        if outcome.kind == "not_ready":
            self.unsettled.setdefault(path, self.clock())
            return
        self.unsettled.pop(path, None)
        self.writing.discard(path)
        if outcome.kind == "accepted" and outcome.run_id:
            self.activate(outcome.run_id, plan=outcome.manifest)

    def activate(self, run_id: str, plan: Manifest | None = None) -> ActiveRun | None:
        """Load a run into the cache (``plan``: just accepted, built by us, nothing to repair)."""
        active = self.runs.get(run_id)
        if active is not None:
            return active
        if run_id in self.broken:
            return None
        try:
            run = self.spool.run(run_id, plan)
        except SpoolError as exc:
            log.error("run %s cannot be loaded (left alone until restart): %s", run_id, exc)
            self.broken.add(run_id)
            return None
        if plan is None:
            run.tasks.reconcile()
        active = ActiveRun(run)
        if active.finished() and (run.dir / "summary.json").exists():
            self.finished.add(run_id)
            return None
        self.finished.discard(run_id)
        self.runs[run_id] = active
        (run.dir / "summary.json").unlink(missing_ok=True)  # running again: no stale verdict
        (run.dir / "summary.md").unlink(missing_ok=True)
        log.info("run %s: active (%d tasks)", run_id, len(active.specs))
        self.driver.check_cancel(active)
        return active

    def task_changed(self, run_id: str, task: str) -> None:
        if run_id not in self.runs and not self.may_resume(run_id, task):
            return
        active = self.runs.get(run_id) or self.activate(run_id)
        if active is None or task not in active.specs:
            return
        active.run.tasks.reconcile([task])
        state = active.run.tasks.current(task)
        if state is None or state is active.states.get(task):
            return
        old = active.states.get(task)
        active.set_state(task, state)
        attempt = self.attempts.get((run_id, task))
        if attempt is not None and state is not TaskState.PENDING:
            # An outside writer (usually the agent itself) decided this attempt.
            self.driver.forget(attempt)
            if state.terminal:
                self.spawn(self.driver.wind_down(attempt))
        if old is not None and old.terminal and state is TaskState.QUEUED:
            self.requeued(active, task)
        if state is TaskState.FAILED:
            self.fail_dependents(active, task)
        if state.terminal:
            self.task_ended(active, task)

    def may_resume(self, run_id: str, task: str) -> bool:
        """A hint about a finished run: only a requeued task (or a lost summary) makes it active
        again. Checked by name, without loading the run."""
        if run_id not in self.finished:
            return run_id not in self.broken
        run_dir = self.spool.runs / run_id
        if not (run_dir / "summary.json").exists():
            return True
        return any(
            (run_dir / "tasks" / format_state(task, state)).exists()
            for state in (TaskState.QUEUED, TaskState.PENDING)
        )

    def rescan(self, *, initial: bool = False) -> None:
        """The listing is the truth: accept what waits in incoming/, refresh every active run."""
        self._next_rescan = self.clock() + self.config.rescan_interval
        for path in self.spool.incoming_files():
            self.accept(path, settled=self.spool.is_settled(path, self.quiet_needed(path)))
        for run_id in self.spool.run_ids():
            if run_id in self.runs:
                active = self.runs[run_id]
                repairs = active.run.tasks.reconcile()
                if repairs:
                    active.refresh()
            elif not self.spool.looks_finished(run_id):
                self.activate(run_id)  # unfinished, or requeued (or repaired) while we were away
        for active in list(self.runs.values()):
            self.driver.check_cancel(active)
            for task, dep in active.blocked_by_failure():
                self.fail_queued(active, task, f"dependency {dep} failed")
            if active.finished():
                self.run_finished(active)

    # -- scheduling ----------------------------------------------------------------------------

    def next_deadline(self) -> float:
        deadlines = [self._next_rescan]
        deadlines += [t + self.quiet_needed(p) for p, t in self.unsettled.items()]
        deadlines += self.driver.deadlines()
        return min(deadlines)

    def quiet_needed(self, path: Path) -> float:
        """How long an incoming file must stay unchanged before it is taken as complete."""
        if path in self.writing:
            return max(self.config.settle_seconds, self.config.open_writer_seconds)
        return self.config.settle_seconds

    async def tick(self) -> None:
        now = self.clock()
        if now >= self._next_rescan:
            self.rescan()
        for path, seen in list(self.unsettled.items()):
            quiet = self.quiet_needed(path)
            if now - seen < quiet:
                continue
            if self.spool.is_settled(path, quiet):
                self.accept(path, settled=True)
            elif not path.exists():
                self.unsettled.pop(path, None)
            else:
                self.unsettled[path] = now  # still changing: look again one quiet period later
        await self.driver.check_timeouts(now)
        self.schedule()

    def schedule(self) -> None:
        """Dispatch ready tasks while there are free slots (global and per run)."""
        free = self.config.max_sessions - len(self.attempts)
        if free <= 0:
            return
        wall_now = datetime.now(UTC)
        for active in list(self.runs.values()):
            running = sum(1 for key in self.attempts if key[0] == active.id)
            room = min(free, active.run.manifest.concurrency - running)
            if room <= 0 or not active.ready:
                continue
            for task in list(active.ready):
                if room <= 0:
                    break
                record = active.run.tasks.read(task)
                if record is None or record.state is not TaskState.QUEUED:
                    active.run.tasks.reconcile([task])
                    active.set_state(task, active.run.tasks.current(task) or TaskState.QUEUED)
                    continue
                if record.not_before and _parse_time(record.not_before) > wall_now:
                    continue
                if self.driver.dispatch(active, record):
                    room -= 1
                    free -= 1
            if free <= 0:
                return

    # -- outcomes ------------------------------------------------------------------------------

    def move(
        self, active: ActiveRun, task: str, source: TaskState, target: TaskState, reason: str, **changes: Any
    ) -> TaskRecord | None:
        """transition() plus the cache, dependents and end-of-task bookkeeping."""
        try:
            record = active.run.tasks.transition(task, source, target, reason=reason, **changes)
        except TransitionConflict as exc:
            log.info("%s: lost a race (%s); re-reading", active.id, exc)
            self.task_changed(active.id, task)
            return None
        active.set_state(task, target)
        if target is TaskState.FAILED:
            self.fail_dependents(active, task)
        if target.terminal:
            self.task_ended(active, task)
        return record

    def fail_queued(self, active: ActiveRun, task: str, reason: str) -> None:
        if active.states.get(task) is TaskState.QUEUED:
            self.move(active, task, TaskState.QUEUED, TaskState.FAILED, reason)

    def fail_dependents(self, active: ActiveRun, task: str) -> None:
        from occoord.spool.requeue import blocked_reason

        for child in active.dependents.get(task, ()):
            self.fail_queued(active, child, blocked_reason(task))

    def requeued(self, active: ActiveRun, task: str) -> None:
        """A finished task was requeued: dependents that failed because of it are requeued too."""
        from occoord.spool.requeue import requeue_dependents

        for child in requeue_dependents(active.run, task, Actor.COORDINATOR):
            active.set_state(child, TaskState.QUEUED)

    def task_ended(self, active: ActiveRun, task: str) -> None:
        record = active.run.tasks.read(task)
        hook = active.run.manifest.hooks.on_task_end
        if hook and record is not None:
            from occoord.engine.hooks import run_hook, task_facts

            facts = task_facts(self.spool.root, active.run.dir, record)
            self.spawn(run_hook(hook, facts, timeout=self.config.hook_timeout))
        if active.finished():
            self.run_finished(active)

    def run_finished(self, active: ActiveRun) -> None:
        from occoord.spool.summary import write_summary

        if active.id not in self.runs:
            return
        del self.runs[active.id]
        self.finished.add(active.id)
        summary = write_summary(active.run, durable=self.spool.durable)
        append_event(
            active.run.dir,
            Event(iso(datetime.now(UTC)), "run", reason="finished: " + ("ok" if summary["ok"] else "failed")),
            durable=self.spool.durable,
        )
        log.info("run %s finished: %s", active.id, "ok" if summary["ok"] else "some tasks failed")
        hook = active.run.manifest.hooks.on_run_end
        if hook:
            from occoord.engine.hooks import run_facts, run_hook

            facts = run_facts(self.spool.root, active.run.dir, ok=bool(summary["ok"]))
            self.spawn(run_hook(hook, facts, timeout=self.config.hook_timeout))
        self.finished_runs.put_nowait(active.id)

    def retry_later(self, active: ActiveRun, record: TaskRecord, reason: str, *, counts: bool = True) -> None:
        """Back to the queue after a backoff. ``counts``: the failure was the task's own and uses up
        one of its retries; a server that could not be reached is not the task's failure."""
        key = "failures" if counts else "unreachable"
        tries = int(record.details.get(key, 0)) + 1
        delay = backoff(tries, self.config.retry_base, self.config.retry_cap)
        not_before = iso(datetime.now(UTC) + timedelta(seconds=delay))
        details = {**record.details, key: tries}
        what = f"retry {tries}" if counts else "server unreachable; trying again"
        self.move(
            active,
            record.task,
            TaskState.PENDING,
            TaskState.QUEUED,
            f"{what} in {delay:.0f} s: {reason}",
            not_before=not_before,
            details=details,
        )
        self.driver.wake_at(self.clock() + delay)


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
