"""An attempt's result: everything the agent left, committed on its branch; the patch; its stats.

:func:`commit_all` is safe to call again after a crash: the files are committed by the first call
that finishes, and a later one finds nothing to commit and returns the same commit. A ``kill -9``
in the middle of ``git add`` or ``git commit`` leaves lock files (the worktree's ``index.lock``,
the branch's ``.lock``) that would make every later call fail; they are removed first. That is
safe only because the caller guarantees that nothing else uses this worktree or branch at that
moment: the agent's session has ended, and calls for one repository are serialized.

It refuses a repository's main checkout: occoord commits only in its own worktrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from occoord.errors import GitError
from occoord.workspace.git import IDENTITY, git, git_dirs

__all__ = ["DiffStats", "commit_all", "diff_stats", "patch"]


@dataclass(frozen=True)
class DiffStats:
    """What changed from a start commit to a result commit (renames count as one file; a binary
    file's lines are not counted)."""

    files: int
    insertions: int
    deletions: int


def _current_branch(worktree: Path) -> str | None:
    done = git(worktree, "symbolic-ref", "--quiet", "HEAD", ok=(0, 1))
    return done.text.removeprefix("refs/heads/") if done.returncode == 0 else None


def _clear_stale_locks(own: Path, common: Path, branch: str | None) -> None:
    stale = [own / "index.lock", own / "HEAD.lock"]
    if branch is not None:
        stale.append(common / "refs" / "heads" / f"{branch}.lock")
    for lock in stale:
        try:
            lock.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise GitError(str(lock), f"cannot remove a stale lock: {exc.strerror}") from exc


def commit_all(worktree: Path, message: str, *, branch: str | None = None) -> str:
    """Commit every change in ``worktree`` (new files included, ignored ones not) with ``message``,
    as occoord; the result commit. Commits the agent made itself are kept under it; with nothing
    left to commit, the result is HEAD as it is (the start commit, if the agent changed nothing).

    ``branch``: the attempt's branch; an agent that left HEAD elsewhere (another branch, detached)
    gets a GitError instead of a result on the wrong branch.
    """
    own, common = git_dirs(worktree)
    if own == common:
        raise GitError(
            str(worktree), "is a repository's main checkout; occoord commits only in its worktrees"
        )
    current = _current_branch(worktree)
    if branch is not None and current != branch:
        on = f"branch {current}" if current else "a detached HEAD"
        raise GitError(str(worktree), f"the agent left HEAD on {on}, not on {branch}")
    _clear_stale_locks(own, common, current)
    top = Path(git(worktree, "rev-parse", "--show-toplevel").text)
    git(top, "add", "--all")
    staged = git(top, "diff-index", "--cached", "--quiet", "HEAD", "--", ok=(0, 1))
    if staged.returncode == 1:
        git(
            top,
            "commit",
            "--quiet",
            "--no-verify",
            "--no-gpg-sign",
            "--allow-empty-message",
            "--cleanup=whitespace",  # keeps lines starting with '#' (a description may)
            "-m",
            message,
            env=IDENTITY,
        )
    return git(top, "rev-parse", "--verify", "HEAD").text


def patch(repo: Path, start: str, result: str) -> bytes:
    """The patch from ``start`` to ``result`` (binary files included, renames found), as bytes:
    file names and contents need not be UTF-8. Empty when they hold the same tree."""
    return git(repo, "diff-tree", "-p", "--binary", "--full-index", "-M", "--no-color", start, result).stdout


def diff_stats(repo: Path, start: str, result: str) -> DiffStats:
    """Files changed, lines inserted and deleted from ``start`` to ``result``."""
    out = git(repo, "diff-tree", "-r", "-M", "--numstat", "-z", start, result).stdout
    fields = out.split(b"\x00")
    files = insertions = deletions = 0
    index = 0
    while index < len(fields):
        entry = fields[index]
        index += 1
        if not entry:
            continue
        added, _, rest = entry.partition(b"\t")
        deleted, _, path = rest.partition(b"\t")
        if not path:  # a rename: its source and destination follow as fields of their own
            index += 2
        files += 1
        insertions += int(added) if added.isdigit() else 0  # '-' for a binary file
        deletions += int(deleted) if deleted.isdigit() else 0
    return DiffStats(files, insertions, deletions)
