"""Attempts and the one table that owns them.

An attempt lives from ``queued -> pending`` until the task leaves ``pending``. It knows its
session, its directory (every OpenCode call is directory-scoped: an abort sent to the wrong
directory silently does nothing) and its clocks. :class:`AttemptTable` is the only owner of the
running attempts, their by-session index, the sessions winding down after an outside signal, and
the timeout deadlines; dispatch and settling change attempts only through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from occoord.opencode.models import ErrorInfo
from occoord.opencode.outcome import TurnOutcome

__all__ = [
    "Attempt",
    "AttemptTable",
    "Expiry",
    "FailurePolicy",
    "Timeouts",
    "outcome_details",
    "outcome_reason",
]


@dataclass
class Attempt:
    run_id: str
    task: str
    attempt: int
    directory: str
    title: str
    dispatched_at: float  # monotonic
    last_activity: float  # monotonic
    wall_limit: float  # seconds from dispatch
    model: str = ""  # provider/model, for the limits ("" is the server's default)
    server: str = "default"  # the pool member it runs on (engine.pool); every call goes there
    session_id: str | None = None
    began: bool = False  # the turn visibly started (busy, or an assistant message)
    settling: bool = False  # an outcome is being decided: ignore further events and timeouts
    cancel_reason: str | None = None
    rereading: bool = False  # reading the ended turn failed; a timer reads it again
    error: ErrorInfo | None = None  # a session.error the server sent for this session
    provider_retries: int = 0  # session.status "retry": the provider failed, OpenCode retries
    prepared: bool = False  # a worktree task's worktree is ready (``directory`` is inside it)

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.task)

    @property
    def label(self) -> str:
        return f"{self.run_id}/{self.task}"


@dataclass(frozen=True)
class Timeouts:
    start: float  # a prompt accepted but no turn visible
    idle: float  # a busy session with no event at all


@dataclass(frozen=True)
class Expiry:
    """An attempt past one of its deadlines: stop it for ``reason``."""

    attempt: Attempt
    reason: str
    retryable: bool


class AttemptTable:
    """The running attempts: by task, by session, per run; plus the sessions winding down."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._by_key: dict[tuple[str, str], Attempt] = {}
        self._by_session: dict[str, Attempt] = {}
        self._per_run: dict[str, int] = {}
        self._per_server: dict[str, int] = {}
        # Sessions of tasks decided from outside while their turn may still run: id -> attempt.
        self.winding: dict[str, Attempt] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Attempt]:
        return iter(list(self._by_key.values()))

    def add(self, attempt: Attempt) -> None:
        old = self._by_key.get(attempt.key)
        if old is not None and old is not attempt:
            self.drop(old)
        if old is not attempt:
            self._per_run[attempt.run_id] = self._per_run.get(attempt.run_id, 0) + 1
            self._per_server[attempt.server] = self._per_server.get(attempt.server, 0) + 1
        self._by_key[attempt.key] = attempt
        if attempt.session_id:
            self._by_session[attempt.session_id] = attempt

    def bind(self, attempt: Attempt, session_id: str) -> None:
        """The attempt's session is known (created, or found again)."""
        attempt.session_id = session_id
        if self.current(attempt):
            self._by_session[session_id] = attempt

    def drop(self, attempt: Attempt) -> None:
        if self._by_key.get(attempt.key) is attempt:
            del self._by_key[attempt.key]
            for counts, key in ((self._per_run, attempt.run_id), (self._per_server, attempt.server)):
                left = counts.get(key, 1) - 1
                if left > 0:
                    counts[key] = left
                else:
                    counts.pop(key, None)
        if attempt.session_id and self._by_session.get(attempt.session_id) is attempt:
            del self._by_session[attempt.session_id]

    def current(self, attempt: Attempt) -> bool:
        """True while ``attempt`` is the task's registered attempt (not replaced, not decided)."""
        return self._by_key.get(attempt.key) is attempt

    def get(self, run_id: str, task: str) -> Attempt | None:
        return self._by_key.get((run_id, task))

    def by_session(self, session_id: str) -> Attempt | None:
        return self._by_session.get(session_id)

    def running_in(self, run_id: str) -> int:
        return self._per_run.get(run_id, 0)

    def running_on(self, server: str) -> int:
        return self._per_server.get(server, 0)

    # -- deadlines -------------------------------------------------------------------------------

    def deadline(self, attempt: Attempt) -> float:
        quiet = self.timeouts.idle if attempt.began else self.timeouts.start
        return min(attempt.dispatched_at + attempt.wall_limit, attempt.last_activity + quiet)

    def next_deadline(self) -> float | None:
        deadlines = [self.deadline(a) for a in self._by_key.values() if not a.settling]
        return min(deadlines) if deadlines else None

    def expired(self, now: float) -> list[Expiry]:
        out = []
        for a in self._by_key.values():
            if a.settling:
                continue
            if now - a.dispatched_at >= a.wall_limit:
                out.append(Expiry(a, f"timed out after {a.wall_limit:.0f} s", False))
            elif not a.began and now - a.last_activity >= self.timeouts.start:
                out.append(Expiry(a, f"the turn never started within {self.timeouts.start:.0f} s", True))
            elif a.began and now - a.last_activity >= self.timeouts.idle:
                out.append(Expiry(a, f"no activity for {self.timeouts.idle:.0f} s", True))
        return out


@dataclass(frozen=True)
class FailurePolicy:
    """Whether a finished attempt is retried: only retryable failures, within the task's retries."""

    retries: int
    failures_so_far: int

    def retry(self, retryable: bool) -> bool:
        return retryable and self.failures_so_far < self.retries


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
