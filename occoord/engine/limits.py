"""Provider and model limits: at most N busy sessions per ``provider/model`` pattern, so a
rate-limited tier queues instead of failing. A run's manifest limits that run (``limits``); the
watcher's ``--limit PATTERN=N`` limits every run together."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from occoord.engine.attempts import AttemptTable
from occoord.engine.runs import ActiveRun
from occoord.manifest.model import TaskSpec

__all__ = ["Limits", "model_of"]


def model_of(spec: TaskSpec) -> str:
    """``provider/model``, or "" for the server's default model."""
    return str(spec.model) if spec.model else ""


class Limits:
    def __init__(self, table: AttemptTable, across_runs: Sequence[tuple[str, int]]) -> None:
        self.table = table
        self.across_runs = tuple(across_runs)

    def holding(self, active: ActiveRun, spec: TaskSpec) -> str | None:
        """Why ``spec`` must wait for now (``"anthropic/* 4/4"``), or None if no limit is reached."""
        model = model_of(spec)
        scopes = ((self.across_runs, None), (active.run.manifest.limits, active.id))
        for limits, run_id in scopes:
            for pattern, most in limits:
                if not fnmatchcase(model, pattern):
                    continue
                busy = sum(
                    1
                    for a in self.table
                    if fnmatchcase(a.model, pattern) and (run_id is None or a.run_id == run_id)
                )
                if busy >= most:
                    return f"{pattern} {busy}/{most}"
        return None
