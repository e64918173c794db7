"""spool/echoes.py: the watcher drops the echoes of occoord's own renames, never an outside one."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from spoolkit import new_run

from occoord.engine.watcher import Hint, SpoolWatcher
from occoord.errors import TransitionConflict
from occoord.spool import echoes
from occoord.spool.echoes import ECHOES, Echoes
from occoord.spool.layout import Spool
from occoord.spool.states import TaskState


def test_counted_one_shot_and_withdrawn() -> None:
    e = Echoes()
    e.expect("/a", "/b")
    assert not e.consume(True, "/a"), "off: nothing is recorded"
    e.enable()
    e.expect("/a", "/b")
    e.expect(None, "/b")
    assert e.consume(False, "/a") and not e.consume(False, "/a")
    assert e.consume(True, "/b") and e.consume(True, "/b") and not e.consume(True, "/b")
    e.expect("/x", None)
    e.withdraw("/x", None)
    assert not e.consume(False, "/x")
    e.disable()
    assert e.pending() == 0


def test_an_expectation_lapses(monkeypatch: pytest.MonkeyPatch) -> None:
    e = Echoes()
    e.enable()
    monkeypatch.setattr(echoes, "TTL", -1.0)
    e.expect(None, "/b")
    assert not e.consume(True, "/b")


class Sink:
    def __init__(self) -> None:
        self.hints: list[Hint] = []
        self.lock = threading.Lock()

    def __call__(self, hints: list[Hint]) -> None:
        with self.lock:
            self.hints += hints

    def tasks(self) -> list[str | None]:
        with self.lock:
            return [h.task for h in self.hints if h.kind == "task"]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Spool, Sink]]:
    spool = Spool(tmp_path / "spool").init()
    sink = Sink()
    watcher = SpoolWatcher(spool.root, lambda h: sink([h]), sink_many=sink)
    watcher.start()
    try:
        yield spool, sink
    finally:
        watcher.stop()
    assert ECHOES.pending() == 0 or not ECHOES.on


def settle() -> None:
    time.sleep(0.3)


def test_our_transitions_give_no_hint_an_outside_rename_does(watched: tuple[Spool, Sink]) -> None:
    spool, sink = watched
    run = new_run(spool, ["a", "b"])
    settle()
    run.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING, reason="dispatched")
    run.tasks.update("a", TaskState.PENDING, session_id="ses_1")
    settle()
    assert "a" not in sink.tasks()
    # An agent's signal right after our own write of the same file: seen.
    run.tasks.update("a", TaskState.PENDING, session_id="ses_2")
    os.rename(run.tasks.path("a", TaskState.PENDING), run.tasks.path("a", TaskState.DONE))
    settle()
    assert sink.tasks().count("a") >= 1
    # A rename of ours that loses the race is withdrawn: the winner's move still hints.
    os.rename(run.tasks.path("b", TaskState.QUEUED), run.tasks.path("b", TaskState.FAILED))
    with pytest.raises(TransitionConflict):
        run.tasks.transition("b", TaskState.QUEUED, TaskState.PENDING)
    settle()
    assert "b" in sink.tasks()
    assert ECHOES.pending() == 0
