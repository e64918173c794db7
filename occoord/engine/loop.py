"""The coordinator: turns runs in the spool into OpenCode sessions and their outcomes into files.

One asyncio loop owns all state changes. It wakes on three things only: hints from the spool
watcher, events from the OpenCode event stream, and its own deadlines (timeouts, timers, a slow
safety rescan). Events are hints; the files are the truth: every hint is followed by re-reading
(and reconciling) the files it names.

The coordinator only composes: the attempt table, the run book (every transition's bookkeeping),
the dispatcher, the settler, the event router and the intake of incoming/. Its clock, scheduler
and OpenCode client are ports, so tests run the whole engine in one process with a fake client
and a clock that jumps (``step`` is one turn of the loop).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from occoord.backoff import Backoff
from occoord.engine.attempts import Attempt, AttemptTable, Timeouts
from occoord.engine.book import BookSettings, RunBook
from occoord.engine.dispatch import Dispatcher, DispatchSettings
from occoord.engine.intake import Intake, IntakeSettings
from occoord.engine.limits import Limits
from occoord.engine.parts import Parts
from occoord.engine.pool import ServerPool
from occoord.engine.ports import Clock, JobScheduler, OpenCodePort, SystemClock
from occoord.engine.report import WatcherReport
from occoord.engine.runs import ActiveRun
from occoord.engine.settle import Settler, SettleSettings
from occoord.engine.stopping import Stopper
from occoord.engine.stream import EventRouter
from occoord.engine.watcher import Hint
from occoord.engine.workspaces import Workspaces
from occoord.errors import Locked, OccoordError
from occoord.manifest.model import Manifest
from occoord.spool.layout import Spool
from occoord.spool.recovery import recover
from occoord.spool.states import TaskState

__all__ = ["Coordinator", "CoordinatorConfig"]

log = logging.getLogger(__name__)

# Items handled per turn of the loop before deadlines are looked at again: a steady flood of
# events must not starve dispatch and timeouts.
BATCH = 256
# The longest the loop waits for a lock a script holds (flock runs/RUN/.lock cmd); past it, the
# work is tried again later and every other run goes on meanwhile.
LOCK_WAIT = 0.05
HOLD_FILE = "hold"
LOCKED_AGAIN = 0.5
_WAKE = object()  # a queue item that only makes the loop tick (see Coordinator._job_done)


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
    provider_retries: int = 5  # provider retries in one turn before the turn is stopped (retryable)
    worktree_root: Path | None = None  # where worktree tasks' worktrees go (None: under XDG_DATA_HOME)
    limits: tuple[tuple[str, int], ...] = ()  # --limit PATTERN=N: busy sessions per model, all runs
    # A server of a pool unreachable this long has its attempts placed elsewhere (None: never).
    server_timeout: float | None = 600.0
    server_version: str = ""
    agent_permissions: bool = True  # let agents signal through the spool without an ask


class Coordinator:
    """Owns the spool's runs while it runs (one active coordinator per spool: see service)."""

    def __init__(
        self,
        spool: Spool,
        client: OpenCodePort | ServerPool,
        config: CoordinatorConfig,
        *,
        clock: Clock | None = None,
        scheduler: JobScheduler | None = None,
    ) -> None:
        self.spool = spool.waiting_at_most(LOCK_WAIT)
        spool = self.spool
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.scheduler = scheduler or JobScheduler()
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.finished_runs: asyncio.Queue[str] = asyncio.Queue()
        self.table = AttemptTable(Timeouts(start=config.start_timeout, idle=config.idle_timeout))
        self.book = RunBook(
            spool,
            self.table,
            self.clock,
            self.scheduler,
            BookSettings(Backoff(config.retry_base, config.retry_cap), config.hook_timeout),
            listener=self,
        )
        self.pool = client if isinstance(client, ServerPool) else ServerPool.single(client)
        self.workspaces = Workspaces(config.worktree_root)
        parts = Parts(self.pool, self.book, self.table, self.clock, self.scheduler)
        self.settler = Settler(parts, self.workspaces, SettleSettings(config.signal_grace))
        self.dispatcher = Dispatcher(
            parts,
            self.settler,
            self.workspaces,
            DispatchSettings(
                workdir=config.workdir,
                task_timeout=config.task_timeout,
                server_version=config.server_version,
                agent_permissions=config.agent_permissions,
            ),
        )
        self.stopper = Stopper(parts, self.settler, config.provider_retries, config.server_timeout)
        self.limits = Limits(self.table, config.limits)
        self.limited: dict[tuple[str, str], str] = {}  # queued tasks a limit holds, and which
        self.router = EventRouter(parts, self.settler, self.stopper)
        self.intake = Intake(
            spool,
            self.clock,
            IntakeSettings(config.settle_seconds, config.open_writer_seconds),
            accepted=lambda run_id, plan: self._accepted(run_id, plan),
            scheduler=self.scheduler,
        )
        first = self.pool.get(self.pool.default)
        self.report = WatcherReport(
            spool.root,
            self.clock,
            server_version=config.server_version,
            server_url=first.url if first is not None else "",
        )
        self._next_rescan = 0.0
        self._waiting: dict[tuple[str, str], float] = {}  # queued tasks held by not_before
        # Our own renames no longer wake the loop (their echoes are dropped): an ended job does.
        self._woken = False
        if isinstance(self.scheduler, JobScheduler):
            self.scheduler.on_done = self._job_done

    # -- what the book tells us (BookListener) -------------------------------------------------

    def activated(self, active: ActiveRun) -> None:
        self.stopper.check_cancel(active)
        for task, state in active.states.items():
            if state.terminal and active.specs[task].worktree:
                self.scheduler.spawn(self.settler.settle_worktree(active.id, task))

    def decided_outside(self, attempt: Attempt, state: TaskState) -> None:
        if state.terminal:
            self.settler.wind_down(attempt)

    def run_finished(self, run_id: str) -> None:
        self.finished_runs.put_nowait(run_id)

    def _accepted(self, run_id: str, plan: Manifest | None) -> None:
        self.book.activate(run_id, plan=plan)

    # -- the loop ------------------------------------------------------------------------------

    def _job_done(self) -> None:
        if not self._woken:
            self._woken = True
            self.queue.put_nowait(_WAKE)

    def post(self, item: object) -> None:
        """For the loop's own thread; the watcher posts via call_soon_threadsafe."""
        self.queue.put_nowait(item)

    async def run(self, stop: asyncio.Event) -> None:
        """Start up (recover, scan, re-attach), then serve until ``stop`` is set."""
        await self.startup()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if self.queue.empty():
                    wait = max(
                        0.0, min(self.next_deadline() - self.clock.monotonic(), self.config.rescan_interval)
                    )
                    getter = asyncio.ensure_future(self.queue.get())
                    done, _ = await asyncio.wait(
                        {getter, stopper}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        self.queue.put_nowait(getter.result())
                    else:
                        getter.cancel()
                self.step()
        finally:
            stopper.cancel()
            self.scheduler.cancel_all()

    def step(self) -> None:
        """One turn of the loop: handle what is queued (a bounded batch), then the deadlines."""
        self._woken = False
        for _ in range(BATCH):
            if self.queue.empty():
                break
            self.handle(self.queue.get_nowait())
        self.tick()

    async def startup(self) -> None:
        try:
            for repair in recover(self.spool):
                log.warning("recovery: %s", repair)
            self.rescan()
        except Exception:  # serve what can be served; the next rescan tries the rest again
            log.exception("start-up scan")
        for active in list(self.book.runs.values()):
            for task, state in active.states.items():
                if state is TaskState.PENDING:
                    record = active.run.tasks.read(task)
                    if record is not None:
                        # Registered now (it holds a slot), re-attached in the background so a
                        # slow server does not hold up the spool.
                        attempt = self.dispatcher.adopt(active, record)
                        self.scheduler.spawn(self.dispatcher.reattach(active, record, attempt))
        self.tick()

    def handle(self, item: object) -> None:
        if item is _WAKE:
            return
        try:
            if isinstance(item, Hint):
                self.handle_hint(item)
            else:
                self.router.handle(item)
        except Locked as exc:
            log.info("%s; again in %.1f s", exc, LOCKED_AGAIN)
            self.scheduler.call_at(self.clock.monotonic() + LOCKED_AGAIN, lambda: self.post(item))
        except (OccoordError, OSError) as exc:
            log.error("while handling %r: %s", item, exc)
        except Exception:  # a bug must not stop the watcher for good: log it, serve the rest
            log.exception("while handling %r", item)

    def handle_hint(self, hint: Hint) -> None:
        if hint.kind == "incoming":
            self.intake.hint(hint)
        elif hint.kind == "task" and hint.run_id and hint.task:
            self.book.observe(hint.run_id, hint.task)
        elif hint.kind == "run" and hint.run_id:
            if self.book.consume_cancel_requests(hint.run_id):
                return
            active = self.book.activate(hint.run_id)
            if active is not None:
                self.stopper.check_cancel(active)
        elif hint.kind == "rescan":
            self.rescan()

    def rescan(self) -> None:
        """The listing is the truth: accept what waits in incoming/, refresh every active run."""
        self._next_rescan = self.clock.monotonic() + self.config.rescan_interval
        self.intake.scan()
        for run_id in self.spool.run_ids():
            active = self.book.runs.get(run_id)
            try:
                if active is not None:
                    if active.run.tasks.reconcile():
                        active.refresh()
                    # A change whose hint was lost (an inotify overflow) takes the same path now.
                    for task, state in active.run.tasks.states().items():
                        if active.states.get(task) is not state:
                            self.book.observe(run_id, task)
                elif not self.spool.looks_finished(run_id):
                    self.book.activate(run_id)  # unfinished, or requeued (or repaired) while we were away
            except Locked as exc:
                log.info("rescan: %s", exc)
                self._next_rescan = min(self._next_rescan, self.clock.monotonic() + LOCKED_AGAIN)
        for active in list(self.book.runs.values()):
            try:
                self.stopper.check_cancel(active)
                for task, dep in active.blocked_by_failure():
                    self.book.fail_queued(active, task, f"dependency {dep} failed")
                if active.finished():
                    self.book.run_finished(active)
            except Locked as exc:
                log.info("rescan: %s", exc)
                self._next_rescan = min(self._next_rescan, self.clock.monotonic() + LOCKED_AGAIN)

    def held(self) -> bool:
        """``SPOOL/hold`` stops new dispatches across the spool; running tasks go on."""
        return (self.spool.root / HOLD_FILE).exists()

    def problems(self) -> dict[str, str]:
        """What keeps failing right now, for ``occoord status``."""
        found = {f"{run}/{task}": what for (run, task), what in self.settler.problems.items()}
        found.update({f"incoming/{path.name}": what for path, what in self.intake.problems.items()})
        return found

    # -- deadlines and scheduling --------------------------------------------------------------

    def next_deadline(self) -> float:
        deadlines = [self._next_rescan, *self._waiting.values()]
        for extra in (
            self.intake.next_deadline(),
            self.table.next_deadline(),
            self.scheduler.next_due(),
            self.stopper.next_deadline(),
        ):
            if extra is not None:
                deadlines.append(extra)
        return min(deadlines)

    def tick(self) -> None:
        now = self.clock.monotonic()
        try:
            if now >= self._next_rescan:
                self.rescan()
            self.intake.tick(now)
            self.scheduler.run_due(now)
            self.stopper.check_timeouts(now)
            self.schedule()
            waiting = {
                f"{run}/{task}": why if why.startswith("waiting:") else f"waiting: {why}"
                for (run, task), why in self.limited.items()
            }
            self.report.update(self.problems(), waiting, self.pool.describe())
        except (OccoordError, OSError) as exc:
            # The next deadline brings us back; nothing a file holds may stop the loop.
            log.error("coordinator tick: %s", exc)
            self._next_rescan = min(self._next_rescan, now + self.config.settle_seconds)
        except Exception:
            log.exception("coordinator tick")
            self._next_rescan = min(self._next_rescan, now + self.config.rescan_interval)

    def schedule(self) -> None:
        """Dispatch ready tasks while there are free slots (global and per run), unless on hold."""
        free = self.config.max_sessions - len(self.table)
        if free <= 0 or self.held():
            return
        now = self.clock.monotonic()
        self._waiting = {key: when for key, when in self._waiting.items() if when > now}
        runs = self.book.runs
        self.limited = {k: v for k, v in self.limited.items() if k[0] in runs and k[1] in runs[k[0]].ready}
        for active in list(self.book.runs.values()):
            try:
                free -= self._dispatch_ready(active, free, now)
            except Locked as exc:
                log.info("%s: %s; again in %.1f s", active.id, exc, LOCKED_AGAIN)
                self.scheduler.wake_at(now + LOCKED_AGAIN)
            if free <= 0:
                return

    def _dispatch_ready(self, active: ActiveRun, free: int, now: float) -> int:
        """Dispatch ready tasks of one run within its room and ``free``; how many were started."""
        room = min(free, active.run.manifest.concurrency - self.table.running_in(active.id))
        started = 0
        for task in list(active.ready):
            if started >= room:
                break
            key = (active.id, task)
            if key in self._waiting:
                continue
            record = active.run.tasks.read(task)
            if record is None or record.state is not TaskState.QUEUED:
                self.book.observe(active.id, task)  # changed behind our back: one path for all
                continue
            if active.specs[task].worktree and not Workspaces.dependencies_ready(active, task):
                continue  # a dependency's result commit is still being recorded; that wakes us
            why = self.limits.holding(active, active.specs[task])
            if why is not None:
                self.limited[key] = why  # an attempt that ends frees a place; the next tick looks again
                continue
            self.limited.pop(key, None)
            wait_until = self.book.not_before(record)
            if wait_until is not None:
                self._waiting[key] = wait_until
                continue
            member = self.pool.place(active.specs[task].server, self.table.running_on)
            if member is None:
                self.limited[key] = self.pool.why_not(active.specs[task].server)
                continue
            if self.dispatcher.dispatch(active, record, member.name):
                started += 1
        return started
