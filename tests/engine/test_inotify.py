"""engine/inotify.py on real files: a run built under a hidden name and renamed into place is
watched under its new name at once, files made in a new directory before its watch existed are
reported, a directory that leaves the tree is no longer watched."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from occoord.engine.watcher import Hint, SpoolWatcher
from occoord.spool.layout import Spool

RUN = "20261201T120000Z-plan"


class Sink:
    def __init__(self) -> None:
        self.hints: list[Hint] = []
        self.batches = 0
        self.changed = threading.Condition()

    def __call__(self, hints: list[Hint]) -> None:
        with self.changed:
            self.hints += hints
            self.batches += 1
            self.changed.notify_all()

    def wait(self, test: Callable[[Hint], bool], timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        with self.changed:
            while not any(test(h) for h in self.hints):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such hint; got {self.hints}")
                self.changed.wait(left)


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Spool, Sink]]:
    spool = Spool(tmp_path / "spool").init()
    sink = Sink()
    watcher = SpoolWatcher(spool.root, lambda hint: sink([hint]), sink_many=sink)
    watcher.start()
    try:
        assert watcher.alive()
        yield spool, sink
    finally:
        watcher.stop()
    assert not watcher.alive()


def task_hint(task: str) -> Callable[[Hint], bool]:
    return lambda h: h.kind == "task" and h.run_id == RUN and h.task == task


def test_a_run_renamed_into_place_hints_its_tasks_at_once(watched: tuple[Spool, Sink]) -> None:
    spool, sink = watched
    partial = spool.runs / f".{RUN}.partial"
    (partial / "tasks").mkdir(parents=True)
    (partial / "tasks" / "a.queued").write_text("{}")
    time.sleep(0.1)  # the watches on the hidden run exist
    os.rename(partial, spool.runs / RUN)
    sink.wait(lambda h: h.kind == "run" and h.run_id == RUN)
    tasks = spool.runs / RUN / "tasks"
    os.rename(tasks / "a.queued", tasks / "a.pending")
    sink.wait(task_hint("a"))
    assert not any(h.run_id and h.run_id.startswith(".") for h in sink.hints)


def test_files_made_with_their_directory_are_reported(watched: tuple[Spool, Sink]) -> None:
    spool, sink = watched
    tasks = spool.runs / RUN / "tasks"
    tasks.mkdir(parents=True)  # at once: the watch on tasks/ may come after the file
    (tasks / "b.done").write_text("{}")
    sink.wait(task_hint("b"))


def test_a_directory_moved_out_is_forgotten(watched: tuple[Spool, Sink], tmp_path: Path) -> None:
    spool, sink = watched
    tasks = spool.runs / RUN / "tasks"
    tasks.mkdir(parents=True)
    sink.wait(lambda h: h.kind == "run" and h.run_id == RUN)
    time.sleep(0.1)
    os.rename(spool.runs / RUN, tmp_path / "away")
    time.sleep(0.2)
    seen = len(sink.hints)
    (tmp_path / "away" / "tasks" / "c.queued").write_text("{}")
    time.sleep(0.3)
    assert not any(h.task == "c" for h in sink.hints[seen:])


def test_on_the_loop_the_hints_arrive_in_the_loop_thread(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").init()
    tasks = spool.runs / RUN / "tasks"

    async def main() -> list[Hint]:
        got: list[Hint] = []
        seen = asyncio.Event()
        loop_thread = threading.get_ident()

        def sink_many(hints: list[Hint]) -> None:
            assert threading.get_ident() == loop_thread
            got.extend(hints)
            if any(h.kind == "task" for h in hints):
                seen.set()

        watcher = SpoolWatcher(
            spool.root, lambda h: None, sink_many=sink_many, loop=asyncio.get_running_loop()
        )
        watcher.start()
        try:
            assert watcher.alive()
            tasks.mkdir(parents=True)
            await asyncio.sleep(0.1)
            (tasks / "e.queued").write_text("{}")
            await asyncio.wait_for(seen.wait(), 5)
        finally:
            watcher.stop()
        assert not watcher.alive()
        return got

    hints = asyncio.run(main())
    assert Hint("task", run_id=RUN, task="e") in hints


def test_a_hidden_directory_is_not_watched_until_it_is_renamed_into_place(tmp_path: Path) -> None:
    from occoord.engine.inotify import InotifyTree

    seen: list[str] = []
    lock = threading.Lock()

    def deliver(events: list[object]) -> None:
        with lock:
            seen.extend(
                str(getattr(e, "src_path", "")) + "|" + str(getattr(e, "dest_path", "")) for e in events
            )

    root = tmp_path / "spool"
    (root / "runs").mkdir(parents=True)
    tree = InotifyTree(str(root), deliver)
    tree.start()
    try:
        partial = root / "runs" / ".r.partial"
        (partial / "tasks").mkdir(parents=True)
        time.sleep(0.1)
        for i in range(50):  # a run being built: one event per file if it were watched
            (partial / "tasks" / f"t{i}.queued").write_text("{}")
        time.sleep(0.2)
        with lock:
            assert not [s for s in seen if ".partial" in s], seen
        os.rename(partial, root / "runs" / "r")
        time.sleep(0.1)
        (root / "runs" / "r" / "tasks" / "t0.done").write_text("{}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                if any("runs/r/tasks/t0.done" in s for s in seen):
                    break
            time.sleep(0.02)
        with lock:
            assert any("runs/r/tasks/t0.done" in s for s in seen), seen
    finally:
        tree.stop()
