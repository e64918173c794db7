"""Running git: finding repositories and commits, and failures mapped to GitError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gitrepo import Repo

from occoord.errors import GitError, OccoordError
from occoord.workspace.git import dirty_paths, git, is_ancestor, repo_root, resolve


def test_repo_root_finds_the_top_or_none(repo: Repo, tmp_path: Path) -> None:
    assert repo_root(repo.path / "src") == repo.path
    plain = tmp_path / "plain"
    plain.mkdir()
    assert repo_root(plain) is None
    repo.git("init", "--quiet", "--bare", str(tmp_path / "bare.git"))
    assert repo_root(tmp_path / "bare.git") is None


def test_resolve_names_commits_and_nothing_else(repo: Repo) -> None:
    first = repo.head()
    second = repo.commit("second", **{"x.txt": "x"})
    repo.git("tag", "v1", first)
    assert resolve(repo.path, "HEAD") == second
    assert resolve(repo.path, "main~1") == first
    assert resolve(repo.path, "v1") == first
    assert resolve(repo.path, first[:10]) == first
    for unknown in ("nope", "", "--all", "-h", "HEAD:README.md", "a\nb", "x\x00"):
        assert resolve(repo.path, unknown) is None, unknown
    assert is_ancestor(repo.path, first, second) and not is_ancestor(repo.path, second, first)


def test_a_repository_without_commits_resolves_nothing(make_repo: Callable[..., Repo]) -> None:
    empty = make_repo("empty", commit=False)
    assert repo_root(empty.path) == empty.path
    assert resolve(empty.path, "HEAD") is None


def test_a_git_dir_inherited_from_a_hook_does_not_redirect_commands(
    repo: Repo, make_repo: Callable[..., Repo], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_repo("other")
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other.path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other.path / ".git" / "index"))
    assert repo_root(repo.path / "src") == repo.path


def test_failures_are_git_errors_with_the_reason(
    repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(GitError, match="git rev-parse failed: fatal: ") as info:
        git(repo.path, "rev-parse", "--verify", "no-such-rev")
    assert isinstance(info.value, OccoordError) and info.value.command[-1] == "no-such-rev"
    with pytest.raises(GitError, match="cannot run git rev-parse here"):
        git(tmp_path / "missing", "rev-parse", "HEAD")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(GitError, match="git is not installed"):
        repo_root(repo.path)


def test_dirty_paths_sees_every_kind_of_change(repo: Repo) -> None:
    assert dirty_paths(repo.path) == ()
    repo.commit("ignore", **{".gitignore": "*.log\n"})
    repo.write("README.md", "changed\n")
    repo.write("new dir/new file.txt", "new\n")
    repo.write("debug.log", "ignored\n")
    repo.git("mv", "src/app.py", "src/main.py")
    assert sorted(dirty_paths(repo.path)) == ["README.md", "new dir/new file.txt", "src/main.py"]
