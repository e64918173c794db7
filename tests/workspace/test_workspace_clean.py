"""``occoord clean``'s function: the runs' worktrees (and branches) go, dirty ones stay unless
forced, other runs and the user's checkout are untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gitrepo import Repo

from occoord.workspace.clean import clean_runs
from occoord.workspace.names import branch_name, run_worktrees, worktree_path
from occoord.workspace.results import commit_all
from occoord.workspace.worktrees import ensure_worktree, list_worktrees

OLD, OTHER = "20240101T000000Z-old", "20240102T000000Z-other"


def attempt(repo: Repo, root: Path, run: str, task: str, n: int = 1, *, result: bool = True) -> Path:
    path, branch = worktree_path(root, run, task, n), branch_name(run, task, n)
    ensure_worktree(repo.path, path, branch, repo.head())
    (path / f"{task}.txt").write_text(task)
    if result:
        commit_all(path, f"occoord: {run}/{task}", branch=branch)
    return path


def test_clean_removes_a_runs_worktrees_and_keeps_its_branches(repo: Repo, root: Path) -> None:
    repo.write("README.md", "the user's edit\n")
    a, b2 = attempt(repo, root, OLD, "a"), attempt(repo, root, OLD, "b", 2)
    keep = attempt(repo, root, OTHER, "a")
    report = clean_runs([OLD], root=root)
    assert report.clean
    assert sorted(report.removed) == sorted([a, b2])
    assert not a.exists() and not b2.exists() and not run_worktrees(root, OLD).exists()
    assert keep.exists()
    assert branch_name(OLD, "a", 1) in repo.branches() and report.branches_deleted == ()
    assert [e.path for e in list_worktrees(repo.path)] == [repo.path, keep]
    assert repo.status() == "M README.md"


def test_clean_with_branches_deletes_the_runs_branches_only(repo: Repo, root: Path) -> None:
    attempt(repo, root, OLD, "a")
    attempt(repo, root, OTHER, "a")
    repo.git("branch", "occoord-not-ours")
    report = clean_runs([OLD], root=root, branches=True)
    assert report.branches_deleted == (branch_name(OLD, "a", 1),)
    assert sorted(repo.branches()) == sorted([branch_name(OTHER, "a", 1), "main", "occoord-not-ours"])


def test_a_dirty_worktree_is_refused_by_name_unless_forced(repo: Repo, root: Path) -> None:
    clean = attempt(repo, root, OLD, "a")
    dirty = attempt(repo, root, OLD, "b", result=False)  # the agent's file, never committed
    report = clean_runs([OLD], root=root, branches=True)
    assert report.removed == (clean,)
    assert [(r.path, "b.txt" in r.reason) for r in report.refused] == [(dirty, True)]
    assert "uncommitted changes" in str(report.refused[0]) and str(dirty) in str(report.refused[0])
    assert dirty.exists() and branch_name(OLD, "b", 1) in repo.branches()
    assert branch_name(OLD, "a", 1) not in repo.branches()
    forced = clean_runs([OLD], root=root, branches=True, force=True)
    assert forced.removed == (dirty,) and forced.clean
    assert branch_name(OLD, "b", 1) not in repo.branches()
    assert not run_worktrees(root, OLD).exists()


def test_branches_of_removed_worktrees_are_found_through_the_named_repositories(
    make_repo: Callable[..., Repo], root: Path
) -> None:
    one, two = make_repo("one"), make_repo("two")
    attempt(one, root, OLD, "a")
    attempt(two, root, OLD, "b")
    clean_runs([OLD], root=root)  # the folders are gone now: only the plans name the repositories
    assert clean_runs([OLD], root=root, branches=True).branches_deleted == ()
    report = clean_runs([OLD], root=root, repos=[one.path / "src", two.path], branches=True)
    assert report.branches_deleted == (branch_name(OLD, "a", 1), branch_name(OLD, "b", 1))
    assert len(report.repositories) == 2


def test_a_folder_git_forgot_is_removed_only_if_empty_or_forced(repo: Repo, root: Path) -> None:
    folder = run_worktrees(root, OLD)
    (folder / "a-1").mkdir(parents=True)
    (folder / "b-1").mkdir()
    (folder / "b-1" / "left.txt").write_text("?")
    report = clean_runs([OLD], root=root)
    assert report.removed == (folder / "a-1",)
    assert [r.path for r in report.refused] == [folder / "b-1"]
    assert clean_runs([OLD], root=root, force=True).removed == (folder / "b-1",)
    assert not folder.exists()


def test_cleaning_a_run_without_worktrees_does_nothing(repo: Repo, root: Path) -> None:
    report = clean_runs([OLD], root=root, repos=[repo.path], branches=True)
    assert (report.removed, report.refused, report.branches_deleted) == ((), (), ())


def test_worktrees_under_a_moved_root_go_and_a_users_own_one_stays(
    repo: Repo, root: Path, tmp_path: Path
) -> None:
    moved = attempt(repo, tmp_path / "old-root", OLD, "a")
    mine = tmp_path / "my-checkout"
    repo.git("worktree", "add", "--quiet", "--detach", str(mine), "main")
    repo.git(
        "checkout", "--quiet", "-B", branch_name(OLD, "b", 1), cwd=mine
    )  # the user's, on occoord's branch
    report = clean_runs([OLD], root=root, repos=[repo.path])
    assert report.removed == (moved,)
    assert mine.exists()
    assert [e.path for e in list_worktrees(repo.path)] == [repo.path, mine]
