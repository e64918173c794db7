"""Starting attempts: dispatch a queued task, and re-attach a pending one after a restart.

A session is created (or found again by its title) and prompted exactly once: a session that
already holds messages was prompted before a crash and is never prompted twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from occoord.backoff import Backoff
from occoord.engine.attempts import Attempt
from occoord.engine.limits import model_of
from occoord.engine.parts import Component, Parts
from occoord.engine.prompting import build_prompt, session_title
from occoord.engine.runs import ActiveRun
from occoord.engine.settle import Settler
from occoord.engine.workspaces import Workspaces
from occoord.errors import ApiError, GitError, OccoordError, ServerUnavailable
from occoord.opencode.models import ModelRef as ClientModel
from occoord.opencode.permissions import session_rules
from occoord.spool.journal import iso
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState
from occoord.workspace.git import MergeConflict

__all__ = ["DispatchSettings", "Dispatcher"]

log = logging.getLogger(__name__)

# Re-attaching to a server that is not back yet: 0.5 s, 1 s, 2 s, ... at most 30 s apart.
REATTACH_BACKOFF = Backoff(base=0.5, cap=30.0)
# A task record's details that describe one attempt only (cleared when the next one starts).
ATTEMPT_DETAILS = frozenset(
    {
        "outcome",
        "error_name",
        "retryable",
        "directory",
        "worktree",
        "branch",
        "start_commit",
        "result_commit",
        "files_changed",
        "insertions",
        "deletions",
        "worktree_removed",
    }
)
# Looking again after a request whose answer was lost: 1 s, 2 s, ... at most 30 s apart.
START_BACKOFF = Backoff(base=1.0, cap=30.0)


@dataclass(frozen=True)
class DispatchSettings:
    workdir: Path
    task_timeout: float
    server_version: str = ""
    agent_permissions: bool = True  # let agents signal through the spool without an ask


class Dispatcher(Component):
    def __init__(
        self, parts: Parts, settler: Settler, workspaces: Workspaces, settings: DispatchSettings
    ) -> None:
        super().__init__(parts)
        self.settler = settler
        self.workspaces = workspaces
        self.settings = settings

    def _version(self, server: str) -> str:
        member = self.pool.get(server)
        return (member.version if member is not None else "") or self.settings.server_version

    def directory_for(self, active: ActiveRun, task: str) -> str:
        return active.specs[task].directory or str(self.settings.workdir)

    def _new_attempt(self, active: ActiveRun, task: str, number: int, title: str, server: str) -> Attempt:
        spec = active.specs[task]
        now = self.clock.monotonic()
        return Attempt(
            active.id,
            task,
            number,
            self.directory_for(active, task),
            title,
            dispatched_at=now,
            last_activity=now,
            wall_limit=spec.timeout or self.settings.task_timeout,
            model=model_of(spec),
            server=server,
        )

    def dispatch(self, active: ActiveRun, record: TaskRecord, server: str) -> bool:
        """queued -> pending (the compare-and-swap) on ``server``, then start the session in the
        background."""
        task = record.task
        number = record.attempt + 1
        title = session_title(active.id, task, number)
        # What belonged to the previous attempt (its outcome, its worktree and result) does not
        # carry over; what counts across attempts (failures, usage) does.
        kept = {k: v for k, v in record.details.items() if k not in ATTEMPT_DETAILS}
        details = {
            **kept,
            "title": title,
            "dispatched_at": iso(self.clock.wall()),
            "server_version": self._version(server),
            "server": server,
            "servers": _count(record.details.get("servers"), server),  # sessions per server, all attempts
            # Every call about the session is scoped to it (top, logs, attach read it too); a
            # worktree task's is set once its worktree is ready.
            "directory": self.directory_for(active, task),
        }
        moved = self.book.move(
            active,
            task,
            TaskState.QUEUED,
            TaskState.PENDING,
            "dispatched",
            attempt=number,
            session_id=None,
            not_before=None,
            details=details,
        )
        if moved is None:
            return False
        attempt = self._new_attempt(active, task, number, title, server)
        self.table.add(attempt)
        member = self.pool.get(server)
        if member is not None:
            member.sessions += 1
        self.scheduler.spawn(self.start(active, attempt, find_existing=False))
        return True

    def adopt(self, active: ActiveRun, record: TaskRecord) -> Attempt:
        """Register a pending task found at start-up as a running attempt (it holds a slot)."""
        title = str(record.details.get("title") or session_title(active.id, record.task, record.attempt))
        # Re-attached where it ran: a record from before pools names no server, the first is it.
        server = str(record.details.get("server") or self.pool.default)
        attempt = self._new_attempt(active, record.task, record.attempt, title, server)
        attempt.session_id = record.session_id
        self.table.add(attempt)
        return attempt

    async def start(
        self, active: ActiveRun, attempt: Attempt, *, find_existing: bool, tries: int = 0
    ) -> None:
        """Create (or find again) the attempt's session and prompt it, exactly once.

        A session that already holds the prompt was prompted before (a crash, or a reply that got
        lost): it is never prompted twice; if it has gone idle meanwhile its turn is classified now.
        """
        spec = active.specs[attempt.task]
        try:
            client = self.pool.client(attempt.server)
            if spec.worktree and not attempt.prepared:
                await self._prepare(active, attempt)
            session_id = attempt.session_id
            if session_id is None and (find_existing or tries > 0):
                found = await client.find_sessions(attempt.directory, attempt.title)
                session_id = found[0].id if found else None
            prompted = False
            if session_id is None:
                session = await client.create_session(
                    attempt.directory, attempt.title, permission=self.permissions()
                )
                session_id = session.id
            else:
                messages = await client.messages(session_id, attempt.directory)
                prompted = any(m.role == "user" for m in messages)
            if not self.table.current(attempt) or attempt.settling:
                return  # decided meanwhile (signalled, cancelled, timed out)
            self.table.bind(attempt, session_id)
            if not prompted:
                text = build_prompt(
                    spec, spool_root=self.book.spool.root, run_id=active.id, tasks_dir=active.run.tasks.dir
                )
                model = ClientModel(spec.model.provider, spec.model.model) if spec.model else None
                try:
                    await client.prompt_async(
                        session_id, attempt.directory, text, agent=spec.agent, model=model
                    )
                finally:
                    # Written after the prompt, which is what a dependent's latency is: the record
                    # is a shortcut (after a crash the session is found again by its title).
                    if self.table.current(attempt) and not attempt.settling:
                        self._record_session(active, attempt, session_id)
            else:
                self._record_session(active, attempt, session_id)
                if session_id not in await client.session_status(attempt.directory):
                    await self.settler.finish(attempt)
                    return
                attempt.began = True
            attempt.last_activity = self.clock.monotonic()
            log.info("%s: attempt %d in session %s", attempt.label, attempt.attempt, session_id)
        except ServerUnavailable as exc:
            if not self.table.current(attempt) or attempt.settling:
                return
            if exc.maybe_delivered:
                # The request may have been acted on although its answer was lost: a session may
                # exist, the prompt may be running. Never start a second one: look again (by
                # title, by its messages) after a backoff, holding the slot. The start timeout
                # still applies, and stopping waits until the session is seen stopped.
                delay = START_BACKOFF.delay(tries + 1)
                log.warning(
                    "%s: no answer from the server (looking again in %.1f s): %s", attempt.label, delay, exc
                )
                self.scheduler.spawn_at(
                    self.clock.monotonic() + delay,
                    lambda: self.start(active, attempt, find_existing=True, tries=tries + 1),
                )
                return
            # Never sent (no connection), or answered with a 5xx: nothing started on the server.
            await self.settler.settle(
                attempt,
                None,
                f"could not start the session: {exc}",
                retryable=True,
                unreachable=exc.unreachable,
            )
        except MergeConflict as exc:
            if self.table.current(attempt):
                # Its dependencies' work does not merge: no retry can change that.
                await self.settler.settle(attempt, None, f"cannot start: {exc}", retryable=False)
        except GitError as exc:
            if self.table.current(attempt):
                await self.settler.settle(attempt, None, f"cannot make the worktree: {exc}", retryable=True)
        except ApiError as exc:
            if self.table.current(attempt) and exc.not_found and attempt.session_id is not None:
                # Looking again, the server no longer knows the session (it was replaced): no turn
                # can run there, so a new attempt is safe and not the task's failure.
                self.settler.session_gone(attempt)
            elif self.table.current(attempt):
                # The server said no; a client error (a bad agent or model) will say no again.
                retryable = exc.status >= 500 or exc.status in (408, 409, 429)
                await self.settler.settle(
                    attempt, None, f"could not start the session: {exc}", retryable=retryable
                )
        except Exception as exc:  # anything else is a value no request can carry: fail, never strand
            if self.table.current(attempt):
                log.exception("%s: cannot start the session", attempt.label)
                reason = f"could not start the session: {type(exc).__name__}: {exc}"
                await self.settler.settle(attempt, None, reason, retryable=False)

    async def _prepare(self, active: ActiveRun, attempt: Attempt) -> None:
        """The attempt's worktree (made, or found again after a restart); its session works there."""
        prepared = await self.workspaces.prepare(active, attempt.task, attempt.attempt)
        attempt.directory = prepared.directory
        attempt.prepared = True
        try:
            record = active.run.tasks.read(attempt.task)
            details = {**(record.details if record else {}), **prepared.details()}
            active.run.tasks.update(attempt.task, TaskState.PENDING, durable=False, details=details)
        except (OccoordError, OSError) as exc:  # derived from run, task and attempt: found again
            log.warning("%s: cannot record the worktree: %s", attempt.label, exc)

    def _record_session(self, active: ActiveRun, attempt: Attempt, session_id: str) -> None:
        # Not fsynced, and a failure is only logged: after a crash the session is found again by
        # its title, so the record is a shortcut, not the truth.
        try:
            active.run.tasks.update(attempt.task, TaskState.PENDING, durable=False, session_id=session_id)
        except (OccoordError, OSError) as exc:
            log.warning("%s: cannot record session %s: %s", attempt.label, session_id, exc)

    def permissions(self) -> list[dict[str, str]] | None:
        if not self.settings.agent_permissions:
            return None
        return session_rules(extra_paths=[str(self.book.spool.root)])

    async def reattach(self, active: ActiveRun, record: TaskRecord, attempt: Attempt, tries: int = 0) -> None:
        """After a restart: find the pending task's session again, never creating a second one."""
        if not self.table.current(attempt):
            return  # decided meanwhile (signalled, cancelled, timed out)
        if active.specs[attempt.task].worktree and not attempt.prepared:
            try:
                await self._prepare(active, attempt)  # every call is scoped to the worktree's folder
            except OccoordError as exc:
                delay = REATTACH_BACKOFF.delay(tries + 1)
                log.warning(
                    "%s: cannot find the worktree yet (again in %.1f s): %s", attempt.label, delay, exc
                )
                self.scheduler.spawn_at(
                    self.clock.monotonic() + delay,
                    lambda: self.reattach(active, record, attempt, tries + 1),
                )
                return
        if record.session_id is None:
            # Crashed between pending and recording the session: look it up by its title first.
            await self.start(active, attempt, find_existing=True)
            return
        try:
            client = self.pool.client(attempt.server)
            session = await client.get_session(record.session_id, attempt.directory)
        except OccoordError as exc:
            if isinstance(exc, ApiError) and exc.not_found:
                session = None
            else:
                delay = REATTACH_BACKOFF.delay(tries + 1)
                log.warning("%s: cannot re-attach yet (again in %.1f s): %s", attempt.label, delay, exc)
                # Waiting on the server is not the turn's fault.
                attempt.last_activity = self.clock.monotonic()
                self.scheduler.spawn_at(
                    self.clock.monotonic() + delay,
                    lambda: self.reattach(active, record, attempt, tries + 1),
                )
                return
        if session is None:
            self.settler.session_gone(attempt)
            return
        log.info("%s: re-attaching to session %s", attempt.label, record.session_id)
        await self.start(active, attempt, find_existing=False)


def _count(counted: object, server: str) -> dict[str, int]:
    out = {str(k): v for k, v in counted.items() if isinstance(v, int)} if isinstance(counted, dict) else {}
    out[server] = out.get(server, 0) + 1
    return out
