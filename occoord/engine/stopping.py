"""Stopping attempts: the three timeouts, cancel requests, a provider that keeps failing.

An attempt is stopped by aborting its session and seeing it no longer busy; only then is its
outcome settled, so a later attempt never runs beside it. Until the server can be asked, the
attempt waits, holding its slot.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from occoord.backoff import Backoff
from occoord.engine.attempts import Attempt
from occoord.engine.parts import Component, Parts
from occoord.engine.runs import ActiveRun
from occoord.engine.settle import Settler
from occoord.errors import OccoordError, SessionBusy
from occoord.spool.bulk import fail_queued_batch
from occoord.spool.cancel import pending_cancels
from occoord.spool.echoes import ECHOES
from occoord.spool.states import TaskState

__all__ = ["Stopper"]

log = logging.getLogger(__name__)

# Stopping a session the server cannot be asked about yet: again after 1 s, 2 s, ... 30 s apart.
STOP_BACKOFF = Backoff(base=1.0, cap=30.0)
# A cancel of more queued tasks than this goes chunk by chunk (each chunk's renames are ~5 inotify
# events a task; the kernel queues 16,384 by default).
CANCEL_CHUNK = 1000
ECHO_WAIT = 1.0  # seconds a chunk waits for the previous chunk's hints (lost ones are not waited for)
ECHO_PAUSE = 0.05  # the pause per chunk where no echoes are announced


class Stopper(Component):
    def __init__(
        self, parts: Parts, settler: Settler, provider_retries: int, server_timeout: float | None = None
    ) -> None:
        super().__init__(parts)
        self.settler = settler
        self.provider_retries = provider_retries
        self.server_timeout = server_timeout
        self._down_since: dict[str, float] = {}
        self._moved: set[str] = set()  # servers down past the timeout whose attempts were moved
        # Sessions of attempts failed while their server was away: aborted when it is back.
        self.leftovers: dict[str, list[tuple[str, str]]] = {}
        self._cancelling: set[str] = set()  # runs a cancel job is failing chunk by chunk

    def check_timeouts(self, now: float) -> None:
        for expiry in self.table.expired(now):
            self.stop(expiry.attempt, expiry.reason, retryable=expiry.retryable)
        if self.server_timeout is not None:
            self._check_servers(now, self.server_timeout)

    def _check_servers(self, now: float, timeout: float) -> None:
        """A server of a pool unreachable for longer than ``server_timeout``: its attempts fail as
        retryable, so they are placed on another server. Their sessions cannot be seen stopped
        while it is away; they are aborted as soon as it is back (``leftovers``)."""
        for member in self.pool:
            if member.healthy:
                self._down_since.pop(member.name, None)
                self._moved.discard(member.name)
                for session_id, directory in self.leftovers.pop(member.name, []):
                    self.scheduler.spawn(self._abort_leftover(member.name, session_id, directory))
                continue
            since = self._down_since.setdefault(member.name, now)
            if len(self.pool) < 2 or now - since < timeout or member.name in self._moved:
                continue  # with nowhere else to go, waiting for it is the better choice
            self._moved.add(member.name)  # nothing new goes to a server that is down
            for attempt in self.table:
                if attempt.server != member.name or attempt.settling:
                    continue
                if attempt.session_id is not None:
                    self.leftovers.setdefault(member.name, []).append((attempt.session_id, attempt.directory))
                reason = f"server {member.name} unreachable for {now - since:.0f} s; placed elsewhere"
                log.warning("%s: %s", attempt.label, reason)
                attempt.settling = True
                self.scheduler.spawn(
                    self.settler.settle(attempt, None, reason, retryable=True, unreachable=True)
                )

    def next_deadline(self) -> float | None:
        """When a server seen down would have its attempts placed elsewhere."""
        if self.server_timeout is None or len(self.pool) < 2:
            return None
        due = [
            since + self.server_timeout for name, since in self._down_since.items() if name not in self._moved
        ]
        return min(due) if due else None

    async def _abort_leftover(self, server: str, session_id: str, directory: str) -> None:
        try:
            await self.pool.client(server).abort(session_id, directory)
            log.info(
                "server %s is back: aborted session %s of an attempt placed elsewhere", server, session_id
            )
        except OccoordError as exc:
            log.warning("server %s: cannot abort the left-over session %s: %s", server, session_id, exc)

    def stop(self, attempt: Attempt, reason: str, *, retryable: bool) -> None:
        attempt.settling = True  # at once: the next tick must not stop it again
        self.scheduler.spawn(self._abort_and_settle(attempt, reason, retryable))

    async def _abort_and_settle(self, attempt: Attempt, reason: str, retryable: bool, tries: int = 0) -> None:
        try:
            await self.silence(attempt)
        except OccoordError as exc:
            # Until the session is seen stopped, the task keeps this attempt (and its slot): a new
            # attempt beside a turn that still runs would put two agents on one task.
            delay = STOP_BACKOFF.delay(tries + 1)
            log.warning("%s: cannot stop its session yet (again in %.0f s): %s", attempt.label, delay, exc)
            self.scheduler.spawn_at(
                self.clock.monotonic() + delay,
                lambda: self._abort_and_settle(attempt, reason, retryable, tries + 1),
            )
            return
        await self.settler.settle(attempt, None, reason, retryable=retryable)

    async def silence(self, attempt: Attempt) -> None:
        """Abort the attempt's session (found by its title if its id never came back) and see that
        it is no longer busy. Raises OccoordError while that cannot be seen."""
        client = self.pool.client(attempt.server)
        if attempt.session_id is not None:
            sessions = [attempt.session_id]
        else:
            found = await client.find_sessions(attempt.directory, attempt.title)
            sessions = [s.id for s in found]
        for session_id in sessions:
            await client.abort(session_id, attempt.directory)
        if not sessions:
            return
        busy = await client.session_status(attempt.directory)
        for session_id in sessions:
            if session_id in busy:
                raise SessionBusy(session_id)

    def provider_retrying(self, attempt: Attempt, number: int, message: str) -> None:
        """The provider failed and OpenCode retries by itself (session.status "retry"): show it,
        and after too many retries stop the turn instead of waiting for the idle timeout."""
        attempt.provider_retries = max(number, attempt.provider_retries + 1)
        shown = f"retrying (attempt {attempt.provider_retries}): {message}".strip()
        active = self.book.runs.get(attempt.run_id)
        if active is not None:
            try:
                active.run.tasks.update(attempt.task, TaskState.PENDING, durable=False, reason=shown)
            except (OccoordError, OSError) as exc:
                log.warning("%s: cannot record the provider retry: %s", attempt.label, exc)
        if attempt.provider_retries > self.provider_retries and not attempt.settling:
            reason = f"the provider kept failing ({attempt.provider_retries} retries): {message}"
            log.warning("%s: %s; stopping the turn", attempt.label, reason)
            self.stop(attempt, reason, retryable=True)

    def check_cancel(self, active: ActiveRun) -> None:
        """Honour ``runs/RUN/cancel`` (whole run) and ``runs/RUN/cancel.TASK`` request files.

        The queued tasks a request names are failed in batches (spool.bulk: one durable batch, not
        three fsyncs each), a big cancel chunk by chunk in the background; the request file goes
        only after that, so a crash honours it again."""
        if active.id in self._cancelling:
            return  # a cancel job is at work on this run; it removes its request when done
        for path, tasks in pending_cancels(active.run.dir, active.specs):
            queued = [t for t in tasks if active.states.get(t) is TaskState.QUEUED]
            self._stop_pending(active, tasks)
            if len(queued) > CANCEL_CHUNK:
                self._cancelling.add(active.id)
                active.hold(queued)
                self.scheduler.spawn(self._cancel_in_chunks(active, path, queued))
                return  # the next request is looked at once this one is done
            self._fail_queued(active, queued)
            path.unlink(missing_ok=True)

    def _stop_pending(self, active: ActiveRun, tasks: list[str]) -> None:
        for task in tasks:
            if active.states.get(task) is TaskState.PENDING:
                attempt = self.table.get(active.id, task)
                if attempt is not None:
                    attempt.cancel_reason = "cancelled"
                    self.stop(attempt, "cancelled", retryable=False)
                else:
                    self.book.move(active, task, TaskState.PENDING, TaskState.FAILED, "cancelled")

    def _fail_queued(self, active: ActiveRun, queued: list[str]) -> None:
        queued = [t for t in queued if active.states.get(t) is TaskState.QUEUED]
        if len(queued) == 1:
            self.book.move(active, queued[0], TaskState.QUEUED, TaskState.FAILED, "cancelled")
            return
        if not queued:
            return
        # Its renames are announced as echoes (spool.echoes): the watcher drops them, so 10,000
        # tasks are not re-read for hints about what the book already knows.
        records = fail_queued_batch(active.run.tasks, queued, "cancelled")
        self.book.moved_together(active, records, TaskState.QUEUED)
        for task in set(queued) - {r.task for r in records}:
            self.book.observe(active.id, task)  # someone moved it first: see where to

    async def _cancel_in_chunks(self, active: ActiveRun, path: Path, queued: list[str]) -> None:
        """Fail a big cancel's queued tasks a chunk at a time, each chunk once the watcher has
        passed on the previous one's renames: a burst of 50,000 inotify events overflows the
        kernel's queue (events of every run lost), and the loop serves everything else between."""
        done = False
        try:
            for start in range(0, len(queued), CANCEL_CHUNK):
                if start:
                    await _echoes_back(CANCEL_CHUNK)
                if self.book.runs.get(active.id) is not active:
                    return  # finished or unloaded meanwhile
                self._fail_queued(active, queued[start : start + CANCEL_CHUNK])
            path.unlink(missing_ok=True)
            await _echoes_back(0)
            done = True
        except (OccoordError, OSError) as exc:
            # The request stays: the next rescan (or hint) tries again.
            log.warning("run %s: cancel interrupted (again later): %s", active.id, exc)
        finally:
            self._cancelling.discard(active.id)
            active.release(queued)
        if done and self.book.runs.get(active.id) is active:
            self.check_cancel(active)  # requests that came meanwhile (a cancel.TASK)


async def _echoes_back(allowed: int) -> None:
    """Wait (at most ECHO_WAIT s) until the watcher has taken all but ``allowed`` of the renames
    announced as echoes (it reads inotify on this loop, so sleeping is what lets it); without
    echoes (watchdog's fallback) one short pause per chunk lets its thread catch up."""
    loop = asyncio.get_running_loop()
    if not ECHOES.on:
        await asyncio.sleep(ECHO_PAUSE)
        return
    deadline = loop.time() + ECHO_WAIT
    while ECHOES.pending() > allowed and loop.time() < deadline:
        await asyncio.sleep(0.002)
