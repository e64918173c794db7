"""Reading a spool's state for people and scripts (``occoord status``), from the files alone."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import click

from occoord.spool import Run, Spool
from occoord.state import TaskState

__all__ = ["print_status", "run_summary"]


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


def _task_rows(run: Run) -> list[dict[str, Any]]:
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


def print_status(spool: Spool, run_id: str | None, as_json: bool) -> None:
    if run_id is None:
        summaries = [run_summary(spool.run(r)) for r in spool.run_ids()]
        incoming = [p.name for p in spool.incoming_files()]
        if as_json:
            click.echo(json.dumps({"runs": summaries, "incoming": incoming}, indent=1))
            return
        if not summaries:
            click.echo("no runs")
        for s in summaries:
            c = s["counts"]
            flag = "finished" if s["finished"] else "active"
            click.echo(
                f"{s['run']}  {flag:8}  {s['tasks']:4} tasks  queued {c['queued']}  "
                f"pending {c['pending']}  done {c['done']}  failed {c['failed']}"
            )
        for name in incoming:
            click.echo(f"incoming: {name}")
        return
    run = spool.run(run_id)
    summary = run_summary(run)
    rows = _task_rows(run)
    if as_json:
        click.echo(json.dumps({**summary, "task_states": rows}, indent=1))
        return
    click.echo(f"{run.id} ({'finished' if summary['finished'] else 'active'})")
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        reason = f"  {r['reason']}" if r["reason"] else ""
        click.echo(f"  {r['task']:{width}}  {r['state'] or '?':8}  attempt {r['attempt']}{reason}")
