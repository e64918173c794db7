"""The three timeouts and the grace period, tested by moving the fake clock."""

from __future__ import annotations

from harness import Engine, manifest, task

from occoord.spool.states import TaskState


def test_a_turn_that_never_starts_is_aborted_and_retried(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=1)))
        sid = e.session(run, "t")
        await e.advance(e.config.start_timeout - 1)
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(1)
        assert ("abort", sid, str(e.workdir)) in e.client.calls
        record = e.record(run, "t")
        assert record.state is TaskState.QUEUED and "never started" in record.reason

    engine.play(scenario)


def test_a_busy_turn_with_no_activity_is_aborted_after_the_idle_timeout(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(idle_timeout=50.0)

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=0)))
        sid = e.session(run, "t")
        await e.events(e.client.start_turn(sid))
        for _ in range(3):  # activity keeps it alive past the idle timeout
            await e.advance(40)
            await e.events(e.client.start_turn(sid)[1:])
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(50)
        assert e.client.sessions[sid].aborted == 1
        record = e.record(run, "t")
        assert record.state is TaskState.FAILED and "no activity for 50 s" in record.reason

    engine.play(scenario)


def test_the_wall_clock_limit_of_the_manifest_fails_the_task_for_good(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", timeout="90s", retries=5)))
        sid = e.session(run, "t")
        for _ in range(3):
            await e.advance(30)
            await e.events(e.client.start_turn(sid))
        assert e.client.sessions[sid].aborted == 1
        record = e.record(run, "t")
        assert record.state is TaskState.FAILED and record.reason == "timed out after 90 s"

    engine.play(scenario)


def test_a_session_still_busy_after_its_task_was_signalled_is_aborted_after_the_grace(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.events(e.client.start_turn(sid))
        await e.signal(run, "t", TaskState.DONE, "a script decided")
        assert e.state(run, "t") is TaskState.DONE
        assert e.co.table.get(run, "t") is None, "the slot is free at once"
        await e.advance(e.config.signal_grace - 1)
        assert e.client.sessions[sid].aborted == 0
        await e.advance(1)
        assert e.client.sessions[sid].aborted == 1
        assert e.record(run, "t").reason == "a script decided", "the signal's verdict stands"

    engine.play(scenario)


def test_an_agent_that_signals_and_ends_its_turn_keeps_its_final_text(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.signal(run, "t", TaskState.DONE, "all good")
        await e.events(e.client.end_turn(sid, text="I did it"))
        assert (e.spool.runs / run / "results" / "t.md").read_text() == "I did it"
        await e.advance(e.config.signal_grace)
        assert e.client.sessions[sid].aborted == 0, "an idle session is not aborted"
        assert e.record(run, "t").reason == "all good"

    engine.play(scenario)


def test_activity_beside_the_queue_keeps_a_turn_alive_and_wakes_nothing(make_engine) -> None:  # type: ignore[no-untyped-def]
    """What the event stream reports through ``on_activity`` (EventRouter.activity): the idle
    clock restarts, no item is queued, and without it the idle timeout still ends the turn."""
    engine: Engine = make_engine(idle_timeout=50.0)

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=0)))
        sid = e.session(run, "t")
        await e.events(e.client.start_turn(sid))
        for _ in range(3):
            await e.advance(40)
            e.co.router.activity(sid)
            e.co.router.activity("ses_of_nobody")  # an unknown session changes nothing
            assert e.co.queue.empty()
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(49)
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(1)
        assert e.client.sessions[sid].aborted == 1
        record = e.record(run, "t")
        assert record.state is TaskState.FAILED and "no activity for 50 s" in record.reason

    engine.play(scenario)
