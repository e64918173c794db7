"""Running git: the one place that builds a git command, its environment and its error mapping.

Every call is ``git -c ... <args>`` as an argv list (never a shell), with stdin closed, a timeout,
and an environment made for unattended use:

* ``GIT_TERMINAL_PROMPT=0``, ``LC_ALL=C`` (messages parsed here are git's English ones), no pager
  and no editor, so no call can wait for a person;
* inherited ``GIT_*`` variables dropped but for a few that only say where configuration lives or
  how far to search for a repository: a ``GIT_DIR`` or ``GIT_INDEX_FILE`` left by a hook that
  started occoord would aim every command at the wrong repository;
* ``core.hooksPath=/dev/null``: no repository hook runs (a ``pre-commit`` hook could refuse or
  rewrite an agent's result; a ``post-checkout`` one could take minutes); ``commit.gpgSign=false``
  (signing could wait for a passphrase); ``gc.auto=0`` and ``maintenance.auto=false`` (a
  background ``gc`` would hold locks the next call needs); ``core.fsmonitor=false``.

occoord's own commits (results and merges) are authored and committed by ``occoord
<occoord@localhost>`` through ``GIT_AUTHOR_*``/``GIT_COMMITTER_*``, which outrank every config
level: they work without any identity configured and say plainly that occoord made them. An
agent's own commits keep the identity the agent used.

Calls are synchronous and not safe to run concurrently on one repository (git's own locks make a
second ``worktree add`` fail): the engine serializes them per repository, off its event loop.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from occoord.errors import GitError

__all__ = [
    "GIT_TIMEOUT",
    "IDENTITY",
    "Completed",
    "DirtyWorktree",
    "MergeConflict",
    "dirty_paths",
    "git",
    "git_dirs",
    "is_ancestor",
    "repo_prefix",
    "repo_root",
    "resolve",
]

#: seconds any one git command may take (a checkout of a very large tree takes a while)
GIT_TIMEOUT = 900.0
IDENTITY = {
    "GIT_AUTHOR_NAME": "occoord",
    "GIT_AUTHOR_EMAIL": "occoord@localhost",
    "GIT_COMMITTER_NAME": "occoord",
    "GIT_COMMITTER_EMAIL": "occoord@localhost",
}
_KEPT = frozenset(
    {
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_CEILING_DIRECTORIES",
        "GIT_DISCOVERY_ACROSS_FILESYSTEM",
        "GIT_EXEC_PATH",
    }
)
_CONFIG = (
    *("-c", "core.hooksPath=/dev/null"),
    *("-c", "commit.gpgSign=false"),
    *("-c", "gc.auto=0"),
    *("-c", "maintenance.auto=false"),
    *("-c", "core.fsmonitor=false"),
)
_REASON_CHARS = 600  # a message long enough to name the problem, short enough for one line


class DirtyWorktree(GitError):
    """A worktree holds uncommitted changes (``paths``, untracked files included) and was not
    removed: removing it would lose them."""

    def __init__(self, path: Path, paths: Sequence[str]) -> None:
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        super().__init__(str(path), f"has uncommitted changes ({shown}); not removed without force")
        self.path = path
        self.paths = tuple(paths)


class MergeConflict(GitError):
    """The result commits of a task's dependencies do not merge cleanly: ``files`` conflict."""

    def __init__(self, repo: Path, commits: Sequence[str], files: Sequence[str]) -> None:
        shown = ", ".join(files) if files else "(git named no file)"
        what = " and ".join(c[:12] for c in commits)
        super().__init__(str(repo), f"merging {what} conflicts in: {shown}")
        self.repo = repo
        self.commits = tuple(commits)
        self.files = tuple(files)


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        """stdout as text, without its final newline."""
        return self.stdout.decode("utf-8", "surrogateescape").removesuffix("\n")


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k in _KEPT}
    env.update(
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        LANGUAGE="C",
        GIT_PAGER="cat",
        PAGER="cat",
        GIT_EDITOR="true",
        GIT_SEQUENCE_EDITOR="true",
        GIT_MERGE_AUTOEDIT="no",
    )
    env.update(extra)
    return env


def _reason(stderr: str, returncode: int) -> str:
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    important = [line for line in lines if line.startswith(("fatal:", "error:"))] or lines
    text = "; ".join(important) or f"exit status {returncode}"
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def git(
    cwd: Path,
    *args: str,
    ok: Collection[int] = (0,),
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``git args...`` in ``cwd``; a GitError unless its exit status is in ``ok``."""
    argv = ["git", *_CONFIG, *args]
    what = f"git {args[0]}" if args else "git"
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=_environment(env or {}),
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GitError(str(cwd), f"{what} took more than {GIT_TIMEOUT:g} s", command=argv) from exc
    except OSError as exc:  # no git on PATH, or cwd is missing or not a directory
        missing = exc.filename == "git" or exc.filename == argv[0]
        reason = "git is not installed (not found on PATH)" if missing else f"cannot run {what} here"
        raise GitError(str(cwd), f"{reason}: {exc.strerror}", command=argv) from exc
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode not in ok:
        raise GitError(str(cwd), f"{what} failed: {_reason(stderr, proc.returncode)}", command=argv)
    return Completed(proc.returncode, proc.stdout, stderr)


def repo_root(path: Path) -> Path | None:
    """The top of the work tree that holds ``path``, or None if ``path`` is in none (outside any
    repository, or in a bare one). Other failures (no git, a repository git refuses to use because
    another user owns it) raise GitError with git's reason."""
    done = git(path, "rev-parse", "--show-toplevel", ok=(0, 128))
    if done.returncode == 0 and done.text:
        return Path(done.text)
    if "not a git repository" in done.stderr or "must be run in a work tree" in done.stderr:
        return None
    raise GitError(str(path), f"git rev-parse failed: {_reason(done.stderr, done.returncode)}")


def repo_prefix(path: Path) -> str:
    """Where ``path`` is inside its work tree, as git sees it (symbolic links resolved): ``""`` at
    the top, else a relative path ending in ``/``. The same folder of an attempt's worktree is
    ``worktree / prefix``."""
    return git(path, "rev-parse", "--show-prefix").text


def resolve(repo: Path, rev: str) -> str | None:
    """The full id of the commit ``rev`` names in ``repo`` (a branch, tag, ``HEAD~2``, an id...),
    or None if it names no commit. A rev starting with '-' is never read as an option."""
    if not rev or "\x00" in rev:
        return None
    done = git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", ok=(0, 1))
    return done.text if done.returncode == 0 and done.text else None


def is_ancestor(repo: Path, ancestor: str, descendant: str) -> bool:
    """True if commit ``ancestor`` is ``descendant`` or one of its ancestors."""
    done = git(repo, "merge-base", "--is-ancestor", ancestor, descendant, ok=(0, 1))
    return done.returncode == 0


def git_dirs(worktree: Path) -> tuple[Path, Path]:
    """(this worktree's own git directory, the repository's common one): the same for a main
    checkout, different for a linked worktree."""
    done = git(worktree, "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir")
    own, _, common = done.text.partition("\n")
    return Path(own), Path(common)


def dirty_paths(worktree: Path) -> tuple[str, ...]:
    """Paths with uncommitted changes in ``worktree``: modified, staged, deleted or untracked
    (ignored files are not changes); empty when it is clean."""
    done = git(
        worktree, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none"
    )
    entries = done.stdout.split(b"\x00")
    paths: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        paths.append(os.fsdecode(entry[3:]))
        if entry[:1] in (b"R", b"C"):  # a rename's or copy's source follows as its own entry
            index += 1
    return tuple(paths)
