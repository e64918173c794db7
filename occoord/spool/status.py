"""A run's state for people and scripts, read from the files alone (no coordinator needed)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from occoord.spool.layout import Run, Spool
from occoord.spool.states import TaskState

__all__ = ["run_summary", "task_rows", "watcher_report"]


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


def watcher_report(spool: Spool) -> dict[str, Any] | None:
    """``SPOOL/watcher.json`` (written by the watcher) plus whether its pid still runs; None if the
    spool never had a watcher or the file is unreadable."""
    try:
        doc = json.loads((spool.root / "watcher.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    running = False
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
    return {**doc, "running": running}
