"""A server's events on their way to the coordinator, and the answers to its asks beside them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from occoord.opencode.events import PermissionAsked, QuestionAsked

__all__ = ["MAX_REPLIES", "Replies", "pump_events"]

log = logging.getLogger(__name__)

MAX_REPLIES = 32  # replies to asks in flight at once; more wait their turn (bounded connections)


class Replies:
    """Answers permission and question asks beside the event pump, never in it: a reply that
    hangs must not stop the delivery of every other event. At most one reply per request id is in
    flight (the server may announce an ask again, e.g. after a reconnect), at most MAX_REPLIES in
    all; failures are logged."""

    def __init__(self, responder: Any, limit: int = MAX_REPLIES) -> None:
        self.responder = responder
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(limit)

    def offer(self, event: object) -> None:
        if not isinstance(event, PermissionAsked | QuestionAsked) or event.request_id in self.jobs:
            return
        request_id = event.request_id
        job = asyncio.ensure_future(self._reply(event))
        self.jobs[request_id] = job
        job.add_done_callback(lambda _: self.jobs.pop(request_id, None))

    async def _reply(self, event: PermissionAsked | QuestionAsked) -> None:
        async with self._slots:
            try:
                await self.responder.handle(event)
            except Exception:  # a bug in one reply must not end the others, nor pass unseen
                log.exception("replying to %s %s failed", type(event).__name__, event.request_id)

    async def aclose(self) -> None:
        jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.wait(jobs)


async def pump_events(stream: Any, post: Callable[[object], None], replies: Replies) -> None:
    """Deliver a server's events to the coordinator; asks are answered beside it."""
    async for event in stream:
        replies.offer(event)
        post(event)
