"""``occoord clean [RUN] [--branches] [--force]``: remove the worktrees of given runs.

:func:`clean_runs` finds the repositories to clean from two sources: the ones the caller names
(the directories of the runs' worktree tasks, from their plans) and the ones the run's folders
under the worktree root belong to (a linked worktree's ``.git`` file leads to its repository). In
each, it removes every worktree inside the runs' folders (and one on a run's branch at a path of
the same shape under another root: the root was moved since), prunes git's list of worktrees,
and with ``branches`` deletes the runs' branches too (``occoord/<run>/``).

A worktree with uncommitted changes is refused, not removed, unless ``force``: the report names
it, and its branch is kept. Nothing stops at the first refusal: everything else is cleaned. A
folder under a run's folder that belongs to no repository git still knows is removed only if it
is empty, or with ``force``. A worktree someone else made on one of occoord's branches, and the
repositories' main checkouts, are never touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from occoord.errors import GitError
from occoord.workspace.git import git, git_dirs, repo_root
from occoord.workspace.names import parse_branch, run_branch_prefix, run_worktrees
from occoord.workspace.worktrees import (
    WorktreeEntry,
    delete_branch,
    list_worktrees,
    prune_worktrees,
    remove_worktree,
)

__all__ = ["CleanReport", "Refusal", "clean_runs"]


@dataclass(frozen=True)
class Refusal:
    """A worktree (or folder) left in place, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class CleanReport:
    removed: tuple[Path, ...]  # worktrees and folders removed
    refused: tuple[Refusal, ...]
    branches_deleted: tuple[str, ...]
    repositories: tuple[Path, ...]  # the common git directories looked at

    @property
    def clean(self) -> bool:
        return not self.refused


def _inside(path: Path, folder: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real == top or real.startswith(top + os.sep)


def _ours(entry: WorktreeEntry, runs: set[str], folders: Sequence[Path]) -> bool:
    """A worktree occoord made for one of ``runs``: inside a run's folder, or (made under another
    root) on a run's branch at a path of occoord's shape, ``.../<run>/<task>-<attempt>``. A
    worktree someone made elsewhere on one of occoord's branches is not occoord's to remove."""
    if any(_inside(entry.path, folder) for folder in folders):
        return True
    parsed = parse_branch(entry.branch) if entry.branch else None
    if parsed is None or parsed.run_id not in runs:
        return False
    return entry.path.parent.name == parsed.run_id and entry.path.name == f"{parsed.task_id}-{parsed.attempt}"


def _common_dir_of(folder: Path) -> Path | None:
    """The repository a worktree folder belongs to (its common git directory), if any."""
    if not (folder / ".git").exists():
        return None
    done = git(folder, "rev-parse", "--path-format=absolute", "--git-common-dir", ok=(0, 128))
    return Path(done.text) if done.returncode == 0 and done.text else None


def _repositories(folders: Sequence[Path], repos: Iterable[Path]) -> list[Path]:
    found: dict[str, Path] = {}
    for repo in repos:
        top = repo_root(repo) if repo.is_dir() else None  # a repository deleted since: nothing to do
        if top is not None:
            common = git_dirs(top)[1]
            found.setdefault(os.path.realpath(common), common)
    for run_folder in folders:
        try:
            children = sorted(run_folder.iterdir())
        except OSError:  # no such folder (no worktree left), or unreadable: reported when removed
            continue
        for child in children:
            linked = _common_dir_of(child) if child.is_dir() and not child.is_symlink() else None
            if linked is not None:
                found.setdefault(os.path.realpath(linked), linked)
    return list(found.values())


def clean_runs(
    run_ids: Sequence[str],
    *,
    root: Path,
    repos: Iterable[Path] = (),
    branches: bool = False,
    force: bool = False,
) -> CleanReport:
    """Remove the worktrees of ``run_ids`` (see the module's docstring); the report says what was
    removed and what was refused. ``root`` is the worktree root the runs used."""
    folders = [run_worktrees(root, run_id) for run_id in run_ids]
    prefixes = tuple(f"refs/heads/{run_branch_prefix(run_id)}" for run_id in run_ids)
    runs = set(run_ids)
    removed: list[Path] = []
    refused: list[Refusal] = []
    deleted: list[str] = []
    repositories = _repositories(folders, repos)
    for repo in repositories:
        for entry in list_worktrees(repo):
            if entry.main or not _ours(entry, runs, folders):
                continue
            try:
                if remove_worktree(repo, entry.path, force=force):
                    removed.append(entry.path)
            except GitError as exc:
                refused.append(Refusal(entry.path, exc.reason))
        prune_worktrees(repo)
        if branches:
            deleted += _delete_branches(repo, prefixes, runs)
    for folder in folders:
        removed += _remove_leftovers(folder, refused, force=force)
    return CleanReport(tuple(removed), tuple(refused), tuple(deleted), tuple(repositories))


def _delete_branches(repo: Path, prefixes: Sequence[str], runs: set[str]) -> list[str]:
    """The runs' branches that no remaining worktree has checked out, deleted."""
    if not prefixes:
        return []
    listed = git(repo, "for-each-ref", "--format=%(refname)", *prefixes).text.splitlines()
    checked_out = {e.branch for e in list_worktrees(repo) if e.branch}
    deleted = []
    for ref in listed:
        parsed = parse_branch(ref)
        name = ref.removeprefix("refs/heads/")
        if (
            parsed is not None
            and parsed.run_id in runs
            and name not in checked_out
            and delete_branch(repo, name)
        ):
            deleted.append(name)
    return deleted


def _remove_leftovers(folder: Path, refused: list[Refusal], *, force: bool) -> list[Path]:
    """Folders left in a run's folder that are no worktree any more; then the run's folder itself
    if that leaves it empty."""
    if not folder.is_dir() or folder.is_symlink():
        return []
    kept = {os.path.realpath(r.path) for r in refused}
    removed = []
    try:
        children = sorted(folder.iterdir())
    except OSError as exc:
        refused.append(Refusal(folder, f"cannot be listed: {exc.strerror}"))
        return []
    for child in children:
        if os.path.realpath(child) in kept:
            continue
        is_folder = child.is_dir() and not child.is_symlink()
        try:
            if is_folder and not any(child.iterdir()):
                child.rmdir()
            elif not force:
                reason = "is no worktree of a repository git knows; remove it by hand, or use force"
                refused.append(Refusal(child, reason))
                continue
            elif is_folder:
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as exc:
            refused.append(Refusal(child, f"cannot be removed: {exc.strerror}"))
            continue
        removed.append(child)
    try:
        folder.rmdir()  # only if empty: a refused worktree keeps it
    except OSError:
        pass
    return removed
