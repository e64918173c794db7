"""What the engine's components share: the servers, the run book, the attempt table, the clock and
the scheduler. The coordinator builds one and hands it to each component."""

from __future__ import annotations

from dataclasses import dataclass

from occoord.engine.attempts import AttemptTable
from occoord.engine.book import RunBook
from occoord.engine.pool import ServerPool
from occoord.engine.ports import Clock, Scheduler

__all__ = ["Parts"]


@dataclass(frozen=True)
class Parts:
    pool: ServerPool  # the servers; ``pool.client(attempt.server)`` for every call about an attempt
    book: RunBook
    table: AttemptTable
    clock: Clock
    scheduler: Scheduler
