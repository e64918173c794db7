"""Worktree tasks (issue 12) end to end: `occoord watch` spawning the REAL `opencode serve`, whose
agents (the scripted model of tests/support/fakemodel.py) change files with their own bash tool.

Each test makes a real git repository in its temporary folder and reads what a user would: the
task records, results/T.diff, summary.json, and the repository itself (branches, commits, the main
checkout). The world (watcher, server, scripted model) is test_e2e_real.py's Stage.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2ekit import drop, manifest, max_concurrent_pending, record, states, summary, task, the_run
from support.gitrepo import git, make_repo
from support.processes import Proc, occoord_argv, wait_for
from test_e2e_real import TURN, Stage, opencode_bin, stage, tool_calls

__all__ = ["opencode_bin", "stage"]  # fixtures: pytest finds them in this module's namespace

real = pytest.mark.real_opencode
slow = pytest.mark.slow


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit on main, and a user's uncommitted edit that must survive."""
    path = make_repo(tmp_path / "repo", {"README.md": "hello\n"})
    (path / "scratch.txt").write_text("the user's own work, not committed\n")
    return path


def watch(stage: Stage) -> Proc:
    """The watcher, its worktrees under the test's folder (not the throwaway XDG data dir)."""
    return stage.watch("watch", "--worktree-root", str(stage.tmp / "worktrees"))


def result(run_dir: Path, task_id: str) -> dict[str, Any]:
    """The task's record once its result commit is recorded (a signalled task's comes a moment
    after its state: once its session has ended)."""
    return dict(
        wait_for(lambda: (r := record(run_dir, task_id))["details"].get("result_commit") and r, timeout=TURN)
    )


def assert_removed(run_dir: Path, task_id: str) -> None:
    """A done task's worktree is removed (keep_worktree: on_failure), its branch kept."""
    details = result(run_dir, task_id)["details"]
    assert isinstance(details, dict) and details.get("worktree_removed") is True, details
    assert not Path(details["worktree"]).exists(), task_id


def assert_checkout_untouched(repo: Path, head: str) -> None:
    assert (repo / "README.md").read_text() == "hello\n"
    assert (repo / "scratch.txt").read_text() == "the user's own work, not committed\n"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main" and git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == "?? scratch.txt"


@real
@slow
def test_the_agent_edits_a_file_in_its_worktree_and_the_result_commit_holds_it(
    stage: Stage, repo: Path
) -> None:
    head = git(repo, "rev-parse", "HEAD")
    watcher = watch(stage)
    edit = "[model: bash echo edited by the agent > README.md && echo a new file > notes.txt]"
    drop(
        stage.spool,
        "edit.json",
        manifest(
            task("edit", f"Edit the README.\n{edit}", description="edit the readme"),
            defaults={"directory": str(repo), "worktree": True},
        ),
    )
    run_dir = the_run(stage.spool)
    verdict = summary(run_dir, timeout=2 * TURN)
    assert verdict["ok"] is True, (states(run_dir), stage.server_log())
    rec = record(run_dir, "edit")
    details = rec["details"]
    assert rec["actor"] == "coordinator" and "classified from the session's messages" in rec["reason"]
    # The agent worked in the attempt's own worktree, on its own branch, from the base commit.
    worktree = Path(details["worktree"])
    assert worktree == stage.tmp / "worktrees" / run_dir.name / "edit-1"
    assert details["directory"] == str(worktree) and details["branch"] == f"occoord/{run_dir.name}/edit"
    assert details["start_commit"] == head
    model = stage.model
    assert model is not None
    (command,) = wait_for(lambda: tool_calls(model, "edit"), timeout=TURN)
    assert command.startswith("echo edited by the agent > README.md"), command
    with stage.http() as http:  # by id: a listing by directory finds nothing once it is removed
        session = http.get(f"/session/{rec['session_id']}", params={"directory": str(repo)}).json()
    assert session["directory"] == str(worktree), "the session itself worked there"
    # Its edit is the result commit, on its branch, with the stats and the patch.
    commit = details["result_commit"]
    assert git(repo, "rev-parse", f"occoord/{run_dir.name}/edit") == commit
    assert git(repo, "show", f"{commit}:README.md") == "edited by the agent"
    assert git(repo, "show", f"{commit}:notes.txt") == "a new file"
    assert git(repo, "rev-parse", f"{commit}^") == head
    assert git(repo, "log", "-1", "--format=%s", commit) == f"occoord: {run_dir.name}/edit: edit the readme"
    assert (details["files_changed"], details["insertions"], details["deletions"]) == (2, 2, 1)
    diff = (run_dir / "results" / "edit.diff").read_text()
    assert "+edited by the agent" in diff and "-hello" in diff and "+a new file" in diff
    (entry,) = verdict["tasks"]
    assert entry["result_commit"] == commit and entry["branch"] == details["branch"]
    assert (entry["files_changed"], entry["insertions"], entry["deletions"]) == (2, 2, 1)
    assert "+2 -1 in 2 files" in (run_dir / "summary.md").read_text()
    shown = subprocess.run(
        occoord_argv("status", "--spool", str(stage.spool), run_dir.name),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"+2 -1 in 2 files  {commit[:12]} on {details['branch']}" in shown, shown
    # Done: the worktree is removed (keep_worktree: on_failure), the branch stays, the checkout too.
    assert details["worktree_removed"] is True and not worktree.exists()
    assert_checkout_untouched(repo, head)
    stage.stop(watcher)


@real
@slow
def test_parallel_worktree_tasks_and_a_chain_whose_agent_reads_its_dependencys_file(
    stage: Stage, repo: Path
) -> None:
    """a and c run at once (a slowly), each writing README.md its own way; b, after a, reads a's
    file with cat, writes what it read, and signals done itself: b's result has a's work and its own,
    and none of c's."""
    head = git(repo, "rev-parse", "HEAD")
    watcher = watch(stage)
    drop(
        stage.spool,
        "chain.json",
        manifest(
            task("a", "Write a.\n[model: slow 4]\n[model: bash echo from a > a.txt && echo A > README.md]"),
            task("c", "Write c.\n[model: bash echo from c > c.txt && echo C > README.md]"),
            task("b", "Read a.\n[model: bash cat a.txt > b.txt && echo and b >> b.txt]\n[model: signal done]",
                 depends_on=["a"]),
            defaults={"directory": str(repo), "worktree": True},
            concurrency=2,
        ),
    )  # fmt: skip
    run_dir = the_run(stage.spool)
    verdict = summary(run_dir, timeout=3 * TURN)
    assert verdict["ok"] is True, (states(run_dir), stage.server_log())
    assert max_concurrent_pending([run_dir]) == 2, "a and c ran at the same time"
    commits = {name: str(result(run_dir, name)["details"]["result_commit"]) for name in ("a", "b", "c")}
    assert record(run_dir, "b")["actor"] == "outside", "b's agent signalled done itself"
    assert record(run_dir, "b")["reason"] == "signalled done by occoord signal"
    # Parallel tasks on their own branches, each with its own README.
    assert git(repo, "show", f"{commits['a']}:README.md") == "A"
    assert git(repo, "show", f"{commits['c']}:README.md") == "C"
    # b started from a's result and its commit holds both files; what it read was a's.
    b = record(run_dir, "b")["details"]
    assert b["start_commit"] == commits["a"]
    files = set(git(repo, "ls-tree", "--name-only", commits["b"]).split())
    assert files == {"README.md", "a.txt", "b.txt"}, files
    assert git(repo, "show", f"{commits['b']}:b.txt") == "from a\nand b"
    assert git(repo, "show", f"{commits['b']}:README.md") == "A"
    assert (b["files_changed"], b["insertions"], b["deletions"]) == (1, 2, 0), "b's diff is from a's result"
    assert git(repo, "rev-parse", f"occoord/{run_dir.name}/b") == commits["b"]
    assert git(repo, "merge-base", "--is-ancestor", commits["a"], commits["b"]) == ""
    for name in ("a", "b", "c"):
        assert_removed(run_dir, name)
    assert_checkout_untouched(repo, head)
    stage.stop(watcher)


@real
@slow
def test_a_run_ended_by_a_signalled_worktree_task_has_its_result_in_the_summary(
    stage: Stage, repo: Path
) -> None:
    """The agent edits, then signals done itself: the task is done before its session ends, and
    its result commit is recorded after. Its run's summary must show that result too."""
    watcher = watch(stage)
    steps = "[model: bash echo solo > solo.txt]\n[model: signal done]"
    drop(
        stage.spool,
        "solo.json",
        manifest(task("solo", f"Write solo.\n{steps}"), defaults={"directory": str(repo), "worktree": True}),
    )
    run_dir = the_run(stage.spool)
    summary(run_dir, timeout=2 * TURN)
    details = result(run_dir, "solo")["details"]
    assert git(repo, "show", f"{details['result_commit']}:solo.txt") == "solo"
    assert_removed(run_dir, "solo")
    stage.stop(watcher)
    (entry,) = summary(run_dir)["tasks"]
    # The summary was written when the signal finished the run, before the result was committed;
    # it is written again once the result is recorded.
    assert entry["result_commit"] == details["result_commit"] and entry["files_changed"] == 1
    assert "worktree" not in entry, "it was removed"
