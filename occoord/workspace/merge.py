"""The start commit of a task with dependencies: what they produced, merged without a checkout.

One dependency: its result commit. Several: duplicates dropped and any result that another one
already contains (an ancestor of it) left out, then, if more than one is left, a merge commit made
with ``git merge-tree --write-tree`` (in the object store only: no checkout, no index, no ref is
touched) and ``git commit-tree`` with every remaining result as a parent, in the order given. Git
2.39's merge-tree merges two commits at a time, so three or more are merged one by one, through
intermediate commits that nothing refers to (git's gc collects them).

The merge commit is deterministic: same results in, same commit id out. Its author and committer
are occoord and its date is the latest committer date of its parents, so a restarted watcher that
computes the start of an attempt again gets the very commit the attempt's branch was made at.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from occoord.errors import GitError
from occoord.workspace.git import IDENTITY, MergeConflict, git, resolve

__all__ = ["independent_commits", "start_commit"]


def _commit_ids(repo: Path, commits: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for commit in commits:
        full = resolve(repo, commit)
        if full is None:
            raise GitError(str(repo), f"no commit {commit!r} in this repository")
        if full not in ids:
            ids.append(full)
    return ids


def independent_commits(repo: Path, commits: Sequence[str]) -> tuple[str, ...]:
    """``commits`` as full ids, without duplicates and without those another one contains, in the
    order given."""
    ids = _commit_ids(repo, commits)
    if len(ids) < 2:
        return tuple(ids)
    kept = set(git(repo, "merge-base", "--independent", *ids).text.split())
    return tuple(c for c in ids if c in kept)


def _merge_tree(repo: Path, ours: str, theirs: str, parents: Sequence[str]) -> str:
    done = git(
        repo, "merge-tree", "--write-tree", "--name-only", "-z", "--no-messages", ours, theirs, ok=(0, 1)
    )
    tree, *rest = done.stdout.split(b"\x00")
    if done.returncode == 1:
        files = list(dict.fromkeys(os.fsdecode(name) for name in rest if name))
        raise MergeConflict(repo, parents, files)
    return tree.decode("ascii").strip()


def _commit_tree(repo: Path, tree: str, parents: Sequence[str], message: str) -> str:
    dates = git(repo, "log", "--no-walk", "--no-show-signature", "--format=%ct", *parents).text.split()
    when = f"@{max(int(d) for d in dates)} +0000"
    env = {**IDENTITY, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    argv = ["commit-tree", "--no-gpg-sign", tree]
    for parent in parents:
        argv += ["-p", parent]
    # the message on stdin, as given: -m would be cleaned up
    return git(repo, *argv, stdin=message.encode("utf-8", "surrogateescape"), env=env).text


def start_commit(repo: Path, commits: Sequence[str], *, message: str) -> str:
    """The commit a task starts from, given its dependencies' result ``commits`` (at least one):
    the one result that contains all the others, or a merge commit of the independent ones with
    ``message``. Raises MergeConflict (naming the conflicting files) if they do not merge cleanly,
    GitError if a commit is not in ``repo``."""
    if not commits:
        raise ValueError(
            "start_commit needs at least one commit: a task without dependencies starts from its base"
        )
    heads = independent_commits(repo, commits)
    if len(heads) == 1:
        return heads[0]
    current = heads[0]
    tree = ""
    for index, other in enumerate(heads[1:], start=2):
        tree = _merge_tree(repo, current, other, heads[:index])
        if index < len(heads):
            current = _commit_tree(repo, tree, (current, other), "occoord: intermediate merge\n")
    return _commit_tree(repo, tree, heads, message)
