"""The command line: ``occoord <verb> --spool DIR ...``. The only place logging is configured.

Exit codes: 0 success; 1 the job ran but did not succeed (or an operational error); 2 bad input
(an invalid manifest, an unknown run or task, an illegal signal).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from occoord import __version__
from occoord.cli.attach import attach
from occoord.cli.common import open_spool, spool_option
from occoord.cli.logs import logs
from occoord.cli.manage import cancel, clean, retry
from occoord.cli.running import run, simulate, watch
from occoord.cli.status import hold, resume, status
from occoord.cli.top import top
from occoord.errors import (
    ConfigError,
    IllegalTransition,
    ManifestError,
    NotFound,
    OccoordError,
    TransitionConflict,
)
from occoord.manifest.load import load_manifest
from occoord.spool import submit as submitting
from occoord.spool.accept import accept_file
from occoord.spool.states import TaskState

__all__ = ["cli", "main"]

_INPUT_ERRORS = (ManifestError, NotFound, IllegalTransition, TransitionConflict, ConfigError)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="occoord")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log output: -v debug lines, -vv also every HTTP request to the server.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Run many OpenCode agent tasks in parallel, with a spool directory as the interface.

    Drop a manifest into SPOOL/incoming/ (or `occoord submit`), and each task becomes an OpenCode
    session whose state is one file: SPOOL/runs/RUN/tasks/TASK.{queued,pending,done,failed}.
    """
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A watcher is a service: by default its log tells the story (a run accepted, each transition,
    # a run finished); the other commands say only what went wrong.
    base = logging.INFO if ctx.invoked_subcommand == "watch" else logging.WARNING
    logging.getLogger("occoord").setLevel(max(base - 10 * verbose, logging.DEBUG))
    # httpx logs every request at INFO: only at -vv.
    logging.getLogger("httpx").setLevel(logging.INFO if verbose >= 2 else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.DEBUG if verbose >= 3 else logging.WARNING)


@cli.command()
@spool_option
def init(spool_dir: Path) -> None:
    """Create a spool (incoming/, tmp/, runs/, rejected/), or check an existing one."""
    spool = open_spool(spool_dir)
    click.echo(f"spool ready: {spool.root}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when valid.")
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check manifests; exit 0 if all are valid, 2 with every problem otherwise."""
    bad = 0
    for path in files:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            bad += 1
            click.echo(str(exc), err=True)
            continue
        if not quiet:
            click.echo(
                f"{path}: valid: {manifest.name!r}, {len(manifest.tasks)} tasks, "
                f"concurrency {manifest.concurrency}"
            )
    if bad:
        sys.exit(2)


@cli.command()
def schema() -> None:
    """Print the manifest's JSON Schema (version 1)."""
    from occoord.manifest.schema import manifest_schema

    click.echo(json.dumps(manifest_schema(), indent=2))


@cli.command()
@spool_option
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def submit(spool_dir: Path, manifest: Path) -> None:
    """Validate MANIFEST and drop a copy into the spool atomically (tmp/, then rename)."""
    spool = open_spool(spool_dir)
    target = submitting.submit(spool, manifest)
    click.echo(str(target))


@cli.command()
@spool_option
@click.option(
    "--wait",
    "wait_settle",
    is_flag=True,
    help="Also accept files modified in the last seconds (default: leave them for later).",
)
def accept(spool_dir: Path, wait_settle: bool) -> None:
    """Accept (or reject) every complete manifest in incoming/ once; the watcher does this live."""
    spool = open_spool(spool_dir)
    for path in spool.incoming_files():
        settled = wait_settle or spool.is_settled(path)
        outcome = accept_file(spool, path, settled=settled)
        if outcome.kind == "accepted":
            click.echo(f"accepted {path.name} as run {outcome.run_id}")
        elif outcome.kind == "rejected":
            click.echo(f"rejected {path.name}: see {outcome.path}.error", err=True)
        elif outcome.kind == "not_ready":
            click.echo(f"left {path.name} for later: still being written?", err=True)


@cli.command()
@spool_option
@click.argument("run_id")
@click.argument("task")
@click.argument("state", type=click.Choice(["done", "failed", "queued"]))
@click.option("--message", "-m", default="", help="Why (kept in the task file and events.jsonl).")
def signal(spool_dir: Path, run_id: str, task: str, state: str, message: str) -> None:
    """Signal a task's outcome or requeue it: the same as `mv T.pending T.done`.

    STATE is done or failed for a task that is queued or pending, or queued for a finished (done
    or failed) task, which runs again. A pending task cannot be requeued directly (its session may
    still run): signal it failed first, or `occoord cancel` it.
    """
    spool = open_spool(spool_dir, create=False)
    record = spool.run(run_id).signal(task, TaskState(state), message)
    click.echo(f"{run_id}/{task}: {record.state}")


for _command in (watch, run, cancel, retry, clean, simulate, status, hold, resume, top, logs, attach):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning occoord's errors into one message and an exit code."""
    try:
        cli.main(args=argv, prog_name="occoord", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except _INPUT_ERRORS as exc:
        click.echo(f"occoord: {exc}", err=True)
        sys.exit(2)
    except OccoordError as exc:
        click.echo(f"occoord: {exc}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
