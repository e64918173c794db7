"""Bringing one task back to exactly one consistent state file after crashes and outside writers.

Rules (docs/PROTOCOL.md, "Reconciliation"), applied under the run lock:

- no visible file but a claim: a transition was interrupted by a crash; roll it forward;
- no visible file and no claim: the file was deleted; recreate it in the journal's last state;
- one file whose content names another state: an outside rename; accepted if the table allows an
  outside writer to make it, otherwise renamed back;
- one file with unreadable content: the name wins; the record is rebuilt;
- several files: a terminal state an outside writer may reach wins over a non-terminal one (a
  ``touch T.done`` beside ``T.pending`` means done); otherwise the genuine record wins; the
  others are removed. Every repair is journalled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

from occoord.fsutil import atomic_write, fsync_dir
from occoord.spool.echoes import ECHOES
from occoord.spool.journal import iso, last_states
from occoord.spool.names import format_claim
from occoord.spool.records import TaskRecord
from occoord.spool.states import TRANSITIONS, Actor, TaskState

__all__ = ["TaskFiles", "resolve_task"]


class TaskFiles(Protocol):
    """What reconciling needs of a run's task files (``tasks.RunTasks`` is the one implementation)."""

    dir: Path
    run_dir: Path
    durable: bool
    clock: Callable[[], datetime]

    def path(self, task: str, state: TaskState) -> Path: ...
    def create(self, task: str, record: TaskRecord) -> None: ...
    def probe(self, task: str) -> tuple[list[TaskState], list[TaskState]]: ...
    def publish(self, claim: Path, task: str, record: TaskRecord) -> None: ...
    def repair_event(
        self,
        task: str,
        source: str | None,
        target: str | None,
        reason: str,
        actor: Actor = ...,
        attempt: int | None = ...,
        kind: str = ...,
    ) -> None: ...


_ORDER = (TaskState.DONE, TaskState.FAILED, TaskState.PENDING, TaskState.QUEUED)


def _outside_may(source: TaskState, target: TaskState) -> bool:
    return Actor.OUTSIDE in TRANSITIONS.get((source, target), frozenset())


def resolve_task(rt: TaskFiles, task: str, visible: list[TaskState], claims: list[TaskState]) -> list[str]:
    for _ in range(5):
        try:
            return _resolve(rt, task, visible, claims)
        except FileNotFoundError:
            # An outside writer moved a file while we looked: look again.
            visible, claims = rt.probe(task)
    return [f"task {task}: still changing under reconciliation; will retry"]


def _read(rt: TaskFiles, task: str, state: TaskState) -> TaskRecord | None:
    return TaskRecord.from_bytes(rt.path(task, state).read_bytes())


def _resolve(rt: TaskFiles, task: str, visible: list[TaskState], claims: list[TaskState]) -> list[str]:
    now = iso(rt.clock())
    if not visible:
        if claims:
            return [_roll_forward(rt, task, sorted(claims, key=_ORDER.index))]
        state = TaskState(last_states(rt.run_dir).get(task, TaskState.QUEUED.value))
        record = TaskRecord(task, state, since=now, reason="state file was missing; recreated")
        rt.create(task, record)
        msg = f"state file missing; recreated as {state}"
        rt.repair_event(task, None, state.value, msg)
        return [f"task {task}: {msg}"]

    repairs: list[str] = []
    for target in claims:
        # A visible file exists, so the claim is left over from a transition that published.
        _unlink(rt.dir / format_claim(task, target))
        repairs.append(f"task {task}: removed a stale claim")

    contents = {s: _read(rt, task, s) for s in visible}
    genuine = [s for s in _sorted(visible) if (c := contents[s]) and c.state is s and c.task == task]
    base_state = genuine[0] if genuine else None
    base: TaskRecord | None = contents[base_state] if base_state else None
    if base is None:
        base = next((c for c in contents.values() if c is not None and c.task == task), None)

    if len(visible) == 1:
        name = visible[0]
        if base is None:
            record = TaskRecord(
                task,
                name,
                since=now,
                actor=Actor.OUTSIDE.value,
                reason="record rebuilt: its content was unreadable",
            )
            _rewrite(rt, task, name, record)
            rt.repair_event(task, None, name.value, record.reason)
            return [*repairs, f"task {task}: {record.reason}"]
        if base.state is name:
            return repairs
        return [*repairs, _outside_rename(rt, task, base, name, now)]

    # Several visible files: pick the winner, remove the rest.
    source = base.state if base is not None else None
    winner: TaskState
    terminals = [s for s in _sorted(visible) if s.terminal]
    if source is not None and not source.terminal and any(_outside_may(source, t) for t in terminals):
        legal = [t for t in terminals if _outside_may(source, t)]
        winner = next((t for t in legal if t in genuine), legal[0])
    elif base_state is not None:
        winner = base_state
    else:
        winner = _sorted(visible)[0]
    for loser in visible:
        if loser is not winner:
            _unlink(rt.path(task, loser))
            msg = f"removed {task}.{loser}: {task}.{winner} beside it wins"
            rt.repair_event(task, None, None, msg)
            repairs.append(f"task {task}: {msg}")
    if winner in genuine:
        return repairs
    if base is None:
        record = TaskRecord(
            task,
            winner,
            since=now,
            actor=Actor.OUTSIDE.value,
            reason="record rebuilt: its content was unreadable",
        )
        _rewrite(rt, task, winner, record)
        rt.repair_event(task, None, winner.value, record.reason)
        return [*repairs, f"task {task}: {record.reason}"]
    return [*repairs, _outside_rename(rt, task, base, winner, now)]


def _outside_rename(rt: TaskFiles, task: str, base: TaskRecord, name: TaskState, now: str) -> str:
    """The file is named ``name`` but its record says ``base.state``: an outside writer moved it."""
    if _outside_may(base.state, name):
        reason = "signalled by an outside writer"
        record = replace(base, state=name, since=now, actor=Actor.OUTSIDE.value, reason=reason)
        _rewrite(rt, task, name, record)
        rt.repair_event(
            task,
            base.state.value,
            name.value,
            reason,
            Actor.OUTSIDE,
            record.attempt,
            kind="transition",
        )
        return f"task {task}: {base.state} -> {name} by an outside writer"
    # Not a move outsiders may make (e.g. done -> pending): put it back.
    os.rename(rt.path(task, name), rt.path(task, base.state))
    msg = f"reverted an illegal outside rename {base.state} -> {name}"
    rt.repair_event(task, name.value, base.state.value, msg)
    return f"task {task}: {msg}"


def _roll_forward(rt: TaskFiles, task: str, targets: list[TaskState]) -> str:
    target = targets[0]
    claim = rt.dir / format_claim(task, target)
    old = TaskRecord.from_bytes(claim.read_bytes()) or TaskRecord(task, target)
    for extra in targets[1:]:
        _unlink(rt.dir / format_claim(task, extra))
    source = old.state
    if source is not target:
        # Interrupted before the new record was written: nothing of the transition was done or
        # acknowledged (no journal line, no session for a dispatch), so it is undone. Rolling it
        # forward would invent a record: a dispatch with the previous attempt's number and session.
        os.rename(claim, rt.path(task, source))
        if rt.durable:
            fsync_dir(rt.dir)
        msg = f"undid a transition to {target} interrupted by a crash before its record was written"
        rt.repair_event(task, None, None, msg)
        return f"task {task}: {msg}"
    # The new record was written: only the publishing rename is missing.
    rt.publish(claim, task, old)
    msg = "completed a transition interrupted by a crash"
    return f"task {task}: {msg} (-> {target})"


def _rewrite(rt: TaskFiles, task: str, state: TaskState, record: TaskRecord) -> None:
    # In place (see RunTasks.update): the name never disappears under an outside writer. Its echo
    # is ours: the hint that brought us here is being handled (echoes.py).
    path = rt.path(task, state)
    echo = os.path.abspath(path)
    ECHOES.expect(None, echo)
    try:
        atomic_write(path, record.to_bytes(), durable=rt.durable)
    except BaseException:
        ECHOES.withdraw(None, echo)
        raise


def _sorted(states: list[TaskState]) -> list[TaskState]:
    return sorted(states, key=_ORDER.index)


def _unlink(path: os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
