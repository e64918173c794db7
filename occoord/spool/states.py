"""Task states and the transition table.

A task's state *is* the suffix of its one state file in ``runs/<run>/tasks/``, so the enum values
are stored verbatim on disk and must never change within a protocol version.
"""

from __future__ import annotations

from enum import StrEnum

from occoord.errors import IllegalTransition

__all__ = ["TRANSITIONS", "Actor", "TaskState", "allowed_targets", "check_transition"]


class TaskState(StrEnum):
    #: waiting for a slot, for its dependencies, or for a retry's backoff to pass
    QUEUED = "queued"
    #: dispatched to an OpenCode session; waiting for its outcome (signal file or end of turn)
    PENDING = "pending"
    #: finished successfully (terminal)
    DONE = "done"
    #: finished unsuccessfully, cancelled, or blocked by a failed dependency (terminal)
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.DONE, TaskState.FAILED)


class Actor(StrEnum):
    """Who is making a transition: the coordinator, or anyone else (a script, an agent, ``mv``)."""

    COORDINATOR = "coordinator"
    OUTSIDE = "outside"


_C, _O = Actor.COORDINATOR, Actor.OUTSIDE
Q, P, D, F = TaskState.QUEUED, TaskState.PENDING, TaskState.DONE, TaskState.FAILED

#: (from, to) -> who may make it. Outside writers signal outcomes, skip or fail queued tasks and
#: requeue finished ones; only the coordinator dispatches (queued -> pending) and puts a pending task
#: back in the queue (a retry, or a crashed attempt it cannot re-attach).
TRANSITIONS: dict[tuple[TaskState, TaskState], frozenset[Actor]] = {
    (Q, P): frozenset({_C}),
    (Q, D): frozenset({_C, _O}),
    (Q, F): frozenset({_C, _O}),
    (P, D): frozenset({_C, _O}),
    (P, F): frozenset({_C, _O}),
    (P, Q): frozenset({_C}),
    (D, Q): frozenset({_C, _O}),
    (F, Q): frozenset({_C, _O}),
}


def allowed_targets(source: TaskState, actor: Actor) -> frozenset[TaskState]:
    """The states ``actor`` may move a task to from ``source``."""
    return frozenset(t for (s, t), who in TRANSITIONS.items() if s is source and actor in who)


def check_transition(task: str, source: TaskState, target: TaskState, actor: Actor) -> None:
    """Raise :class:`IllegalTransition` unless ``actor`` may move ``task`` from ``source`` to ``target``."""
    who = TRANSITIONS.get((source, target))
    if who is None:
        if source is target:
            reason = "the task is already in that state"
        elif source.terminal:
            reason = f"a {source} task can only be requeued"
        else:
            allowed = ", ".join(sorted(allowed_targets(source, Actor.COORDINATOR))) or "nothing"
            reason = f"from {source} a task can go to {allowed}"
        raise IllegalTransition(task, source, target, reason)
    if actor not in who:
        if (source, target) == (TaskState.PENDING, TaskState.QUEUED):
            # Its session may still be running: requeueing it from outside would start a second
            # agent beside the first.
            reason = "its session may still run; signal it failed (or cancel it), then requeue it"
        else:
            reason = "only the coordinator may do this"
        raise IllegalTransition(task, source, target, reason)
