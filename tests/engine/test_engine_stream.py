"""The server's events as the engine reads them: liveness, turns that end, reconnects."""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import Engine, manifest, task

from occoord.engine.servers import Fleet, ServerSpec
from occoord.opencode import events as ev
from occoord.opencode.client import OpenCodeClient
from occoord.spool.states import TaskState


def test_events_of_unknown_sessions_and_permission_asks_change_nothing(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.events(
            [
                ev.SessionIdle(str(e.workdir), "ses_stranger"),
                ev.PermissionAsked(str(e.workdir), sid, "per_1", "bash", ()),
                ev.ServerConnected(str(e.workdir)),
            ]
        )
        assert e.state(run, "t") is TaskState.PENDING
        assert not e.client.calls_of("messages")

    engine.play(scenario)


def test_after_a_reconnect_a_turn_that_ended_meanwhile_is_settled(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("quiet"), task("busy")))
        quiet, busy = e.session(run, "quiet"), e.session(run, "busy")
        await e.events(e.client.start_turn(quiet) + e.client.start_turn(busy))
        e.client.end_turn(quiet, text="ended while we were away")  # its events were lost
        await e.events([ev.StreamReconnected()])
        assert e.state(run, "quiet") is TaskState.DONE
        assert e.state(run, "busy") is TaskState.PENDING
        assert e.client.calls_of("session_status")

    engine.play(scenario)


def test_a_duplicate_idle_reads_the_turn_once(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t")))
        sid = e.session(run, "t")
        await e.events(e.client.end_turn(sid) * 3)
        assert e.state(run, "t") is TaskState.DONE
        assert len(e.client.calls_of("messages")) == 1

    engine.play(scenario)


def test_the_fleet_gives_every_stream_the_activity_callback(tmp_path: Path) -> None:
    """Streams made before start() and after it (a server joining later) report activity to the
    coordinator's callback; without one, Activity stays an event as before."""

    async def scenario() -> None:
        fleet = Fleet(tmp_path / "servers")
        first = OpenCodeClient("http://127.0.0.1:9")
        fleet.adopt("default", first, "1")
        assert fleet.backends["default"].stream.on_activity is None
        seen: list[str] = []
        fleet.start(lambda _: None, lambda _: 0, seen.append)
        try:
            assert fleet.backends["default"].stream.on_activity == seen.append
            await fleet.add(ServerSpec("later", "http://127.0.0.1:9"), from_file=False)
            assert fleet.backends["later"].stream.on_activity == seen.append
        finally:
            await fleet.aclose()
            await first.aclose()

    asyncio.run(scenario())
