"""Ending attempts: reading a finished turn, settling the task, saving what the agent said,
stopping attempts (timeouts, cancel requests) and winding down sessions decided from outside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from occoord.backoff import Backoff
from occoord.engine.attempts import Attempt, AttemptTable, FailurePolicy, outcome_details, outcome_reason
from occoord.engine.book import RunBook
from occoord.engine.ports import Clock, OpenCodePort, Scheduler
from occoord.engine.runs import ActiveRun
from occoord.errors import ApiError, OccoordError
from occoord.fsutil import atomic_write
from occoord.opencode.outcome import TurnOutcome, classify
from occoord.spool.cancel import pending_cancels
from occoord.spool.states import TaskState

__all__ = ["SettleSettings", "Settler"]

log = logging.getLogger(__name__)

# Reading the messages of a turn that ended failed: again after 1 s, 2 s, ... at most 30 s apart
# (no further event comes for an idle session, so the engine must come back by itself).
FINISH_BACKOFF = Backoff(base=1.0, cap=30.0)


@dataclass(frozen=True)
class SettleSettings:
    signal_grace: float  # a session still busy this long after its task was signalled is aborted


class Settler:
    def __init__(
        self,
        client: OpenCodePort,
        book: RunBook,
        table: AttemptTable,
        clock: Clock,
        scheduler: Scheduler,
        settings: SettleSettings,
    ) -> None:
        self.client = client
        self.book = book
        self.table = table
        self.clock = clock
        self.scheduler = scheduler
        self.settings = settings

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
            messages = await self.client.messages(attempt.session_id, attempt.directory)
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
            self.scheduler.call_at(
                self.clock.monotonic() + delay,
                lambda: self.scheduler.spawn(self.finish(attempt, tries + 1)),
            )
            return
        outcome = classify(list(messages))
        self.write_result(attempt, outcome)
        if attempt.cancel_reason:
            await self.settle(attempt, outcome, attempt.cancel_reason, retryable=False)
        elif outcome.kind == "done":
            await self.settle(attempt, outcome, outcome_reason(outcome), retryable=False, done=True)
        else:
            retryable = outcome.kind == "not_started" or bool(outcome.retryable)
            await self.settle(attempt, outcome, outcome_reason(outcome), retryable=retryable)

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
    ) -> None:
        attempt.settling = True
        self.table.drop(attempt)
        active = self.book.runs.get(attempt.run_id)
        if active is None:
            return
        record = active.run.tasks.read(attempt.task)
        if record is None or record.state is not TaskState.PENDING or record.attempt != attempt.attempt:
            return  # someone else (usually the agent's own signal) already decided
        details = {**record.details, **(outcome_details(outcome) if outcome else {})}
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

    def write_result(self, attempt: Attempt, outcome: TurnOutcome) -> None:
        # By path, not through the active run: a signalled task's text often arrives after its run
        # has finished and left the book.
        run_dir = self.book.spool.runs / attempt.run_id
        if not outcome.text or not run_dir.is_dir():
            return
        path = run_dir / "results" / f"{attempt.task}.md"
        atomic_write(path, outcome.text.encode("utf-8", "replace"), durable=self.book.spool.durable)

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
        self.scheduler.call_at(
            self.clock.monotonic() + self.settings.signal_grace,
            lambda: self.scheduler.spawn(self._grace_over(attempt)),
        )

    def session_idle(self, session_id: str) -> None:
        """A session went idle: if it was winding down, keep its final text now."""
        attempt = self.table.winding.pop(session_id, None)
        if attempt is not None:
            self.scheduler.spawn(self.save_result(attempt))

    async def _grace_over(self, attempt: Attempt) -> None:
        if attempt.session_id is None or self.table.winding.pop(attempt.session_id, None) is None:
            return  # went idle meanwhile: its text is saved
        try:
            busy = attempt.session_id in await self.client.session_status(attempt.directory)
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
        await self.save_result(attempt)

    async def save_result(self, attempt: Attempt) -> None:
        """The task was signalled from outside: keep what the agent said so far."""
        if attempt.session_id is None:
            return
        try:
            messages = await self.client.messages(attempt.session_id, attempt.directory)
        except OccoordError:
            return
        self.write_result(attempt, classify(list(messages)))

    # -- stopping an attempt -------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        for expiry in self.table.expired(now):
            self.stop(expiry.attempt, expiry.reason, retryable=expiry.retryable)

    def stop(self, attempt: Attempt, reason: str, *, retryable: bool) -> None:
        attempt.settling = True  # at once: the next tick must not stop it again
        self.scheduler.spawn(self._abort_and_settle(attempt, reason, retryable))

    async def _abort_and_settle(self, attempt: Attempt, reason: str, retryable: bool) -> None:
        await self.abort(attempt)
        await self.settle(attempt, None, reason, retryable=retryable)

    async def abort(self, attempt: Attempt) -> None:
        if attempt.session_id is None:
            return
        try:
            await self.client.abort(attempt.session_id, attempt.directory)
        except OccoordError as exc:
            log.warning("%s: abort failed: %s", attempt.label, exc)

    def check_cancel(self, active: ActiveRun) -> None:
        """Honour ``runs/RUN/cancel`` (whole run) and ``runs/RUN/cancel.TASK`` request files."""
        for path, tasks in pending_cancels(active.run.dir, active.specs):
            for task in tasks:
                state = active.states.get(task)
                if state is TaskState.QUEUED:
                    self.book.move(active, task, TaskState.QUEUED, TaskState.FAILED, "cancelled")
                elif state is TaskState.PENDING:
                    attempt = self.table.get(active.id, task)
                    if attempt is not None:
                        attempt.cancel_reason = "cancelled"
                        self.stop(attempt, "cancelled", retryable=False)
                    else:
                        self.book.move(active, task, TaskState.PENDING, TaskState.FAILED, "cancelled")
            path.unlink(missing_ok=True)
