"""A run's state for people and scripts, read from the files alone (no coordinator needed)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from occoord.spool.layout import Run
from occoord.spool.states import TaskState

__all__ = ["run_summary", "task_rows"]


def run_summary(run: Run) -> dict[str, Any]:
    states = run.tasks.states()
    counts = Counter(states.get(t.id, TaskState.QUEUED).value for t in run.manifest.tasks)
    finished = all(states.get(t.id, TaskState.QUEUED).terminal for t in run.manifest.tasks)
    return {
        "run": run.id,
        "name": run.manifest.name,
        "accepted_at": run.accepted_at,
        "finished": finished,
        "tasks": len(run.manifest.tasks),
        "counts": {s.value: counts.get(s.value, 0) for s in TaskState},
    }


def task_rows(run: Run) -> list[dict[str, Any]]:
    rows = []
    for task_id, record in run.records().items():
        rows.append(
            {
                "task": task_id,
                "state": record.state.value if record else None,
                "attempt": record.attempt if record else 0,
                "since": record.since if record else "",
                "session_id": record.session_id if record else None,
                "reason": record.reason if record else "no state file",
            }
        )
    return rows
