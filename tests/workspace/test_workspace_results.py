"""Results: what the agent left, committed on its branch as occoord; the patch and its stats."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from gitrepo import Repo

from occoord.errors import GitError
from occoord.workspace.git import git_dirs
from occoord.workspace.names import branch_name, worktree_path
from occoord.workspace.results import DiffStats, commit_all, diff_stats, patch
from occoord.workspace.worktrees import ensure_worktree

RUN = "20240101T000000Z-plan"


def new_worktree(repo: Repo, root: Path, task: str = "a") -> tuple[Path, str, str]:
    path, branch = worktree_path(root, RUN, task, 1), branch_name(RUN, task, 1)
    start = repo.head()
    ensure_worktree(repo.path, path, branch, start)
    return path, branch, start


def test_everything_left_is_committed_new_files_too_as_occoord(repo: Repo, root: Path) -> None:
    path, branch, start = new_worktree(repo, root)
    (path / "README.md").write_text("changed\n")
    (path / "src" / "app.py").unlink()
    (path / "docs").mkdir()
    (path / "docs" / "new.md").write_text("new\n")
    result = commit_all(path, "occoord: run/a: # a description\n\nbody", branch=branch)
    assert result != start
    assert repo.git("rev-parse", branch) == result
    assert repo.status(cwd=path) == ""
    assert repo.git("show", "-s", "--format=%an <%ae>|%cn <%ce>", result) == (
        "occoord <occoord@localhost>|occoord <occoord@localhost>"
    )
    assert repo.git("show", "-s", "--format=%B", result) == "occoord: run/a: # a description\n\nbody"
    assert repo.git("diff-tree", "-r", "--name-status", start, result).splitlines() == [
        "M\tREADME.md",
        "A\tdocs/new.md",
        "D\tsrc/app.py",
    ]


def test_nothing_changed_gives_the_start_commit(repo: Repo, root: Path) -> None:
    path, branch, start = new_worktree(repo, root)
    assert commit_all(path, "occoord: nothing", branch=branch) == start
    assert diff_stats(repo.path, start, start) == DiffStats(0, 0, 0)
    assert patch(repo.path, start, start) == b""


def test_the_agents_own_commits_are_kept_under_the_result(repo: Repo, root: Path) -> None:
    path, branch, start = new_worktree(repo, root)
    (path / "one.txt").write_text("1\n")
    repo.git("add", "one.txt", cwd=path)
    repo.git("commit", "--quiet", "-m", "the agent's commit", cwd=path)
    agents = repo.head(path)
    assert repo.git("rev-parse", f"{agents}^") == start
    assert commit_all(path, "occoord: all", branch=branch) == agents  # nothing left over
    (path / "two.txt").write_text("2\n")
    result = commit_all(path, "occoord: all", branch=branch)
    assert repo.git("rev-parse", f"{result}^") == agents
    assert repo.git("show", "-s", "--format=%an", agents) == "A User"


def test_no_identity_configured_anywhere_is_fine(make_repo: Callable[..., Repo], root: Path) -> None:
    repo = make_repo("no-identity", identity=False, commit=False)
    subprocess.run(
        ["git", "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-q", "--allow-empty", "-m", "init"],
        cwd=repo.path,
        check=True,
    )
    path, branch, _ = new_worktree(repo, root)
    (path / "f.txt").write_text("f\n")
    result = commit_all(path, "occoord: f", branch=branch)
    assert repo.git("show", "-s", "--format=%an", result) == "occoord"


def test_locks_left_by_a_killed_commit_do_not_block_the_next(repo: Repo, root: Path) -> None:
    path, branch, _ = new_worktree(repo, root)
    own, common = git_dirs(path)
    (own / "index.lock").write_text("")
    (common / "refs" / "heads" / f"{branch}.lock").write_text("")
    (path / "f.txt").write_text("f\n")
    result = commit_all(path, "occoord: f", branch=branch)
    assert repo.git("rev-parse", branch) == result
    assert not (own / "index.lock").exists()
    assert commit_all(path, "occoord: f", branch=branch) == result  # again: the same result


def test_an_agent_that_left_another_branch_gets_an_error(repo: Repo, root: Path) -> None:
    path, branch, _ = new_worktree(repo, root)
    repo.git("checkout", "--quiet", "--detach", cwd=path)
    with pytest.raises(GitError, match="detached HEAD"):
        commit_all(path, "occoord: x", branch=branch)


def test_the_main_checkout_is_never_committed_in(repo: Repo) -> None:
    repo.write("README.md", "the user's edit\n")
    with pytest.raises(GitError, match="main checkout"):
        commit_all(repo.path, "occoord: x")
    assert repo.status() == "M README.md"


def test_patch_applies_to_the_start_and_gives_the_result(repo: Repo, root: Path, tmp_path: Path) -> None:
    path, branch, start = new_worktree(repo, root)
    (path / "README.md").write_text("hello\nmore\n")
    (path / "blob.bin").write_bytes(bytes(range(256)))
    (path / "src" / "app.py").rename(path / "src" / "main.py")
    (path / "ünïcode name.txt").write_text("x\n")
    result = commit_all(path, "occoord: p", branch=branch)
    diff = patch(repo.path, start, result)
    assert b"GIT binary patch" in diff and b"rename from src/app.py" in diff
    check = tmp_path / "check"
    repo.git("worktree", "add", "--quiet", "--detach", str(check), start)
    subprocess.run(["git", "apply", "--index"], cwd=check, input=diff, check=True)
    assert repo.git("write-tree", cwd=check) == repo.git("rev-parse", f"{result}^{{tree}}")
    # README +1 line; blob.bin binary (no lines); the rename (no change); the new file +1
    assert diff_stats(repo.path, start, result) == DiffStats(files=4, insertions=2, deletions=0)
