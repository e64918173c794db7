"""The task record: the JSON content of a state file (``runs/<run>/tasks/<task>.<state>``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from occoord.spool.states import Actor, TaskState

__all__ = ["TaskRecord"]


@dataclass(frozen=True)
class TaskRecord:
    """The JSON content of a state file. ``state`` always equals the file's suffix once reconciled."""

    task: str
    state: TaskState
    attempt: int = 0
    since: str = ""
    actor: str = Actor.COORDINATOR.value
    reason: str = ""
    session_id: str | None = None
    not_before: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {
            "protocol": 1,
            "task": self.task,
            "state": self.state.value,
            "attempt": self.attempt,
            "since": self.since,
            "actor": self.actor,
            "reason": self.reason,
            "session_id": self.session_id,
            "not_before": self.not_before,
            "details": dict(self.details),
        }
        return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskRecord | None:
        """Parse a record; None for empty or foreign content (a ``touch``, an ``echo``)."""
        try:
            obj = json.loads(data)
            return cls(
                task=str(obj["task"]),
                state=TaskState(obj["state"]),
                attempt=int(obj.get("attempt", 0)),
                since=str(obj.get("since", "")),
                actor=str(obj.get("actor", Actor.COORDINATOR.value)),
                reason=str(obj.get("reason") or ""),
                session_id=obj.get("session_id"),
                not_before=obj.get("not_before"),
                details=dict(obj.get("details") or {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
