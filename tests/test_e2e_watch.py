"""`occoord watch` end to end against the simulator, through the filesystem only.

Each test starts real processes (a simulator and/or a watcher), copies manifests into incoming/,
renames files like an outside script would, and reads the state files and summaries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2ekit import (
    HOOK,
    drop,
    hook_record,
    in_session,
    journal,
    manifest,
    max_concurrent_pending,
    record,
    sim_sessions,
    sim_status,
    start_watcher,
    states,
    summary,
    task,
    the_run,
    wait_state,
)
from support.processes import Proc, occoord_argv, wait_for

pytestmark = pytest.mark.slow


def test_dependencies_outcomes_results_and_summary(
    spool_dir: Path, simulator: str, watcher: Proc, workdir: Path
) -> None:
    drop(
        spool_dir,
        "plan.json",
        manifest(
            task("a", "build it [sim: work 0.2] [sim: signal done]"),
            task("b", "then this [sim: work 0.2] [sim: reply all good here]", depends_on=["a"]),
            task("c", "this breaks [sim: error APIError fatal]", retries=3),
            task("d", "never starts", depends_on=["c"]),
        ),
    )
    run_dir = the_run(spool_dir)
    verdict = summary(run_dir)
    assert states(run_dir) == {"a": "done", "b": "done", "c": "failed", "d": "failed"}
    assert verdict["ok"] is False
    # a was signalled by the (simulated) agent renaming its own file; b was classified from idle.
    a_events = [e for e in journal(run_dir) if e.get("task") == "a" and e.get("to") == "done"]
    assert a_events and a_events[0]["actor"] == "outside"
    assert (run_dir / "results" / "b.md").read_text().strip() == "all good here"
    # a's agent signalled before its turn ended: its final text is still kept, once the turn ends.
    wait_for(lambda: (run_dir / "results" / "a.md").exists(), timeout=10)
    assert (run_dir / "results" / "a.md").read_text().strip() == "ok"
    assert "APIError" in record(run_dir, "c")["reason"]
    assert record(run_dir, "c")["attempt"] == 1, "a fatal error is not retried"
    assert record(run_dir, "d")["reason"] == "dependency c failed"
    titles = [s["title"] for s in sim_sessions(simulator, workdir)]
    assert not any("/d#" in t for t in titles), "a task behind a failed dependency never starts"
    assert (run_dir / "summary.md").exists()
    assert {t["task"]: t["state"] for t in verdict["tasks"]} == states(run_dir)


def test_concurrency_and_global_session_limit(spool_dir: Path, simulator: str, workdir: Path) -> None:
    proc = start_watcher(spool_dir, workdir, "--max-sessions", "3", server=simulator)
    try:
        drop(
            spool_dir,
            "one.json",
            manifest(*[task(f"t{i}", "[sim: work 0.4]") for i in range(6)], concurrency=2, name="one"),
        )
        drop(
            spool_dir,
            "two.json",
            manifest(*[task(f"u{i}", "[sim: work 0.4]") for i in range(6)], concurrency=4, name="two"),
        )
        run_dirs = wait_for(lambda: (r := sorted((spool_dir / "runs").glob("2*"))) and len(r) == 2 and r)
        for run_dir in run_dirs:
            assert summary(run_dir)["ok"] is True
        assert max_concurrent_pending(run_dirs) <= 3
        assert max_concurrent_pending(run_dirs[:1]) <= 2 or max_concurrent_pending(run_dirs[1:]) <= 2
        assert max_concurrent_pending(run_dirs) >= 2, "the limit was used, not just one at a time"
    finally:
        assert proc.stop() == 0


def test_outside_signals_by_mv_touch_and_cli(
    spool_dir: Path, simulator: str, watcher: Proc, workdir: Path
) -> None:
    drop(
        spool_dir,
        "hang.json",
        manifest(task("mv", "[sim: hang]"), task("touch", "[sim: hang]"), task("cli", "[sim: hang]")),
    )
    run_dir = the_run(spool_dir)
    tasks = run_dir / "tasks"
    wait_for(lambda: in_session(run_dir, "mv", "touch", "cli"), timeout=30)
    os.rename(tasks / "mv.pending", tasks / "mv.done")
    (tasks / "touch.failed").touch()
    subprocess.run(
        occoord_argv("signal", "--spool", str(spool_dir), run_dir.name, "cli", "done", "-m", "by hand"),
        check=True,
        capture_output=True,
    )
    verdict = summary(run_dir)
    assert states(run_dir) == {"mv": "done", "touch": "failed", "cli": "done"}
    assert record(run_dir, "cli")["reason"] == "by hand"
    assert not any(e.startswith("touch.pending") for e in os.listdir(tasks)), "the stray was reconciled"
    assert verdict["ok"] is False
    sessions = {record(run_dir, t)["session_id"] for t in ("mv", "touch", "cli")}
    wait_for(
        lambda: not sessions & set(sim_status(simulator, workdir)), timeout=15
    )  # aborted after the grace


def test_retryable_errors_are_retried_with_backoff_then_fail(spool_dir: Path, watcher: Proc) -> None:
    drop(spool_dir, "flaky.json", manifest(task("flaky", "[sim: error APIError retryable]", retries=2)))
    run_dir = the_run(spool_dir)
    summary(run_dir)
    rec = record(run_dir, "flaky")
    assert rec["state"] == "failed"
    assert rec["attempt"] == 3, "one attempt plus two retries"
    assert rec["details"]["failures"] == 3
    retries = [e for e in journal(run_dir) if e.get("from") == "pending" and e.get("to") == "queued"]
    assert len(retries) == 2 and all(e["reason"].startswith("retry") for e in retries)


def test_timeouts_never_started_and_wall_clock(spool_dir: Path, simulator: str, workdir: Path) -> None:
    proc = start_watcher(
        spool_dir, workdir, "--start-timeout", "0.5", "--task-timeout", "1.5", server=simulator
    )
    try:
        drop(
            spool_dir,
            "slow.json",
            manifest(task("nostart", "[sim: nostart]", retries=1), task("hang", "[sim: hang]", retries=0)),
        )
        run_dir = the_run(spool_dir)
        summary(run_dir)
        nostart, hang = record(run_dir, "nostart"), record(run_dir, "hang")
        assert nostart["state"] == "failed" and "never started" in nostart["reason"]
        assert nostart["attempt"] == 2, "a turn that never started is retried"
        assert hang["state"] == "failed" and "timed out" in hang["reason"]
        assert hang["session_id"] not in sim_status(simulator, workdir), "the hung session was aborted"
    finally:
        assert proc.stop() == 0


def test_cancel_and_retry(spool_dir: Path, simulator: str, watcher: Proc, workdir: Path) -> None:
    drop(spool_dir, "c.json", manifest(task("long", "[sim: hang]"), task("after", "x", depends_on=["long"])))
    run_dir = the_run(spool_dir)
    wait_for(lambda: in_session(run_dir, "long"))
    session = record(run_dir, "long")["session_id"]
    subprocess.run(
        occoord_argv("cancel", "--spool", str(spool_dir), run_dir.name), check=True, capture_output=True
    )
    summary(run_dir)
    assert record(run_dir, "long")["reason"] == "cancelled"
    assert record(run_dir, "after")["reason"] == "cancelled"
    assert states(run_dir) == {"long": "failed", "after": "failed"}
    assert session not in sim_status(simulator, workdir), "the session was aborted"
    assert not (run_dir / "cancel").exists(), "the request is consumed"
    # Retry every failed task from the shell: the run becomes active again.
    out = subprocess.run(
        occoord_argv("retry", "--spool", str(spool_dir), run_dir.name),
        check=True,
        capture_output=True,
        text=True,
    )
    assert "long: queued" in out.stdout and "after: queued" in out.stdout
    wait_for(lambda: states(run_dir) == {"long": "pending", "after": "queued"})
    assert not (run_dir / "summary.json").exists(), "a running run has no verdict"


def test_bad_manifest_rejected_with_reason_and_watcher_goes_on(spool_dir: Path, watcher: Proc) -> None:
    bad = spool_dir / "incoming" / "bad.json"
    bad.write_text('{"version": 1, "tasks": [{"id": "a", "prompt": "x", "depends_on": ["zz"]}]}')
    wait_for(lambda: list((spool_dir / "rejected").glob("*bad.json.error")), timeout=20)
    error = next((spool_dir / "rejected").glob("*bad.json.error")).read_text()
    assert "tasks[0].depends_on" in error and "zz" in error
    drop(spool_dir, "good.json", manifest(task("ok", "[sim: work 0.05]")))
    assert summary(the_run(spool_dir))["ok"] is True


def test_partial_copy_is_accepted_once_complete(spool_dir: Path, watcher: Proc) -> None:
    """The writer pauses longer than --settle-seconds mid-file: the open file is waited for."""
    text = json.dumps(manifest(task("slowly", "written slowly [sim: work 0.05]"), name="slow"))
    target = spool_dir / "incoming" / "slow.json"
    with open(target, "w") as fh:  # a slow writer: half now, the rest after more than the settle time
        fh.write(text[: len(text) // 2])
        fh.flush()
        time.sleep(1.0)
        fh.write(text[len(text) // 2 :])
    run_dir = the_run(spool_dir)
    assert summary(run_dir)["ok"] is True
    assert not list((spool_dir / "rejected").iterdir())


def test_kill_9_mid_run_resumes_without_duplicate_sessions(
    spool_dir: Path, simulator: str, workdir: Path
) -> None:
    tasks = [task(f"t{i}", "[sim: work 2.5]") for i in range(4)] + [
        task("last", "[sim: work 0.1]", depends_on=["t0"])
    ]
    first = start_watcher(spool_dir, workdir, server=simulator, name="first")
    drop(spool_dir, "crash.json", manifest(*tasks, concurrency=4))
    run_dir = the_run(spool_dir)
    wait_for(lambda: in_session(run_dir, "t0", "t1", "t2", "t3"), timeout=20)
    first.kill9()
    second = start_watcher(spool_dir, workdir, server=simulator, name="second")
    try:
        verdict = summary(run_dir)
        assert verdict["ok"] is True, states(run_dir)
    finally:
        assert second.stop() == 0
    titles = [s["title"] for s in sim_sessions(simulator, workdir)]
    assert len(titles) == len(set(titles)) == 5, titles
    assert all(record(run_dir, t["id"])["attempt"] == 1 for t in tasks)


def test_second_watcher_is_a_standby_and_takes_over(spool_dir: Path, simulator: str, workdir: Path) -> None:
    first = start_watcher(spool_dir, workdir, server=simulator, name="first")
    try:
        second = start_watcher(spool_dir, workdir, server=simulator, name="second", ready="standby")
        try:
            first.kill9()
            drop(spool_dir, "later.json", manifest(task("x", "[sim: work 0.05]")))
            assert summary(the_run(spool_dir))["ok"] is True
        finally:
            second.stop()
    finally:
        first.stop()


def test_run_command_in_the_foreground(tmp_path: Path, spool_dir: Path, workdir: Path) -> None:
    path = tmp_path / "m.json"

    def occoord_run(*options: str) -> subprocess.CompletedProcess[str]:
        argv = occoord_argv("run", "--spool", str(spool_dir), *options, str(path))
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    path.write_text(
        json.dumps(
            manifest(task("one", "[sim: work 0.05]"), task("two", "[sim: reply fine]", depends_on=["one"]))
        )
    )
    done = occoord_run("--simulate", "--workdir", str(workdir))
    assert done.returncode == 0, done.stderr
    assert "two: queued -> pending" in done.stdout and ": done" in done.stdout
    path.write_text(json.dumps(manifest(task("bad", "[sim: error APIError fatal]"))))
    failed = occoord_run("--simulate", "--workdir", str(workdir))
    assert failed.returncode == 1, failed.stderr
    dry = occoord_run("--dry-run")
    assert dry.returncode == 0 and "level 0: bad" in dry.stdout and "occoord signal" in dry.stdout
    shutil.rmtree(spool_dir)


def test_hooks_get_the_facts_in_environment_variables_only(
    spool_dir: Path, watcher: Proc, tmp_path: Path
) -> None:
    out = tmp_path / "hooks"
    out.mkdir()
    hook = [sys.executable, "-c", HOOK, str(out)]
    hostile = "'; touch INJECTED; echo $(id) `id` #"
    drop(
        spool_dir,
        "hooks.json",
        manifest(
            task("quick", "[sim: work 0.05] [sim: reply fine]"),
            task("waits", "[sim: hang]"),
            hooks={"on_task_end": hook, "on_run_end": hook},
        ),
    )
    run_dir = the_run(spool_dir)
    wait_state(run_dir, "waits", "pending")
    subprocess.run(
        occoord_argv("signal", "--spool", str(spool_dir), run_dir.name, "waits", "failed", "-m", hostile),
        check=True,
        capture_output=True,
    )
    summary(run_dir)
    # Each hook replaces its file whole (see HOOK): a file that exists is complete.
    wait_for(lambda: all((out / f"{n}.json").exists() for n in ("quick", "waits", "run")), timeout=20)
    waits = hook_record(out, "waits")["env"]
    assert waits["OCCOORD_REASON"] == hostile, "the value arrives verbatim, not interpreted"
    assert waits["OCCOORD_STATE"] == "failed" and waits["OCCOORD_RUN"] == run_dir.name
    quick = hook_record(out, "quick")["env"]
    assert quick["OCCOORD_STATE"] == "done" and quick["OCCOORD_SESSION_ID"].startswith("ses_")
    run = hook_record(out, "run")["env"]
    assert run["OCCOORD_STATE"] == "failed" and run["OCCOORD_SUMMARY"] == str(run_dir / "summary.json")
    assert not list(tmp_path.rglob("INJECTED")) and not Path("INJECTED").exists()


def test_a_run_requeued_while_no_watcher_runs_resumes_at_start(
    spool_dir: Path, simulator: str, workdir: Path
) -> None:
    first = start_watcher(spool_dir, workdir, server=simulator, name="first")
    drop(
        spool_dir,
        "again.json",
        manifest(task("x", "[sim: error APIError fatal]"), task("y", "[sim: work 0.05]")),
    )
    run_dir = the_run(spool_dir)
    assert summary(run_dir)["ok"] is False
    assert first.stop() == 0
    os.rename(run_dir / "tasks" / "x.failed", run_dir / "tasks" / "x.queued")  # by hand, nobody watching
    second = start_watcher(spool_dir, workdir, server=simulator, name="second")
    try:
        wait_for(
            lambda: record(run_dir, "x")["attempt"] == 2 and states(run_dir)["x"] == "failed", timeout=30
        )
        assert summary(run_dir)["ok"] is False, "the run finished again, with a fresh summary"
    finally:
        assert second.stop() == 0


def test_a_cancel_request_for_a_finished_run_is_consumed(spool_dir: Path, watcher: Proc) -> None:
    drop(spool_dir, "done.json", manifest(task("x", "[sim: work 0.05]")))
    run_dir = the_run(spool_dir)
    assert summary(run_dir)["ok"] is True
    (run_dir / "cancel").touch()
    wait_for(lambda: not (run_dir / "cancel").exists(), timeout=15)
    assert states(run_dir) == {"x": "done"}, "nothing to cancel: the outcome stands"
