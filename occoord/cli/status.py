"""Printing ``occoord status``: the spool's runs, or one run's tasks, as text or JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from occoord.errors import OccoordError
from occoord.spool.layout import Spool
from occoord.spool.status import run_summary, task_rows, watcher_report

__all__ = ["print_status"]


def print_status(spool: Spool, run_id: str | None, as_json: bool) -> None:
    if run_id is None:
        summaries: list[dict[str, Any]] = []
        unreadable: list[dict[str, str]] = []
        for found in spool.run_ids():
            try:
                summaries.append(run_summary(spool.run(found)))
            except (OccoordError, OSError) as exc:  # one broken run must not hide the others
                unreadable.append({"run": found, "error": str(exc)})
        incoming = [p.name for p in spool.incoming_files()]
        watcher = watcher_report(spool)
        if as_json:
            listing = {"runs": summaries, "unreadable": unreadable, "incoming": incoming, "watcher": watcher}
            click.echo(json.dumps(listing, indent=1))
            return
        _print_watcher(watcher)
        if not summaries and not unreadable:
            click.echo("no runs")
        for u in unreadable:
            click.echo(f"{u['run']}  unreadable: {u['error']}")
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


def _print_watcher(watcher: dict[str, Any] | None) -> None:
    if watcher is None:
        return
    if not watcher.get("running"):
        click.echo(f"watcher: not running (last pid {watcher.get('pid')})")
        return
    click.echo(f"watcher: pid {watcher.get('pid')} since {watcher.get('started_at')}")
    for problem in watcher.get("problems", []):
        click.echo(f"  problem since {problem.get('since')}: {problem.get('what')}")
