"""occoord/engine/service.py: the wiring around the coordinator.

Replies to permission and question asks run beside the event pump (a reply that hangs must not stop
the delivery of every other event), and a spawned server is released or stopped at exit as
``ServerChoice.at_exit`` says. Unit tests with fakes first, then one end to end: a watcher behind a
proxy whose permission-reply endpoint hangs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import drop, in_session, manifest, record, start_watcher, states, summary, task, the_run
from spoolkit import new_run
from support.faultproxy import FaultProxy
from support.processes import wait_for

from occoord.engine.service import Replies, ServerChoice, _end_server, _pump, _stop_server
from occoord.opencode.events import PermissionAsked, QuestionAsked, SessionIdle
from occoord.opencode.procinfo import ServerRecord
from occoord.spool.layout import Spool
from occoord.spool.states import TaskState


def ask(request_id: str, session: str = "ses_1") -> PermissionAsked:
    return PermissionAsked("/work", session, request_id, "bash", ("rm x",))


class Responder:
    """A fake PolicyResponder: replies to request ids in ``hang`` never return, those in ``boom``
    raise; every call is noted."""

    def __init__(self, hang: frozenset[str] = frozenset(), boom: frozenset[str] = frozenset()) -> None:
        self.hang, self.boom = hang, boom
        self.calls: list[str] = []
        self.in_flight = 0
        self.peak = 0

    async def handle(self, event: Any) -> None:
        self.calls.append(event.request_id)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if event.request_id in self.hang:
                await asyncio.Event().wait()
            await asyncio.sleep(0.01)
            if event.request_id in self.boom:
                raise RuntimeError(f"reply to {event.request_id} broke")
        finally:
            self.in_flight -= 1


class Posted:
    """Stands in for the coordinator: what the pump posted, in order."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def post(self, item: object) -> None:
        self.items.append(item)


async def stream_of(*events: object) -> AsyncIterator[object]:
    for event in events:
        yield event
        await asyncio.sleep(0)


def test_a_hanging_reply_does_not_stop_event_delivery() -> None:
    async def scenario() -> None:
        responder, posted = Responder(hang=frozenset({"per_1"})), Posted()
        replies = Replies(responder)
        events = [ask("per_1"), SessionIdle("/work", "ses_2"), QuestionAsked("/work", "ses_3", "que_1", ())]
        await asyncio.wait_for(_pump(stream_of(*events), posted, replies), 5)  # type: ignore[arg-type]
        assert posted.items == events, "every event reached the coordinator, in order"
        await asyncio.sleep(0.1)
        assert responder.calls == ["per_1", "que_1"]
        assert set(replies.jobs) == {"per_1"}, "only the hanging reply is still in flight"
        await replies.aclose()
        assert replies.jobs == {}

    asyncio.run(scenario())


def test_one_reply_per_request_id_in_flight_and_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        responder = Responder(boom=frozenset({"per_2"}))
        replies = Replies(responder, limit=2)
        for _ in range(3):  # announced again (e.g. after a reconnect) while the first reply runs
            replies.offer(ask("per_1"))
        replies.offer(ask("per_2"))
        replies.offer(SessionIdle("/work", "ses_1"))  # not an ask: nothing to answer
        for n in range(3, 8):
            replies.offer(ask(f"per_{n}"))
        await asyncio.sleep(0.5)
        assert sorted(responder.calls) == sorted(["per_1", "per_2", *(f"per_{n}" for n in range(3, 8))])
        assert responder.peak <= 2, "at most `limit` replies at once"
        assert replies.jobs == {}
        replies.offer(ask("per_1"))  # answered and asked once more: replied again
        await asyncio.sleep(0.1)
        assert responder.calls.count("per_1") == 2

    with caplog.at_level(logging.ERROR, logger="occoord.engine.service"):
        asyncio.run(scenario())
    assert any("per_2" in r.getMessage() and r.exc_info for r in caplog.records), caplog.text


# ------------------------------------------------------------------ the server at exit


class FakeServer:
    def __init__(self, record: ServerRecord | None) -> None:
        self.kept = record
        self.did: list[str] = []

    async def release(self) -> ServerRecord | None:
        self.did.append("release")
        return self.kept

    async def stop(self) -> None:
        self.did.append("stop")


RECORD = ServerRecord(4242, "http://127.0.0.1:1", "pw", "/bin/opencode", "1", "boot:1", "f")


def _end(tmp_path: Path, record: ServerRecord | None, stop_at_exit: Any, *, state: bool = True) -> list[str]:
    server = FakeServer(record)
    state_file = tmp_path / "server.json" if state else None
    if state_file is not None:
        state_file.write_bytes(RECORD.to_bytes())
    asyncio.run(_end_server(server, state_file, stop_at_exit))  # type: ignore[arg-type]
    return [*server.did, "recorded" if state_file is not None and state_file.exists() else "no record"]


def _broken() -> bool:
    raise OSError("spool unreadable")


def test_the_spawned_server_is_released_unless_told_to_stop(tmp_path: Path) -> None:
    assert _end(tmp_path, RECORD, None) == ["release", "recorded"]
    assert _end(tmp_path, RECORD, lambda: False) == ["release", "recorded"]
    assert _end(tmp_path, RECORD, lambda: True) == ["stop", "no record"]
    assert _end(tmp_path, RECORD, _broken) == ["release", "recorded"], "in doubt, keep it"
    assert _end(tmp_path, None, None) == ["release", "no record"], "it had died: a stale record goes"
    assert _end(tmp_path, RECORD, None, state=False) == ["stop", "no record"], "unfindable: stopped"


def test_run_stops_the_server_only_when_every_run_is_finished(spool: Spool) -> None:
    idle, keep, stop = (ServerChoice(at_exit=a) for a in ("stop_if_idle", "keep", "stop"))
    assert _stop_server(idle, spool) is True, "an empty spool needs no server"
    first = new_run(spool, ["a"], name="first")
    assert _stop_server(idle, spool) is False, "a queued task is unfinished"
    first.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING, attempt=1, session_id="ses_1")
    assert _stop_server(idle, spool) is False
    first.tasks.transition("a", TaskState.PENDING, TaskState.DONE)
    (first.dir / "summary.json").write_text("{}")
    assert _stop_server(idle, spool) is True
    assert _stop_server(keep, spool) is False and _stop_server(stop, spool) is True


# ------------------------------------------------------------------ end to end


@pytest.fixture
def proxy(simulator: str) -> Iterator[FaultProxy]:
    fp = FaultProxy(simulator)
    fp.start()
    yield fp
    fp.stop()


@pytest.mark.slow
def test_a_hanging_permission_reply_stalls_no_other_task(
    spool_dir: Path, workdir: Path, proxy: FaultProxy
) -> None:
    """The server takes a permission reply and does not answer it: the asking task waits (as it
    must), while the other tasks' events still arrive and they end at once. Once the reply goes
    through, the asking task ends too, asked and answered once."""
    hang = proxy.hang(r"^/permission/[^/]+/reply$", method="POST")
    watcher = start_watcher(spool_dir, workdir, server=proxy.url)
    try:
        drop(
            spool_dir,
            "asks.json",
            manifest(
                task("asks", "[sim: ask bash] [sim: work 0.1]"),
                *[task(f"t{i}", "[sim: work 1]") for i in range(3)],
                concurrency=4,
            ),
        )
        run_dir = the_run(spool_dir)
        wait_for(lambda: in_session(run_dir, "asks"), timeout=20)
        others = {f"t{i}" for i in range(3)}
        wait_for(lambda: all(states(run_dir).get(t) == "done" for t in others), timeout=20)
        assert states(run_dir)["asks"] == "pending", "its reply is still hanging"
        assert "asked for bash" in watcher.output()
        assert proxy.count(r"/reply$", outcome="hung") == 1
        proxy.clear(hang)
        assert summary(run_dir, timeout=20)["ok"] is True
        assert record(run_dir, "asks")["attempt"] == 1
        assert proxy.count(r"/reply$") == 2, "one reply: hung, then let through"
    finally:
        assert watcher.stop() == 0, watcher.output()[-3000:]
