"""Worktree tasks (issue 12): each attempt works in its own git worktree, on its own branch.

* **Start**: a task with no dependencies starts from its run's ``base_commit``; with dependencies,
  from their result commits (one, or a merge occoord makes without touching any checkout). A merge
  conflict fails the task before any session starts.
* **End**: once the session has ended, everything the agent left is committed (its own commits
  kept); the result commit, ``results/T.diff`` and the diff stats go into the record; OpenCode's
  instance for the worktree is disposed; the worktree is removed per ``keep_worktree`` (the branch
  always stays: it is the result).

Git runs in worker threads (``asyncio.to_thread``), one operation per repository at a time (git's own
locks make concurrent ``worktree add`` fail); different repositories proceed in parallel. Names are
derived from run, task and attempt, so a restarted watcher finds an attempt's worktree again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occoord.engine.ports import OpenCodePort
from occoord.engine.runs import ActiveRun
from occoord.errors import GitError, OccoordError
from occoord.fsutil import atomic_write
from occoord.manifest.model import TaskSpec
from occoord.spool.layout import Run
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState
from occoord.workspace.git import repo_prefix, repo_root
from occoord.workspace.merge import start_commit
from occoord.workspace.names import branch_name, default_root, worktree_path
from occoord.workspace.results import commit_all, diff_stats, patch
from occoord.workspace.worktrees import ensure_worktree, remove_worktree

__all__ = ["NotReady", "Prepared", "Workspaces"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """An attempt's worktree, ready for its session."""

    directory: str  # where the session works: the task's folder inside the worktree
    worktree: str
    branch: str
    start: str

    def details(self) -> dict[str, Any]:
        return {
            "worktree": self.worktree,
            "branch": self.branch,
            "start_commit": self.start,
            "directory": self.directory,
        }


class NotReady(OccoordError):
    """A dependency's result commit is not recorded yet (its worktree is still being committed)."""


class Workspaces:
    def __init__(self, root: Path | None) -> None:
        self._root = root
        self._locks: dict[Path, asyncio.Lock] = {}
        self._roots: dict[Path, Path] = {}  # a task's directory -> its repository's top folder

    @property
    def root(self) -> Path:
        """Where worktrees go (``--worktree-root``; default under $XDG_DATA_HOME)."""
        if self._root is None:
            self._root = default_root()
        return self._root

    async def _git(self, repo: Path, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` in a thread, one at a time per repository (however deep ``repo`` is in it)."""
        top = self._roots.get(repo)
        if top is None:
            found = await asyncio.to_thread(repo_root, repo)
            if found is None:
                raise GitError(str(repo), "is not inside a git repository")
            top = self._roots[repo] = found
        async with self._locks.setdefault(top, asyncio.Lock()):
            return await asyncio.to_thread(fn, *args, **kwargs)

    @staticmethod
    def repository(spec: TaskSpec) -> Path:
        if spec.directory is None:
            raise GitError(spec.id, "a worktree task needs a directory inside a git repository")
        return Path(spec.directory)

    # -- start -----------------------------------------------------------------------------------

    @staticmethod
    def dependencies_ready(active: ActiveRun, task: str) -> bool:
        """Every worktree dependency has its result commit recorded (it is committed after its
        session ends, which may be a moment after the task became done)."""
        for dep in active.specs[task].depends_on:
            if active.specs[dep].worktree:
                record = active.run.tasks.read(dep)
                if record is None or not record.details.get("result_commit"):
                    return False
        return True

    async def prepare(self, active: ActiveRun, task: str, attempt: int) -> Prepared:
        """The attempt's worktree at its start commit (created, or found again after a restart)."""
        spec = active.specs[task]
        repo = self.repository(spec)
        commits: list[str] = []
        for dep in spec.depends_on:
            if not active.specs[dep].worktree:
                continue  # a plain task's work is not in git: it adds nothing to the start
            record = active.run.tasks.read(dep)
            result = record.details.get("result_commit") if record else None
            if not result:
                raise NotReady(dep, "its result commit is not recorded yet")
            commits.append(str(result))
        if commits:
            message = f"occoord: {active.id}/{task}: start from {', '.join(spec.depends_on)}"
            start = await self._git(repo, start_commit, repo, commits, message=message)
        elif spec.base_commit:
            start = spec.base_commit
        else:
            raise GitError(str(repo), f"task {task} has no base commit (the repository had no commits?)")
        path = worktree_path(self.root, active.id, task, attempt)
        branch = branch_name(active.id, task, attempt)
        made = await self._git(repo, ensure_worktree, repo, path, branch, start)
        prefix = await asyncio.to_thread(repo_prefix, repo)
        directory = Path(made.path) / prefix
        # A folder git does not track (empty, or ignored) is not in the worktree: make it.
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        return Prepared(str(directory).rstrip("/") or "/", str(made.path), branch, start)

    # -- end -------------------------------------------------------------------------------------

    async def finish(
        self, client: OpenCodePort, run: Run, spec: TaskSpec, record: TaskRecord, *, done: bool
    ) -> dict[str, Any]:
        """Commit what the attempt left and record it; dispose the instance; remove the worktree
        per ``keep_worktree``. Returns the details to add to the task's record."""
        details = record.details
        worktree, branch, start = details.get("worktree"), details.get("branch"), details.get("start_commit")
        if not (worktree and branch and start):
            return {}
        repo = self.repository(spec)
        path = Path(str(worktree))
        if not path.exists():
            return {}
        message = f"occoord: {run.id}/{spec.id}: {spec.description or spec.id}"
        result = await self._git(repo, commit_all, path, message, branch=str(branch))
        diff = await self._git(repo, patch, repo, str(start), result)
        stats = await self._git(repo, diff_stats, repo, str(start), result)
        atomic_write(run.dir / "results" / f"{spec.id}.diff", diff, durable=False)
        out = {
            "result_commit": result,
            "files_changed": stats.files,
            "insertions": stats.insertions,
            "deletions": stats.deletions,
        }
        session_dir = str(path / (await asyncio.to_thread(repo_prefix, repo)))
        try:
            await client.dispose(session_dir.rstrip("/"))  # OpenCode keeps an instance per directory
        except OccoordError as exc:
            log.warning("%s/%s: cannot dispose the instance of %s: %s", run.id, spec.id, session_dir, exc)
        keep = spec.keep_worktree == "always" or (spec.keep_worktree == "on_failure" and not done)
        if not keep:
            await self._git(repo, remove_worktree, repo, path, force=True)  # committed: nothing is lost
            out["worktree_removed"] = True
        return out

    async def settle_record(self, client: OpenCodePort, run: Run, spec: TaskSpec, state: TaskState) -> None:
        """A worktree task that ended (by an outside signal, or before a crash) without its result
        recorded: commit and record it now, in place (its state stays)."""
        record = run.tasks.read(spec.id)
        if record is None or record.state is not state or record.details.get("result_commit"):
            return
        extra = await self.finish(client, run, spec, record, done=state is TaskState.DONE)
        if extra:
            run.tasks.update(spec.id, state, details={**record.details, **extra})
