"""Dependencies carry work forward: a chain, a diamond whose last task starts from a merge made
without a checkout, and a conflicting diamond that names the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepo import Repo

from occoord.errors import GitError
from occoord.workspace.git import MergeConflict
from occoord.workspace.merge import independent_commits, start_commit
from occoord.workspace.names import branch_name, worktree_path
from occoord.workspace.results import commit_all
from occoord.workspace.worktrees import ensure_worktree

RUN = "20240101T000000Z-plan"


def run_task(repo: Repo, root: Path, task: str, start: str, **files: str) -> str:
    """One attempt: a worktree at ``start``, the agent's files written, the result committed."""
    path, branch = worktree_path(root, RUN, task, 1), branch_name(RUN, task, 1)
    ensure_worktree(repo.path, path, branch, start)
    for name, text in files.items():
        repo.write(name, text, under=path)
    return commit_all(path, f"occoord: {RUN}/{task}", branch=branch)


def test_a_chain_carries_the_first_result_into_the_second(repo: Repo, root: Path) -> None:
    a = run_task(repo, root, "a", repo.head(), **{"a.txt": "from a\n"})
    b_start = start_commit(repo.path, [a], message="unused")
    assert b_start == a
    path = worktree_path(root, RUN, "b", 1)
    ensure_worktree(repo.path, path, branch_name(RUN, "b", 1), b_start)
    assert (path / "a.txt").read_text() == "from a\n"


def test_a_diamond_starts_the_last_task_from_a_merge_of_the_middle_ones(repo: Repo, root: Path) -> None:
    repo.write("README.md", "the user's uncommitted edit\n")
    before = (repo.head(), repo.status())
    a = run_task(repo, root, "a", repo.head(), **{"shared.txt": "1\n2\n3\n"})
    b = run_task(repo, root, "b", a, **{"shared.txt": "one\n2\n3\n", "b.txt": "b\n"})
    c = run_task(repo, root, "c", a, **{"shared.txt": "1\n2\nthree\n", "c.txt": "c\n"})
    d_start = start_commit(repo.path, [b, c], message="occoord: merge of b, c for d\n")
    assert repo.git("rev-list", "--parents", "-n", "1", d_start).split() == [d_start, b, c]
    assert repo.git("show", "-s", "--format=%an|%B", d_start) == "occoord|occoord: merge of b, c for d"
    assert repo.show(d_start, "shared.txt") == "one\n2\nthree"
    path = worktree_path(root, RUN, "d", 1)
    ensure_worktree(repo.path, path, branch_name(RUN, "d", 1), d_start)
    assert (path / "b.txt").read_text() == "b\n" and (path / "c.txt").read_text() == "c\n"
    assert (path / "shared.txt").read_text() == "one\n2\nthree\n"  # both edits of a's file
    assert (repo.head(), repo.status()) == before  # no checkout was touched


def test_the_merge_is_the_same_commit_when_made_again(repo: Repo, root: Path) -> None:
    b = run_task(repo, root, "b", repo.head(), **{"b.txt": "b\n"})
    c = run_task(repo, root, "c", repo.head(), **{"c.txt": "c\n"})
    first = start_commit(repo.path, [b, c], message="m\n")
    assert start_commit(repo.path, [b, c], message="m\n") == first  # a restart finds its branch's start


def test_a_conflicting_diamond_names_the_file(repo: Repo, root: Path) -> None:
    a = run_task(repo, root, "a", repo.head(), **{"shared.txt": "a\n"})
    b = run_task(repo, root, "b", a, **{"shared.txt": "b\n", "ok.txt": "fine\n"})
    c = run_task(repo, root, "c", a, **{"shared.txt": "c\n", "dir/other file.txt": "x\n"})
    with pytest.raises(MergeConflict) as info:
        start_commit(repo.path, [b, c], message="m")
    assert info.value.files == ("shared.txt",)
    assert "shared.txt" in str(info.value)
    assert isinstance(info.value, GitError)


def test_three_results_merge_into_one_commit_with_three_parents(repo: Repo, root: Path) -> None:
    base = repo.head()
    heads = [run_task(repo, root, t, base, **{f"{t}.txt": t}) for t in ("x", "y", "z")]
    merged = start_commit(repo.path, heads, message="m\n")
    assert repo.git("rev-list", "--parents", "-n", "1", merged).split()[1:] == heads
    assert repo.git("ls-tree", "--name-only", merged).splitlines() == [
        "README.md",
        "src",
        "x.txt",
        "y.txt",
        "z.txt",
    ]


def test_a_conflict_among_three_names_the_file(repo: Repo, root: Path) -> None:
    base = repo.head()
    x = run_task(repo, root, "x", base, **{"x.txt": "x"})
    y = run_task(repo, root, "y", base, **{"same.txt": "y"})
    z = run_task(repo, root, "z", base, **{"same.txt": "z"})
    with pytest.raises(MergeConflict) as info:
        start_commit(repo.path, [x, y, z], message="m")
    assert info.value.files == ("same.txt",)


def test_duplicates_and_ancestors_collapse(repo: Repo, root: Path) -> None:
    a = run_task(repo, root, "a", repo.head(), **{"a.txt": "a"})
    b = run_task(repo, root, "b", a, **{"b.txt": "b"})  # b contains a
    assert independent_commits(repo.path, [a, b, a, b[:12]]) == (b,)
    assert start_commit(repo.path, [a, b, b], message="m") == b
    nothing = run_task(repo, root, "n", a)  # succeeded without changes: its start commit
    assert nothing == a
    assert start_commit(repo.path, [nothing, b], message="m") == b


def test_an_unknown_commit_is_an_error_and_no_commit_is_a_mistake(repo: Repo) -> None:
    with pytest.raises(GitError, match="no commit"):
        start_commit(repo.path, ["0" * 40], message="m")
    with pytest.raises(ValueError):
        start_commit(repo.path, [], message="m")
