"""What the server's events mean for the running attempts.

Events are hints: an idle session's turn is read back from its messages (``Settler.finish``), and
after the stream reconnects every attempt is checked against the server's status, since events
were lost meanwhile. Nothing here waits on the server inline: one hung request would freeze the
whole loop, so every call goes through a background job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from occoord.engine.attempts import Attempt
from occoord.engine.parts import Component, Parts
from occoord.engine.settle import Settler
from occoord.engine.stopping import Stopper
from occoord.errors import OccoordError
from occoord.opencode import events as ev

__all__ = ["EventRouter", "FromServer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FromServer:
    """An event and the pool member whose stream it came from (a bare event: the only server)."""

    server: str
    event: object


class EventRouter(Component):
    def __init__(self, parts: Parts, settler: Settler, stopper: Stopper) -> None:
        super().__init__(parts)
        self.settler = settler
        self.stopper = stopper

    def activity(self, session_id: str) -> None:
        """A session showed it is alive (a token chunk, a part update...): its idle clock restarts.
        Called by the event stream itself, not through the queue, and wakes nothing: a later
        ``last_activity`` only moves a deadline later, which the loop finds when it gets there."""
        attempt = self.table.by_session(session_id)
        if attempt is not None:
            attempt.last_activity = self.clock.monotonic()

    def handle(self, item: object) -> None:
        server, event = (item.server, item.event) if isinstance(item, FromServer) else (None, item)
        if isinstance(event, ev.StreamReconnected):
            self.scheduler.spawn(self.resync(server))
            return
        if isinstance(event, ev.PermissionAsked | ev.QuestionAsked):
            return  # the PolicyResponder answers these
        session_id = getattr(event, "session_id", None)
        if not isinstance(session_id, str):
            return
        attempt = self.table.by_session(session_id)
        if attempt is None:
            if _is_idle(event):
                self.settler.session_idle(session_id)
            return
        attempt.last_activity = self.clock.monotonic()
        if _is_idle(event):
            self.scheduler.spawn(self.settler.finish(attempt))
        elif isinstance(event, ev.SessionError):
            attempt.error = event.error
        elif isinstance(event, ev.SessionStatusChanged) and event.status == "retry":
            attempt.began = True
            self.stopper.provider_retrying(attempt, event.attempt or 0, event.message or "")
        elif _shows_a_turn(event):
            attempt.began = True

    async def resync(self, server: str | None = None) -> None:
        """After a server's event stream reconnects (``None``: any server's): anything on it that
        went idle meanwhile is settled now."""
        by_dir: dict[tuple[str, str], list[Attempt]] = {}
        for a in self.table:
            if a.session_id and not a.settling and server in (None, a.server):
                by_dir.setdefault((a.server, a.directory), []).append(a)
        for (on, directory), attempts in by_dir.items():
            try:
                statuses = await self.pool.client(on).session_status(directory)
            except OccoordError as exc:
                log.warning("resync of %s failed: %s", directory, exc)
                continue
            for a in attempts:
                if a.session_id not in statuses:
                    await self.settler.finish(a)


def _is_idle(event: object) -> bool:
    return isinstance(event, ev.SessionIdle) or (
        isinstance(event, ev.SessionStatusChanged) and event.status == "idle"
    )


def _shows_a_turn(event: object) -> bool:
    """Busy (or retrying), or an assistant message: the turn has started."""
    if isinstance(event, ev.SessionStatusChanged):
        return True
    return isinstance(event, ev.MessageUpdated) and getattr(event, "role", None) == "assistant"
