"""kill -9 in the middle of creating a worktree and of committing a result, then the same call
again: no orphan worktree, no second branch, no lost result.

The crash is made to happen at a known point: the repository has a git filter on one file whose
command signals that it runs and then sleeps, so ``git worktree add`` (its checkout smudges the
file) or ``git add`` (it cleans the file) is inside git when the process group is killed. The
filter is then removed, as if the watcher restarted, and the call is made again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gitrepo import Repo

from occoord.workspace.git import git_dirs
from occoord.workspace.names import branch_name, worktree_path
from occoord.workspace.results import commit_all
from occoord.workspace.worktrees import ensure_worktree, list_worktrees

RUN = "20240101T000000Z-plan"


def slow_filter(repo: Repo, marker: Path, kind: str) -> None:
    repo.git("config", f"filter.slow.{kind}", f"touch '{marker}' && sleep 60 && cat")
    repo.git("config", f"filter.slow.{'clean' if kind == 'smudge' else 'smudge'}", "cat")


def kill_when(marker: Path, code: str) -> None:
    """Run ``code`` in a Python of its own and SIGKILL its whole process group once ``marker``
    appears (the filter is running, inside git)."""
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, "it ended before the crash point"
            assert time.monotonic() < deadline, "the crash point was never reached"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_kill_during_worktree_creation_then_again(repo: Repo, root: Path, tmp_path: Path) -> None:
    repo.commit("a filtered file", **{".gitattributes": "slow.txt filter=slow\n", "slow.txt": "content\n"})
    start = repo.head()
    path, branch = worktree_path(root, RUN, "a", 1), branch_name(RUN, "a", 1)
    marker = tmp_path / "in-checkout"
    slow_filter(repo, marker, "smudge")
    kill_when(
        marker,
        "from pathlib import Path\n"
        "from occoord.workspace.worktrees import ensure_worktree\n"
        f"ensure_worktree(Path({str(repo.path)!r}), Path({str(path)!r}), {branch!r}, {start!r})\n",
    )
    half = [e for e in list_worktrees(repo.path) if not e.main]
    assert len(half) == 1 and half[0].locked == "initializing"  # what git leaves: a locked, half checkout
    repo.git("config", "--unset", "filter.slow.smudge")
    wt = ensure_worktree(repo.path, path, branch, start)
    assert wt.created
    assert (path / "slow.txt").read_text() == "content\n"
    entries = [e for e in list_worktrees(repo.path) if not e.main]
    assert [(e.path, e.branch, e.locked) for e in entries] == [(path, branch, None)]
    assert [b for b in repo.branches() if b.startswith("occoord/")] == [branch]


def test_kill_during_the_commit_then_again(repo: Repo, root: Path, tmp_path: Path) -> None:
    repo.commit("a filtered file", **{".gitattributes": "slow.txt filter=slow\n"})
    path, branch = worktree_path(root, RUN, "a", 1), branch_name(RUN, "a", 1)
    ensure_worktree(repo.path, path, branch, repo.head())
    (path / "slow.txt").write_text("the agent's work\n")
    (path / "other.txt").write_text("more work\n")
    marker = tmp_path / "in-add"
    slow_filter(repo, marker, "clean")
    kill_when(
        marker,
        "from pathlib import Path\n"
        "from occoord.workspace.results import commit_all\n"
        f"commit_all(Path({str(path)!r}), 'occoord: a', branch={branch!r})\n",
    )
    own, _ = git_dirs(path)
    assert (own / "index.lock").exists()  # the killed git add held the worktree's index
    repo.git("config", "--unset", "filter.slow.clean")
    result = commit_all(path, "occoord: a", branch=branch)
    assert repo.show(result, "slow.txt") == "the agent's work"
    assert repo.show(result, "other.txt") == "more work"
    assert repo.git("rev-parse", branch) == result
    assert repo.status(cwd=path) == ""
    assert commit_all(path, "occoord: a", branch=branch) == result
