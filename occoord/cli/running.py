"""The commands that run things: ``watch``, ``run`` and ``simulate`` (``cancel``, ``retry`` and
``clean`` are in ``manage``).

Every option has an ``OCCOORD_*`` environment mirror, so a systemd unit can configure
``occoord watch`` from an environment file alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal as signals
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from occoord.cli.common import open_spool, spool_option
from occoord.engine.loop import CoordinatorConfig
from occoord.errors import ConfigError
from occoord.spool.accept import accept_file
from occoord.spool.layout import Run, Spool
from occoord.spool.submit import submit

if TYPE_CHECKING:
    from occoord.engine.service import AtExit

__all__ = ["run", "simulate", "watch"]

F = TypeVar("F", bound=Callable[..., Any])
_SECONDS = click.FloatRange(min=0.001)

# One option in two or three lines, so that this module stays within 400 lines.
# fmt: off
_COORDINATOR_OPTIONS: list[tuple[str, str, Any, Any, str]] = [  # (option, env, type, default, help)
    ("--server-password", "OCCOORD_SERVER_PASSWORD", str, None,
     "Basic-auth password of every --server (default: $OPENCODE_SERVER_PASSWORD)."),
    ("--opencode-bin", "OCCOORD_OPENCODE_BIN", str, None,
     "The opencode binary to spawn (default: `opencode` on PATH)."),
    ("--server-log", "OCCOORD_SERVER_LOG", click.Path(dir_okay=False, path_type=Path), None,
     "Where the spawned server's output goes (default: SPOOL/opencode.log; each of --spawn N: "
     "SPOOL/servers/spawn-K.log)."),
    ("--spawn", "OCCOORD_SPAWN", click.IntRange(min=0), None,
     "Start N local OpenCode servers, each with its own database (spawn-1..N; default 1 unless "
     "--server/--simulate; 0: --server and server files only)."),
    ("--recycle-after", "OCCOORD_RECYCLE_AFTER", click.IntRange(min=1), None,
     "Restart a spawned server (drained first) once this many sessions were placed on it."),
    ("--recycle-rss", "OCCOORD_RECYCLE_RSS", click.IntRange(min=1), None,
     "Restart a spawned server (drained first) once its processes use more than this many MB."),
    ("--workdir", "OCCOORD_WORKDIR", click.Path(file_okay=False, exists=True, path_type=Path), None,
     "Directory for tasks whose manifest names none (default: the current directory)."),
    ("--worktree-root", "OCCOORD_WORKTREE_ROOT", click.Path(file_okay=False, path_type=Path), None,
     "Where worktree tasks' git worktrees go, outside the spool (default: "
     "$XDG_DATA_HOME/occoord/worktrees)."),
    ("--max-sessions", "OCCOORD_MAX_SESSIONS", click.IntRange(min=1), 8,
     "At most this many sessions at once, over all runs."),
    ("--start-timeout", "OCCOORD_START_TIMEOUT", _SECONDS, 120.0,
     "Seconds a prompt may take to start a turn before the attempt is retried."),
    ("--idle-timeout", "OCCOORD_IDLE_TIMEOUT", _SECONDS, 900.0,
     "Seconds a busy session may show no activity before it is aborted and retried."),
    ("--task-timeout", "OCCOORD_TASK_TIMEOUT", _SECONDS, 3600.0,
     "Wall-clock seconds per attempt, unless the manifest sets a task timeout."),
    ("--retry-base", "OCCOORD_RETRY_BASE", click.FloatRange(min=0), 5.0,
     "Backoff before the first retry, doubling each time."),
    ("--rescan-interval", "OCCOORD_RESCAN_INTERVAL", _SECONDS, 30.0,
     "Seconds between safety rescans of the spool (watchdog events can be lost)."),
    ("--settle-seconds", "OCCOORD_SETTLE_SECONDS", click.FloatRange(min=0), 2.0,
     "A file in incoming/ unchanged this long counts as completely written."),
    ("--signal-grace", "OCCOORD_SIGNAL_GRACE", click.FloatRange(min=0), 30.0,
     "Seconds a session may stay busy after its task was signalled before it is aborted."),
    ("--provider-retries", "OCCOORD_PROVIDER_RETRIES", click.IntRange(min=0), 5,
     "Provider retries OpenCode may make in one turn (session status 'retry') before occoord stops "
     "the turn and fails the attempt (retryable) with the provider's message."),
    ("--server-timeout", "OCCOORD_SERVER_TIMEOUT", _SECONDS, 600.0,
     "With several servers: a server unreachable this long has its running tasks placed on another "
     "(retryable; their old sessions are aborted once it is back)."),
]
# fmt: on


def coordinator_options(func: F) -> F:
    func = click.option(
        "--limit",
        "limits",
        multiple=True,
        envvar="OCCOORD_LIMITS",
        metavar="PATTERN=N",
        help="At most N busy sessions at once, over all runs, whose 'provider/model' matches PATTERN "
        "(* ? [...]); may be given several times (env OCCOORD_LIMITS: comma- or space-separated).",
    )(func)
    func = click.option(
        "--simulate",
        is_flag=True,
        envvar="OCCOORD_SIMULATE",
        help="Use the built-in OpenCode simulator (a dry run with fake agents).",
    )(func)
    for name, env, kind, default, text in reversed(_COORDINATOR_OPTIONS):
        if name == "--server-password":
            func = click.option(
                "--server",
                "servers",
                multiple=True,
                envvar="OCCOORD_SERVERS",
                metavar="[NAME=]URL",
                help="Attach to a running OpenCode server at this URL; several times: a pool (server-1, "
                "server-2, ... or NAME=URL); more in SPOOL/servers/NAME.json. (env OCCOORD_SERVERS, "
                "comma-separated; OCCOORD_SERVER for one)",
            )(func)
        func = click.option(
            name,
            envvar=env,
            type=kind,
            default=default,
            show_default=default is not None,
            help=f"{text} (env {env})",
        )(func)
    return func


def parse_limits(values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``--limit anthropic/*=4`` (and OCCOORD_LIMITS="a/*=4,b=2") as (pattern, count) pairs."""
    out: list[tuple[str, int]] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            pattern, eq, count = item.rpartition("=")
            if not eq or not pattern.strip() or not count.strip().isdigit() or int(count) < 1:
                raise ConfigError(
                    "--limit", f"{item!r}: use PATTERN=N with N at least 1, e.g. 'anthropic/*=4'"
                )
            out.append((pattern.strip(), int(count)))
    return tuple(out)


def build_config(
    spool: Spool, opts: dict[str, Any], at_exit: AtExit = "keep"
) -> tuple[CoordinatorConfig, Any]:
    from occoord.engine.pool import DEFAULT
    from occoord.engine.servers import attached_servers
    from occoord.engine.service import ServerChoice, check_config

    config = CoordinatorConfig(
        workdir=(opts["workdir"] or Path.cwd()).resolve(),
        max_sessions=opts["max_sessions"],
        start_timeout=opts["start_timeout"],
        idle_timeout=opts["idle_timeout"],
        task_timeout=opts["task_timeout"],
        retry_base=opts["retry_base"],
        rescan_interval=opts["rescan_interval"],
        settle_seconds=opts["settle_seconds"],
        signal_grace=opts["signal_grace"],
        provider_retries=opts["provider_retries"],
        worktree_root=opts["worktree_root"].resolve() if opts["worktree_root"] else None,
        limits=parse_limits(opts.get("limits") or ()),
        server_timeout=opts["server_timeout"],
    )
    check_config(config)
    if config.worktree_root is not None and config.worktree_root.is_relative_to(spool.root):
        # The watcher would see every file an agent writes as a spool event.
        raise ConfigError("--worktree-root", f"{config.worktree_root} is inside the spool {spool.root}")
    # OCCOORD_SERVER (one URL) as before OCCOORD_SERVERS: click takes one envvar per option.
    attached = attached_servers(
        list(opts.get("servers") or ()) or os.environ.get("OCCOORD_SERVER", "").split()
    )
    choice = ServerChoice(
        url=attached[0][1] if len(attached) == 1 else None,
        name=attached[0][0] if len(attached) == 1 else DEFAULT,
        servers=tuple(attached) if len(attached) > 1 else (),
        password=opts["server_password"],
        simulate=bool(opts["simulate"]),
        binary=opts["opencode_bin"],
        log_path=opts["server_log"] or spool.root / "opencode.log",
        at_exit=at_exit,
        spawn=opts.get("spawn"),
        recycle_after=opts.get("recycle_after"),
        recycle_rss=opts.get("recycle_rss"),
    )
    return config, choice


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signals.SIGUSR1, _dump_tasks)


def _dump_tasks() -> None:
    """`kill -USR1 PID` prints what every asyncio task is waiting on (for a watcher that seems stuck)."""
    tasks = asyncio.all_tasks()
    click.echo(f"occoord: {len(tasks)} asyncio tasks", err=True)
    for task in tasks:
        task.print_stack(limit=8, file=sys.stderr)


@click.command()
@spool_option
@coordinator_options
@click.option(
    "--stop-server",
    is_flag=True,
    envvar="OCCOORD_STOP_SERVER",
    help="Stop the OpenCode server this watcher spawned (or re-used) when it exits; its running "
    "turns end with it. (env OCCOORD_STOP_SERVER)",
)
def watch(spool_dir: Path, stop_server: bool, **opts: Any) -> None:
    """Serve the spool until SIGINT/SIGTERM: accept manifests, run tasks, record outcomes.

    One coordinator is active per spool; a second `watch` waits as a standby and takes over when the
    first stops. Unfinished runs resume on start, re-attaching to their sessions.

    An OpenCode server that `watch` spawns keeps running when it exits, after SIGTERM as after a
    crash, with its sessions and their turns; it is recorded in SPOOL/server.json and the next
    `watch` re-uses it, so a restart loses and fails nothing. --stop-server stops it at exit instead.
    The same holds for each server of --spawn N, recorded in SPOOL/servers/spawn-K.state.
    `kill -USR1 PID` prints what the watcher is waiting on (to stderr).
    """
    from occoord.engine.service import serve

    spool = open_spool(spool_dir)
    config, choice = build_config(spool, opts, at_exit="stop" if stop_server else "keep")

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        await serve(
            spool,
            config,
            choice,
            stop,
            on_ready=lambda co: click.echo(
                f"occoord: watching {spool.root} (OpenCode {co.config.server_version or 'server'})", err=True
            ),
        )

    asyncio.run(main())


@click.command("run")
@spool_option
@coordinator_options
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; touch no spool and no server.")
def run(spool_dir: Path, manifest: Path, dry_run: bool, **opts: Any) -> None:
    """Submit MANIFEST and follow its run in the foreground; exit 0 if every task is done, else 1.

    If a coordinator (`occoord watch`) already serves the spool, the run is left to it and only
    followed; otherwise this process coordinates until the run ends. An OpenCode server it spawned
    (or re-used) is stopped at the end unless some run of the spool, this one if interrupted, is
    unfinished: that run's sessions live on it, and the next coordinator resumes them there.
    """
    if dry_run:
        from occoord.cli.plan import format_plan
        from occoord.manifest.load import load_manifest

        spec = load_manifest(manifest)
        click.echo(
            format_plan(
                spec,
                spool_root=spool_dir.resolve(),
                max_sessions=opts["max_sessions"],
                workdir=(opts["workdir"] or Path.cwd()).resolve(),
            )
        )
        return
    spool = open_spool(spool_dir)
    config, choice = build_config(spool, opts, at_exit="stop_if_idle")
    target = submit(spool, manifest)
    outcome = accept_file(spool, target, settled=True)
    if outcome.kind != "accepted" or outcome.run_id is None:
        raise click.ClickException(f"{manifest}: not accepted ({outcome.kind}): {outcome.reason}")
    click.echo(f"run {outcome.run_id}: {spool.runs / outcome.run_id}", err=True)
    ok = asyncio.run(_run_and_follow(spool, spool.run(outcome.run_id), config, choice))
    sys.exit(0 if ok else 1)


async def _run_and_follow(spool: Spool, the_run: Run, config: CoordinatorConfig, choice: Any) -> bool:
    from occoord.cli.follow import JournalTail, RunWatch
    from occoord.cli.progress import RunProgress
    from occoord.engine.service import SpoolLock, serve

    stop = asyncio.Event()
    _stop_on_signals(stop)
    lock = SpoolLock(spool)
    following = not lock.try_acquire()
    if following:
        click.echo("occoord: a coordinator already serves this spool; following the run", err=True)
    else:
        lock.release()
    server = asyncio.ensure_future(serve(spool, config, choice, stop, following=following))
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    tail = JournalTail(the_run.dir)
    summary = the_run.dir / "summary.json"
    with (
        RunWatch(the_run.dir, lambda: loop.call_soon_threadsafe(changed.set)),
        RunProgress(the_run) as progress,
    ):
        while not stop.is_set():
            for event in tail.read():
                progress.show(event)
            if summary.exists() or server.done():
                break
            try:
                await asyncio.wait_for(changed.wait(), timeout=2.0)
            except TimeoutError:
                pass
            changed.clear()
        for event in tail.read():
            progress.show(event)
    stop.set()
    await server  # re-raises a startup failure (no server, bad URL) as its own error
    if not summary.exists():
        click.echo(
            f"occoord: stopped before run {the_run.id} finished; it resumes with the next coordinator",
            err=True,
        )
        return False
    verdict = json.loads(summary.read_text())
    click.echo(
        f"run {the_run.id}: {'done' if verdict.get('ok') else 'failed'}; see {the_run.dir / 'summary.md'}"
    )
    return bool(verdict.get("ok"))


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=4096,
    show_default=True,
    envvar="OCCOORD_SIM_PORT",
    help="Port on 127.0.0.1 (0 picks a free one). (env OCCOORD_SIM_PORT)",
)
@click.option(
    "--password",
    envvar="OPENCODE_SERVER_PASSWORD",
    default=None,
    help="Require HTTP basic auth (env OPENCODE_SERVER_PASSWORD).",
)
def simulate(port: int, password: str | None) -> None:
    """Serve the OpenCode simulator: the server's API with scriptable fake agents, for dry runs."""
    from occoord.sim.simulator import main

    main(port, "127.0.0.1", password)
