"""One dispatched attempt of a task: start it, re-attach it after a crash, and settle its outcome.

An attempt lives from ``queued -> pending`` until the task leaves ``pending``. It knows its
session, its directory (every OpenCode call is directory-scoped: an abort sent to the wrong
directory silently does nothing) and its clocks, for the coordinator's three timeouts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from occoord.opencode.outcome import TurnOutcome

__all__ = ["Attempt", "FailurePolicy", "backoff"]

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    run_id: str
    task: str
    attempt: int
    directory: str
    title: str
    dispatched_at: float  # monotonic
    last_activity: float  # monotonic
    session_id: str | None = None
    began: bool = False  # the turn visibly started (busy, or an assistant message)
    settling: bool = False  # an outcome is being decided: ignore further events
    cancel_reason: str | None = None
    finish_after: float | None = None  # reading the ended turn failed: try again at this time
    finish_tries: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.task)


@dataclass(frozen=True)
class FailurePolicy:
    """Whether a finished attempt is retried: only retryable failures, within the task's retries."""

    retries: int
    failures_so_far: int

    def retry(self, retryable: bool) -> bool:
        return retryable and self.failures_so_far < self.retries


def backoff(failures: int, base: float, cap: float) -> float:
    """Exponential backoff before retry number ``failures`` (1-based): base, 2*base, ... capped."""
    return float(min(cap, base * (2 ** max(0, failures - 1))))


def outcome_reason(outcome: TurnOutcome) -> str:
    if outcome.kind == "done":
        return "the turn ended without an error (classified from the session's messages)"
    if outcome.kind == "not_started":
        return "the turn never started"
    if outcome.kind == "aborted":
        return "the session was aborted"
    name = outcome.error_name or "error"
    return f"{name}: {outcome.message}" if outcome.message else name


def outcome_details(outcome: TurnOutcome) -> dict[str, Any]:
    return {"outcome": outcome.kind, "error_name": outcome.error_name, "retryable": outcome.retryable}
