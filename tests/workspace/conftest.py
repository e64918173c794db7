"""Fixtures of the git layer's tests: real repositories in temporary folders, no mock of git.

Every test runs with the user's global and system git configuration hidden, so nothing depends
on them: the repositories made here set their own identity (the "user's" commits), and occoord's
own commits must work without one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gitrepo import Repo


@pytest.fixture(autouse=True)
def _no_user_git_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never find an outer repository


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Repo]:
    def make(name: str = "repo", *, identity: bool = True, commit: bool = True) -> Repo:
        repo = Repo(tmp_path / name)
        repo.path.mkdir()
        repo.git("init", "--quiet", "--initial-branch=main")
        if identity:
            repo.git("config", "user.name", "A User")
            repo.git("config", "user.email", "user@example.com")
        if commit:
            repo.commit("initial", **{"README.md": "hello\n", "src/app.py": "print('app')\n"})
        return repo

    return make


@pytest.fixture
def repo(make_repo: Callable[..., Repo]) -> Repo:
    return make_repo()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The worktree root (outside the repository, as the default one is)."""
    return tmp_path / "worktrees"
