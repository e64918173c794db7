"""Worktrees of one repository: parallel attempts on their own branches, the user's checkout never
touched, and whatever a crash leaves while one is created found and repaired."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepo import Repo

from occoord.errors import GitError
from occoord.workspace.git import DirtyWorktree, repo_prefix
from occoord.workspace.names import branch_name, worktree_path
from occoord.workspace.results import commit_all
from occoord.workspace.worktrees import (
    ensure_worktree,
    find_worktree,
    list_worktrees,
    remove_worktree,
)

RUN = "20240101T000000Z-plan"


def attempt(repo: Repo, root: Path, task: str, n: int = 1) -> tuple[Path, str]:
    return worktree_path(root, RUN, task, n), branch_name(RUN, task, n)


def test_two_attempts_edit_one_file_differently_and_both_land_on_their_branches(
    repo: Repo, root: Path
) -> None:
    start = repo.head()
    repo.write("README.md", "the user's own edit, not committed\n")
    repo.write("notes.txt", "an untracked file of the user's\n")
    before = repo.status()
    made = []
    for task, text in (("a", "from a\n"), ("b", "from b\n")):
        path, branch = attempt(repo, root, task)
        wt = ensure_worktree(repo.path, path, branch, start)
        assert (wt.path, wt.branch, wt.start, wt.created) == (path, branch, start, True)
        assert (path / "README.md").read_text() == "hello\n"  # the commit, not the user's edit
        (path / "README.md").write_text(text)
        (path / f"new-{task}.txt").write_text(task)
        made.append((branch, commit_all(path, f"occoord: {task}", branch=branch), text))
    for branch, result, text in made:
        assert repo.git("rev-parse", branch) == result
        assert repo.show(result, "README.md") == text.rstrip("\n")
        assert repo.git("rev-parse", f"{result}^") == start
    assert repo.head() == start
    assert repo.git("symbolic-ref", "HEAD") == "refs/heads/main"
    assert repo.status() == before
    assert (repo.path / "README.md").read_text() == "the user's own edit, not committed\n"


def test_an_existing_complete_worktree_is_reused_with_its_work(repo: Repo, root: Path) -> None:
    path, branch = attempt(repo, root, "a")
    ensure_worktree(repo.path, path, branch, repo.head())
    (path / "work.txt").write_text("in progress")
    again = ensure_worktree(repo.path, path, branch, repo.head())
    assert not again.created
    assert (path / "work.txt").read_text() == "in progress"
    assert repo.branches().count(branch) == 1


def test_a_folder_a_crash_left_empty_is_used(repo: Repo, root: Path) -> None:
    path, branch = attempt(repo, root, "a")
    path.mkdir(parents=True)
    assert ensure_worktree(repo.path, path, branch, repo.head()).created
    assert (path / "README.md").exists()


def test_a_folder_holding_only_a_git_file_is_replaced(repo: Repo, root: Path) -> None:
    path, branch = attempt(repo, root, "a")
    path.mkdir(parents=True)
    (path / ".git").write_text("gitdir: /nonexistent/.git/worktrees/a-1\n")
    ensure_worktree(repo.path, path, branch, repo.head())
    assert find_worktree(repo.path, path) is not None


def test_a_branch_a_crash_left_alone_is_reused_not_doubled(repo: Repo, root: Path) -> None:
    start = repo.head()
    path, branch = attempt(repo, root, "a")
    repo.git("branch", branch, start)
    wt = ensure_worktree(repo.path, path, branch, start)
    assert wt.created and repo.head(path) == start
    assert [b for b in repo.branches() if b.startswith("occoord/")] == [branch]


def test_a_worktree_git_did_not_finish_creating_is_made_anew(repo: Repo, root: Path) -> None:
    """What a kill -9 during ``git worktree add`` leaves: registered, locked 'initializing', with
    no checkout."""
    start = repo.head()
    path, branch = attempt(repo, root, "a")
    repo.git("branch", branch, start)
    path.parent.mkdir(parents=True)
    repo.git("worktree", "add", "--no-checkout", "--lock", "--reason", "initializing", str(path), branch)
    assert not (path / "README.md").exists()
    wt = ensure_worktree(repo.path, path, branch, start)
    assert wt.created
    assert (path / "README.md").read_text() == "hello\n"
    entry = find_worktree(repo.path, path)
    assert entry is not None and entry.locked is None and entry.branch == branch
    assert len(list_worktrees(repo.path)) == 2


def test_a_worktree_whose_folder_was_deleted_is_made_anew(repo: Repo, root: Path) -> None:
    import shutil

    path, branch = attempt(repo, root, "a")
    ensure_worktree(repo.path, path, branch, repo.head())
    shutil.rmtree(path)
    assert ensure_worktree(repo.path, path, branch, repo.head()).created
    assert (path / "README.md").exists()


def test_a_branch_that_does_not_descend_from_the_start_is_never_replaced(repo: Repo, root: Path) -> None:
    first = repo.head()
    other = repo.commit("elsewhere", **{"x.txt": "x"})
    repo.git("checkout", "--quiet", "-b", "side", first)
    side = repo.commit("side", **{"y.txt": "y"})
    repo.git("checkout", "--quiet", "main")
    path, branch = attempt(repo, root, "a")
    repo.git("branch", branch, side)
    with pytest.raises(GitError, match="does not descend from the start"):
        ensure_worktree(repo.path, path, branch, other)
    assert repo.git("rev-parse", branch) == side


def test_a_folder_in_the_way_is_not_deleted(repo: Repo, root: Path) -> None:
    path, branch = attempt(repo, root, "a")
    path.mkdir(parents=True)
    (path / "precious.txt").write_text("keep me")
    with pytest.raises(GitError, match="not empty"):
        ensure_worktree(repo.path, path, branch, repo.head())
    assert (path / "precious.txt").read_text() == "keep me"
    assert branch not in repo.branches()


def test_the_main_checkout_is_never_an_attempts_worktree(repo: Repo) -> None:
    with pytest.raises(GitError, match="main checkout"):
        ensure_worktree(repo.path, repo.path, branch_name(RUN, "a", 1), repo.head())
    with pytest.raises(GitError, match="main checkout"):
        remove_worktree(repo.path, repo.path, force=True)


def test_remove_refuses_uncommitted_changes_unless_forced(repo: Repo, root: Path) -> None:
    path, branch = attempt(repo, root, "a")
    ensure_worktree(repo.path, path, branch, repo.head())
    (path / "draft.txt").write_text("untracked work")
    with pytest.raises(DirtyWorktree) as info:
        remove_worktree(repo.path, path)
    assert info.value.paths == ("draft.txt",)
    assert str(path) in str(info.value) and "draft.txt" in str(info.value)
    assert path.exists()
    assert remove_worktree(repo.path, path, force=True)
    assert not path.exists()
    assert branch in repo.branches()  # the branch is the result: it stays
    assert not remove_worktree(repo.path, path)


def test_remove_of_a_clean_worktree_keeps_ignored_files_out_of_the_way(repo: Repo, root: Path) -> None:
    repo.commit("ignore build output", **{".gitignore": "build/\n"})
    path, branch = attempt(repo, root, "a")
    ensure_worktree(repo.path, path, branch, repo.head())
    repo.write("out.o", "binary", under=path / "build")
    assert remove_worktree(repo.path, path)
    assert not path.exists()


def test_a_task_folder_inside_the_repository_maps_into_the_worktree(repo: Repo, root: Path) -> None:
    prefix = repo_prefix(repo.path / "src")
    assert prefix == "src/"
    assert repo_prefix(repo.path) == ""
    path, branch = attempt(repo, root, "a")
    ensure_worktree(repo.path / "src", path, branch, repo.head())
    assert (path / prefix / "app.py").exists()
