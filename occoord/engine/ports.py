"""The engine's ports: what it needs from the world, as small protocols, with the real adapters.

The engine never calls ``time``, ``asyncio.sleep`` or the HTTP client directly; it gets a
:class:`Clock`, a :class:`Scheduler` (background jobs and timers) and an :class:`OpenCodePort`.
Production wires :class:`SystemClock`, :class:`JobScheduler` and ``OpenCodeClient``; the in-process
tests wire a clock that jumps and an in-memory client, so timeouts, backoff and grace periods are
tested by advancing the clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from occoord.opencode.models import Message, ModelRef, Session, SessionStatus

__all__ = ["Clock", "JobScheduler", "OpenCodePort", "Scheduler", "SystemClock"]

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Monotonic seconds for deadlines; wall time for what is written into files."""

    def monotonic(self) -> float: ...
    def wall(self) -> datetime: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)


class OpenCodePort(Protocol):
    """The calls the engine makes on an OpenCode server (``occoord.opencode.client.OpenCodeClient``).

    Every call is directory-scoped, raises ``ServerUnavailable`` when the server cannot be reached
    and ``ApiError`` when it answers with an error.
    """

    async def create_session(
        self, directory: str, title: str, *, permission: list[dict[str, str]] | None = None
    ) -> Session: ...
    async def find_sessions(self, directory: str, title: str) -> Sequence[Session]: ...
    async def get_session(self, session_id: str, directory: str) -> Session | None: ...
    async def prompt_async(
        self,
        session_id: str,
        directory: str,
        text: str,
        *,
        agent: str | None = None,
        model: ModelRef | None = None,
    ) -> None: ...
    async def messages(self, session_id: str, directory: str) -> Sequence[Message]: ...
    async def session_status(self, directory: str) -> Mapping[str, SessionStatus]: ...
    async def abort(self, session_id: str, directory: str) -> bool: ...
    async def dispose(self, directory: str) -> None: ...
    async def get_json(
        self, path: str, directory: str | None = None, params: Mapping[str, str | int] | None = None
    ) -> Any: ...


Job = Coroutine[Any, Any, object]


class Scheduler(Protocol):
    """Background jobs (never awaited inline by the loop) and timers on the engine's clock."""

    def spawn(self, job: Job) -> None: ...
    def call_at(self, when: float, callback: Callable[[], None]) -> None: ...
    def spawn_at(self, when: float, make: Callable[[], Job]) -> None: ...
    def wake_at(self, when: float) -> None: ...
    def next_due(self) -> float | None: ...
    def run_due(self, now: float) -> None: ...


class JobScheduler:
    """The real scheduler: asyncio tasks for jobs, a heap of timers fired by the loop's ``tick``.

    A failing job is logged, never raised into the loop: one bad reply must not stop the engine.
    """

    def __init__(self) -> None:
        self._jobs: set[asyncio.Task[object]] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        # Called after each job ends: what a job changed (a slot freed, a task ended) is
        # dispatched by the loop's next tick, which must not wait for an unrelated wake-up.
        self.on_done: Callable[[], None] | None = None

    def spawn(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._jobs.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine job failed", exc_info=task.exception())
        if self.on_done is not None:
            self.on_done()

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), callback))

    def spawn_at(self, when: float, make: Callable[[], Job]) -> None:
        """A job started when due; ``make`` builds it then, so no coroutine is left unawaited if
        the engine stops first."""
        self.call_at(when, lambda: self.spawn(make()))

    def wake_at(self, when: float) -> None:
        """A timer that only wakes the loop (the tick after it dispatches what became ready)."""
        self.call_at(when, _nothing)

    def next_due(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def run_due(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            try:
                callback()
            except Exception:
                log.exception("engine timer failed")

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    async def idle(self) -> None:
        """Wait until no job runs (jobs may start others); for tests and orderly shutdown."""
        while self._jobs:
            await asyncio.wait(set(self._jobs))

    def cancel_all(self) -> None:
        for task in list(self._jobs):
            task.cancel()


def _nothing() -> None:
    """The callback of a timer that only wakes the loop."""
