"""Steering runs that exist: ``cancel``, ``retry`` and ``clean``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from occoord.cli.common import open_spool, spool_option
from occoord.errors import SpoolError, TransitionConflict
from occoord.spool.states import Actor, TaskState
from occoord.workspace.clean import clean_runs
from occoord.workspace.names import default_root

__all__ = ["cancel", "clean", "retry"]


@click.command()
@spool_option
@click.argument("run_id")
@click.argument("task", required=False)
def cancel(spool_dir: Path, run_id: str, task: str | None) -> None:
    """Cancel a run (or one TASK): abort its sessions and fail the unfinished tasks as cancelled.

    Works by dropping SPOOL/runs/RUN/cancel (or cancel.TASK), which anyone may `touch`. With no
    coordinator running, queued and pending tasks are failed right away.
    """
    from occoord.engine.service import SpoolLock
    from occoord.spool.bulk import fail_queued_batch
    from occoord.spool.cancel import request_cancel
    from occoord.spool.tasks import RunTasks

    spool = open_spool(spool_dir, create=False)
    # The task ids alone: building a 10,000-task plan to drop a request file took 0.2 s.
    ids = spool.task_ids(run_id)
    if task is not None and task not in ids:
        raise click.BadParameter(f"run {run_id} has no task {task!r}", param_hint="TASK")
    run_dir = spool.runs / run_id
    states = RunTasks(run_dir, ids, durable=spool.durable).states()
    wanted = [task] if task else ids
    if all(states.get(name, TaskState.QUEUED).terminal for name in wanted):
        # Nothing to cancel; a request file would only linger and strike after a later requeue.
        what = f"task {task} is {states.get(task or '')}" if task else "the run is finished"
        raise SpoolError(str(run_dir), f"nothing to cancel: {what}")
    lock = SpoolLock(spool)
    if not lock.try_acquire():
        path = request_cancel(run_dir, task)
        click.echo(f"cancel requested: {path}")
        return
    try:
        the_run = spool.run(run_id)
        reason = "cancelled (no coordinator was running)"
        pending = []
        for name in wanted:
            the_run.tasks.reconcile([name])
            if the_run.tasks.current(name) is TaskState.PENDING:
                pending.append(name)
        queued = [n for n in wanted if n not in set(pending)]
        failed = {r.task for r in fail_queued_batch(the_run.tasks, queued, reason, Actor.OUTSIDE)}
        for name in pending:
            try:
                the_run.tasks.transition(
                    name, TaskState.PENDING, TaskState.FAILED, actor=Actor.OUTSIDE, reason=reason
                )
            except TransitionConflict:
                continue
            failed.add(name)
        for name in wanted:
            if name in failed:
                click.echo(f"{run_id}/{name}: failed (cancelled)")
    finally:
        lock.release()


@click.command()
@spool_option
@click.argument("run_id")
@click.argument("task", required=False)
def retry(spool_dir: Path, run_id: str, task: str | None) -> None:
    """Run failed tasks again: TASK (done or failed) with its blocked dependents, or every failed task.

    The same as `mv SPOOL/runs/RUN/tasks/TASK.failed SPOOL/runs/RUN/tasks/TASK.queued`.
    """
    from occoord.spool.requeue import requeue

    spool = open_spool(spool_dir, create=False)
    moved = requeue(spool.run(run_id), task)
    for name in moved:
        click.echo(f"{run_id}/{name}: queued")
    if not moved:
        click.echo(f"{run_id}: nothing to retry", err=True)


@click.command()
@spool_option
@click.argument("run_id", required=False)
@click.option("--branches", is_flag=True, help="Delete the runs' branches (occoord/RUN/...) too.")
@click.option("--force", is_flag=True, help="Remove worktrees with uncommitted changes too.")
@click.option(
    "--worktree-root",
    envvar="OCCOORD_WORKTREE_ROOT",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The worktree root the runs used (env OCCOORD_WORKTREE_ROOT; default under $XDG_DATA_HOME).",
)
def clean(
    spool_dir: Path, run_id: str | None, branches: bool, force: bool, worktree_root: Path | None
) -> None:
    """Remove the git worktrees of finished runs (every finished run, or RUN) and prune git's list.

    Branches stay (they are the results) unless --branches. A worktree with uncommitted changes is
    refused, and named, unless --force; everything else is cleaned, and the exit code is 1.
    """
    spool = open_spool(spool_dir, create=False)
    run_ids = [run_id] if run_id else spool.run_ids()
    finished, repos = [], set()
    for found in run_ids:
        the_run = spool.run(found)
        if not (the_run.dir / "summary.json").exists():
            if run_id:
                raise SpoolError(str(the_run.dir), "the run is not finished: cancel it first")
            continue
        finished.append(found)
        repos |= {Path(t.directory) for t in the_run.manifest.tasks if t.worktree and t.directory}
    report = clean_runs(
        finished, root=worktree_root or default_root(), repos=sorted(repos), branches=branches, force=force
    )
    for path in report.removed:
        click.echo(f"removed {path}")
    for branch in report.branches_deleted:
        click.echo(f"deleted branch {branch}")
    for refusal in report.refused:
        click.echo(f"kept {refusal.path}: {refusal.reason}", err=True)
    if not report.removed and not report.branches_deleted and not report.refused:
        click.echo("nothing to clean", err=True)
    if report.refused:
        sys.exit(1)
