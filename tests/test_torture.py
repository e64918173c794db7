"""The crash torture (scripts/torture.py) in a short version: 15 SIGKILLs and 8 SIGTERMs of the
watcher at random moments while manifests flow in, then every check of the full run; and a shorter
one in which the watchers spawn the server and hand it on to each other. The full run (200 kills,
100 terms) is ``.venv/bin/python scripts/torture.py``; its last figures are in docs/RELIABILITY.md."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from spoolkit import new_run, wait_for

from occoord.spool.accept import accept_file, build_run
from occoord.spool.layout import Spool
from occoord.spool.recovery import TMP_MAX_AGE, recover

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "torture.py"


def load_torture() -> ModuleType:
    spec = importlib.util.spec_from_file_location("occoord_torture", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def assert_clean(report: Any) -> None:
    assert report.manifests >= 10 and report.runs + report.rejections >= report.manifests
    assert (report.lost, report.doubled, report.stuck) == (0, 0, 0), "\n".join(report.problems)
    assert report.max_busy_sessions_per_task == 1, "no task ever had two busy sessions at once"
    assert report.busy_spans >= report.sessions > 0
    assert not report.problems, "\n".join(report.problems)
    # report.known lists findings of the known bugs the tests below pin down deterministically.


@pytest.mark.timeout(240)
def test_fifteen_kills_lose_and_double_nothing(tmp_path: Path) -> None:
    """15 SIGKILLs and 8 SIGTERMs (clean stops, as `systemctl restart`) in a random order, against
    one external simulator."""
    torture = load_torture()
    report = torture.torture(
        15, terms=8, root=tmp_path / "torture", seed=20261125, rate=2.0, drain_timeout=120
    )
    torture.print_report(report)
    assert (report.kills, report.terms) == (15, 8)
    assert report.terms_after_ready > 0, "some clean stops hit a serving watcher"
    assert_clean(report)


@pytest.mark.timeout(240)
def test_a_spawned_server_is_handed_on_through_kills_and_terms(tmp_path: Path) -> None:
    """The watchers spawn the server themselves (the simulator as a fake `opencode`): after every
    SIGKILL and SIGTERM the next watcher re-uses it, so one server serves the whole run, and none
    is left running unrecorded."""
    torture = load_torture()
    report = torture.torture(
        6, terms=6, spawn=True, root=tmp_path / "torture", seed=11, rate=2.0, drain_timeout=120
    )
    torture.print_report(report)
    assert (report.kills, report.terms, report.servers) == (6, 6, 1)
    assert_clean(report)


def test_busy_spans_of_one_task_must_not_overlap() -> None:
    torture = load_torture()
    assert torture.most_at_once([(0.0, 1.0), (1.0, 2.0), (2.5, 3.0)]) == 1, "touching is not overlapping"
    assert torture.most_at_once([(0.0, 2.0), (1.0, 3.0), (1.5, 1.6)]) == 3
    span = {"session": "ses_x", "start": 0.0, "end": 1.0}
    report = torture.Report()
    torture.check_busy(
        [
            {**span, "title": "occoord r1/a#1"},
            {**span, "title": "occoord r1/a#2", "start": 1.0, "end": None},  # a retry, after
            {**span, "title": "occoord r1/b#1", "start": 0.5},  # another task: no matter
            {**span, "title": "occoord r2/a#1", "start": 0.5, "end": 5.0},
            {**span, "title": "occoord r2/a#2", "start": 4.0, "end": None},  # while #1 still ran
        ],
        report,
    )
    assert report.max_busy_sessions_per_task == 2
    assert report.doubled == 1 and "occoord r2/a: 2 sessions busy at once" in report.problems[0]


def test_the_simulator_reports_each_sessions_busy_spans() -> None:
    from occoord.sim.simulator import Simulator

    sim = Simulator()
    url = sim.start()
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            sid = http.post("/session", json={"title": "occoord r/t#1"}).json()["id"]
            other = http.post("/session", json={"title": "someone else"}).json()["id"]
            for session in (sid, sid, other):  # two turns of one session: two spans
                parts = [{"type": "text", "text": "[sim: work 0.05]"}]
                assert http.post(f"/session/{session}/message", json={"parts": parts}).status_code == 200
            spans = http.get("/sim/busy", params={"prefix": "occoord "}).json()
            busy = http.post("/session", json={"title": "occoord r/u#1"}).json()["id"]
            http.post(
                f"/session/{busy}/prompt_async", json={"parts": [{"type": "text", "text": "[sim: hang]"}]}
            )
            open_spans = wait_for(lambda: http.get("/sim/busy", params={"prefix": "occoord r/u"}).json())
    finally:
        sim.stop()
    assert [(s["session"], s["title"]) for s in spans] == [(sid, "occoord r/t#1")] * 2
    assert all(s["start"] < s["end"] for s in spans) and spans[0]["end"] <= spans[1]["start"]
    assert [(s["session"], s["end"]) for s in open_spans] == [(busy, None)], "still busy: no end"
    assert len(sim.busy_spans) == 4


def test_recovery_removes_old_temp_files_wherever_atomic_write_leaves_them(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    old = time.time() - TMP_MAX_AGE - 60
    leftovers = [
        run.results_dir / ".a.md.0badcafe.tmp",
        run.dir / ".summary.json.0badcafe.tmp",
        spool.rejected / ".20260101T000000Z-x.json.error.0badcafe.tmp",
    ]
    for path in leftovers:
        path.write_text("half written")
        os.utime(path, (old, old))
    young = run.results_dir / ".a.md.12345678.tmp"
    young.write_text("maybe still being written")
    recover(spool)
    assert young.exists(), "only files older than the cleanup age go"
    assert [p for p in leftovers if p.exists()] == []


# ---------------------------------------------------------------------------- crash windows
# Windows too narrow for random kills to hit often, put in place by hand: the state a SIGKILL at
# exactly that point leaves, then what the next start-up makes of it.


def accept_all(spool: Spool) -> list[str]:
    return [accept_file(spool, path, settled=True).kind for path in spool.incoming_files()]


def test_kill_between_link_and_unlink_of_the_accept_claim_makes_one_run(spool: Spool) -> None:
    from occoord.manifest.load import load_manifest

    path = spool.incoming / "plan.json"
    path.write_text('{"version": 1, "tasks": [{"id": "a", "prompt": "x"}]}')
    staging = build_run(spool, spool.new_run_id("plan"), load_manifest(path), "plan.json")
    os.link(path, staging / "manifest.json")  # ... and SIGKILL before the os.unlink(path)
    recover(spool)
    assert accept_all(spool) == ["accepted"]
    assert len(spool.run_ids()) == 1


def test_kill_between_link_and_unlink_of_a_rejection_makes_one_rejection(spool: Spool) -> None:
    path = spool.incoming / "bad.json"
    path.write_text("{not json")
    assert accept_file(spool, path, settled=True).kind == "rejected"
    [rejected] = [p for p in spool.rejected.iterdir() if not p.name.endswith(".error")]
    os.link(rejected, path)  # the state a kill between link and unlink leaves
    recover(spool)
    accept_all(spool)
    assert len([p for p in spool.rejected.iterdir() if not p.name.endswith(".error")]) == 1


def test_dispatch_killed_before_its_record_was_written_reuses_no_attempt(spool: Spool) -> None:
    from occoord.spool.states import TaskState

    run = new_run(spool, ["a"])
    run.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING, attempt=1, session_id="ses_1")
    run.tasks.transition("a", TaskState.PENDING, TaskState.QUEUED, reason="retry 1", details={"failures": 1})
    # The coordinator dispatches attempt 2 and is killed right after claiming (before the write).
    os.rename(run.tasks.path("a", TaskState.QUEUED), run.tasks.dir / ".a.pending.claim")
    recover(spool)
    record = run.tasks.read("a")
    assert record is not None
    rolled_back = record.state is TaskState.QUEUED and record.attempt == 1
    new_attempt = record.state is TaskState.PENDING and record.attempt == 2 and record.session_id is None
    assert rolled_back or new_attempt, record
