"""The ending side of an attempt: reading a finished turn, settling the task, saving what the
agent said, timeouts, aborts and cancel requests. :class:`occoord.engine.dispatch.SessionDriver` adds the
starting side (dispatch, re-attach, events) on top of this.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from occoord.engine.attempts import Attempt, FailurePolicy, outcome_details, outcome_reason
from occoord.engine.runs import ActiveRun
from occoord.errors import ApiError, OccoordError
from occoord.fsutil import atomic_write
from occoord.opencode.outcome import TurnOutcome, classify
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState

if TYPE_CHECKING:
    from occoord.engine.loop import Coordinator

__all__ = ["DriverBase"]

log = logging.getLogger(__name__)


class DriverBase:
    """Attempt bookkeeping and everything that ends an attempt."""

    def __init__(self, coordinator: Coordinator, client: Any) -> None:
        self.co = coordinator
        self.client = client
        self._wakeups: list[float] = []
        # Sessions of tasks decided from outside while their turn still ran: session id -> attempt.
        self.winding: dict[str, Attempt] = {}

    # -- bookkeeping ---------------------------------------------------------------------------

    def register(self, attempt: Attempt) -> None:
        self.co.attempts[attempt.key] = attempt
        if attempt.session_id:
            self.co.by_session[attempt.session_id] = attempt

    def forget(self, attempt: Attempt) -> None:
        if self.co.attempts.get(attempt.key) is attempt:
            del self.co.attempts[attempt.key]
        if attempt.session_id and self.co.by_session.get(attempt.session_id) is attempt:
            del self.co.by_session[attempt.session_id]

    def wake_at(self, when: float) -> None:
        self._wakeups.append(when)

    def deadlines(self) -> list[float]:
        now = self.co.clock()
        self._wakeups = [w for w in self._wakeups if w > now - 1]
        out = list(self._wakeups)
        cfg = self.co.config
        for a in self.co.attempts.values():
            if a.settling:
                continue
            out.append(a.dispatched_at + self.wall_limit(a))
            out.append(a.last_activity + (cfg.idle_timeout if a.began else cfg.start_timeout))
        return out

    def wall_limit(self, attempt: Attempt) -> float:
        active = self.co.runs.get(attempt.run_id)
        spec = active.specs.get(attempt.task) if active else None
        return spec.timeout if spec and spec.timeout else self.co.config.task_timeout

    def directory_for(self, active: ActiveRun, task: str) -> str:
        return active.specs[task].directory or str(self.co.config.workdir)

    # -- ending an attempt ---------------------------------------------------------------------

    async def finish(self, attempt: Attempt) -> None:
        """The session went idle: classify the turn from its messages and settle the task."""
        if attempt.settling or attempt.session_id is None:
            return
        attempt.settling = True
        try:
            messages = await self.client.messages(attempt.session_id, attempt.directory)
        except OccoordError as exc:
            if isinstance(exc, ApiError) and exc.not_found:
                self.session_gone(attempt)
                return
            # The turn has ended but its outcome cannot be read yet: try again shortly (no further
            # event will come for an idle session).
            attempt.settling = False
            attempt.finish_tries += 1
            delay = min(30.0, 0.5 * 2**attempt.finish_tries)
            attempt.finish_after = self.co.clock() + delay
            self.wake_at(attempt.finish_after)
            log.warning(
                "%s/%s: cannot read the session's messages (again in %.0f s): %s",
                attempt.run_id,
                attempt.task,
                delay,
                exc,
            )
            return
        outcome = classify(messages)
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
        self.forget(attempt)
        active = self.co.runs.get(attempt.run_id)
        if active is None:
            return
        record = active.run.tasks.read(attempt.task)
        if record is None or record.state is not TaskState.PENDING or record.attempt != attempt.attempt:
            return
        log.warning(
            "%s/%s: session %s is gone; new attempt", attempt.run_id, attempt.task, attempt.session_id
        )
        reason = "its session is gone (server restarted?); new attempt"
        self.co.move(active, attempt.task, TaskState.PENDING, TaskState.QUEUED, reason)

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
        self.forget(attempt)
        active = self.co.runs.get(attempt.run_id)
        if active is None:
            return
        record = active.run.tasks.read(attempt.task)
        if record is None or record.state is not TaskState.PENDING or record.attempt != attempt.attempt:
            return  # someone else (usually the agent's own signal) already decided
        details = {**record.details, **(outcome_details(outcome) if outcome else {})}
        if done:
            self.co.move(active, attempt.task, TaskState.PENDING, TaskState.DONE, reason, details=details)
            return
        spec = active.specs[attempt.task]
        policy = FailurePolicy(spec.retries, int(record.details.get("failures", 0)))
        if unreachable:
            self.co.retry_later(
                active, TaskRecord(**{**record.__dict__, "details": details}), reason, counts=False
            )
        elif policy.retry(retryable):
            self.co.retry_later(active, TaskRecord(**{**record.__dict__, "details": details}), reason)
        else:
            failures = int(record.details.get("failures", 0)) + 1
            self.co.move(
                active,
                attempt.task,
                TaskState.PENDING,
                TaskState.FAILED,
                reason,
                details={**details, "failures": failures},
            )

    def write_result(self, attempt: Attempt, outcome: TurnOutcome) -> None:
        # By path, not through the active run: a signalled task's text often arrives after its run
        # has finished and left the coordinator's cache.
        run_dir = self.co.spool.runs / attempt.run_id
        if not outcome.text or not run_dir.is_dir():
            return
        path = run_dir / "results" / f"{attempt.task}.md"
        atomic_write(path, outcome.text.encode("utf-8", "replace"), durable=self.co.spool.durable)

    async def wind_down(self, attempt: Attempt) -> None:
        """The task was decided from outside (usually by its own agent) while its turn may still run.

        The agent that signalled usually ends its turn at once; a session still busy after the
        grace period (a script decided for it) is aborted so it stops spending. What the agent said
        is kept either way.
        """
        if attempt.session_id is None:
            return
        # Its idle event saves the final text (handle_event); after the grace period, a session
        # still busy is aborted.
        self.winding[attempt.session_id] = attempt
        await asyncio.sleep(self.co.config.signal_grace)
        if self.winding.pop(attempt.session_id, None) is None:
            return  # went idle meanwhile: its text is saved
        try:
            busy = attempt.session_id in await self.client.session_status(attempt.directory)
        except OccoordError:
            return
        if busy:
            log.info(
                "%s/%s: session %s still busy %.0f s after the task was signalled; aborting it",
                attempt.run_id,
                attempt.task,
                attempt.session_id,
                self.co.config.signal_grace,
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
        self.write_result(attempt, classify(messages))

    # -- timeouts and cancel -------------------------------------------------------------------

    async def check_timeouts(self, now: float) -> None:
        cfg = self.co.config
        for a in list(self.co.attempts.values()):
            if a.settling:
                continue
            if a.finish_after is not None and now >= a.finish_after:
                a.finish_after = None
                self.co.spawn(self.finish(a))
            elif now - a.dispatched_at >= self.wall_limit(a):
                self.stop_attempt(a, f"timed out after {self.wall_limit(a):.0f} s", False)
            elif not a.began and now - a.last_activity >= cfg.start_timeout:
                self.stop_attempt(a, f"the turn never started within {cfg.start_timeout:.0f} s", True)
            elif a.began and now - a.last_activity >= cfg.idle_timeout:
                self.stop_attempt(a, f"no activity for {cfg.idle_timeout:.0f} s", True)

    def stop_attempt(self, attempt: Attempt, reason: str, retryable: bool) -> None:
        attempt.settling = True  # at once: the next tick must not stop it again
        self.co.spawn(self.abort_and_settle(attempt, reason, retryable))

    async def abort_and_settle(self, attempt: Attempt, reason: str, retryable: bool) -> None:
        attempt.settling = True
        await self.abort(attempt)
        await self.settle(attempt, None, reason, retryable=retryable)

    async def abort(self, attempt: Attempt) -> None:
        if attempt.session_id is None:
            return
        try:
            await self.client.abort(attempt.session_id, attempt.directory)
        except (OccoordError, ApiError) as exc:
            log.warning("%s/%s: abort failed: %s", attempt.run_id, attempt.task, exc)

    def check_cancel(self, active: ActiveRun) -> None:
        """Honour ``runs/RUN/cancel`` (whole run) and ``runs/RUN/cancel.TASK`` request files."""
        from occoord.spool.cancel import pending_cancels

        for path, tasks in pending_cancels(active.run.dir, active.specs):
            for task in tasks:
                state = active.states.get(task)
                if state is TaskState.QUEUED:
                    self.co.move(active, task, TaskState.QUEUED, TaskState.FAILED, "cancelled")
                elif state is TaskState.PENDING:
                    attempt = self.co.attempts.get((active.id, task))
                    if attempt is not None:
                        attempt.cancel_reason = "cancelled"
                        self.co.spawn(self.abort_and_settle(attempt, "cancelled", False))
                    else:
                        self.co.move(active, task, TaskState.PENDING, TaskState.FAILED, "cancelled")
            path.unlink(missing_ok=True)
