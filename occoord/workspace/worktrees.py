"""An attempt's worktree: created on its own branch at a start commit, found again, removed.

Only ``git branch``, ``git worktree add/remove/unlock/prune`` and reads touch a repository here: a
user's main checkout (its files, index, HEAD, stash) is never changed.

:func:`ensure_worktree` is idempotent and crash-safe. For one attempt, whatever a crash left:

* the branch and a complete worktree on it at the path: both reused as they are (the agent's work
  in them kept);
* a worktree git was still creating (``git worktree add`` locks a new worktree with the reason
  ``initializing`` until its checkout is complete; a kill -9 leaves that lock), or one whose folder
  is gone: removed, and created anew;
* an empty folder at the path (or one holding only a ``.git`` file, the first thing git writes):
  removed, and the worktree created there;
* the branch alone: reused (it is at the start commit, or ahead of it with the attempt's work); a
  branch for the attempt that does not descend from the start commit is an error, never replaced.

So one attempt never gets a second branch, and no half-made worktree is ever handed out.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from occoord.errors import GitError
from occoord.workspace.git import DirtyWorktree, dirty_paths, git, is_ancestor, resolve

__all__ = [
    "INITIALIZING",
    "Worktree",
    "WorktreeEntry",
    "branch_tip",
    "delete_branch",
    "ensure_worktree",
    "find_worktree",
    "list_worktrees",
    "prune_worktrees",
    "remove_worktree",
]

#: the lock reason ``git worktree add`` writes until the new worktree is complete
INITIALIZING = "initializing"


@dataclass(frozen=True)
class WorktreeEntry:
    """One worktree as ``git worktree list`` sees it."""

    path: Path
    head: str | None
    branch: str | None  # short name (no refs/heads/); None when detached or bare
    locked: str | None  # the lock's reason ("" if none was given); None when not locked
    prunable: bool  # its folder is gone
    main: bool  # the repository's main checkout (listed first)

    @property
    def half_made(self) -> bool:
        """Left by a ``git worktree add`` that did not finish, or its folder deleted."""
        return not self.main and (self.locked == INITIALIZING or self.prunable)


@dataclass(frozen=True)
class Worktree:
    """An attempt's worktree, ready for an agent."""

    repo: Path
    path: Path
    branch: str
    start: str  # the commit the attempt starts from
    created: bool  # False when a complete one was found and reused


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def list_worktrees(repo: Path) -> tuple[WorktreeEntry, ...]:
    """Every worktree of ``repo``'s repository, its main checkout first."""
    done = git(repo, "worktree", "list", "--porcelain", "-z")
    entries: list[WorktreeEntry] = []
    for record in done.stdout.split(b"\x00\x00"):
        fields: dict[str, str] = {}
        for line in record.split(b"\x00"):
            key, _, value = os.fsdecode(line).partition(" ")
            if key:
                fields[key] = value
        if "worktree" not in fields:
            continue
        branch = fields.get("branch")
        entries.append(
            WorktreeEntry(
                path=Path(fields["worktree"]),
                head=fields.get("HEAD"),
                branch=branch.removeprefix("refs/heads/") if branch else None,
                locked=fields.get("locked"),
                prunable="prunable" in fields,
                main=not entries,
            )
        )
    return tuple(entries)


def find_worktree(repo: Path, path: Path) -> WorktreeEntry | None:
    """The worktree of ``repo`` at ``path``, or None."""
    return next((e for e in list_worktrees(repo) if _same(e.path, path)), None)


def branch_tip(repo: Path, branch: str) -> str | None:
    """The commit a branch (short name) points at, or None if there is no such branch."""
    return resolve(repo, f"refs/heads/{branch}")


def delete_branch(repo: Path, branch: str) -> bool:
    """Delete a branch, merged or not; False if there was none. Refused by git (a GitError) while a
    worktree has it checked out."""
    if branch_tip(repo, branch) is None:
        return False
    git(repo, "branch", "-D", "--end-of-options", branch)
    return True


def prune_worktrees(repo: Path) -> None:
    """Forget worktrees whose folders are gone (``git worktree prune``)."""
    git(repo, "worktree", "prune")


def _discard(repo: Path, entry: WorktreeEntry) -> None:
    """Remove a half-made worktree: nothing in it is anyone's work yet."""
    if entry.locked is not None:
        git(repo, "worktree", "unlock", str(entry.path), ok=(0, 128))
    if entry.path.exists():
        done = git(repo, "worktree", "remove", "--force", "--force", str(entry.path), ok=(0, 128))
        if done.returncode != 0:  # a checkout too broken for git to remove: the folder goes first
            shutil.rmtree(entry.path, ignore_errors=True)
    prune_worktrees(repo)


def _clear_leftover_folder(path: Path) -> None:
    """Make way at ``path`` for a new worktree: only an empty folder, or one holding nothing but
    the ``.git`` file a killed ``git worktree add`` may have written, is removed."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise GitError(str(path), "is in the way of a worktree and is not a folder; move it away")
    names = os.listdir(path)
    if names not in ([], [".git"]) or (names and not (path / ".git").is_file()):
        raise GitError(
            str(path), "exists, is not a worktree of this repository, and is not empty; move it away"
        )
    if names:
        (path / ".git").unlink()
    path.rmdir()


def ensure_worktree(repo: Path, path: Path, branch: str, start: str) -> Worktree:
    """The attempt's worktree at ``path`` on ``branch``, which starts at commit ``start`` (a full
    id): created, or found as a crash left it (see the module's docstring). ``repo``: any folder of
    the repository."""
    path = Path(os.path.abspath(path))
    entries = list_worktrees(repo)
    here = next((e for e in entries if _same(e.path, path)), None)
    if here is not None and here.main:
        raise GitError(str(path), "is the repository's main checkout, not a place for an attempt")
    if here is not None and here.half_made:
        _discard(repo, here)
        here = None
    if here is not None:
        if here.branch != branch:
            on = f"branch {here.branch}" if here.branch else "a detached HEAD"
            raise GitError(str(path), f"is a worktree on {on}, not on {branch}; remove it first")
        if not (path / ".git").exists():
            raise GitError(str(path), "is a registered worktree without its .git file; remove it first")
        return Worktree(repo, path, branch, start, created=False)
    elsewhere = next((e for e in entries if e.branch == branch and not _same(e.path, path)), None)
    if elsewhere is not None and elsewhere.half_made:
        _discard(repo, elsewhere)
    elif elsewhere is not None:
        raise GitError(str(repo), f"branch {branch} is already checked out at {elsewhere.path}")
    try:
        _clear_leftover_folder(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GitError(str(path), f"cannot make way for the worktree: {exc.strerror}") from exc
    tip = branch_tip(repo, branch)
    if tip is None:
        git(repo, "branch", "--no-track", "--end-of-options", branch, start)
    elif tip != start and not is_ancestor(repo, start, tip):
        raise GitError(
            str(repo),
            f"branch {branch} exists at {tip[:12]}, which does not descend from the start {start[:12]}",
        )
    git(repo, "worktree", "add", "--quiet", str(path), branch)
    return Worktree(repo, path, branch, start, created=True)


def remove_worktree(repo: Path, path: Path, *, force: bool = False) -> bool:
    """Remove the worktree at ``path`` (its branch stays); False if there is none there.

    One with uncommitted changes (untracked files included; ignored files do not count) raises
    DirtyWorktree unless ``force``; a half-made one is always removed.
    """
    entry = find_worktree(repo, path)
    if entry is None:
        return False
    if entry.main:
        raise GitError(str(path), "is the repository's main checkout; occoord removes only its own worktrees")
    if entry.half_made:
        _discard(repo, entry)
        return True
    if not force:
        dirty = dirty_paths(entry.path)
        if dirty:
            raise DirtyWorktree(entry.path, dirty)
    if entry.locked is not None:
        if not force:
            raise GitError(
                str(path), f"is locked ({entry.locked or 'no reason given'}); not removed without force"
            )
        git(repo, "worktree", "unlock", str(entry.path))
    git(repo, "worktree", "remove", *(("--force",) if force else ()), str(entry.path))
    return True
