"""What the engine's components share: the server, the run book, the attempt table, the clock and
the scheduler. The coordinator builds one and hands it to each component."""

from __future__ import annotations

from dataclasses import dataclass

from occoord.engine.attempts import AttemptTable
from occoord.engine.book import RunBook
from occoord.engine.ports import Clock, OpenCodePort, Scheduler

__all__ = ["Parts"]


@dataclass(frozen=True)
class Parts:
    client: OpenCodePort
    book: RunBook
    table: AttemptTable
    clock: Clock
    scheduler: Scheduler
