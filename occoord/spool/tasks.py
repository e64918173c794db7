"""Task state files: one ``<task>.<state>`` file per task, changed only by :func:`RunTasks.transition`.

How a transition works (all under the run lock, ``runs/<run>/.lock``, shared with ``flock(1)``):

1. **claim**: ``rename(T.<from>, .T.<to>.claim)``. A rename away from the current name is the
   compare-and-swap: of two racers exactly one succeeds; the loser gets ENOENT.
2. **write**: the new JSON record goes to a hidden temp file, is fsynced and replaces the claim.
3. **publish**: ``rename(.T.<to>.claim, T.<to>)`` (replacing a stray ``T.<to>`` someone touched).
4. **journal**: one line appended to ``events.jsonl``.

A crash leaves at most a claim file, which :meth:`RunTasks.reconcile` rolls forward. Our own
writes never leave a visible file whose content disagrees with its name, so such a file means an
outside writer renamed it; reconcile accepts that if the table allows it and reverts it otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from occoord.errors import SpoolError, TransitionConflict
from occoord.fsutil import atomic_write, fsync_dir
from occoord.spool.echoes import ECHOES
from occoord.spool.journal import Event, append_event, iso
from occoord.spool.reconcile import resolve_task
from occoord.spool.records import TaskRecord
from occoord.spool.locking import DirLock
from occoord.spool.names import format_claim, format_state, parse_claim, parse_state
from occoord.spool.states import TRANSITIONS, Actor, TaskState, check_transition

__all__ = ["LOCK_FILE", "TASKS_DIR", "RunTasks"]

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
TASKS_DIR = "tasks"
_PRECEDENCE = (TaskState.DONE, TaskState.FAILED, TaskState.PENDING, TaskState.QUEUED)


class RunTasks:
    """The task state files of one run directory."""

    def __init__(
        self,
        run_dir: Path,
        task_ids: Iterable[str],
        *,
        durable: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lock_timeout: float | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.dir = run_dir / TASKS_DIR
        self._abs = os.path.abspath(self.dir)  # how the watcher names our renames (echoes.py)
        self.task_ids = tuple(task_ids)
        self.durable = durable
        self.clock = clock
        # Thread-local reentrancy lets reconcile() call helpers that lock again.
        self.lock = DirLock(run_dir / LOCK_FILE, lock_timeout)

    # -- reading ---------------------------------------------------------------------------

    def path(self, task: str, state: TaskState) -> Path:
        return self.dir / format_state(task, state)

    def current(self, task: str) -> TaskState | None:
        """The task's state by its visible file (highest precedence if a stray sits beside it)."""
        for state in _PRECEDENCE:
            if self.path(task, state).exists():
                return state
        return None

    def read(self, task: str) -> TaskRecord | None:
        """The record of the task's current state file (content state fixed to the name)."""
        for _ in range(3):  # a concurrent rename may move the file between stat and open
            state = self.current(task)
            if state is None:
                return None
            try:
                data = self.path(task, state).read_bytes()
            except FileNotFoundError:
                continue
            record = TaskRecord.from_bytes(data) or TaskRecord(task, state)
            return record if record.state is state else replace(record, state=state)
        return None

    def states(self) -> dict[str, TaskState]:
        """Every task's visible state from one directory listing (missing tasks are absent)."""
        found: dict[str, TaskState] = {}
        for name in os.listdir(self.dir):
            parsed = parse_state(name)
            if parsed is None:
                continue
            old = found.get(parsed.task)
            if old is None or _PRECEDENCE.index(parsed.state) < _PRECEDENCE.index(old):
                found[parsed.task] = parsed.state
        return found

    # -- changing --------------------------------------------------------------------------

    def create(self, task: str, record: TaskRecord) -> None:
        """Write a new task's first state file (used when a run is built, before it is visible)."""
        atomic_write(self.path(task, record.state), record.to_bytes(), durable=self.durable, sync_dir=False)

    def transition(
        self,
        task: str,
        source: TaskState,
        target: TaskState,
        *,
        actor: Actor = Actor.COORDINATOR,
        reason: str = "",
        **changes: Any,
    ) -> TaskRecord:
        """Move ``task`` from ``source`` to ``target``: the only way a state changes.

        Raises IllegalTransition if the table forbids it and TransitionConflict if the task is no
        longer in ``source`` (someone else moved it first). ``changes`` update record fields
        (attempt, session_id, not_before, details).
        """
        check_transition(task, source, target, actor)
        with self.lock:
            record = self._move(task, source, target, actor=actor, reason=reason, changes=changes)
            self._journal(
                Event(
                    iso(self.clock()),
                    "transition",
                    task,
                    source.value,
                    target.value,
                    actor.value,
                    record.attempt,
                    reason,
                )
            )
        log.info(
            "%s/%s: %s -> %s%s", self.run_dir.name, task, source, target, f" ({reason})" if reason else ""
        )
        return record

    def update(
        self, task: str, state: TaskState, *, durable: bool | None = None, **changes: Any
    ) -> TaskRecord:
        """Change a record's fields without changing its state (e.g. record the session id).

        The file is replaced in place, never renamed away: an outside ``mv T.pending T.done`` racing
        with it must not fail (ENOENT would tell that writer it lost). If the outside rename wins,
        the replaced file reappears beside the new one and reconciliation lets the terminal state win.
        """
        with self.lock:
            path = self.path(task, state)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise TransitionConflict(task, state.value, _value(self.current(task))) from None
            old = TaskRecord.from_bytes(data) or TaskRecord(task, state)
            record = replace(old, state=state, **changes)
            write_durably = self.durable if durable is None else durable and self.durable
            echo = f"{self._abs}/{path.name}"
            ECHOES.expect(None, echo)  # the temp file's name gives no hint
            try:
                atomic_write(path, record.to_bytes(), durable=write_durably, sync_dir=write_durably)
            except BaseException:
                ECHOES.withdraw(None, echo)
                raise
            return record

    def _move(
        self,
        task: str,
        source: TaskState,
        target: TaskState,
        *,
        actor: Actor | None,
        reason: str | None,
        changes: Mapping[str, Any],
    ) -> TaskRecord:
        claim = self.dir / format_claim(task, target)
        echo = f"{self._abs}/{format_state(task, source)}"
        ECHOES.expect(echo, None)  # the claim's own name gives no hint
        try:
            os.rename(self.path(task, source), claim)
        except FileNotFoundError:
            ECHOES.withdraw(echo, None)
            raise TransitionConflict(task, source.value, _value(self.current(task))) from None
        old = TaskRecord.from_bytes(claim.read_bytes()) or TaskRecord(task, source)
        fields: dict[str, Any] = dict(changes)
        if source is not target:
            fields.setdefault("since", iso(self.clock()))
        if actor is not None:
            fields["actor"] = actor.value
        if reason is not None:
            fields["reason"] = reason
        record = replace(old, state=target, **fields)
        self.publish(claim, task, record)
        return record

    def publish(self, claim: Path, task: str, record: TaskRecord) -> None:
        atomic_write(claim, record.to_bytes(), durable=self.durable, sync_dir=False)
        echo = f"{self._abs}/{format_state(task, record.state)}"
        ECHOES.expect(None, echo)
        try:
            os.rename(claim, self.path(task, record.state))
        except BaseException:
            ECHOES.withdraw(None, echo)
            raise
        if self.durable:
            fsync_dir(self.dir)

    def _journal(self, event: Event) -> None:
        # Not fsynced: the state files are the truth and are fsynced; a line lost with the power
        # is written again by _catch_up_journal when the run is next loaded ("journalled after a
        # crash"). A kill -9 loses nothing either way (the page cache survives the process).
        append_event(self.run_dir, event, durable=False)

    # -- reconciling -----------------------------------------------------------------------

    def reconcile(self, tasks: Iterable[str] | None = None) -> list[str]:
        """Repair the named tasks (all if None) so each has exactly one consistent state file.

        Returns a description of every repair made; each is also journalled.
        """
        repairs: list[str] = []
        if tasks is not None:
            # Fast path, without the lock: a task showing exactly one consistent state file and no
            # claim needs nothing (the common case: a hint for our own transition). Reading takes no
            # lock; any writer still at work holds it and its publish sends a hint of its own.
            suspect = [t for t in tasks if not self._looks_consistent(t)]
            if not suspect:
                return repairs
            with self.lock:
                for task in suspect:
                    seen, claimed = self.probe(task)
                    if len(seen) != 1 or claimed or not self._consistent(task, seen[0]):
                        repairs += self._reconcile_one(task, seen, claimed)
            return repairs
        with self.lock:
            names = os.listdir(self.dir)
            visible: dict[str, list[TaskState]] = {}
            claims: dict[str, list[TaskState]] = {}
            for name in names:
                if (parsed := parse_state(name)) is not None:
                    visible.setdefault(parsed.task, []).append(parsed.state)
                elif (claim := parse_claim(name)) is not None:
                    claims.setdefault(claim.task, []).append(claim.target)
                elif name.startswith(".") and name.endswith(".tmp"):
                    # Every writer of tasks/ holds the lock we hold now: any temp file is a crash leftover.
                    _unlink(self.dir / name)
            for task in self.task_ids:
                repairs += self._reconcile_one(task, visible.get(task, []), claims.get(task, []))
            repairs += self._catch_up_journal()
        return repairs

    def _catch_up_journal(self) -> list[str]:
        """Journal the state of tasks whose last event disagrees with their file (crash after publish)."""
        from occoord.spool.journal import last_states, repair_tail

        repairs = ["journal: ended a torn last line"] if repair_tail(self.run_dir) else []
        journal = last_states(self.run_dir)
        for task, state in self.states().items():
            if journal.get(task) != state.value:
                record = self.read(task)
                self.repair_event(
                    task,
                    journal.get(task),
                    state.value,
                    "journalled after a crash",
                    attempt=record.attempt if record else None,
                    kind="transition",
                )
                repairs.append(f"task {task}: journal caught up to {state}")
        return repairs

    def probe(self, task: str) -> tuple[list[TaskState], list[TaskState]]:
        """The task's visible state files and claims, by stat (cheaper than listing 10,000 files)."""
        visible = [s for s in TaskState if os.path.lexists(self.path(task, s))]
        claims = [s for s in TaskState if os.path.lexists(self.dir / format_claim(task, s))]
        return visible, claims

    def _looks_consistent(self, task: str) -> bool:
        seen, claimed = self.probe(task)
        return len(seen) == 1 and not claimed and self._consistent(task, seen[0])

    def _consistent(self, task: str, state: TaskState) -> bool:
        try:
            record = TaskRecord.from_bytes(self.path(task, state).read_bytes())
        except FileNotFoundError:
            return False
        return record is not None and record.state is state and record.task == task

    def _reconcile_one(self, task: str, visible: list[TaskState], claims: list[TaskState]) -> list[str]:
        return resolve_task(self, task, visible, claims)

    def repair_event(
        self,
        task: str,
        source: str | None,
        target: str | None,
        reason: str,
        actor: Actor = Actor.COORDINATOR,
        attempt: int | None = None,
        kind: str = "repair",
    ) -> None:
        self._journal(Event(iso(self.clock()), kind, task, source, target, actor.value, attempt, reason))
        # An outside writer's move (usually the agent signalling its own outcome) is the normal
        # path; a real repair is worth a warning.
        level = logging.INFO if kind == "transition" else logging.WARNING
        log.log(level, "%s/%s: %s", self.run_dir.name, task, reason)


def _value(state: TaskState | None) -> str | None:
    return state.value if state is not None else None


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def outside_may(source: TaskState, target: TaskState) -> bool:
    return Actor.OUTSIDE in TRANSITIONS.get((source, target), frozenset())


def ensure_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolError(str(path), f"cannot create directory: {exc.strerror}") from exc
