"""Requeueing finished tasks (``occoord retry``, ``mv T.failed T.queued``).

A task that failed only because a dependency failed is requeued with that dependency, so retrying
a failed task re-runs everything downstream of it, and nothing else.
"""

from __future__ import annotations

from occoord.errors import TransitionConflict
from occoord.spool.layout import Run
from occoord.spool.states import Actor, TaskState

__all__ = ["blocked_reason", "requeue", "requeue_dependents"]


def blocked_reason(dep: str) -> str:
    return f"dependency {dep} failed"


def requeue_dependents(run: Run, task: str, actor: Actor = Actor.OUTSIDE) -> list[str]:
    """Requeue, transitively, the tasks that failed because ``task`` failed."""
    children: dict[str, list[str]] = {}
    for spec in run.manifest.tasks:
        for dep in spec.depends_on:
            children.setdefault(dep, []).append(spec.id)
    moved: list[str] = []
    stack = [task]
    while stack:
        parent = stack.pop()
        for child in children.get(parent, []):
            record = run.tasks.read(child)
            if record and record.state is TaskState.FAILED and record.reason == blocked_reason(parent):
                try:
                    run.tasks.transition(
                        child,
                        TaskState.FAILED,
                        TaskState.QUEUED,
                        actor=actor,
                        reason=f"requeued with {parent}",
                    )
                except TransitionConflict:
                    continue
                moved.append(child)
                stack.append(child)
    return moved


def requeue(run: Run, task: str | None = None) -> list[str]:
    """Requeue one task (done or failed) with its blocked dependents, or every failed task."""
    if task is not None:
        run.signal(task, TaskState.QUEUED, "requeued by occoord retry")
        return [task, *requeue_dependents(run, task)]
    moved = []
    for spec in run.manifest.tasks:
        run.tasks.reconcile([spec.id])
        if run.tasks.current(spec.id) is TaskState.FAILED:
            try:
                run.tasks.transition(
                    spec.id,
                    TaskState.FAILED,
                    TaskState.QUEUED,
                    actor=Actor.OUTSIDE,
                    reason="requeued by occoord retry",
                )
            except TransitionConflict:
                continue
            moved.append(spec.id)
    return moved
