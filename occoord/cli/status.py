"""Printing ``occoord status``: the spool's runs, or one run's tasks, as text or JSON."""

from __future__ import annotations

import json

import click

from occoord.spool.layout import Spool
from occoord.spool.status import run_summary, task_rows

__all__ = ["print_status"]


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
    rows = task_rows(run)
    if as_json:
        click.echo(json.dumps({**summary, "task_states": rows}, indent=1))
        return
    click.echo(f"{run.id} ({'finished' if summary['finished'] else 'active'})")
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        reason = f"  {r['reason']}" if r["reason"] else ""
        click.echo(f"  {r['task']:{width}}  {r['state'] or '?':8}  attempt {r['attempt']}{reason}")
