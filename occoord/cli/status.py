"""``occoord status`` (the spool's runs, or one run's tasks, as text or JSON), ``hold`` and ``resume``.

Status reads the files alone: it needs no watcher and no server, and writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from occoord.cli.common import format_elapsed, open_spool, server_options, spool_option
from occoord.errors import OccoordError
from occoord.spool.journal import iso
from occoord.spool.layout import Run, Spool
from occoord.spool.status import (
    clear_hold,
    hold_info,
    incoming_waits,
    recent_rejections,
    resolve_run,
    run_summary,
    run_usage,
    server_rows,
    set_hold,
    task_rows,
    watcher_report,
)
from occoord.spool.summary import diff_text, sessions_per_server, usage_text

__all__ = ["hold", "print_status", "resume", "status"]


@click.command()
@spool_option
@click.argument("run_ref", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", "watching", is_flag=True, help="A live view: the same as `occoord top [RUN]`.")
@server_options
def status(
    spool_dir: Path,
    run_ref: str | None,
    as_json: bool,
    watching: bool,
    server: str | None,
    server_password: str | None,
) -> None:
    """Show runs (or one run's tasks), read from the spool's files alone.

    RUN is a run id, `latest` (the newest run), or a manifest's name (its newest run). The overview
    also shows the hold switch, files waiting in incoming/ and why, and the newest rejections with
    their first reason. --server only matters with --watch (see `occoord top`).
    """
    spool = open_spool(spool_dir, create=False)
    if watching:
        from occoord.cli.top import run_top

        run_top(spool, run_ref, server, server_password)
        return
    print_status(spool, resolve_run(spool, run_ref) if run_ref else None, as_json)


@click.command()
@spool_option
@click.option("--message", "-m", default="", help="Why (kept in SPOOL/hold, shown by `occoord status`).")
def hold(spool_dir: Path, message: str) -> None:
    """Stop new dispatches across the spool: running tasks go on, queued ones wait.

    The same as `touch SPOOL/hold`. `occoord resume` (or `rm SPOOL/hold`) lets them start again.
    """
    spool = open_spool(spool_dir, create=False)
    note = message or f"held by occoord hold at {iso(spool.clock())}"
    path = set_hold(spool, note)
    click.echo(f"hold: no new dispatches until `occoord resume` ({path})")


@click.command()
@spool_option
def resume(spool_dir: Path) -> None:
    """Lift the hold (remove SPOOL/hold): queued tasks are dispatched again."""
    spool = open_spool(spool_dir, create=False)
    if clear_hold(spool):
        click.echo("resumed: dispatching again")
    else:
        click.echo("not on hold", err=True)


def print_status(spool: Spool, run_id: str | None, as_json: bool) -> None:
    if run_id is None:
        _print_overview(spool, as_json)
        return
    run = spool.run(run_id)
    # Which servers ran it, and how many sessions each (every attempt; as in summary.json).
    summary = {**run_summary(run), "servers": sessions_per_server(run.records().values())}
    rows = task_rows(run)
    usage = run_usage(rows)
    held = hold_info(spool)
    if as_json:
        click.echo(json.dumps({**summary, "usage": usage, "hold": held, "task_states": rows}, indent=1))
        return
    total = f"  {usage_text(usage)}" if usage else ""
    click.echo(f"{run.id} ({'finished' if summary['finished'] else 'active'}){total}")
    servers = summary.get("servers") or {}
    if set(servers) - {"default"}:  # one server and no names: nothing to say
        click.echo("  servers: " + ", ".join(f"{name} {n} sessions" for name, n in servers.items()))
    width = max(len(r["task"]) for r in rows)
    for r in rows:
        click.echo(f"  {r['task']:{width}}  {r['state'] or '?':8}  attempt {r['attempt']}{_task_extra(r)}")
        if r["state"] in ("done", "failed") and r.get("worktree"):
            # Where its work is, to look at or finish by hand; `occoord clean` removes it.
            click.echo(f"  {'':{width}}  worktree kept: {r['worktree']} (branch {r.get('branch', '?')})")
    if held is not None and not summary["finished"]:
        click.echo(_hold_line(held))


def _task_extra(row: dict[str, Any]) -> str:
    extra = ""
    if row["elapsed_s"] is not None:
        extra += f"  {format_elapsed(row['elapsed_s'])}"
    if row["usage"]:
        extra += f"  {usage_text(row['usage'])}"
    if diff := diff_text(row):
        extra += f"  {diff}"
    if row.get("result_commit"):
        on = f" on {row['branch']}" if row.get("branch") else ""
        extra += f"  {row['result_commit'][:12]}{on}"
    if row["state"] == "pending" and row.get("server") and row["server"] != "default":
        extra += f"  on {row['server']}"
    if row["state"] == "queued" and row["not_before"]:
        extra += f"  not before {row['not_before']}"
    if row["reason"]:
        extra += f"  {row['reason']}"
    return extra


def _hold_line(held: dict[str, str]) -> str:
    note = f": {held['note']}" if held.get("note") else ""
    return f"hold: no new dispatches (SPOOL/hold since {held.get('since')}{note}); `occoord resume` lifts it"


def _print_overview(spool: Spool, as_json: bool) -> None:
    summaries: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    for found in spool.run_ids():
        try:
            summaries.append(run_summary(spool.run(found)))
        except (OccoordError, OSError) as exc:  # one broken run must not hide the others
            unreadable.append({"run": found, "error": str(exc)})
    watcher = watcher_report(spool)
    waits = incoming_waits(spool, watcher)
    rejected, rejected_total = recent_rejections(spool)
    held = hold_info(spool)
    servers = server_rows(spool, watcher)
    if as_json:
        listing = {
            "runs": summaries,
            "unreadable": unreadable,
            "incoming": [w["file"] for w in waits],
            "incoming_waits": waits,
            "rejected": rejected,
            "rejected_total": rejected_total,
            "hold": held,
            "watcher": watcher,
            "servers": servers,
        }
        click.echo(json.dumps(listing, indent=1))
        return
    _print_watcher(watcher)
    if (
        watcher
        and watcher.get("running")
        and (len(servers) > 1 or any(s.get("name") != "default" for s in servers))
    ):
        for line in _server_lines(servers):  # one server alone: as before pools, no table
            click.echo(line)
    if held is not None:
        click.echo(_hold_line(held))
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
    for wait in waits:
        click.echo(f"incoming: {wait['file']}: {wait['why']}")
    for r in rejected:
        click.echo(f"rejected: {r['entry']}: {r['reason']}")
    if rejected_total > len(rejected):
        click.echo(f"  ... {rejected_total - len(rejected)} older rejections in {spool.rejected}")


def _print_watcher(watcher: dict[str, Any] | None) -> None:
    if watcher is None:
        return
    if not watcher.get("running"):
        click.echo(f"watcher: not running (last pid {watcher.get('pid')})")
        return
    click.echo(f"watcher: pid {watcher.get('pid')} since {watcher.get('started_at')}")
    for problem in watcher.get("problems", []):
        click.echo(f"  problem since {problem.get('since')}: {problem.get('what')}")


def _server_lines(servers: list[dict[str, Any]]) -> list[str]:
    width = max(len(str(s.get("name"))) for s in servers)
    lines = []
    for s in servers:
        health = "draining" if s.get("draining") else "healthy" if s.get("healthy") else "down"
        room = f"{s['busy']}/{s['capacity'] if s.get('capacity') else '-'}"
        labels = f"  labels {','.join(s['labels'])}" if s.get("labels") else ""
        version = f"  OpenCode {s['version']}" if s.get("version") else ""
        lines.append(
            f"server {s.get('name')!s:{width}}  {health:8}  busy {room}  {s.get('url')}{version}{labels}"
        )
    return lines


def run_for(spool: Spool, ref: str) -> Run:
    """The run meant by ``ref`` (see :func:`occoord.spool.status.resolve_run`)."""
    return spool.run(resolve_run(spool, ref))
