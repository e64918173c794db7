"""Server faults, end to end: the OpenCode server (here the simulator, in its own process) dies, is
restarted on the same port, cuts its event stream, answers 500s or hangs.

Each fault must be noticed (within 5 s when the server is gone), and every task must resume or fail
by its retry policy: none may stay pending forever. Faults other than a dead server are injected by
a small HTTP proxy between the watcher and the simulator (tests/support/faultproxy.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2ekit import (
    drop_atomically,
    manifest,
    record,
    sim_sessions,
    sim_status,
    start_watcher,
    states,
    the_run,
)
from support.faultproxy import FaultProxy
from support.processes import Proc, free_port, start_simulator, wait_for

pytestmark = pytest.mark.slow

TERMINAL = ("done", "failed")


def all_terminal(run_dir: Path, count: int) -> bool:
    found = states(run_dir)
    return len(found) == count and all(s in TERMINAL for s in found.values())


def quiet_for(counter: Callable[[], int], quiet: float, timeout: float) -> None:
    """Wait until ``counter()`` has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = counter(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the counter never settled"
        time.sleep(0.1)
        now = counter()
        if now != last:
            last, since = now, time.monotonic()


def titles_unique(url: str, workdir: Path) -> list[str]:
    titles = [s["title"] for s in sim_sessions(url, workdir)]
    assert len(titles) == len(set(titles)), f"a session was created twice for one attempt: {titles}"
    return titles


@pytest.fixture
def proxy(simulator: str) -> Iterator[FaultProxy]:
    fp = FaultProxy(simulator)
    fp.start()
    yield fp
    fp.stop()


def watch(spool_dir: Path, workdir: Path, url: str, *extra: str) -> Proc:
    return start_watcher(spool_dir, workdir, *extra, server=url)


# ---------------------------------------------------------------------------- the server dies


def test_dead_server_is_noticed_within_5s_and_nothing_is_lost_while_it_is_away(
    spool_dir: Path, workdir: Path, tmp_path: Path
) -> None:
    """SIGKILL with turns running: the watcher says so at once. Running turns that go silent fail by
    their retry policy, but a server that cannot be reached is not a task's failure: work waits in
    the queue (with backoff) and runs once the server is back."""
    port = free_port()
    sim, url = start_simulator(tmp_path / "sim.log", port)
    watcher = watch(spool_dir, workdir, url, "--idle-timeout", "3", "--start-timeout", "3")
    back = None
    try:
        drop_atomically(
            spool_dir,
            "busy.json",
            manifest(
                *[{"id": f"b{i}", "prompt": "[sim: hang]", "retries": 1} for i in range(2)], name="busy"
            ),
        )
        busy = the_run(spool_dir, "busy")
        wait_for(lambda: len(sim_status(url, workdir)) == 2, timeout=20)
        mark = len(watcher.output())
        sim.kill9()
        killed = time.monotonic()
        wait_for(lambda: "event stream" in watcher.output()[mark:], timeout=5, interval=0.05)
        assert time.monotonic() - killed < 5
        drop_atomically(
            spool_dir,
            "later.json",
            manifest({"id": "l0", "prompt": "[sim: work 0.05]", "retries": 0}, name="later"),
        )
        later = the_run(spool_dir, "later")
        wait_for(lambda: "server unreachable" in record(later, "l0")["reason"], timeout=20, interval=0.1)
        assert states(later)["l0"] in ("queued", "pending"), "not failed: it never ran"
        back, _ = start_simulator(tmp_path / "sim2.log", port)
        wait_for(lambda: states(later).get("l0") == "done", timeout=60, interval=0.1)
        assert record(later, "l0")["details"].get("failures", 0) == 0
        wait_for(lambda: all_terminal(busy, 2), timeout=60, interval=0.1)
        for task in states(busy):
            rec = record(busy, task)
            assert rec["state"] == "failed", (
                rec
            )  # hung twice: one attempt and one retry, as the manifest says
            assert rec["details"]["failures"] == 2
        assert watcher.popen.poll() is None, "the watcher itself stays up"
    finally:
        assert watcher.stop() == 0
        sim.stop()
        if back is not None:
            back.stop()


def test_server_restarted_on_the_same_port_resumes_lost_turns_promptly(
    spool_dir: Path, workdir: Path, tmp_path: Path
) -> None:
    """SIGKILL with turns running, and a new (empty) server on the same port: the reconnect finds
    the sessions gone and their tasks start again at once, not after --idle-timeout."""
    port = free_port()
    sim, url = start_simulator(tmp_path / "sim1.log", port)
    watcher = watch(spool_dir, workdir, url, "--idle-timeout", "120")
    second: Proc | None = None
    try:
        drop_atomically(
            spool_dir,
            "lost.json",
            manifest(*[{"id": f"t{i}", "prompt": "[sim: work 2.5]"} for i in range(3)], name="lost"),
        )
        run_dir = the_run(spool_dir, "lost")
        wait_for(lambda: len(sim_status(url, workdir)) == 3, timeout=20)
        time.sleep(0.5)  # the turns have begun (their first events are in)
        mark = len(watcher.output())
        sim.kill9()
        wait_for(lambda: "event stream" in watcher.output()[mark:], timeout=5, interval=0.05)
        second, _ = start_simulator(tmp_path / "sim2.log", port)  # same port, empty memory
        wait_for(lambda: all_terminal(run_dir, 3), timeout=10, interval=0.1)
        assert all(record(run_dir, t)["state"] == "done" for t in states(run_dir))
        titles_unique(url, workdir)
    finally:
        assert watcher.stop() == 0
        sim.stop()
        if second is not None:
            second.stop()


# ---------------------------------------------------------------------------- the event stream


def test_event_stream_cut_while_a_turn_ends_is_resynced(
    spool_dir: Path, workdir: Path, simulator: str, proxy: FaultProxy
) -> None:
    """The stream drops, and stays refused while the turn ends: the reconnect's resync finds it."""
    watcher = watch(spool_dir, workdir, proxy.url, "--idle-timeout", "120")
    try:
        drop_atomically(
            spool_dir,
            "cut.json",
            manifest({"id": "a", "prompt": "[sim: work 1] [sim: reply fine]"}, name="cut"),
        )
        run_dir = the_run(spool_dir, "cut")
        wait_for(lambda: len(sim_status(simulator, workdir)) == 1, timeout=20)
        refuse = proxy.drop(r"^/global/event$")
        assert proxy.cut_streams() >= 1
        wait_for(lambda: not sim_status(simulator, workdir), timeout=20)  # the turn ended unseen
        assert states(run_dir) == {"a": "pending"}
        proxy.clear(refuse)
        wait_for(lambda: states(run_dir) == {"a": "done"}, timeout=15)
        assert record(run_dir, "a")["attempt"] == 1
        assert "reconnected" in watcher.output()
    finally:
        assert watcher.stop() == 0


# ---------------------------------------------------------------------------- errors and hangs


def test_500s_on_session_creation_fail_by_policy_or_resume(
    spool_dir: Path, workdir: Path, simulator: str, proxy: FaultProxy
) -> None:
    """Session creation answers 500 for a while: a task allowed no retry fails, saying why; a task
    with retries to spare is done once the server heals. One session per attempt, never two."""
    watcher = watch(spool_dir, workdir, proxy.url)
    try:
        broken = proxy.fail(r"^/session$", method="POST", status=500)
        drop_atomically(
            spool_dir,
            "five.json",
            manifest(
                {"id": "fragile", "prompt": "[sim: work 0.05]", "retries": 0},
                {"id": "sturdy", "prompt": "[sim: work 0.05]", "retries": 12},
                name="five",
            ),
        )
        run_dir = the_run(spool_dir, "five")
        wait_for(lambda: states(run_dir).get("fragile") == "failed", timeout=20)
        assert "500" in record(run_dir, "fragile")["reason"]
        wait_for(lambda: record(run_dir, "sturdy")["attempt"] >= 3, timeout=20)
        assert states(run_dir)["sturdy"] in ("queued", "pending")
        proxy.clear(broken)
        wait_for(lambda: states(run_dir).get("sturdy") == "done", timeout=30)
        assert titles_unique(simulator, workdir) == [
            f"occoord {run_dir.name}/sturdy#{record(run_dir, 'sturdy')['attempt']}"
        ]
    finally:
        assert watcher.stop() == 0


def test_500s_while_reading_the_outcome_are_retried(
    spool_dir: Path, workdir: Path, simulator: str, proxy: FaultProxy
) -> None:
    watcher = watch(spool_dir, workdir, proxy.url, "--idle-timeout", "120")
    try:
        broken = proxy.fail(r"/message$", method="GET", status=500)
        drop_atomically(
            spool_dir,
            "end.json",
            manifest({"id": "a", "prompt": "[sim: work 0.3] [sim: reply fine]"}, name="end"),
        )
        run_dir = the_run(spool_dir, "end")
        # Wait until the watcher has given up reading them: no new request for 3 s.
        wait_for(lambda: "cannot read the session's messages" in watcher.output(), timeout=20)
        quiet_for(lambda: proxy.count(r"/message$"), 2.0, timeout=30)
        proxy.clear(broken)
        wait_for(lambda: states(run_dir) == {"a": "done"}, timeout=8)
        assert record(run_dir, "a")["attempt"] == 1
    finally:
        assert watcher.stop() == 0


def test_hanging_server_does_not_freeze_the_spool(
    spool_dir: Path, workdir: Path, simulator: str, proxy: FaultProxy
) -> None:
    watcher = watch(spool_dir, workdir, proxy.url)
    stuck = proxy.hang(r"/message$", method="GET")
    try:
        drop_atomically(
            spool_dir, "slow.json", manifest({"id": "a", "prompt": "[sim: work 0.2]"}, name="slow")
        )
        wait_for(lambda: proxy.count(r"/message$", outcome="hung") >= 1, timeout=20)
        drop_atomically(spool_dir, "meanwhile.json", manifest({"id": "b", "prompt": "x"}, name="meanwhile"))
        the_run(spool_dir, "meanwhile", timeout=5)  # accepting needs no server at all
    finally:
        proxy.clear(stuck)
        watcher.stop()
