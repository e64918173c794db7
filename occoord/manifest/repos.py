"""What a worktree task (``worktree: true``) needs from git, checked when its manifest is read.

Always (a stored plan too): such a task has a directory. With the directories checked (``occoord
validate``, acceptance; not when a stored ``run.json`` is read again): the directory is inside a git
work tree, and ``base`` names a commit there, which becomes the task's ``base_commit``: the base is
resolved once, when the run is accepted, and the plan keeps the commit. A ``base_commit`` already
given (a plan read again with its directories checked) must be a commit of the repository, and is
kept as it is: the branch ``base`` named may have moved on since.

A problem that comes from ``defaults`` is reported there, once, not for each task. Git runs once
per directory and once per (repository, rev), however many tasks share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from occoord.errors import GitError
from occoord.manifest.checks import Checker, show
from occoord.workspace.git import repo_root, resolve

__all__ = ["Repositories", "check_worktree"]

_PATH_SHOWN = 240


class Repositories:
    """git's answers for one manifest, each asked once; a failure is kept as its reason."""

    def __init__(self) -> None:
        self._roots: dict[str, Path | str | None] = {}
        self._commits: dict[tuple[Path, str], str | None] = {}

    def root(self, directory: str) -> Path | str | None:
        """The work tree's top, None outside any, or why git could not tell (a str)."""
        if directory not in self._roots:
            try:
                self._roots[directory] = repo_root(Path(directory))
            except GitError as exc:
                self._roots[directory] = exc.reason
        return self._roots[directory]

    def commit(self, root: Path, rev: str) -> str | None:
        key = (root, rev)
        if key not in self._commits:
            try:
                self._commits[key] = resolve(root, rev)
            except GitError:  # as good as "no such commit" for a message: the rev is named
                self._commits[key] = None
        return self._commits[key]


def check_worktree(
    checker: Checker,
    repos: Repositories,
    where: str,
    raw: dict[str, Any],
    fields: dict[str, Any],
    pinned: str | None,
) -> str | None:
    """The task's ``base_commit``: ``pinned`` (its own, if given) or its base resolved; None for a
    task without a worktree, or when a problem was reported. ``fields``: the task's fields with
    the defaults applied; ``raw``: the task as written (which says where a value came from)."""
    if fields.get("worktree") is not True:
        return pinned
    directory = fields.get("directory")
    if directory is None:
        if "directory" not in fields:  # else it was given, and its problem is reported already
            checker.add(
                f"{where}.directory",
                "missing: worktree: true needs a git repository's directory (in the task or in defaults)",
            )
        return None
    if not checker.check_dirs:
        return pinned
    dir_field = f"{where}.directory" if "directory" in raw else "defaults.directory"
    shown = show(directory, _PATH_SHOWN)
    root = repos.root(directory)
    if isinstance(root, str):
        checker.add_once(dir_field, f"directory {shown} cannot be checked by git: {root}")
        return None
    if root is None:
        checker.add_once(
            dir_field, f"directory {shown} is not inside a git repository (worktree: true needs one)"
        )
        return None
    if pinned is not None:
        if repos.commit(root, pinned) != pinned:
            checker.add(
                f"{where}.base_commit", f"no commit {pinned} in the repository {show(str(root), _PATH_SHOWN)}"
            )
            return None
        return pinned
    base = fields.get("base")
    if base is None and "base" in fields:  # an invalid base, reported already
        return None
    commit = repos.commit(root, base or "HEAD")
    if commit is not None:
        return commit
    in_repo = f"the repository {show(str(root), _PATH_SHOWN)}"
    if base is None:
        checker.add_once(dir_field, f"{in_repo} has no commit yet: HEAD, the default base, names none")
    else:
        base_field = f"{where}.base" if "base" in raw else "defaults.base"
        checker.add_once(base_field, f"unknown base {show(base)}: no commit of that name in {in_repo}")
    return None
