"""A task's life through the whole engine, in one process: dispatch, turn, outcome, files."""

from __future__ import annotations

import json

from harness import Engine, manifest, task

from occoord.errors import ServerUnavailable
from occoord.opencode.models import ErrorInfo
from occoord.spool.journal import read_events
from occoord.spool.states import TaskState


def test_a_task_runs_in_its_own_session_and_its_outcome_is_read_from_the_messages(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("hello", "say hi", role="greeter")))
        assert e.state(run, "hello") is TaskState.PENDING
        session = e.client.session_of(f"occoord {run}/hello#1")
        assert session.directory == str(e.workdir)
        assert len(session.prompts) == 1 and "say hi" in session.prompts[0]
        assert "greeter" in session.prompts[0] and "signal" in session.prompts[0]
        assert e.record(run, "hello").session_id == session.id
        await e.events(e.client.start_turn(session.id))
        await e.events(e.client.end_turn(session.id, text="hi there"))
        assert e.state(run, "hello") is TaskState.DONE
        assert (e.spool.runs / run / "results" / "hello.md").read_text() == "hi there"
        summary = e.summary(run)
        assert summary is not None and summary["ok"] is True
        assert summary["tasks"][0]["attempts"] == 1
        assert await e.co.finished_runs.get() == run
        kinds = [(ev.kind, ev.target) for ev in read_events(e.spool.runs / run)]
        assert ("transition", "pending") in kinds and ("transition", "done") in kinds

    engine.play(scenario)


def test_a_dependent_starts_only_after_its_dependency_is_done(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b", depends_on=["a"])))
        assert e.state(run, "b") is TaskState.QUEUED
        assert e.client.calls_of("create_session") == [
            ("create_session", str(e.workdir), f"occoord {run}/a#1")
        ]
        await e.events(e.client.end_turn(e.session(run, "a")))
        assert e.state(run, "b") is TaskState.PENDING
        await e.events(e.client.end_turn(e.session(run, "b")))
        assert e.summary(run) is not None

    engine.play(scenario)


def test_sessions_at_once_are_capped_globally_and_per_run(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(max_sessions=3)

    async def scenario(e: Engine) -> None:
        await e.start()
        one = await e.submit(manifest(*[task(f"t{i}") for i in range(5)], concurrency=2), "one.json")
        two = await e.submit(manifest(*[task(f"u{i}") for i in range(5)], concurrency=5), "two.json")
        assert len(e.client.busy_sessions()) == 3
        assert e.co.table.running_in(one) == 2 and e.co.table.running_in(two) == 1
        first = e.session(one, "t0")
        await e.events(e.client.end_turn(first))
        assert e.co.table.running_in(one) == 2 and len(e.client.busy_sessions()) == 3

    engine.play(scenario)


def test_a_failed_turn_is_retried_after_a_backoff_then_fails_and_fails_its_dependents(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("flaky", retries=1), task("after", depends_on=["flaky"])))
        overloaded = ErrorInfo("APIError", "overloaded", retryable=True, status_code=529)
        await e.events(e.client.end_turn(e.session(run, "flaky"), error=overloaded))
        record = e.record(run, "flaky")
        assert record.state is TaskState.QUEUED and record.not_before
        assert "retry 1 in 5 s" in record.reason and "overloaded" in record.reason
        await e.advance(4.9)
        assert e.state(run, "flaky") is TaskState.QUEUED, "not before the backoff"
        await e.advance(0.2)
        assert e.state(run, "flaky") is TaskState.PENDING
        await e.events(e.client.end_turn(e.session(run, "flaky", attempt=2), error=overloaded))
        assert e.state(run, "flaky") is TaskState.FAILED
        assert e.record(run, "flaky").details["failures"] == 2
        assert e.state(run, "after") is TaskState.FAILED
        assert e.record(run, "after").reason == "dependency flaky failed"
        assert e.summary(run) == {**(e.summary(run) or {}), "ok": False}

    engine.play(scenario)


def test_a_non_retryable_error_fails_at_once(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=3)))
        bad = ErrorInfo("ProviderAuthError", "no key", retryable=None)
        await e.events(e.client.end_turn(e.session(run, "t"), error=bad))
        assert e.state(run, "t") is TaskState.FAILED
        assert e.record(run, "t").reason == "ProviderAuthError: no key"

    engine.play(scenario)


def test_an_unreachable_server_at_dispatch_does_not_use_up_a_retry(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        refused = ServerUnavailable("http://x", "connection refused", sent=False)
        e.client.fail_next("create_session", refused)
        run = await e.submit(manifest(task("t", retries=0)))
        record = e.record(run, "t")
        assert record.state is TaskState.QUEUED
        assert record.details["unreachable"] == 1 and "failures" not in record.details
        await e.advance(5)
        assert e.state(run, "t") is TaskState.PENDING
        await e.events(e.client.end_turn(e.session(run, "t", attempt=2)))
        assert e.state(run, "t") is TaskState.DONE

    engine.play(scenario)


def test_reading_a_finished_turn_is_retried_until_the_server_answers(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        e.client.fail_next("messages", *[ServerUnavailable("http://x", "timeout")] * 2)
        await e.events(e.client.end_turn(sid))
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(1)
        assert e.state(run, "t") is TaskState.PENDING, "second read failed too"
        await e.advance(2)
        assert e.state(run, "t") is TaskState.DONE

    engine.play(scenario)


def test_the_loop_does_not_spin_after_a_wake_up(engine: Engine) -> None:
    """A timer that fired is gone: the next deadline is in the future (the old code kept wake-ups
    until now-1 and spun for a second after each)."""

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        overloaded = ErrorInfo("APIError", "overloaded", retryable=True)
        await e.events(e.client.end_turn(e.session(run, "t"), error=overloaded))
        await e.advance(5)
        assert e.state(run, "t") is TaskState.PENDING
        assert e.co.next_deadline() > e.clock.now

    engine.play(scenario)


def test_a_flood_of_events_does_not_starve_the_deadlines(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        e.clock.advance(e.config.start_timeout + 1)
        noise = e.client.start_turn(sid)[1:]  # an assistant message update, again and again
        e.post(noise * 5000)
        e.co.step()
        assert not e.co.queue.empty(), "a step handles a bounded batch"
        attempt = e.co.table.get(run, "t")
        assert attempt is not None and attempt.began

    engine.play(scenario)


def test_cost_and_tokens_of_a_task_add_up_its_attempts_and_sub_agents(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=1)))
        first = e.session(run, "t")
        tokens = {"input": 100, "output": 10, "reasoning": 5, "cache": {"read": 1000, "write": 50}}
        overloaded = ErrorInfo("APIError", "overloaded", retryable=True)
        await e.events(e.client.end_turn(first, error=overloaded, cost=0.25, tokens=tokens))
        await e.advance(5)
        second = e.session(run, "t", attempt=2)
        e.client.add_child(second, cost=0.5, tokens={"input": 7, "output": 3})
        await e.events(e.client.end_turn(second, cost=1.0, tokens=tokens))
        usage = e.record(run, "t").details["usage"]
        assert usage["cost"] == 1.75
        assert usage["tokens"]["input"] == 207 and usage["tokens"]["output"] == 23
        assert usage["tokens"]["cache"] == {"read": 2000, "write": 100}
        summary = e.summary(run)
        assert summary is not None and summary["usage"]["cost"] == 1.75
        assert summary["tasks"][0]["usage"]["cost"] == 1.75

    engine.play(scenario)


def test_a_task_that_says_not_before_starts_then_and_not_earlier(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        # The fake clock's wall time starts at 2026-12-01T12:00:00Z.
        doc = manifest(task("later"), task("now", not_before="2026-12-01T11:00:00Z"))
        doc["not_before"] = "2026-12-01T13:30:00+01:00"  # the run's own: 12:30 UTC
        run = await e.submit(doc)
        assert e.record(run, "later").not_before == "2026-12-01T12:30:00.000Z"
        assert e.state(run, "now") is TaskState.PENDING, "its own time has passed"
        assert e.state(run, "later") is TaskState.QUEUED
        await e.advance(29 * 60)
        assert e.state(run, "later") is TaskState.QUEUED
        await e.advance(60)
        assert e.state(run, "later") is TaskState.PENDING

    engine.play(scenario)


def test_an_unquoted_yaml_time_is_a_time() -> None:
    from occoord.manifest.load import parse_manifest

    text = b"version: 1\ntasks:\n  - id: a\n    prompt: x\n    not_before: 2026-12-24T18:00:00+01:00\n"
    spec = parse_manifest(text, fmt="yaml", check_dirs=False).tasks[0]
    assert spec.not_before == "2026-12-24T17:00:00.000Z"


def test_model_limits_per_run_and_across_runs_are_never_exceeded(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(max_sessions=20, limits=(("anthropic/*", 3),))

    async def scenario(e: Engine) -> None:
        await e.start()
        one = manifest(
            *[task(f"a{i}", model="anthropic/claude") for i in range(40)],
            *[task(f"o{i}", model="openai/gpt-5") for i in range(10)],
            limits={"openai/gpt-5": 1},
            concurrency=20,
        )
        run = await e.submit(one, "one.json")
        other = await e.submit(manifest(task("b", model="anthropic/haiku"), concurrency=5), "two.json")
        most = 0
        for _ in range(60):  # 51 tasks, one turn ended per round
            busy = [a for a in e.co.table if a.model.startswith("anthropic/")]
            most = max(most, len(busy))
            assert len(busy) <= 3, "the watcher's limit holds across runs"
            assert sum(1 for a in e.co.table if a.model == "openai/gpt-5") <= 1, "the run's own limit"
            waiting = json.loads((e.spool.root / "watcher.json").read_text())["waiting"]
            if len(busy) == 3 and e.state(other, "b") is TaskState.QUEUED:
                assert waiting[f"{other}/b"] == "waiting: anthropic/* 3/3"
            running = [a for a in e.co.table if a.session_id]
            if not running:
                break
            await e.events(e.client.end_turn(running[0].session_id or ""))
        assert e.summary(run) is not None and e.summary(other) is not None
        assert most == 3, "the limit was reached, never passed"

    engine.play(scenario)


def test_a_signal_that_finishes_the_run_still_records_the_turns_cost(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.signal(run, "t", TaskState.DONE, "by the agent")
        assert e.summary(run) is not None
        await e.events(e.client.end_turn(sid, cost=0.5, tokens={"input": 10, "output": 1}))
        assert e.record(run, "t").details["usage"]["cost"] == 0.5
        assert e.summary(run)["usage"]["cost"] == 0.5  # type: ignore[index]

    engine.play(scenario)
