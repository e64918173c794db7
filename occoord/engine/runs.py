"""The coordinator's in-memory view of one run: states, readiness and slots.

The state files are the truth; this is a cache refreshed from them (``refresh``) and kept up to
date on every transition the coordinator makes (``set_state``), so scheduling does not re-list
10,000 files per event. Readiness is tracked incrementally: a queued task is ready once every
dependency is done.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from occoord.manifest.model import TaskSpec
from occoord.spool.layout import Run
from occoord.spool.states import TaskState

__all__ = ["ActiveRun"]


@dataclass
class ActiveRun:
    run: Run
    states: dict[str, TaskState] = field(default_factory=dict)
    ready: dict[str, None] = field(default_factory=dict)  # insertion-ordered set: manifest order
    dependents: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self) -> None:
        # Queued tasks a cancel is failing chunk by chunk: never ready meanwhile.
        self.cancelling: set[str] = set()
        self.specs: dict[str, TaskSpec] = {t.id: t for t in self.run.manifest.tasks}
        for spec in self.run.manifest.tasks:
            for dep in spec.depends_on:
                self.dependents[dep].append(spec.id)
        self.refresh()

    @property
    def id(self) -> str:
        return self.run.id

    def refresh(self) -> None:
        """Re-read every task's state from one listing and recompute readiness."""
        if self.run.fresh:  # just accepted: all queued (a change since has its hint queued)
            self.run.fresh = False
            found: dict[str, TaskState] = {}
        else:
            found = self.run.tasks.states()
        self.states = {t: found.get(t, TaskState.QUEUED) for t in self.specs}
        self.ready = {t: None for t in self.specs if self._is_ready(t)}
        # Unfinished tasks, kept by set_state: finished() is asked after every task's end, and
        # scanning 10,000 states each time made a run's bookkeeping quadratic.
        self.unfinished = sum(1 for s in self.states.values() if not s.terminal)

    def _is_ready(self, task: str) -> bool:
        return (
            self.states[task] is TaskState.QUEUED
            and task not in self.cancelling
            and all(self.states[d] is TaskState.DONE for d in self.specs[task].depends_on)
        )

    def set_state(self, task: str, state: TaskState) -> None:
        old = self.states.get(task)
        self.states[task] = state
        self.unfinished += (not state.terminal) - (old is not None and not old.terminal)
        if self._is_ready(task):
            self.ready[task] = None
        else:
            self.ready.pop(task, None)
        if state is TaskState.DONE or old is TaskState.DONE:
            for child in self.dependents.get(task, ()):
                if self._is_ready(child):
                    self.ready[child] = None
                else:
                    self.ready.pop(child, None)

    def hold(self, tasks: Iterable[str]) -> None:
        """Keep ``tasks`` from being dispatched while a cancel fails them."""
        for task in tasks:
            self.cancelling.add(task)
            self.ready.pop(task, None)

    def release(self, tasks: Iterable[str]) -> None:
        """The cancel is over: a task it did not fail (someone moved it first) may be ready again."""
        for task in tasks:
            self.cancelling.discard(task)
            if task in self.states and self._is_ready(task):
                self.ready[task] = None

    def blocked_by_failure(self) -> list[tuple[str, str]]:
        """Queued tasks that can never run: (task, the failed dependency)."""
        out = []
        for task, state in self.states.items():
            if state is TaskState.QUEUED:
                for dep in self.specs[task].depends_on:
                    if self.states[dep] is TaskState.FAILED:
                        out.append((task, dep))
                        break
        return out

    def count(self, state: TaskState) -> int:
        return sum(1 for s in self.states.values() if s is state)

    def finished(self) -> bool:
        return self.unfinished == 0
