"""A coordinator started on a spool another one left: pending tasks re-attach, none runs twice."""

from __future__ import annotations

from harness import Engine, manifest, task

from occoord.errors import ServerUnavailable
from occoord.spool.states import TaskState


def test_a_pending_task_reattaches_to_its_live_session_without_a_second_prompt(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.events(e.client.start_turn(sid))
        e.restart()
        await e.start()
        assert len(e.client.sessions) == 1 and len(e.client.sessions[sid].prompts) == 1
        attempt = e.co.table.get(run, "t")
        assert attempt is not None and attempt.session_id == sid and attempt.began
        await e.events(e.client.end_turn(sid, text="done after all"))
        assert e.state(run, "t") is TaskState.DONE
        assert e.record(run, "t").attempt == 1

    engine.play(scenario)


def test_a_session_that_went_idle_while_no_coordinator_ran_is_classified_at_start(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        e.restart()
        e.client.end_turn(sid, text="finished alone")  # nobody listens to these events
        await e.start()
        assert e.state(run, "t") is TaskState.DONE
        assert (e.spool.runs / run / "results" / "t.md").read_text() == "finished alone"

    engine.play(scenario)


def test_a_crash_before_the_session_id_was_recorded_finds_the_session_by_its_title(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        e.run(run).tasks.update("t", TaskState.PENDING, durable=False, session_id=None)
        e.restart()
        await e.start()
        assert len(e.client.calls_of("create_session")) == 1, "no second session"
        assert e.client.calls_of("find_sessions")
        attempt = e.co.table.get(run, "t")
        assert attempt is not None and attempt.session_id == sid
        assert len(e.client.sessions[sid].prompts) == 1, "never prompted twice"

    engine.play(scenario)


def test_a_session_the_server_forgot_sends_the_task_back_to_the_queue(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=0)))
        sid = e.session(run, "t")
        e.restart()
        del e.client.sessions[sid]  # the server lost its data
        await e.start()
        record = e.record(run, "t")
        assert record.state is TaskState.PENDING and record.attempt == 2, "a new attempt, not a failure"
        assert "failures" not in record.details

    engine.play(scenario)


def test_reattaching_to_a_server_that_is_not_back_yet_retries_with_backoff(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        e.restart()
        down = ServerUnavailable("http://x", "connection refused")
        e.client.fail_next("get_session", down, down, down)
        await e.start()
        for delay in (0.5, 1.0, 2.0):
            assert len(e.client.calls_of("get_session")) < 4
            await e.advance(delay)
        assert len(e.client.calls_of("get_session")) == 4
        await e.events(e.client.end_turn(sid))
        assert e.state(run, "t") is TaskState.DONE

    engine.play(scenario)


def test_a_restart_resumes_a_run_whose_task_was_requeued_while_no_coordinator_ran(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a", retries=0), task("b", depends_on=["a"])))
        await e.signal(run, "a", TaskState.FAILED, "broken")
        assert e.summary(run) is not None
        e.restart()
        e.run(run).signal("a", TaskState.QUEUED, "try again")
        await e.start()
        assert e.state(run, "a") is TaskState.PENDING
        assert e.state(run, "b") is TaskState.QUEUED

    engine.play(scenario)
