"""The manifest model: frozen dataclasses, the keys a manifest may hold, and what an id is.

Past the parsing edge (``load``), manifests are immutable and fully resolved: defaults applied,
prompt files read, dependencies checked, worktree tasks' bases resolved to commits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "COMMIT_PATTERN",
    "DEFAULT_KEYS",
    "HOOK_KEYS",
    "ID_PATTERN",
    "KEEP_WORKTREE",
    "MAX_MANIFEST_BYTES",
    "MAX_PROMPT_BYTES",
    "TASK_KEYS",
    "TOP_KEYS",
    "Hooks",
    "KeepWorktree",
    "Manifest",
    "ModelRef",
    "TaskSpec",
    "is_valid_id",
    "parse_duration",
]

#: task ids (and run-id stems): no separators, no leading dot, so no path tricks
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: a full commit id, as ``base_commit`` holds it (SHA-1 or SHA-256 repositories)
COMMIT_PATTERN = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 1 << 20
MAX_PROMPT_BYTES = 1 << 20
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def is_valid_id(text: str) -> bool:
    return ID_PATTERN.fullmatch(text) is not None


@dataclass(frozen=True)
class ModelRef:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class Hooks:
    """Commands (argv lists, never shell strings) run when a task or the run ends."""

    on_task_end: tuple[str, ...] = ()
    on_run_end: tuple[str, ...] = ()


#: when a worktree task's worktree is removed once the task ends (its branch always stays)
KeepWorktree = Literal["never", "on_failure", "always"]
KEEP_WORKTREE: tuple[KeepWorktree, ...] = ("never", "on_failure", "always")


@dataclass(frozen=True)
class TaskSpec:
    id: str
    prompt: str
    role: str = ""
    description: str = ""
    agent: str | None = None
    model: ModelRef | None = None
    directory: str | None = None
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None
    retries: int = 2
    #: work in a git worktree of ``directory``'s repository, on a branch of the attempt's own
    worktree: bool = False
    #: the rev a task without dependencies starts from, as written (None: HEAD)
    base: str | None = None
    #: the commit ``base`` named when the run was accepted (set for worktree tasks); stored in the
    #: plan, so the run keeps it however the rev moves
    base_commit: str | None = None
    keep_worktree: KeepWorktree = "on_failure"
    #: not dispatched before this moment (UTC, ISO 8601 with a Z); the run's own, or the task's
    not_before: str | None = None
    #: run only on a server carrying this label (or named so): see ``occoord watch --server``
    server: str | None = None


@dataclass(frozen=True)
class Manifest:
    name: str
    tasks: tuple[TaskSpec, ...]
    version: int = 1
    concurrency: int = 4
    hooks: Hooks = field(default_factory=Hooks)
    #: at most N of this run's sessions at once per model pattern ("anthropic/*", "openai/gpt-5")
    limits: tuple[tuple[str, int], ...] = ()

    def task(self, task_id: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.id == task_id:
                return spec
        raise KeyError(task_id)

    def to_json(self) -> dict[str, Any]:
        """The resolved manifest (what ``run.json`` stores as the plan); itself a valid manifest."""
        hooks = {
            k: list(v)
            for k, v in (("on_task_end", self.hooks.on_task_end), ("on_run_end", self.hooks.on_run_end))
            if v
        }
        tasks = []
        for t in self.tasks:
            task: dict[str, Any] = {
                "id": t.id,
                "prompt": t.prompt,
                "role": t.role,
                "description": t.description,
                "depends_on": list(t.depends_on),
                "retries": t.retries,
            }
            optional = {
                "agent": t.agent,
                "model": str(t.model) if t.model else None,
                "directory": t.directory,
                "timeout": t.timeout,
                "worktree": t.worktree or None,  # written only when set: plain plans stay as they were
                "base": t.base,
                "base_commit": t.base_commit,
                "keep_worktree": t.keep_worktree if t.keep_worktree != "on_failure" else None,
                "not_before": t.not_before,
                "server": t.server,
            }
            task.update({k: v for k, v in optional.items() if v is not None})
            tasks.append(task)
        out: dict[str, Any] = {
            "version": self.version,
            "name": self.name,
            "concurrency": self.concurrency,
            "tasks": tasks,
        }
        if hooks:
            out["hooks"] = hooks
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


TOP_KEYS = ("version", "name", "concurrency", "not_before", "limits", "defaults", "hooks", "tasks")
DEFAULT_KEYS = (
    "agent",
    "model",
    "directory",
    "timeout",
    "retries",
    "worktree",
    "base",
    "keep_worktree",
    "not_before",
    "server",
)
TASK_KEYS = (
    "id",
    "prompt",
    "prompt_file",
    "role",
    "description",
    "agent",
    "model",
    "directory",
    "depends_on",
    "timeout",
    "retries",
    "worktree",
    "base",
    "base_commit",
    "keep_worktree",
    "not_before",
    "server",
)
HOOK_KEYS = ("on_task_end", "on_run_end")


def parse_duration(value: object) -> float | None:
    """Seconds from a number or a string like ``90``, ``90s``, ``15m``, ``2h``; None if invalid.

    A duration is positive and finite: ``.inf``, ``NaN`` and numbers too large for a float are not.
    """
    seconds: float | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer with hundreds of digits
            return None
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds
