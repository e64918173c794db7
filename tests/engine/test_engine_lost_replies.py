"""At most one live session per task, at every moment, whatever the server answers (or doesn't).

A request whose answer is lost may still have been acted on: the engine never starts a second
session or a second prompt on a guess, and never starts a new attempt before the old session is
seen stopped.
"""

from __future__ import annotations

from harness import Engine, manifest, task

from occoord.errors import ApiError, ServerUnavailable
from occoord.spool.states import TaskState

LOST = ServerUnavailable("http://x", "POST /session/x/prompt_async: ReadTimeout")
DOWN = ServerUnavailable("http://x", "connection refused", sent=False)


def busy_sessions_of(e: Engine, run: str, task_id: str) -> int:
    prefix = f"occoord {run}/{task_id}#"
    return sum(1 for s in e.client.sessions.values() if s.title.startswith(prefix) and s.busy)


def test_a_prompt_taken_but_unanswered_is_never_sent_again_nor_retried_in_a_new_session(
    engine: Engine,
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        e.client.lose_reply("prompt_async", LOST)
        run = await e.submit(manifest(task("t")))
        assert e.state(run, "t") is TaskState.PENDING, "not requeued on a guess"
        await e.advance(1)
        assert len(e.client.sessions) == 1
        session = e.client.session_of(f"occoord {run}/t#1")
        assert len(session.prompts) == 1, "the prompt it already holds is not sent twice"
        await e.events(e.client.end_turn(session.id))
        assert e.state(run, "t") is TaskState.DONE and e.record(run, "t").attempt == 1

    engine.play(scenario)


def test_a_prompt_that_never_arrived_is_sent_again_in_the_same_session(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        e.client.fail_next("prompt_async", LOST)
        run = await e.submit(manifest(task("t")))
        session = e.client.session_of(f"occoord {run}/t#1")
        assert session.prompts == []
        await e.advance(1)
        assert len(e.client.sessions) == 1 and len(session.prompts) == 1

    engine.play(scenario)


def test_a_session_created_but_unanswered_is_found_by_its_title_and_used(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        e.client.lose_reply("create_session", LOST)
        run = await e.submit(manifest(task("t")))
        await e.advance(1)
        assert len(e.client.calls_of("create_session")) == 1
        session = e.client.session_of(f"occoord {run}/t#1")
        assert len(session.prompts) == 1
        assert e.record(run, "t").session_id == session.id

    engine.play(scenario)


def test_a_stuck_turn_is_not_retried_until_its_session_is_seen_stopped(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=2)))
        first = e.session(run, "t")
        await e.events(e.client.start_turn(first))
        e.client.fail_next("abort", DOWN, DOWN, LOST)
        await e.advance(e.config.idle_timeout)
        for _ in range(6):  # the server does not let us stop the turn yet
            assert e.state(run, "t") is TaskState.PENDING
            assert e.record(run, "t").attempt == 1
            assert busy_sessions_of(e, run, "t") <= 1
            await e.advance(1)
        await e.advance(30)
        assert e.client.sessions[first].aborted >= 1 and not e.client.sessions[first].busy
        record = e.record(run, "t")
        assert record.state in (TaskState.QUEUED, TaskState.PENDING)
        await e.advance(e.config.retry_base)
        assert e.record(run, "t").attempt == 2
        assert busy_sessions_of(e, run, "t") == 1

    engine.play(scenario)


def test_a_cancel_waits_for_the_abort_to_be_seen(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        from occoord.engine.watcher import Hint
        from occoord.spool.cancel import request_cancel

        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.events(e.client.start_turn(sid))
        e.client.fail_next("abort", DOWN)
        request_cancel(e.run(run))
        await e.events([Hint("run", run_id=run)])
        assert e.state(run, "t") is TaskState.PENDING, "not failed while its turn may still run"
        await e.advance(1)
        assert e.state(run, "t") is TaskState.FAILED and not e.client.sessions[sid].busy

    engine.play(scenario)


def test_a_session_the_replaced_server_no_longer_knows_is_a_new_attempt_not_a_failure(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        e.client.lose_reply("prompt_async", LOST)
        run = await e.submit(manifest(task("t", retries=0)))
        sid = e.session(run, "t")
        del e.client.sessions[sid]  # the server died with it and came back empty
        e.client.fail_next(
            "messages", ApiError("GET", f"/session/{sid}/message", 404, "NotFoundError", "gone")
        )
        await e.advance(1)
        record = e.record(run, "t")
        assert record.state is TaskState.PENDING and record.attempt == 2
        assert "failures" not in record.details

    engine.play(scenario)
