"""Big manifests and big cancels: the loop keeps serving meanwhile, and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from harness import Engine, manifest, task

from occoord.engine import intake, stopping
from occoord.engine.watcher import Hint
from occoord.spool.cancel import request_cancel
from occoord.spool.journal import read_events
from occoord.spool.states import TaskState


def _big(n: int, **fields: Any) -> dict[str, Any]:
    return manifest(*(task(f"t{i:04d}", f"task number {i} " + "x" * 20) for i in range(n)), **fields)


async def _until(e: Engine, predicate: Any, rounds: int = 2000) -> None:
    """Step the loop by hand (settle() would wait for the accept job) until ``predicate()``."""
    for _ in range(rounds):
        e.co.step()
        await asyncio.sleep(0.001)
        if predicate():
            return
    raise AssertionError("never happened")


def test_the_loop_serves_another_run_while_a_big_manifest_is_accepted(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    finished: list[bool] = []
    real = intake.accept_file

    def slow_accept(*args: Any, **kwargs: Any) -> Any:
        release.wait(timeout=10)  # inline on the loop, this would hold up everything for 10 s
        try:
            return real(*args, **kwargs)
        finally:
            finished.append(True)

    async def scenario(e: Engine) -> None:
        await e.start()
        small = await e.submit(manifest(task("a"), task("b", depends_on=["a"])))
        monkeypatch.setattr(intake, "accept_file", slow_accept)
        body = _big(600)
        staging = e.spool.tmp / ".big.json.tmp"
        staging.write_text(json.dumps(body))
        assert staging.stat().st_size > intake.OFF_LOOP_BYTES
        target = e.spool.incoming / "big.json"
        os.rename(staging, target)
        e.co.post(Hint("incoming", path=target, settled=True))
        e.co.step()
        e.run(small).signal("a", TaskState.DONE, "by hand")
        e.co.post(Hint("task", run_id=small, task="a"))
        e.co.post(Hint("incoming", path=target, settled=True))  # a second hint: not accepted twice
        await _until(e, lambda: e.state(small, "b") is TaskState.PENDING)
        assert not finished, "b was dispatched while the big manifest was still being accepted"
        release.set()
        await _until(e, lambda: len(e.spool.run_ids()) == 2)
        await e.settle()
        big = next(r for r in e.spool.run_ids() if r != small)
        assert not e.spool.arriving, "activated from its plan, and no longer marked arriving"
        assert big in e.co.book.runs and len(e.co.book.runs[big].specs) == 600
        assert not os.listdir(e.spool.incoming)
        titles = [c[2] for c in e.client.calls_of("create_session") if "-big/" in c[2]]
        assert titles and len(titles) == len(set(titles)), "the big run dispatches, each task once"

    engine.play(scenario)


def test_a_big_cancel_fails_every_queued_task_once_and_dispatches_none_of_them(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stopping, "ECHO_WAIT", 0.01)  # no watcher here: no echo comes back

    async def scenario(e: Engine) -> None:
        await e.start()
        n = 2 * stopping.CANCEL_CHUNK + 500
        run = await e.submit(_big(n, concurrency=3))
        running = [c[1] for c in e.client.calls_of("create_session")]
        assert len(running) == 3
        sessions = len(e.client.calls_of("create_session"))
        path = request_cancel(e.run(run))
        e.co.post(Hint("run", run_id=run))
        await e.settle()
        states = e.run(run).tasks.states()
        assert set(states.values()) == {TaskState.FAILED} and len(states) == n
        assert len(e.client.calls_of("abort")) == 3
        assert len(e.client.calls_of("create_session")) == sessions, "nothing new was dispatched"
        assert not path.exists() and e.summary(run) is not None
        failed = [ev.task for ev in read_events(e.run(run).dir) if ev.target == "failed"]
        assert sorted(failed) == sorted(states), "one journal line per task"
        record = e.record(run, "t1234")
        assert record.reason == "cancelled"
        assert not e.co.stopper._cancelling

    engine.play(scenario)


def test_a_cancel_of_a_few_queued_tasks_runs_each_ones_end_hook(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    hook = ["sh", "-c", f'touch "{out}/$OCCOORD_TASK.$OCCOORD_STATE"']

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(
            manifest(*(task(f"q{i}") for i in range(5)), concurrency=1, hooks={"on_task_end": hook})
        )
        request_cancel(e.run(run))
        await e.events([Hint("run", run_id=run)])
        await e.settle()
        assert sorted(os.listdir(out)) == [f"q{i}.failed" for i in range(5)]
        assert e.summary(run) is not None

    engine.play(scenario)
