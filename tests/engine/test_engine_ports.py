"""The real adapters of the engine's ports: the job scheduler's timers and failing jobs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from occoord.engine.ports import JobScheduler, SystemClock


def test_timers_fire_in_order_only_when_due_and_a_failing_one_does_not_stop_the_rest() -> None:
    scheduler = JobScheduler()
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("a bad timer")

    scheduler.call_at(3.0, lambda: fired.append("c"))
    scheduler.call_at(1.0, lambda: fired.append("a"))
    scheduler.call_at(2.0, boom)
    scheduler.call_at(2.0, lambda: fired.append("b"))
    assert scheduler.next_due() == 1.0
    scheduler.run_due(0.5)
    assert fired == []
    scheduler.run_due(2.0)
    assert fired == ["a", "b"]
    assert scheduler.next_due() == 3.0
    scheduler.run_due(10.0)
    assert fired == ["a", "b", "c"] and scheduler.next_due() is None


def test_a_failing_job_is_logged_and_the_rest_go_on(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[str]:
        scheduler = JobScheduler()
        done: list[str] = []

        async def ok() -> None:
            await asyncio.sleep(0)
            done.append("ok")

        async def bad() -> None:
            raise ValueError("a bad reply")

        scheduler.spawn(bad())
        scheduler.spawn(ok())
        assert scheduler.busy
        await scheduler.idle()
        assert not scheduler.busy
        return done

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(main()) == ["ok"]
    assert "engine job failed" in caplog.text and "a bad reply" in caplog.text


def test_the_system_clock_is_monotonic_and_aware() -> None:
    clock = SystemClock()
    a = clock.monotonic()
    assert clock.monotonic() >= a
    assert clock.wall().tzinfo is not None
