"""What the server reports and what the disk refuses: every error path ends the attempt or waits,
none strands a task or stops the loop."""

from __future__ import annotations

import errno
import json
import os

import pytest
from click.testing import CliRunner
from harness import Engine, manifest, task

from occoord.cli.main import cli
from occoord.opencode import events as ev
from occoord.opencode.models import ErrorInfo
from occoord.spool.states import TaskState
from occoord.spool.tasks import RunTasks


def test_a_failed_turn_keeps_its_transcript_beside_the_results(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=0)))
        sid = e.session(run, "t")
        bad = ErrorInfo("ProviderAuthError", "no key")
        await e.events(e.client.end_turn(sid, text="I tried the build", error=bad))
        assert e.state(run, "t") is TaskState.FAILED
        log = (e.spool.runs / run / "results" / "t.log").read_text()
        assert "I tried the build" in log and "[error] ProviderAuthError: no key" in log

    engine.play(scenario)


def test_a_session_error_without_an_assistant_message_fails_with_that_error(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=3)))
        sid = e.session(run, "t")
        bad = ErrorInfo("ProviderModelNotFoundError", "no such model: x/y")
        e.client.sessions[sid].busy = False
        await e.events([ev.SessionError(str(e.workdir), sid, bad), ev.SessionIdle(str(e.workdir), sid)])
        record = e.record(run, "t")
        assert record.state is TaskState.FAILED, "not 'the turn never started' (which is retried)"
        assert record.reason == "ProviderModelNotFoundError: no such model: x/y"

    engine.play(scenario)


def test_provider_retries_are_shown_then_the_turn_is_stopped(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine: Engine = make_engine(provider_retries=3)

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=0)))
        sid = e.session(run, "t")
        retry = [
            ev.SessionStatusChanged(str(e.workdir), sid, "retry", n, "Cannot connect to API")
            for n in (1, 2, 3)
        ]
        await e.events(retry)
        record = e.record(run, "t")
        assert record.state is TaskState.PENDING
        assert record.reason == "retrying (attempt 3): Cannot connect to API"
        await e.events([ev.SessionStatusChanged(str(e.workdir), sid, "retry", 4, "Cannot connect to API")])
        assert e.client.sessions[sid].aborted == 1
        record = e.record(run, "t")
        assert record.state is TaskState.FAILED
        assert record.reason == "the provider kept failing (4 retries): Cannot connect to API"

    engine.play(scenario)


def test_a_value_the_client_cannot_send_fails_the_task_instead_of_stranding_it(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        e.client.fail_next(
            "create_session", UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        )
        run = await e.submit(manifest(task("t", retries=3)))
        record = e.record(run, "t")
        assert record.state is TaskState.FAILED
        assert record.reason.startswith("could not start the session: UnicodeEncodeError")
        assert len(e.co.table) == 0

    engine.play(scenario)


def test_an_outcome_that_cannot_be_written_keeps_its_slot_and_is_written_once_there_is_room(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RunTasks.transition
    failures = {"left": 3}

    def full_disk(self: RunTasks, *args: object, **kwargs: object) -> object:
        if args[2] is TaskState.DONE and failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        monkeypatch.setattr(RunTasks, "transition", full_disk)
        await e.events(e.client.end_turn(e.session(run, "t")))
        assert e.state(run, "t") is TaskState.PENDING
        assert len(e.co.table) == 1, "the attempt keeps its slot"
        assert "No space left" in next(iter(e.co.settler.problems.values()))
        report = json.loads((e.spool.root / "watcher.json").read_text())
        assert report["pid"] == os.getpid() and "No space left" in report["problems"][0]["what"]
        shown = CliRunner().invoke(cli, ["status", "--spool", str(e.spool.root)])
        assert "problem since" in shown.output and "No space left" in shown.output
        await e.advance(1)
        await e.advance(2)
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(4)
        assert e.state(run, "t") is TaskState.DONE
        assert len(e.co.table) == 0 and e.co.settler.problems == {}
        assert json.loads((e.spool.root / "watcher.json").read_text())["problems"] == []

    engine.play(scenario)


def test_a_result_that_cannot_be_saved_is_saved_later_and_the_task_then_ends(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import occoord.engine.results as results

    real = results.atomic_write
    failures = {"left": 1}

    def full_disk(path: object, data: bytes, **kwargs: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kwargs)  # type: ignore[arg-type]

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        monkeypatch.setattr(results, "atomic_write", full_disk)
        await e.events(e.client.end_turn(e.session(run, "t"), text="the answer"))
        assert e.state(run, "t") is TaskState.PENDING
        await e.advance(1)
        assert e.state(run, "t") is TaskState.DONE
        assert (e.spool.runs / run / "results" / "t.md").read_text() == "the answer"

    engine.play(scenario)


def test_an_error_while_dispatching_does_not_stop_the_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = RunTasks.transition
    failures = {"left": 1}

    def eacces(self: RunTasks, *args: object, **kwargs: object) -> object:
        if args[2] is TaskState.PENDING and failures["left"]:
            failures["left"] -= 1
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    async def scenario(e: Engine) -> None:
        await e.start()
        monkeypatch.setattr(RunTasks, "transition", eacces)
        run = await e.submit(manifest(task("t")))
        assert e.state(run, "t") is TaskState.QUEUED
        await e.advance(e.config.settle_seconds)
        assert e.state(run, "t") is TaskState.PENDING

    engine.play(scenario)


def test_a_run_that_cannot_be_loaded_is_left_alone_and_the_others_go_on(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        bad = await e.submit(manifest(task("a")), "bad.json")
        (e.spool.runs / bad / "run.json").write_text("{torn")
        e.restart()
        await e.start()
        assert bad in e.co.book.broken
        good = await e.submit(manifest(task("b")), "good.json")
        await e.events(e.client.end_turn(e.session(good, "b")))
        assert e.state(good, "b") is TaskState.DONE

    engine.play(scenario)


def test_an_unexpected_error_in_one_hint_does_not_stop_the_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        real = e.co.book.observe

        def buggy(run_id: str, task_id: str) -> None:
            raise KeyError("a bug")

        monkeypatch.setattr(e.co.book, "observe", buggy)
        await e.signal(run, "t", TaskState.DONE)
        monkeypatch.setattr(e.co.book, "observe", real)
        await e.events(e.client.end_turn(e.session(run, "t")))
        assert e.state(run, "t") is TaskState.DONE
        assert e.summary(run) is not None

    engine.play(scenario)
