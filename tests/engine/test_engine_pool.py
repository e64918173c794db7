"""Several servers: placement by load, capacity and label; every call about an attempt goes to the
server it was placed on, after a restart too; a reconnect resyncs only that server's attempts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import Engine, manifest, task

from occoord.engine.stream import FromServer
from occoord.opencode import events as ev
from occoord.spool.states import TaskState


@pytest.fixture
def pooled(tmp_path: Path) -> Engine:
    return Engine(tmp_path, servers={"big": (3, {"fast"}), "small": (1, set())}, max_sessions=10)


def placed(e: Engine) -> dict[str, int]:
    return {name: e.co.table.running_on(name) for name in e.clients}


def test_attempts_go_to_the_least_loaded_server_with_room(pooled: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(*[task(f"t{i}") for i in range(6)], concurrency=10))
        assert placed(e) == {"big": 3, "small": 1}, "capacities hold"
        assert sum(e.record(run, f"t{i}").state is TaskState.QUEUED for i in range(6)) == 2
        assert len(e.clients["big"].sessions) == 3 and len(e.clients["small"].sessions) == 1
        on_small = next(iter(e.clients["small"].sessions.values()))
        task_id = on_small.title.split("/")[1].split("#")[0]
        assert e.record(run, task_id).details["server"] == "small"
        await e.events([FromServer("small", x) for x in e.clients["small"].end_turn(on_small.id)])
        assert e.state(run, task_id) is TaskState.DONE
        assert placed(e) == {"big": 3, "small": 1}, "the freed place is taken again"
        servers = json.loads((e.spool.root / "watcher.json").read_text())["servers"]
        assert [(s["name"], s["capacity"]) for s in servers] == [("big", 3), ("small", 1)]

    pooled.play(scenario)


def test_a_label_keeps_a_task_on_the_servers_that_carry_it(pooled: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(*[task(f"f{i}", server="fast") for i in range(4)], concurrency=10))
        assert placed(e) == {"big": 3, "small": 0}
        waiting = json.loads((e.spool.root / "watcher.json").read_text())["waiting"]
        assert waiting == {f"{run}/f3": "waiting: no healthy server labelled fast with room"}
        other = await e.submit(manifest(task("g", server="gpu")), "gpu.json")
        waiting = json.loads((e.spool.root / "watcher.json").read_text())["waiting"]
        assert waiting[f"{other}/g"].startswith("waiting: no server is labelled gpu")

    pooled.play(scenario)


def test_a_restarted_watcher_reattaches_each_attempt_on_its_own_server(pooled: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b"), concurrency=10))
        where = {t: e.record(run, t).details["server"] for t in "ab"}
        assert sorted(where.values()) == ["big", "small"]
        e.restart()
        await e.start()
        for t, server in where.items():
            assert e.co.table.get(run, t).server == server  # type: ignore[union-attr]
            assert any(c[0] == "get_session" for c in e.clients[server].calls)
        before = len(e.clients["big"].calls_of("session_status"))
        small_session = next(iter(e.clients["small"].sessions))
        e.clients["small"].end_turn(small_session)  # its events are lost
        await e.events([FromServer("small", ev.StreamReconnected())])
        done = [t for t in "ab" if e.state(run, t) is TaskState.DONE]
        assert done == [t for t, s in where.items() if s == "small"]
        assert len(e.clients["big"].calls_of("session_status")) == before, "only small resynced"

    pooled.play(scenario)


def test_the_summary_and_status_say_which_servers_ran_the_run(pooled: Engine) -> None:
    from click.testing import CliRunner

    from occoord.cli.main import cli

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(*[task(f"t{i}") for i in range(4)], concurrency=10))
        for _ in range(4):
            for name, client in e.clients.items():
                for session in [s for s in client.sessions.values() if s.busy]:
                    await e.events([FromServer(name, x) for x in client.end_turn(session.id)])
        summary = e.summary(run)
        assert summary is not None and summary["servers"] == {"big": 3, "small": 1}
        shown = CliRunner().invoke(cli, ["status", "--spool", str(e.spool.root), run])
        assert "servers: big 3 sessions, small 1 sessions" in shown.output

    pooled.play(scenario)


def test_a_server_away_too_long_has_its_attempts_placed_elsewhere_and_aborted_when_back(
    tmp_path: Path,
) -> None:
    engine = Engine(
        tmp_path, servers={"a": (5, set()), "b": (5, set())}, max_sessions=10, server_timeout=60.0
    )

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", retries=0), concurrency=5))
        first = e.record(run, "t").details["server"]
        other = "b" if first == "a" else "a"
        e.co.pool.get(first).healthy = False  # type: ignore[union-attr]
        await e.advance(1)  # the next tick notices (the service wakes the loop when health changes)
        await e.advance(58)
        assert e.record(run, "t").attempt == 1, "not before the timeout"
        await e.advance(2)
        await e.advance(e.config.retry_base)
        record = e.record(run, "t")
        assert record.attempt == 2 and record.details["server"] == other
        assert "failures" not in record.details, "not the task's failure"
        session = next(iter(e.clients[first].sessions.values()))
        assert session.busy and session.aborted == 0
        assert e.co.next_deadline() > e.clock.now, "no spin while the server stays away"
        e.co.pool.get(first).healthy = True  # type: ignore[union-attr]
        await e.advance(1)
        assert session.aborted == 1 and not session.busy, "aborted once its server is back"

    engine.play(scenario)
