"""``occoord attach RUN TASK``: OpenCode's own terminal UI on a task's session.

This process becomes ``opencode attach URL --session ID --dir DIR`` (exec: the terminal, signals
and exit code are the UI's). The server's password goes through the environment
(``OPENCODE_SERVER_PASSWORD``, which ``opencode attach`` reads), never on the command line, where
any user could read it in the process list.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from occoord.cli.common import (
    find_server,
    open_spool,
    server_options,
    spool_option,
    task_directory,
    workdir_option,
)
from occoord.errors import NotFound
from occoord.opencode.procinfo import find_binary
from occoord.spool.status import resolve_run

__all__ = ["attach", "attach_command"]


def attach_command(binary: str, url: str, session_id: str, directory: str) -> list[str]:
    """The argv of ``opencode attach`` (checked against ``opencode attach --help`` of 1.18.33)."""
    return [binary, "attach", url, "--session", session_id, "--dir", directory]


@click.command()
@spool_option
@click.argument("run_ref", metavar="RUN")
@click.argument("task")
@server_options
@workdir_option
@click.option(
    "--opencode-bin",
    envvar="OCCOORD_OPENCODE_BIN",
    default=None,
    help="The opencode binary (env OCCOORD_OPENCODE_BIN; default: `opencode` on PATH).",
)
def attach(
    spool_dir: Path,
    run_ref: str,
    task: str,
    server: str | None,
    server_password: str | None,
    workdir: Path | None,
    opencode_bin: str | None,
) -> None:
    """Open OpenCode's terminal UI on TASK's live session (`opencode attach URL --session ID --dir DIR`).

    RUN is a run id, `latest` or a manifest's name. Reads the task's record (its session id) and
    where the server is: --server, or the server the watcher spawned (SPOOL/server.json), with its
    password, which is handed over in the environment. Writes nothing. What you type in the UI goes
    to the agent: a prompt sent there starts a turn the coordinator did not ask for.
    """
    spool = open_spool(spool_dir, create=False)
    run = spool.run(resolve_run(spool, run_ref))
    if task not in run.tasks.task_ids:
        raise NotFound(str(run.dir), f"run has no task {task!r}")
    record = run.tasks.read(task)
    if record is None or record.session_id is None:
        state = record.state.value if record else "between states"
        raise click.ClickException(f"task {task} has no session yet ({state})")
    recorded = record.details.get("server")
    address = find_server(spool, server, server_password, recorded if isinstance(recorded, str) else None)
    if address is None:
        raise click.ClickException(
            "no OpenCode server known: pass --server URL (and --server-password) of the watcher's server"
        )
    if record.state.terminal:
        click.echo(f"occoord: task {task} is {record.state.value}; its session may be idle", err=True)
    binary = find_binary(opencode_bin)
    directory = task_directory(run, task, record.details, workdir)
    env = {k: v for k, v in os.environ.items() if k != "OPENCODE_SERVER_PASSWORD"}
    if address.password:
        env["OPENCODE_SERVER_PASSWORD"] = address.password
    argv = attach_command(binary, address.url, record.session_id, directory)
    try:
        os.execve(binary, argv, env)
    except OSError as exc:
        raise click.ClickException(f"cannot run {binary}: {exc.strerror}") from exc
