"""The watchdog glue, on real files with the real inotify observer: which hints each change gives."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent, FileMovedEvent, FileOpenedEvent

from occoord.engine.watcher import Hint, SpoolWatcher, classify
from occoord.spool.layout import Spool


class Sink:
    def __init__(self) -> None:
        self.hints: list[Hint] = []
        self.changed = threading.Condition()

    def __call__(self, hint: Hint) -> None:
        with self.changed:
            self.hints.append(hint)
            self.changed.notify_all()

    def wait(self, test: Callable[[list[Hint]], bool], timeout: float = 10.0) -> list[Hint]:
        end = time.monotonic() + timeout
        with self.changed:
            while not test(self.hints):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such hint; got {self.hints}")
                self.changed.wait(left)
            return list(self.hints)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Spool, Sink]]:
    spool = Spool(tmp_path / "spool").init()
    sink = Sink()
    watcher = SpoolWatcher(spool.root, sink)
    watcher.start()
    try:
        assert watcher.alive()
        yield spool, sink
    finally:
        watcher.stop()


def _settled_for(path: Path) -> Callable[[list[Hint]], bool]:
    return lambda hints: any(h.kind == "incoming" and h.path == path and h.settled for h in hints)


def test_a_file_renamed_in_from_outside_the_spool_is_complete_at_once(
    watched: tuple[Spool, Sink], tmp_path: Path
) -> None:
    spool, sink = watched
    outside = tmp_path / "plan.json"  # same filesystem, outside the watched tree
    outside.write_text("{}")
    target = spool.incoming / "plan.json"
    os.rename(outside, target)
    hints = sink.wait(_settled_for(target), timeout=5)
    assert not any(h.writing for h in hints if h.path == target), "a rename is no `cp` in progress"


def test_a_plain_copy_is_writing_until_it_is_closed(watched: tuple[Spool, Sink], tmp_path: Path) -> None:
    spool, sink = watched
    source = tmp_path / "plan.json"
    source.write_text('{"version": 1}')
    target = spool.incoming / "plan.json"
    shutil.copyfile(source, target)
    hints = sink.wait(_settled_for(target))
    mine = [h for h in hints if h.path == target]
    assert mine[0].writing and not mine[0].settled
    assert mine[-1].settled


# watchdog warns when a directory and its child appear at once (mkdir -p); harmless here.
@pytest.mark.filterwarnings("ignore:Callback with id")
def test_a_state_file_renamed_by_an_agent_hints_its_task(watched: tuple[Spool, Sink]) -> None:
    spool, sink = watched
    tasks = spool.runs / "20261201T120000Z-plan" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "build.pending").write_text("{}")
    os.rename(tasks / "build.pending", tasks / "build.done")
    sink.wait(lambda hints: any(h.kind == "task" and h.task == "build" for h in hints))


def test_classify_ignores_opens_and_reads_moves_from_anywhere(tmp_path: Path) -> None:
    root = tmp_path
    incoming = str(root / "incoming" / "a.json")
    assert classify(root, FileOpenedEvent(incoming)) == []
    moved_in = classify(root, FileMovedEvent("", incoming))
    assert moved_in == [Hint("incoming", path=root / "incoming" / "a.json", settled=True)]
    created = classify(root, FileCreatedEvent(incoming))
    assert created == [Hint("incoming", path=root / "incoming" / "a.json", writing=True)]
    assert classify(root, FileMovedEvent(incoming, str(tmp_path.parent / "x"))) == []


def test_putting_the_spool_on_hold_wakes_the_engine(watched: tuple[Spool, Sink]) -> None:
    spool, sink = watched
    (spool.root / "hold").touch()
    sink.wait(lambda hints: Hint("hold") in hints)
