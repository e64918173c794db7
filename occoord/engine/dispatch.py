"""Driving OpenCode sessions for the coordinator: dispatch, re-attach and the server's events.
The ending side (outcomes, timeouts, aborts, cancel) is in ``endings``.

Everything that talks to the OpenCode client goes through the driver; file changes go back through
the coordinator's ``move`` so its cache and bookkeeping stay right.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from occoord.engine.attempts import Attempt
from occoord.engine.prompting import build_prompt, session_title
from occoord.engine.runs import ActiveRun
from occoord.engine.settle import DriverBase
from occoord.errors import OccoordError, ServerUnavailable
from occoord.opencode import events as ev
from occoord.opencode.models import ModelRef as ClientModel
from occoord.spool.journal import iso
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState

if TYPE_CHECKING:
    pass

__all__ = ["SessionDriver"]

log = logging.getLogger(__name__)


class SessionDriver(DriverBase):
    """Starts attempts (dispatch, re-attach) and routes the server's events to them."""

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, active: ActiveRun, record: TaskRecord) -> bool:
        """queued -> pending (the compare-and-swap), then start the session in the background."""
        task = record.task
        attempt_no = record.attempt + 1
        title = session_title(active.id, task, attempt_no)
        directory = self.directory_for(active, task)
        details = {
            **record.details,
            "title": title,
            "dispatched_at": iso_now(),
            "server_version": self.co.config.server_version,
        }
        moved = self.co.move(
            active,
            task,
            TaskState.QUEUED,
            TaskState.PENDING,
            "dispatched",
            attempt=attempt_no,
            session_id=None,
            not_before=None,
            details=details,
        )
        if moved is None:
            return False
        now = self.co.clock()
        attempt = Attempt(active.id, task, attempt_no, directory, title, now, now)
        self.register(attempt)
        self.co.spawn(self.start(active, attempt, find_existing=False))
        return True

    async def start(self, active: ActiveRun, attempt: Attempt, *, find_existing: bool) -> None:
        """Create (or find again) the attempt's session and prompt it, exactly once.

        A session that already has messages was prompted before a crash: it is never prompted
        twice; if it has gone idle meanwhile its turn is classified now.
        """
        spec = active.specs[attempt.task]
        try:
            session_id = attempt.session_id
            if session_id is None and find_existing:
                found = await self.client.find_sessions(attempt.directory, attempt.title)
                session_id = found[0].id if found else None
            prompted = False
            if session_id is None:
                session = await self.client.create_session(
                    attempt.directory, attempt.title, permission=self.permissions()
                )
                session_id = session.id
            else:
                prompted = bool(await self.client.messages(session_id, attempt.directory))
            attempt.session_id = session_id
            self.register(attempt)
            # Not fsynced: after a crash the session is found again by its title.
            active.run.tasks.update(attempt.task, TaskState.PENDING, durable=False, session_id=session_id)
            if not prompted:
                text = build_prompt(
                    spec, spool_root=self.co.spool.root, run_id=active.id, tasks_dir=active.run.tasks.dir
                )
                model = ClientModel(spec.model.provider, spec.model.model) if spec.model else None
                await self.client.prompt_async(
                    session_id, attempt.directory, text, agent=spec.agent, model=model
                )
            elif session_id not in await self.client.session_status(attempt.directory):
                await self.finish(attempt)
                return
            else:
                attempt.began = True
            attempt.last_activity = self.co.clock()
            log.info("%s/%s: attempt %d in session %s", active.id, attempt.task, attempt.attempt, session_id)
        except OccoordError as exc:
            if self.co.attempts.get(attempt.key) is attempt:
                await self.settle(
                    attempt,
                    None,
                    f"could not start the session: {exc}",
                    retryable=True,
                    unreachable=isinstance(exc, ServerUnavailable) and exc.unreachable,
                )

    def permissions(self) -> Any:
        from occoord.opencode.permissions import session_rules

        return (
            session_rules(extra_paths=[str(self.co.spool.root)]) if self.co.config.agent_permissions else None
        )

    def adopt(self, active: ActiveRun, record: TaskRecord) -> Attempt:
        """Register a pending task found at start-up as a running attempt (it holds a slot)."""
        task = record.task
        directory = self.directory_for(active, task)
        title = str(record.details.get("title") or session_title(active.id, task, record.attempt))
        now = self.co.clock()
        attempt = Attempt(
            active.id, task, record.attempt, directory, title, now, now, session_id=record.session_id
        )
        self.register(attempt)
        return attempt

    async def reattach(self, active: ActiveRun, record: TaskRecord, attempt: Attempt) -> None:
        """After a restart: find the pending task's session again, never creating a second one."""
        task, directory = record.task, attempt.directory
        if record.session_id is None:
            # Crashed between pending and recording the session: look it up by its title first.
            await self.start(active, attempt, find_existing=True)
            return
        delay = 0.5
        while True:
            try:
                session = await self.client.get_session(record.session_id, directory)
                break
            except OccoordError as exc:
                log.warning("%s/%s: cannot re-attach yet (again in %.0f s): %s", active.id, task, delay, exc)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
            if self.co.attempts.get(attempt.key) is not attempt:
                return  # decided meanwhile (signalled, cancelled, timed out)
            attempt.last_activity = self.co.clock()  # waiting on the server is not the turn's fault
        if session is None:
            self.session_gone(attempt)
            return
        log.info("%s/%s: re-attaching to session %s", active.id, task, record.session_id)
        await self.start(active, attempt, find_existing=False)

    # -- events --------------------------------------------------------------------------------

    async def handle_event(self, event: object) -> None:
        # Nothing here may wait on the server inline: one hung request would freeze the whole loop.
        if isinstance(event, ev.StreamReconnected):
            self.co.spawn(self.resync())
            return
        if isinstance(event, ev.PermissionAsked | ev.QuestionAsked):
            return  # the PolicyResponder answers these
        session_id = getattr(event, "session_id", None)
        attempt = self.co.by_session.get(session_id) if session_id else None
        if attempt is None:
            winding = self.winding.get(session_id) if session_id else None
            if winding is not None and _is_idle(event):
                del self.winding[winding.session_id or ""]
                self.co.spawn(self.save_result(winding))
            return
        attempt.last_activity = self.co.clock()
        if isinstance(event, ev.SessionStatusChanged):
            if event.status == "idle":
                self.co.spawn(self.finish(attempt))
            else:
                attempt.began = True
        elif isinstance(event, ev.SessionIdle):
            self.co.spawn(self.finish(attempt))
        elif isinstance(event, ev.MessageUpdated) and getattr(event, "role", None) == "assistant":
            attempt.began = True

    async def resync(self) -> None:
        """After the event stream reconnects: anything that went idle meanwhile is settled now."""
        by_dir: dict[str, list[Attempt]] = {}
        for a in list(self.co.attempts.values()):
            if a.session_id and not a.settling:
                by_dir.setdefault(a.directory, []).append(a)
        for directory, attempts in by_dir.items():
            try:
                statuses = await self.client.session_status(directory)
            except OccoordError as exc:
                log.warning("resync of %s failed: %s", directory, exc)
                continue
            for a in attempts:
                if a.session_id not in statuses:
                    await self.finish(a)


def _is_idle(event: object) -> bool:
    return isinstance(event, ev.SessionIdle) or (
        isinstance(event, ev.SessionStatusChanged) and event.status == "idle"
    )


def iso_now() -> str:
    from datetime import UTC, datetime

    return iso(datetime.now(UTC))
