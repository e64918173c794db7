"""``occoord top [RUN]`` (also ``occoord status --watch``): a live table of runs and their tasks.

It only reads: the spool's files (polled by their mtimes, a few stats four times a second, so it
needs no watcher thread and no write access) and, when it knows the server (``--server``, or the
spawned server's SPOOL/server.json), each running session's latest messages for what the agent
is doing. On a terminal it takes the whole screen until ``q`` or Ctrl-C; otherwise it prints a
plain block each time something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from occoord.cli.common import (
    ServerAddress,
    find_server,
    format_elapsed,
    open_spool,
    quit_keys,
    server_options,
    spool_option,
    task_directory,
    workdir_option,
)
from occoord.cli.progress import counts_text
from occoord.errors import OccoordError
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.transcript import fetch_transcript, latest_activity
from occoord.spool import status as files
from occoord.spool.layout import Run, Spool
from occoord.spool.summary import usage_text

__all__ = ["run_top", "top"]

POLL = 0.25  # seconds between looks at the files' mtimes
REDRAW = 1.0  # the elapsed times tick even when no file changes
ACTIVITY_EVERY = 1.0  # seconds between reads of the running sessions' messages
FINISHED_SHOWN = 3  # without RUN: every unfinished run and the newest finished ones
_STYLES = {"pending": "yellow", "done": "green", "failed": "red", "queued": "dim"}
_ORDER = {"pending": 0, "failed": 1, "queued": 2, "done": 3}  # which rows to keep when space is short


@dataclass
class View:
    """What one refresh shows, read from the files (and the activity cache)."""

    spool: Spool
    server: ServerAddress | None
    runs: list[tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)
    hold: dict[str, str] | None = None
    watcher: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def finished(self) -> bool:
        return bool(self.runs) and all(summary["finished"] for summary, _ in self.runs)

    def signature(self) -> object:
        """Everything shown except the ticking times: plain mode prints when this changes."""
        rows = [
            (r["task"], r["state"], r["attempt"], r["activity"], str(r["usage"]))
            for _, rows in self.runs
            for r in rows
        ]
        return (rows, self.hold is not None, tuple(self.problems))


class Reader:
    """Reads the spool for each refresh; caches what does not change (run plans) or changes
    rarely (which runs to show)."""

    def __init__(
        self, spool: Spool, run_ref: str | None, server: ServerAddress | None, workdir: Path | None
    ) -> None:
        self.spool = spool
        self.run_ref = run_ref
        self.server = server
        self.workdir = workdir
        self.activity: dict[str, str] = {}  # session id -> the latest thing its agent did
        self.sessions: dict[str, str] = {}  # running session id -> its directory
        self.fresh = asyncio.Event()  # set once every running session has been asked
        self._runs: dict[str, Run] = {}
        self._chosen: list[str] = []
        self._chosen_key: object = None

    def chosen(self) -> list[str]:
        key = (_mtime(self.spool.runs), int(time.monotonic() // 5))
        if key != self._chosen_key:
            self._chosen_key = key
            if self.run_ref is not None:
                self._chosen = [files.resolve_run(self.spool, self.run_ref)]
            else:
                ids = self.spool.run_ids()
                done = [r for r in ids if self.spool.looks_finished(r)]
                keep = set(done[-FINISHED_SHOWN:])
                self._chosen = [r for r in ids if r in keep or r not in done]
        return self._chosen

    def fingerprint(self) -> object:
        parts: list[object] = [_mtime(self.spool.runs), _mtime(self.spool.root / "hold")]
        for run_id in self.chosen():
            run_dir = self.spool.runs / run_id
            parts += [_mtime(run_dir / "tasks"), _mtime(run_dir / "events.jsonl")]
        return (parts, tuple(sorted(self.activity.items())))

    def read(self) -> View:
        view = View(
            self.spool,
            self.server,
            hold=files.hold_info(self.spool),
            watcher=files.watcher_report(self.spool),
        )
        sessions: dict[str, str] = {}
        for run_id in self.chosen():
            try:
                run = self._runs.get(run_id) or self._runs.setdefault(run_id, self.spool.run(run_id))
                summary, rows = files.run_summary(run), files.task_rows(run)
            except (OccoordError, OSError) as exc:  # one broken run must not hide the others
                view.problems.append(f"{run_id}: {exc}")
                continue
            for row in rows:
                sid = row["session_id"]
                if row["state"] == "pending" and sid:
                    recorded = {"directory": row["directory"]}
                    sessions[sid] = task_directory(run, row["task"], recorded, self.workdir)
                row["activity"] = self._activity(run, row)
            summary["usage"] = files.run_usage(rows)
            view.runs.append((summary, rows))
        self.sessions = sessions
        return view

    def _activity(self, run: Run, row: dict[str, Any]) -> str:
        said = self.activity.get(row["session_id"] or "")
        if said and row["state"] == "pending":
            return said
        if row["state"] in ("done", "failed"):
            last = files.last_line(run.results_dir / f"{row['task']}.md")
            if last:
                return last
        return str(row["reason"] or "")

    async def follow_activity(self, stop: asyncio.Event) -> None:
        """Keep ``activity`` fresh for the running sessions, in the background: a slow server
        never holds up the view."""
        if self.server is None:
            return
        client = OpenCodeClient(self.server.url, password=self.server.password, timeout=5.0, retries=0)
        try:
            while not stop.is_set():
                for sid, directory in list(self.sessions.items()):
                    try:
                        entries = await fetch_transcript(client, sid, directory, last=3)
                    except OccoordError:
                        continue
                    shown = latest_activity(entries)
                    if shown:
                        self.activity[sid] = shown
                self.fresh.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ACTIVITY_EVERY)
        finally:
            await client.aclose()


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _header(view: View) -> str:
    parts = [f"occoord top  {view.spool.root}", time.strftime("%H:%M:%S")]
    w = view.watcher
    if w is not None:
        parts.append(f"watcher pid {w.get('pid')}" if w.get("running") else "watcher not running")
    versions = {str(r["server_version"]) for _, rows in view.runs for r in rows if r["server_version"]}
    version = (w or {}).get("server_version") or next(iter(sorted(versions)), "")
    if view.server is not None or version:
        where = view.server.url if view.server is not None else "server"
        parts.append(f"{where} ({version})" if version else where)
    if view.hold is not None:
        parts.append("HOLD: no new dispatches")
    return "  |  ".join(parts)


def _run_line(summary: dict[str, Any]) -> str:
    state = "finished" if summary["finished"] else "active"
    usage = f"  {usage_text(summary['usage'])}" if summary.get("usage") else ""
    return f"{summary['run']} ({summary['name']}) {state}: {counts_text(summary['counts'])}{usage}"


def _cells(row: dict[str, Any]) -> list[str]:
    usage = row["usage"] or {}
    tokens = str(usage.get("tokens", {}).get("total", "")) if usage else ""
    cost = f"${usage['cost']:.4f}" if usage else ""
    activity = row["activity"]
    if row["state"] == "queued" and row["not_before"]:
        activity = f"not before {row['not_before']}; {activity}"
    return [
        row["task"],
        row["state"] or "?",
        str(row["attempt"]),
        format_elapsed(row["elapsed_s"]),
        tokens,
        cost,
        str(row["server_version"] or ""),
        activity,
    ]


def _fit(rows: list[dict[str, Any]], room: int) -> tuple[list[dict[str, Any]], int]:
    """At most ``room`` rows, in manifest order, running and failed ones first to stay."""
    if len(rows) <= room:
        return rows, 0
    ranked = sorted(range(len(rows)), key=lambda i: (_ORDER.get(rows[i]["state"] or "", 9), i))
    keep = sorted(ranked[: max(room, 0)])
    return [rows[i] for i in keep], len(rows) - len(keep)


def _table(rows: list[dict[str, Any]], hidden: int) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    for name in ("task", "state", "att", "elapsed", "tokens", "cost", "server"):
        table.add_column(name, no_wrap=True)
    table.add_column("activity", no_wrap=True, overflow="ellipsis", ratio=1)
    for row in rows:
        cells = _cells(row)
        table.add_row(f"  {cells[0]}", Text(cells[1], style=_STYLES.get(cells[1], "")), *cells[2:])
    if hidden:
        table.add_row(Text(f"  ... {hidden} more tasks", style="dim"))
    return table


def render(view: View, height: int) -> Group:
    """The screen: a header line, then per run its line and its table of tasks."""
    # One line, cut to the width: a long path or URL must not push the tables off the screen.
    lines: list[Any] = [Text(_header(view), style="reverse", no_wrap=True, overflow="ellipsis")]
    # Each run takes a line and a table header besides its rows; the rest is shared out.
    room = max((height - 3 - 2 * len(view.runs)) // max(len(view.runs), 1), 1)
    for summary, rows in view.runs:
        lines.append(Text(_run_line(summary), style="bold"))
        lines.append(_table(*_fit(rows, room)))
    if not view.runs:
        lines.append(Text("no runs yet"))
    lines += [Text(p, style="red") for p in view.problems]
    lines.append(Text("q quits", style="dim"))
    return Group(*lines)


def plain_block(view: View) -> str:
    lines = [f"--- {_header(view)}"]
    for summary, rows in view.runs:
        lines.append(_run_line(summary))
        width = max((len(r["task"]) for r in rows), default=4)
        for row in rows:
            cells = _cells(row)
            extra = "  ".join(c for c in cells[3:] if c)
            lines.append(f"  {cells[0]:{width}}  {cells[1]:8}  #{cells[2]}  {extra}".rstrip())
    if not view.runs:
        lines.append("no runs yet")
    lines += view.problems
    return "\n".join(lines)


async def _loop(reader: Reader, *, live: bool, interval: float, once: bool) -> None:
    quit_ = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, quit_.set)
    if once:
        reader.read()  # the running sessions, for the activity reader's first pass
    follower = asyncio.ensure_future(reader.follow_activity(quit_))
    try:
        if live:
            await _full_screen(reader, loop, quit_)
        else:
            await _plain(reader, quit_, interval, once)
    finally:
        quit_.set()
        await follower
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _full_screen(reader: Reader, loop: asyncio.AbstractEventLoop, quit_: asyncio.Event) -> None:
    console = Console()
    with quit_keys(loop, quit_), Live(console=console, screen=True, auto_refresh=False) as live:
        seen: object = None
        drawn = 0.0
        while not quit_.is_set():
            now = time.monotonic()
            fingerprint = reader.fingerprint()
            if fingerprint != seen or now - drawn >= REDRAW:
                seen, drawn = fingerprint, now
                live.update(render(reader.read(), console.size.height), refresh=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quit_.wait(), POLL)


async def _plain(reader: Reader, quit_: asyncio.Event, interval: float, once: bool) -> None:
    if once and reader.server is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.fresh.wait(), 5.0)
    shown: object = None
    while True:
        view = reader.read()
        if view.signature() != shown or once:
            shown = view.signature()
            click.echo(plain_block(view))
        if once or quit_.is_set() or (reader.run_ref is not None and view.finished()):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(quit_.wait(), interval)


def run_top(
    spool: Spool,
    run_ref: str | None,
    server: str | None,
    server_password: str | None,
    *,
    workdir: Path | None = None,
    interval: float = 2.0,
    once: bool = False,
) -> None:
    """Show the live view until quit (or, in plain mode with a RUN, until that run finishes)."""
    if run_ref is not None:
        run_ref = files.resolve_run(spool, run_ref)  # an unknown run fails now, with the usual message
    reader = Reader(spool, run_ref, find_server(spool, server, server_password), workdir)
    live = sys.stdout.isatty() and not once
    asyncio.run(_loop(reader, live=live, interval=interval, once=once))


@click.command()
@spool_option
@click.argument("run_ref", metavar="[RUN]", required=False)
@server_options
@workdir_option
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between looks when the output is not a terminal.",
)
@click.option("--once", is_flag=True, help="Print one plain snapshot and exit.")
def top(
    spool_dir: Path,
    run_ref: str | None,
    server: str | None,
    server_password: str | None,
    workdir: Path | None,
    interval: float,
    once: bool,
) -> None:
    """A live table of the runs (or of RUN: an id, `latest` or a manifest's name) and their tasks.

    Reads the spool's files (state files, records, results/, SPOOL/hold, watcher.json; it writes
    nothing) and, when the server is known (--server, or SPOOL/server.json of a server the watcher
    spawned), the running sessions' latest messages, for the tool each agent runs or its last line
    of text. On a terminal it fills the screen until `q` or Ctrl-C; piped, it prints a plain block
    whenever something changed (with a RUN, until that run has finished).
    """
    spool = open_spool(spool_dir, create=False)
    run_top(spool, run_ref, server, server_password, workdir=workdir, interval=interval, once=once)
