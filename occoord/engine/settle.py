"""Ending attempts: reading a finished turn, settling the task, saving what the agent said, and
winding down sessions decided from outside. Stopping attempts (timeouts, cancel) is ``stopping``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from occoord.backoff import Backoff
from occoord.engine.attempts import Attempt, FailurePolicy, outcome_details, outcome_reason
from occoord.engine.parts import Component, Parts
from occoord.engine.results import ResultKeeper
from occoord.engine.workspaces import Workspaces
from occoord.errors import ApiError, GitError, OccoordError, SpoolError
from occoord.opencode.models import ErrorInfo
from occoord.opencode.outcome import ABORTED_ERROR, TurnOutcome, classify
from occoord.opencode.usage import Usage
from occoord.spool.states import TaskState
from occoord.spool.summary import write_summary

__all__ = ["SettleSettings", "Settler", "with_session_error"]

log = logging.getLogger(__name__)

# Reading the messages of a turn that ended failed: again after 1 s, 2 s, ... at most 30 s apart
# (no further event comes for an idle session, so the engine must come back by itself).
FINISH_BACKOFF = Backoff(base=1.0, cap=30.0)
# A failed write (disk full, EACCES): again after 1 s, 2 s, ... at most a minute apart.
WRITE_BACKOFF = Backoff(base=1.0, cap=60.0)


@dataclass(frozen=True)
class SettleSettings:
    signal_grace: float  # a session still busy this long after its task was signalled is aborted


class Settler(Component):
    def __init__(self, parts: Parts, workspaces: Workspaces, settings: SettleSettings) -> None:
        super().__init__(parts)
        self.workspaces = workspaces
        self.results = ResultKeeper(parts.pool, parts.book)
        self.settings = settings
        # Writes that keep failing, by task: what `occoord status` shows until they succeed.
        self.problems: dict[tuple[str, str], str] = {}

    # -- a turn that ended ---------------------------------------------------------------------

    async def finish(self, attempt: Attempt, tries: int = 0) -> None:
        """The session went idle: classify the turn from its messages and settle the task."""
        if attempt.settling or attempt.session_id is None or not self.table.current(attempt):
            return
        if attempt.rereading and tries == 0:
            return  # a timer already reads it again; more idle events change nothing
        attempt.settling = True
        attempt.rereading = False
        try:
            messages, usage = await self.results.read_turn(attempt)
        except OccoordError as exc:
            if isinstance(exc, ApiError) and exc.not_found:
                self.session_gone(attempt)
                return
            # Timeouts still apply meanwhile: a server that never answers ends the attempt.
            attempt.settling = False
            attempt.rereading = True
            delay = FINISH_BACKOFF.delay(tries + 1)
            log.warning(
                "%s: cannot read the session's messages (again in %.0f s): %s", attempt.label, delay, exc
            )
            self.scheduler.spawn_at(
                self.clock.monotonic() + delay,
                lambda: self.finish(attempt, tries + 1),
            )
            return
        outcome = with_session_error(classify(list(messages)), attempt.error)
        try:
            self.results.write_result(attempt, outcome)
        except OSError as exc:
            attempt.settling = False
            attempt.rereading = True
            delay = WRITE_BACKOFF.delay(tries + 1)
            log.error("%s: cannot save the result (again in %.0f s): %s", attempt.label, delay, exc)
            self.problems[attempt.key] = f"cannot save the result of {attempt.label}: {exc}"
            self.scheduler.spawn_at(self.clock.monotonic() + delay, lambda: self.finish(attempt, tries + 1))
            return
        if outcome.kind != "done":
            await self.results.write_log(attempt)
        if attempt.cancel_reason:
            await self.settle(attempt, outcome, attempt.cancel_reason, retryable=False, usage=usage)
        elif outcome.kind == "done":
            reason = outcome_reason(outcome)
            await self.settle(attempt, outcome, reason, retryable=False, done=True, usage=usage)
        else:
            retryable = outcome.kind == "not_started" or bool(outcome.retryable)
            await self.settle(attempt, outcome, outcome_reason(outcome), retryable=retryable, usage=usage)

    def session_gone(self, attempt: Attempt) -> None:
        """The server no longer knows the session (it lost its data, or was replaced): the attempt
        did not fail on its own account, so the task goes back to the queue for a new attempt."""
        attempt.settling = True
        self.table.drop(attempt)
        active = self.book.runs.get(attempt.run_id)
        if active is None:
            return
        record = active.run.tasks.read(attempt.task)
        if record is None or record.state is not TaskState.PENDING or record.attempt != attempt.attempt:
            return
        log.warning("%s: session %s is gone; new attempt", attempt.label, attempt.session_id)
        reason = "its session is gone (server restarted?); new attempt"
        self.book.move(active, attempt.task, TaskState.PENDING, TaskState.QUEUED, reason)

    async def settle(
        self,
        attempt: Attempt,
        outcome: TurnOutcome | None,
        reason: str,
        *,
        retryable: bool,
        done: bool = False,
        unreachable: bool = False,
        tries: int = 0,
        usage: Usage | None = None,
    ) -> None:
        """Record the attempt's outcome; the attempt keeps its slot until that is written."""
        attempt.settling = True
        try:
            extra = await self._finish_worktree(attempt, done=done)
            if usage is not None:
                extra["attempt_usage"] = usage
            self._record(
                attempt, outcome, reason, retryable=retryable, done=done, unreachable=unreachable, extra=extra
            )
        except (OSError, SpoolError, GitError) as exc:
            # Disk full, EACCES, a run lock held too long: nothing is lost, the attempt stays
            # registered (settling: no events, no timeouts) and the write is tried again.
            delay = WRITE_BACKOFF.delay(tries + 1)
            log.error("%s: cannot record the outcome (again in %.0f s): %s", attempt.label, delay, exc)
            self.problems[attempt.key] = f"cannot record the outcome of {attempt.label}: {exc}"
            self.scheduler.spawn_at(
                self.clock.monotonic() + delay,
                lambda: self.settle(
                    attempt,
                    outcome,
                    reason,
                    retryable=retryable,
                    done=done,
                    unreachable=unreachable,
                    tries=tries + 1,
                    usage=usage,
                ),
            )
            return
        self.problems.pop(attempt.key, None)
        self.table.drop(attempt)

    def _record(
        self,
        attempt: Attempt,
        outcome: TurnOutcome | None,
        reason: str,
        *,
        retryable: bool,
        done: bool,
        unreachable: bool,
        extra: dict[str, Any],
    ) -> None:
        active = self.book.runs.get(attempt.run_id)
        if active is None:
            return
        record = active.run.tasks.read(attempt.task)
        if record is None or record.state is not TaskState.PENDING or record.attempt != attempt.attempt:
            # Someone else (usually the agent's own signal) already decided: make sure the book
            # has followed, even if that change's hint was lost.
            self.book.observe(attempt.run_id, attempt.task)
            return
        attempt_usage = extra.pop("attempt_usage", None)
        details = {**record.details, **(outcome_details(outcome) if outcome else {}), **extra}
        if isinstance(attempt_usage, Usage):  # what the task cost so far: every attempt, added up
            details["usage"] = (
                (Usage.from_json(record.details.get("usage")) or Usage()) + attempt_usage
            ).to_json()
        if done:
            self.book.move(active, attempt.task, TaskState.PENDING, TaskState.DONE, reason, details=details)
            return
        spec = active.specs[attempt.task]
        failures = int(record.details.get("failures", 0))
        with_details = replace(record, details=details)
        if unreachable:
            self.book.retry_later(active, with_details, reason, counts=False)
        elif FailurePolicy(spec.retries, failures).retry(retryable):
            self.book.retry_later(active, with_details, reason)
        else:
            self.book.move(
                active,
                attempt.task,
                TaskState.PENDING,
                TaskState.FAILED,
                reason,
                details={**details, "failures": failures + 1},
            )

    async def _finish_worktree(self, attempt: Attempt, *, done: bool) -> dict[str, Any]:
        """A worktree attempt that ends: commit what it left (its session has ended) first, so a
        dependent that starts from this task's result finds it recorded."""
        active = self.book.runs.get(attempt.run_id)
        if active is None or not active.specs[attempt.task].worktree or not attempt.prepared:
            return {}
        record = active.run.tasks.read(attempt.task)
        if record is None or record.state is not TaskState.PENDING or record.attempt != attempt.attempt:
            return {}
        client = self.pool.client(attempt.server)
        return await self.workspaces.finish(client, active.run, active.specs[attempt.task], record, done=done)

    async def settle_worktree(self, run_id: str, task: str, tries: int = 0) -> None:
        """A worktree task decided from outside: once its session has ended, commit and record
        what it left; then wake the loop (dependents wait for that result commit)."""
        active = self.book.runs.get(run_id)
        run = active.run if active is not None else None
        try:
            if run is None:
                run = self.book.spool.run(run_id)
            spec = run.manifest.task(task)
            if not spec.worktree:
                return
            state = run.tasks.current(task)
            record = run.tasks.read(task)
            if state is not None and state.terminal and record is not None:
                # Its server only disposes the instance: a server gone since does not hold this up.
                member = self.pool.get(str(record.details.get("server") or self.pool.default))
                client = member.client if member is not None else self.pool.client(self.pool.default)
                await self.workspaces.settle_record(client, run, spec, state)
                if (run_id, task) in self.book.hook_after_result:
                    self.book.task_hook(run, task)  # now that its result is recorded
                if (run.dir / "summary.json").exists():
                    # The run finished before this result was committed: its summary gets it too.
                    write_summary(run, durable=self.book.spool.durable)
        except (OccoordError, OSError, KeyError) as exc:
            log.error("%s/%s: cannot record the worktree's result: %s", run_id, task, exc)
            self.problems[(run_id, task)] = f"cannot record the worktree's result of {run_id}/{task}: {exc}"
            self.scheduler.spawn_at(
                self.clock.monotonic() + WRITE_BACKOFF.delay(tries + 1),
                lambda: self.settle_worktree(run_id, task, tries + 1),
            )
            return
        self.problems.pop((run_id, task), None)
        self.scheduler.wake_at(self.clock.monotonic())

    # -- a task decided from outside -----------------------------------------------------------

    def wind_down(self, attempt: Attempt) -> None:
        """The task was decided from outside (usually by its own agent) while its turn may still run.

        The agent that signalled usually ends its turn at once: its idle event saves the final
        text (:meth:`session_idle`). A session still busy after the grace period (a script decided
        for it) is aborted so it stops spending; what the agent said is kept either way.
        """
        if attempt.session_id is None:
            return
        self.table.winding[attempt.session_id] = attempt
        self.scheduler.spawn_at(
            self.clock.monotonic() + self.settings.signal_grace,
            lambda: self._grace_over(attempt),
        )

    def session_idle(self, session_id: str) -> None:
        """A session went idle: if it was winding down, keep its final text now."""
        attempt = self.table.winding.pop(session_id, None)
        if attempt is not None:
            self.scheduler.spawn(self._wound_down(attempt))

    async def _wound_down(self, attempt: Attempt) -> None:
        await self.results.keep_late(attempt)
        if attempt.prepared:
            await self.settle_worktree(attempt.run_id, attempt.task)

    async def _grace_over(self, attempt: Attempt) -> None:
        if attempt.session_id is None or self.table.winding.pop(attempt.session_id, None) is None:
            return  # went idle meanwhile: its text is saved
        try:
            busy = attempt.session_id in await self.pool.client(attempt.server).session_status(
                attempt.directory
            )
        except OccoordError:
            return
        if busy:
            log.info(
                "%s: session %s still busy %.0f s after the task was signalled; aborting it",
                attempt.label,
                attempt.session_id,
                self.settings.signal_grace,
            )
            await self.abort(attempt)
        await self._wound_down(attempt)

    # -- best-effort abort (the task is decided already) ---------------------------------------

    async def abort(self, attempt: Attempt) -> None:
        """Best effort (the task is decided already): abort, and log a failure."""
        if attempt.session_id is None:
            return
        try:
            await self.pool.client(attempt.server).abort(attempt.session_id, attempt.directory)
        except OccoordError as exc:
            log.warning("%s: abort failed: %s", attempt.label, exc)


def with_session_error(outcome: TurnOutcome, error: ErrorInfo | None) -> TurnOutcome:
    """A turn with no assistant message but a ``session.error`` failed with that error: it did not
    merely never start (which would waste retries and lose the reason)."""
    if outcome.kind != "not_started" or error is None:
        return outcome
    if error.name == ABORTED_ERROR:
        return TurnOutcome(kind="aborted", error_name=error.name, message=error.message)
    return TurnOutcome(
        kind="failed", error_name=error.name, message=error.message, retryable=bool(error.retryable)
    )
