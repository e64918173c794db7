"""What the engine's components share: the servers, the run book, the attempt table, the clock and
the scheduler. The coordinator builds one and hands it to each component."""

from __future__ import annotations

from dataclasses import dataclass

from occoord.engine.attempts import AttemptTable
from occoord.engine.book import RunBook
from occoord.engine.pool import ServerPool
from occoord.engine.ports import Clock, Scheduler

__all__ = ["Component", "Parts"]


@dataclass(frozen=True)
class Parts:
    pool: ServerPool  # the servers; ``pool.client(attempt.server)`` for every call about an attempt
    book: RunBook
    table: AttemptTable
    clock: Clock
    scheduler: Scheduler


class Component:
    """A part of the engine: it reaches the shared pieces as ``self.pool``, ``self.book`` and so on."""

    def __init__(self, parts: Parts) -> None:
        self.pool = parts.pool
        self.book = parts.book
        self.table = parts.table
        self.clock = parts.clock
        self.scheduler = parts.scheduler
