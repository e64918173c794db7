"""A worktree task's result (issue 12) in summary.json, summary.md and `occoord status`: the result
commit, its branch, the diff stats, and the worktree a failed task kept. Records are written by
hand in a real spool, as the engine leaves them; a plain task's entries keep their former shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from spoolkit import new_run

from occoord.cli.main import main
from occoord.spool.layout import Run, Spool
from occoord.spool.states import Actor, TaskState
from occoord.spool.status import task_rows
from occoord.spool.summary import diff_text, worktree_result, write_summary

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def status(spool: Spool, *args: str) -> str:
    with CliRunner().isolation(env={"OCCOORD_SPOOL": None}) as (out, _err, _):
        try:
            main(["status", "--spool", str(spool.root), *args])
        except SystemExit as exc:
            assert not exc.code, out.getvalue().decode()
    return out.getvalue().decode()


def end(run: Run, task: str, state: TaskState, **details: Any) -> None:
    """The task ended in ``state`` with ``details`` added to its record, as the engine writes it."""
    run.tasks.transition(task, TaskState.QUEUED, state, actor=Actor.COORDINATOR, reason=f"{task} ended")
    record = run.tasks.read(task)
    assert record is not None
    run.tasks.update(task, state, details={**record.details, **details})


def result(commit: str, branch: str, files: int, ins: int, dels: int, **more: Any) -> dict[str, Any]:
    return {
        "start_commit": "c" * 40,
        "result_commit": commit,
        "branch": branch,
        "files_changed": files,
        "insertions": ins,
        "deletions": dels,
        **more,
    }


@pytest.fixture
def mixed(spool: Spool, tmp_path: Path) -> tuple[Run, Path]:
    """A run of a done worktree task (worktree removed), a failed one (worktree kept, on disk) and
    a plain task: what `occoord status` and the summaries are shown."""
    kept = tmp_path / "worktrees" / "run" / "bad-1"
    kept.mkdir(parents=True)
    run = new_run(spool, ["good", "bad", "plain"])
    end(
        run,
        "good",
        TaskState.DONE,
        **result(COMMIT_A, "occoord/r/good", 2, 12, 3, worktree="/gone/good-1", worktree_removed=True),
    )
    end(run, "bad", TaskState.FAILED, **result(COMMIT_B, "occoord/r/bad", 1, 1, 0, worktree=str(kept)))
    end(run, "plain", TaskState.DONE)
    return run, kept


def test_summary_json_holds_each_worktree_tasks_result(mixed: tuple[Run, Path]) -> None:
    run, kept = mixed
    write_summary(run, durable=False)
    tasks = {t["task"]: t for t in json.loads((run.dir / "summary.json").read_text())["tasks"]}
    good, bad, plain = tasks["good"], tasks["bad"], tasks["plain"]
    assert (good["result_commit"], good["branch"]) == (COMMIT_A, "occoord/r/good")
    assert (good["files_changed"], good["insertions"], good["deletions"]) == (2, 12, 3)
    assert "worktree" not in good, "a removed worktree is not named"
    assert bad["worktree"] == str(kept) and bad["result_commit"] == COMMIT_B
    plain_keys = {
        "task",
        "state",
        "attempts",
        "duration_s",
        "session_id",
        "reason",
        "server_version",
        "usage",
    }
    assert set(plain) == plain_keys, "a plain task's entry keeps its former shape"


def test_summary_md_shows_the_changes_per_task_and_the_kept_worktrees(mixed: tuple[Run, Path]) -> None:
    run, kept = mixed
    write_summary(run, durable=False)
    lines = (run.dir / "summary.md").read_text().splitlines()
    head = next(line for line in lines if line.startswith("| task "))
    assert "| changes | commit |" in head
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ")}
    assert "| +12 -3 in 2 files | aaaaaaaaaaaa |" in rows["good"]
    assert "| +1 -0 in 1 file | bbbbbbbbbbbb |" in rows["bad"]
    assert "|  |  |" in rows["plain"], "empty cells for a plain task"
    assert f"- bad: `{kept}` (branch `occoord/r/bad`)" in lines
    assert not any(line.startswith("- good") for line in lines)
    assert all(line.count(" | ") == head.count(" | ") for line in rows.values()), "every row has every cell"


def test_a_run_without_worktree_tasks_keeps_its_summary_md(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    end(run, "a", TaskState.DONE)
    write_summary(run, durable=False)
    text = (run.dir / "summary.md").read_text()
    assert "| task | state | attempts | duration (s) | session | reason |" in text
    assert "changes" not in text and "Worktrees kept" not in text


def test_malformed_figures_in_a_record_are_left_out() -> None:
    """A record is a file anyone may have written: only well-formed values are shown."""
    details = {
        "result_commit": "",
        "branch": 7,
        "files_changed": True,
        "insertions": -1,
        "deletions": "3",
        "worktree": ["x"],
    }
    assert worktree_result(details) == {}
    assert diff_text(worktree_result({"files_changed": 1, "insertions": 2})) == "", "all three or none"
    assert diff_text({"files_changed": 0, "insertions": 0, "deletions": 0}) == "+0 -0 in 0 files"
    stale = worktree_result({"worktree": "/w", "worktree_removed": True, "branch": "b"})
    assert stale == {"branch": "b"}


def test_status_shows_the_stats_per_task_and_where_a_failed_task_left_its_work(
    mixed: tuple[Run, Path],
) -> None:
    run, kept = mixed
    spool = Spool(run.dir.parent.parent)
    out = status(spool, run.id).splitlines()
    good = next(line for line in out if line.startswith("  good "))
    bad = next(line for line in out if line.startswith("  bad "))
    assert "+12 -3 in 2 files  aaaaaaaaaaaa on occoord/r/good" in good
    assert "+1 -0 in 1 file  bbbbbbbbbbbb on occoord/r/bad" in bad
    assert f"worktree kept: {kept} (branch occoord/r/bad)" in out[out.index(bad) + 1]
    assert sum("worktree kept" in line for line in out) == 1
    plain = next(line for line in out if line.startswith("  plain "))
    assert " file" not in plain and " on occoord/" not in plain
    rows = {r["task"]: r for r in json.loads(status(spool, "--json", run.id))["task_states"]}
    assert rows["good"]["files_changed"] == 2 and rows["good"]["result_commit"] == COMMIT_A
    assert rows["bad"]["worktree"] == str(kept)
    assert "result_commit" not in rows["plain"]
    kept.rmdir()  # `occoord clean` removed it (and writes no record): no longer shown
    assert "worktree kept" not in status(spool, run.id)


def test_a_pending_attempt_shows_its_worktree_but_not_an_earlier_attempts_result(
    spool: Spool, tmp_path: Path
) -> None:
    """A retry starts with its predecessor's details: attempt 2 has no result of its own yet."""
    where = tmp_path / "wt" / "t-2"
    where.mkdir(parents=True)
    run = new_run(spool, ["t"])
    run.tasks.transition("t", TaskState.QUEUED, TaskState.PENDING, reason="dispatched", attempt=2)
    run.tasks.update(
        "t", TaskState.PENDING, details=result(COMMIT_A, "occoord/r/t-2", 1, 1, 1, worktree=str(where))
    )
    (row,) = task_rows(run)
    assert row["worktree"] == str(where) and row["branch"] == "occoord/r/t-2"
    assert not {"result_commit", "files_changed", "insertions", "deletions"} & set(row)
    line = next(line for line in status(spool, run.id).splitlines() if line.startswith("  t "))
    assert " in 1 file" not in line and "aaaa" not in line
