"""``occoord logs RUN TASK [-f]``: a task's transcript, read from its session on the server.

The task's record names its session; the server has the session's messages, of which the
assistant's text, each tool call (title and status) and the errors are printed. ``-f`` follows the
server's event stream, reading the messages again whenever the session changes, until the task
has ended (its state file is terminal and its session no longer busy). A retried task's new session
is followed too. Nothing is written.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import click

from occoord.cli.common import (
    ServerAddress,
    find_server,
    open_spool,
    server_options,
    spool_option,
    task_directory,
    workdir_option,
)
from occoord.errors import NotFound, OccoordError
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.events import EventStream, StreamReconnected
from occoord.opencode.transcript import Entry, fetch_transcript
from occoord.spool.layout import Run
from occoord.spool.records import TaskRecord
from occoord.spool.status import resolve_run

__all__ = ["Printer", "logs"]

POLL = 1.0  # seconds between looks at the task's record (and the messages) without any event
COALESCE = 0.15  # after an event, wait this long for its siblings before reading the messages


class Printer:
    """Prints each entry of a transcript once per state: text once it is complete, a tool call
    when it starts and again when it ends (following), errors once."""

    def __init__(self, *, following: bool) -> None:
        self.following = following
        self.printed: set[tuple[str, str, str, bool]] = set()

    def feed(self, entries: tuple[Entry, ...], *, complete: bool = False) -> None:
        """``complete``: the session is idle, so what is there is all there will be."""
        for entry in entries:
            if entry.kind == "text" and not (entry.final or complete):
                continue
            if entry.kind == "tool" and not (entry.final or self.following or complete):
                continue
            if entry.key in self.printed:
                continue
            if entry.kind == "text":  # a text part printed while still streaming is not printed again
                self.printed.add((entry.kind, entry.part_id, entry.status, True))
            self.printed.add(entry.key)
            click.echo(entry.render())


def _record(run: Run, task: str) -> TaskRecord:
    if task not in run.tasks.task_ids:
        raise NotFound(str(run.dir), f"run has no task {task!r}")
    record = run.tasks.read(task)
    if record is None:  # mid-transition (a claim) or a `touch`: reconciled in a moment
        run.tasks.reconcile([task])
        record = run.tasks.read(task)
    if record is None:
        raise NotFound(str(run.dir / "tasks"), f"task {task} has no readable state file")
    return record


def _fallback(run: Run, task: str, record: TaskRecord, why: str) -> None:
    """No transcript to show: say why, and show the final answer if there is one."""
    result = run.results_dir / f"{task}.md"
    if result.is_file():
        click.echo(f"occoord: {why}; showing {result}", err=True)
        click.echo(result.read_text(encoding="utf-8", errors="replace").rstrip("\n"))
        return
    reason = f" ({record.reason})" if record.reason else ""
    raise click.ClickException(f"{why}; task {task} is {record.state.value}{reason} and has no result yet")


async def _follow(
    client: OpenCodeClient, run: Run, task: str, workdir: Path | None, printer: Printer
) -> TaskRecord:
    stream = EventStream(client, reconnect_min=0.2, reconnect_max=2.0)
    wake = asyncio.Event()
    watched: set[str] = set()

    async def pump() -> None:
        async for event in stream:
            if isinstance(event, StreamReconnected) or getattr(event, "session_id", None) in watched:
                wake.set()

    pumping = asyncio.ensure_future(pump())
    # Subscribed before the first read, so no change after it goes unseen (the stream has no replay).
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stream.connected.wait(), 10)
    current: str | None = None
    try:
        while True:
            record = _record(run, task)
            directory = task_directory(run, task, record.details, workdir)
            sid = record.session_id
            if sid is not None and sid != current:
                current = sid
                watched.add(sid)
                click.echo(f"--- {run.id}/{task} attempt {record.attempt}: session {sid}")
            idle = current is None or current not in await client.session_status(directory)
            ended = record.state.terminal and idle
            if current is not None:
                printer.feed(await fetch_transcript(client, current, directory), complete=idle)
            if ended:
                return record
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL)
                await asyncio.sleep(COALESCE)
    finally:
        await stream.aclose()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)


async def _show(
    address: ServerAddress, run: Run, task: str, record: TaskRecord, workdir: Path | None, follow: bool
) -> None:
    client = OpenCodeClient(address.url, password=address.password, timeout=15.0)
    try:
        printer = Printer(following=follow)
        if follow:
            record = await _follow(client, run, task, workdir, printer)
            reason = f" ({record.reason})" if record.reason else ""
            click.echo(f"--- {run.id}/{task}: {record.state.value}{reason}")
            return
        assert record.session_id is not None
        directory = task_directory(run, task, record.details, workdir)
        printer.feed(await fetch_transcript(client, record.session_id, directory), complete=True)
    finally:
        await client.aclose()


@click.command()
@spool_option
@click.argument("run_ref", metavar="RUN")
@click.argument("task")
@click.option("-f", "--follow", is_flag=True, help="Follow the transcript live until the task has ended.")
@server_options
@workdir_option
def logs(
    spool_dir: Path,
    run_ref: str,
    task: str,
    follow: bool,
    server: str | None,
    server_password: str | None,
    workdir: Path | None,
) -> None:
    """Print TASK's transcript: the agent's text, each tool call with its title and status, errors.

    RUN is a run id, `latest` or a manifest's name. Reads the task's record in the spool (for its
    session id) and the session's messages from the OpenCode server: --server, the server the
    watcher spawned (SPOOL/server.json), or the one a running watcher names (SPOOL/watcher.json).
    -f follows the server's event stream until the task has ended, including a retry's new
    session. Writes nothing. Without a known server, the task's results/TASK.md is shown.
    """
    spool = open_spool(spool_dir, create=False)
    run = spool.run(resolve_run(spool, run_ref))
    record = _record(run, task)
    address = find_server(spool, server, server_password, _server_of(record))
    if address is None:
        _fallback(run, task, record, "no OpenCode server known (pass --server URL)")
        return
    if record.session_id is None and not follow:
        _fallback(run, task, record, "the task has no session yet")
        return
    try:
        asyncio.run(_show(address, run, task, record, workdir, follow))
    except OccoordError as exc:
        raise click.ClickException(f"cannot read the transcript from {address.url}: {exc}") from exc


def _server_of(record: TaskRecord) -> str | None:
    """The pool server the task's attempt runs on (as the engine recorded it)."""
    name = record.details.get("server")
    return name if isinstance(name, str) else None
