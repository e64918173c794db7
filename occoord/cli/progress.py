"""What ``occoord run`` shows while it follows its run: the journal's lines, and how far the run is.

On a terminal, a progress line (done/failed/running/queued, elapsed) stays at the bottom, redrawn
twice a second by rich, with each journal line printed above it. Piped, the journal lines go out
as they are, with a plain progress line now and then (a log file gets no control characters).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import IO

import click
from rich.console import Console
from rich.live import Live
from rich.text import Text

from occoord.cli.common import format_elapsed
from occoord.cli.follow import describe
from occoord.spool.layout import Run
from occoord.spool.states import TaskState

__all__ = ["PLAIN_EVERY", "RunProgress", "counts_text"]

PLAIN_EVERY = 30.0  # seconds between plain progress lines when piped (only when something changed)
_RECOUNT = 0.5  # the task listing is read at most this often


def counts_text(counts: Mapping[str, int]) -> str:
    """``2 done, 1 failed, 1 running, 3 queued`` (pending tasks are the running ones)."""
    return (
        f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
        f"{counts.get('pending', 0)} running, {counts.get('queued', 0)} queued"
    )


def _started(run: Run, fallback: float) -> float:
    """The run's acceptance as a ``time.time()`` stamp (elapsed counts from there)."""
    try:
        return datetime.fromisoformat(run.accepted_at.replace("Z", "+00:00")).timestamp()
    except (ValueError, OSError):
        return fallback


class RunProgress:
    """Call :meth:`show` with each journal event (``JournalTail.read()``'s items), and
    :meth:`close` at the end (or use it as a context manager). Safe to close twice."""

    def __init__(
        self,
        run: Run,
        *,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.run = run
        self.stream = stream if stream is not None else sys.stdout
        self.clock = clock
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.started = _started(run, clock())
        self._counts: dict[str, int] = {}
        self._counted = -_RECOUNT
        self._lock = threading.Lock()  # rich redraws from its own thread
        self._plain_at = clock()
        self._plain_shown = ""
        self._live: Live | None = None
        if self.terminal:
            console = Console(file=self.stream)
            self._live = Live(
                console=console, get_renderable=self._line, refresh_per_second=2, transient=True
            )
            self._live.start()

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> dict[str, int]:
        with self._lock:
            now = time.monotonic()
            if now - self._counted >= _RECOUNT:
                self._counted = now
                states = self.run.tasks.states()
                counts = dict.fromkeys((s.value for s in TaskState), 0)
                for task in self.run.tasks.task_ids:
                    counts[states.get(task, TaskState.QUEUED).value] += 1
                self._counts = counts
            return dict(self._counts)

    def text(self) -> str:
        """``RUN: 2 done, 0 failed, 1 running, 3 queued, 12s``."""
        elapsed = format_elapsed(max(0.0, self.clock() - self.started))
        return f"{self.run.id}: {counts_text(self.counts())}, {elapsed}"

    def _line(self) -> Text:
        return Text(self.text(), style="bold")

    def show(self, event: Mapping[str, object]) -> None:
        line = describe(dict(event))
        if self._live is not None:
            self._live.console.print(Text(line))
            self._live.refresh()
            return
        click.echo(line, file=self.stream)
        self._plain_progress()

    def _plain_progress(self) -> None:
        now = self.clock()
        if now - self._plain_at < PLAIN_EVERY:
            return
        counts = counts_text(self.counts())
        if counts != self._plain_shown:
            self._plain_at, self._plain_shown = now, counts
            click.echo(f"progress: {self.text()}", file=self.stream)

    def close(self) -> None:
        """Stop the progress line (leaving the terminal as it was) and print where the run stands."""
        live, self._live = self._live, None
        if live is not None:
            live.stop()
            self._counted = -_RECOUNT  # the last word is read afresh, not from the cache
            click.echo(self.text(), file=self.stream)
