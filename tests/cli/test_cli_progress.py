"""RunProgress, what `occoord run` shows while it follows a run: plain lines into a pipe, and on a
terminal (a real pseudo-terminal here) the journal lines above a progress line that stays."""

from __future__ import annotations

import io
import os
import pty
import re
import termios
import threading
import time
from pathlib import Path

import pytest
from spoolkit import new_run

from occoord.cli.follow import JournalTail, describe
from occoord.cli.progress import PLAIN_EVERY, RunProgress, counts_text
from occoord.spool.layout import Spool
from occoord.spool.states import Actor, TaskState


def test_counts_text() -> None:
    counts = {"done": 2, "failed": 1, "pending": 3, "queued": 4}
    assert counts_text(counts) == "2 done, 1 failed, 3 running, 4 queued"


def test_piped_journal_lines_and_a_plain_progress_line_now_and_then(spool: Spool) -> None:
    run = new_run(spool, ["a", "b"])
    now = [time.time()]
    out = io.StringIO()
    progress = RunProgress(run, stream=out, clock=lambda: now[0])
    assert not progress.terminal
    tail = JournalTail(run.dir)
    first = tail.read()
    for event in first:
        progress.show(event)
    assert out.getvalue().splitlines() == [describe(e) for e in first]

    run.tasks.transition("a", TaskState.QUEUED, TaskState.DONE, actor=Actor.OUTSIDE, reason="skip")
    time.sleep(0.6)  # the listing is read again at most twice a second
    now[0] += PLAIN_EVERY + 1
    (event,) = tail.read()
    progress.show(event)
    lines = out.getvalue().splitlines()
    assert lines[-2] == describe(event)
    assert lines[-1].startswith(f"progress: {run.id}: 1 done, 0 failed, 0 running, 1 queued, ")
    progress.close()
    assert out.getvalue().splitlines() == lines  # nothing more, no control characters
    assert "\x1b" not in out.getvalue()


def _read_all(fd: int, into: list[bytes], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        into.append(chunk)


def test_on_a_terminal_a_progress_line_stays_below_the_lines(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    run = new_run(spool, ["a", "b", "c"])
    master, slave = pty.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # keep the bytes as written
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    chunks: list[bytes] = []
    stop = threading.Event()
    reader = threading.Thread(target=_read_all, args=(master, chunks, stop), daemon=True)
    reader.start()
    stream = os.fdopen(slave, "w", buffering=1)
    try:
        progress = RunProgress(run, stream=stream)
        assert progress.terminal
        for event in JournalTail(run.dir).read():
            progress.show(event)
        run.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING, actor=Actor.COORDINATOR, reason="go")
        time.sleep(1.2)  # redrawn twice a second, the listing read again
        progress.close()
        progress.close()  # twice is harmless
    finally:
        stream.close()
        time.sleep(0.2)
        stop.set()
        os.close(master)
    shown = b"".join(chunks).decode("utf-8", "replace")
    assert f"{run.id}: 0 done, 0 failed, 0 running, 3 queued" in shown
    assert f"{run.id}: 0 done, 0 failed, 1 running, 2 queued" in shown  # redrawn as the run moved
    assert "a: - -> queued" in shown  # the journal's lines go out above it
    assert "\x1b[" in shown  # drawn in place, with the cursor moved back over it
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).strip().splitlines()[-1]
    assert last.startswith(f"{run.id}: 0 done, 0 failed, 1 running, 2 queued, "), last  # where it stands
