"""What an attempt leaves besides its state: the agent's final text (``results/T.md`` and
``T@N.md``), the transcript of a turn that failed (``results/T.log``), and what it cost.

All best effort where the outcome does not depend on it: a log or a usage figure that cannot be
had is logged and skipped; only the final text's write failing delays the outcome (the settler
tries again).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from occoord.engine.attempts import Attempt
from occoord.engine.book import RunBook
from occoord.engine.pool import ServerPool
from occoord.errors import ApiError, OccoordError
from occoord.fsutil import atomic_write, fsync_dir
from occoord.opencode.models import Message
from occoord.opencode.outcome import TurnOutcome, classify
from occoord.opencode.transcript import fetch_transcript
from occoord.opencode.usage import Usage, usage_with_children
from occoord.spool.summary import write_summary

__all__ = ["ResultKeeper"]

log = logging.getLogger(__name__)

# The last messages of a failed turn kept in results/T.log.
LOG_MESSAGES = 20


class ResultKeeper:
    def __init__(self, pool: ServerPool, book: RunBook) -> None:
        self.pool = pool
        self.book = book

    def write_result(self, attempt: Attempt, outcome: TurnOutcome) -> None:
        """Keep what the agent said: ``results/T@N.md`` for attempt N, and ``results/T.md`` unless a
        newer attempt has started (a late text never overwrites a newer attempt's)."""
        # By path, not through the active run: a signalled task's text often arrives after its run
        # has finished and left the book.
        run_dir = self.book.spool.runs / attempt.run_id
        if not outcome.text or not run_dir.is_dir():
            return
        data = outcome.text.encode("utf-8", "replace")
        durable = self.book.spool.durable
        newest = self._newest_attempt(attempt)
        latest = newest is None or newest <= attempt.attempt
        kept = run_dir / "results" / f"{attempt.task}@{attempt.attempt}.md"
        atomic_write(kept, data, durable=durable, sync_dir=not latest)
        if latest:
            _publish_link(kept, run_dir / "results" / f"{attempt.task}.md", durable=durable)

    def _newest_attempt(self, attempt: Attempt) -> int | None:
        active = self.book.runs.get(attempt.run_id)
        try:
            run = active.run if active is not None else self.book.spool.run(attempt.run_id)
            record = run.tasks.read(attempt.task)
        except (OccoordError, OSError):
            return None
        return record.attempt if record is not None else None

    async def write_log(self, attempt: Attempt) -> None:
        """A turn that did not end well: keep its transcript (text, tool calls, errors) as
        ``results/T.log``, the last output a person looks at to see why."""
        run_dir = self.book.spool.runs / attempt.run_id
        if attempt.session_id is None or not run_dir.is_dir():
            return
        try:
            entries = await fetch_transcript(
                self.pool.client(attempt.server), attempt.session_id, attempt.directory, last=LOG_MESSAGES
            )
            text = "\n".join(entry.render() for entry in entries).strip()
            if text:
                data = (text + "\n").encode("utf-8", "replace")
                atomic_write(run_dir / "results" / f"{attempt.task}.log", data, durable=False)
        except (OccoordError, OSError) as exc:  # the outcome matters more than its log
            log.info("%s: no transcript kept: %s", attempt.label, exc)

    async def read_turn(self, attempt: Attempt) -> tuple[list[Message], Usage | None]:
        """The session's messages, read once for both its outcome and what it cost (sub-agents'
        sessions are read only if it ran any). Raises the client's errors for the messages."""
        assert attempt.session_id is not None
        client = self.pool.client(attempt.server)
        path = f"/session/{attempt.session_id}/message"
        raw = await client.get_json(path, attempt.directory)
        if not isinstance(raw, list):
            raise ApiError("GET", path, 200, "BadResponse", "expected a list of messages")
        try:
            messages = [Message.from_api(item) for item in raw]
        except ValueError as exc:  # as the client maps a malformed answer
            raise ApiError("GET", path, 200, "BadResponse", str(exc)) from exc
        try:
            usage: Usage | None = await usage_with_children(
                client, attempt.session_id, attempt.directory, raw
            )
        except OccoordError as exc:
            log.info("%s: no usage figures: %s", attempt.label, exc)
            usage = None
        return messages, usage

    async def keep_late(self, attempt: Attempt) -> None:
        """A task decided from outside, its session now idle (or aborted): keep what the agent said
        and add what its turn cost to its (terminal) record, from one read of its messages."""
        if attempt.session_id is None:
            return
        try:
            messages, usage = await self.read_turn(attempt)
        except OccoordError:
            return
        self.write_result(attempt, classify(messages))
        if usage is not None:
            self._add_usage(attempt, usage)

    def _add_usage(self, attempt: Attempt, usage: Usage) -> None:
        try:
            active = self.book.runs.get(attempt.run_id)
            # A signal that finished the run took it out of the book: the files are still there.
            run = active.run if active is not None else self.book.spool.run(attempt.run_id)
            record = run.tasks.read(attempt.task)
            if record is None or not record.state.terminal or record.attempt != attempt.attempt:
                return
            total = (Usage.from_json(record.details.get("usage")) or Usage()) + usage
            details = {**record.details, "usage": total.to_json()}
            run.tasks.update(attempt.task, record.state, durable=False, details=details)
            if (run.dir / "summary.json").exists():  # the run finished first: its summary too
                write_summary(run, durable=self.book.spool.durable)
        except (OccoordError, OSError) as exc:
            log.info("%s: cannot record the usage: %s", attempt.label, exc)


def _publish_link(source: Path, path: Path, *, durable: bool) -> None:
    """``path`` becomes a second name of ``source``'s (fsynced) content: a hard link renamed into
    place, so readers never see half a file and no second copy is written and fsynced. Every
    writer of ``path`` replaces it (atomic_write), so the two names never share a later write."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # a name crash cleanup knows
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some filesystems): a copy, as before
        atomic_write(path, source.read_bytes(), durable=durable)
        return
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
