"""Outside writers (agents, scripts, `mv`) and cancel requests: one bookkeeping path for all."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import Engine, manifest, task

from occoord.engine.watcher import Hint
from occoord.spool.cancel import request_cancel
from occoord.spool.states import TaskState

HOOK = (
    "import json, os, sys; "
    "json.dump({k: v for k, v in os.environ.items() if k.startswith('OCCOORD_')}, open(sys.argv[1], 'w'))"
)


def test_a_requeued_failed_task_of_a_finished_run_requeues_the_dependents_it_failed(engine: Engine) -> None:
    """`mv T.failed T.queued` is the same as `occoord retry` (PROTOCOL section 8)."""

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a", retries=0), task("b", depends_on=["a"])))
        await e.signal(run, "a", TaskState.FAILED, "broken")
        assert e.state(run, "b") is TaskState.FAILED and e.summary(run) is not None
        tasks = e.spool.runs / run / "tasks"
        (tasks / "a.failed").rename(tasks / "a.queued")
        await e.events([Hint("task", run_id=run, task="a")])
        assert e.summary(run) is None, "active again"
        assert e.state(run, "a") is TaskState.PENDING
        assert e.state(run, "b") is TaskState.QUEUED
        await e.events(e.client.end_turn(e.session(run, "a", attempt=1 + 1)))
        assert e.state(run, "b") is TaskState.PENDING

    engine.play(scenario)


def test_a_done_touched_beside_a_failed_task_of_a_finished_run_is_reconciled(engine: Engine) -> None:
    """A late `touch T.done` after the run ended: one state file again, the journal agrees."""

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a", retries=0)))
        await e.signal(run, "a", TaskState.FAILED, "broken")
        assert e.summary(run) is not None
        tasks = e.spool.runs / run / "tasks"
        (tasks / "a.done").touch()
        await e.events([Hint("task", run_id=run, task="a")])
        assert sorted(p.name for p in tasks.iterdir() if not p.name.startswith(".")) == ["a.failed"]
        assert e.summary(run) is not None

    engine.play(scenario)


def test_an_outside_signal_runs_the_task_end_hook_and_ends_the_run_at_once(
    engine: Engine, tmp_path: Path
) -> None:
    out = tmp_path / "hook.json"
    hooks = {"on_task_end": [sys.executable, "-c", HOOK, str(out)]}

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t"), hooks=hooks))
        await e.signal(run, "t", TaskState.DONE, "by hand")
        facts = json.loads(out.read_text())
        assert facts["OCCOORD_TASK"] == "t" and facts["OCCOORD_STATE"] == "done"
        assert facts["OCCOORD_REASON"] == "by hand"
        assert e.summary(run) is not None, "no wait for the rescan"

    engine.play(scenario)


def test_a_state_changed_behind_the_schedule_goes_through_the_same_path(
    engine: Engine, tmp_path: Path
) -> None:
    """The schedule finds a ready task already failed by a script whose hint was lost."""
    out = tmp_path / "hook.json"
    hooks = {"on_task_end": [sys.executable, "-c", HOOK, str(out)]}

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(
            manifest(task("a"), task("b", depends_on=["a"]), task("c", depends_on=["b"]), hooks=hooks)
        )
        e.run(run).signal("b", TaskState.FAILED, "skipped by a script")  # no hint posted
        await e.events(e.client.end_turn(e.session(run, "a")))
        assert e.state(run, "c") is TaskState.FAILED, "dependents of the outside failure are failed"
        assert json.loads(out.read_text())["OCCOORD_TASK"] in {"b", "c"}
        assert e.summary(run) is not None

    engine.play(scenario)


def test_cancel_fails_queued_tasks_and_aborts_running_ones_in_their_directory(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b", depends_on=["a"]), task("c")))
        sid = e.session(run, "a")
        await e.events(e.client.start_turn(sid))
        path = request_cancel(e.run(run))
        await e.events([Hint("run", run_id=run)])
        assert ("abort", sid, str(e.workdir)) in e.client.calls
        assert {e.state(run, t) for t in "abc"} == {TaskState.FAILED}
        assert e.record(run, "a").reason == "cancelled" and e.record(run, "b").reason == "cancelled"
        assert not path.exists(), "the request is consumed"
        assert e.summary(run) is not None

    engine.play(scenario)


def test_a_cancel_request_for_a_finished_run_is_consumed_and_cannot_strike_later(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a", retries=0)))
        await e.signal(run, "a", TaskState.FAILED, "x")
        path = request_cancel(e.run(run))
        await e.events([Hint("run", run_id=run)])
        assert not path.exists()
        e.run(run).signal("a", TaskState.QUEUED, "again")
        await e.events([Hint("task", run_id=run, task="a")])
        assert e.state(run, "a") is TaskState.PENDING

    engine.play(scenario)


def test_an_outside_signal_on_a_pending_task_frees_its_slot_for_the_next(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(max_sessions=1)

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b")))
        assert e.state(run, "b") is TaskState.QUEUED
        await e.signal(run, "a", TaskState.DONE)
        assert e.state(run, "b") is TaskState.PENDING

    engine.play(scenario)


def test_a_late_text_of_an_old_attempt_never_overwrites_the_newer_attempts_result(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        old = e.session(run, "t")
        await e.events(e.client.start_turn(old))
        await e.signal(run, "t", TaskState.DONE, "looked done")
        await e.signal(run, "t", TaskState.QUEUED, "not really: again")
        new = e.session(run, "t", attempt=2)
        await e.events(e.client.end_turn(new, text="the second answer"))
        await e.events(e.client.end_turn(old, text="the first, late"))
        results = e.spool.runs / run / "results"
        assert (results / "t.md").read_text() == "the second answer"
        assert (results / "t@2.md").read_text() == "the second answer"
        assert (results / "t@1.md").read_text() == "the first, late"

    engine.play(scenario)


def test_a_signal_whose_hint_was_lost_is_found_by_the_rescan(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b", depends_on=["a"])))
        e.run(run).signal("a", TaskState.DONE, "by a script")  # no hint: an inotify overflow
        await e.advance(e.config.rescan_interval)
        assert e.state(run, "b") is TaskState.PENDING
        assert e.co.table.get(run, "a") is None

    engine.play(scenario)


def test_a_hold_stops_new_dispatches_while_running_tasks_go_on(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b", depends_on=["a"])))
        (e.spool.root / "hold").touch()
        await e.events([Hint("hold")])
        await e.events(e.client.end_turn(e.session(run, "a")))
        assert e.state(run, "a") is TaskState.DONE, "the running task went on"
        assert e.state(run, "b") is TaskState.QUEUED, "nothing new while on hold"
        (e.spool.root / "hold").unlink()
        await e.events([Hint("hold")])
        assert e.state(run, "b") is TaskState.PENDING

    engine.play(scenario)
