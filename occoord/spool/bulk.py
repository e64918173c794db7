"""Many tasks at once: a run's first records, and failing every queued task of a run in one batch.

One task's transition costs three fsyncs (record, directory, journal); 10,000 of them one by one
took ~25 s. A batch keeps every step of :meth:`RunTasks.transition` and its order, for all its
tasks together, so each crash window is one a single transition also has:

1. claim: ``rename(T.queued, .T.failed.claim)`` for each task (a lost race skips that task);
2. give each claim its new record (in place, or by temp file; see :func:`_rewrite_claim`); make
   them all durable together (:func:`sync_all`);
3. rename each claim to ``T.failed``;
4. make the renames durable (one directory fsync), then one journal append holding every line.

A crash in 1 leaves claims holding their old record: reconcile undoes them (the task is queued
again, and the cancel request, removed only after the batch, is honoured again). A crash in 2-3
leaves each claim holding its old record (undone) or its new one (published: the task is failed
as asked). A crash before 4's journal append leaves files ahead of the journal: reconcile journals
them ("after a crash").
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import replace
from json.encoder import encode_basestring
from pathlib import Path

from occoord.fsutil import append_line, fsync_dir, sync_all, write_new
from occoord.spool.journal import EVENTS_FILE, Event, event_line, iso
from occoord.spool.echoes import ECHOES
from occoord.spool.names import format_claim, format_state
from occoord.spool.records import TaskRecord
from occoord.spool.states import Actor, TaskState, check_transition
from occoord.spool.tasks import RunTasks

__all__ = ["encode_record", "event_lines", "fail_queued_batch"]

_PAGE = 4096  # a write within one page at offset 0 is never left half done by a kill
_FIELDS = ("protocol", "task", "state", "attempt", "since", "actor", "reason", "session_id", "not_before")


def _dumps(value: str | int | None) -> str:
    # What json.dumps(value, ensure_ascii=False) gives for these types, without its per-call set-up.
    if value is None:
        return "null"
    if isinstance(value, str):
        return encode_basestring(value)
    return str(int(value))


def encode_record(record: TaskRecord) -> bytes:
    """``record.to_bytes()``, byte for byte, several times faster: json's indenting encoder is pure
    Python, so the flat fields are encoded one by one by the C encoder and laid out the same way."""
    if record.details:
        return record.to_bytes()  # nested values: leave their layout to json itself
    values = (
        1,
        record.task,
        record.state.value,
        record.attempt,
        record.since,
        record.actor,
        record.reason,
        record.session_id,
        record.not_before,
    )
    body = "".join(f' "{key}": {_dumps(value)},\n' for key, value in zip(_FIELDS, values, strict=True))
    return ("{\n" + body + ' "details": {}\n}\n').encode("utf-8")


def event_lines(events: Iterable[Event]) -> bytes:
    """Journal lines, exactly as :func:`journal.append_event` writes them one at a time."""
    return "".join(event_line(e) for e in events).encode("utf-8")


def fail_queued_batch(
    tasks: RunTasks, names: Sequence[str], reason: str, actor: Actor = Actor.COORDINATOR
) -> list[TaskRecord]:
    """Move every task of ``names`` that is queued to failed, together (see the module's steps).

    Returns the records written; a task no longer queued (someone moved it first) is left out, as
    :meth:`RunTasks.transition` would have raised TransitionConflict for it."""
    for task in names:
        check_transition(task, TaskState.QUEUED, TaskState.FAILED, actor)
    target = TaskState.FAILED
    where = os.path.abspath(tasks.dir)  # how the watcher names the renames it is told of
    with tasks.lock:
        claimed: list[tuple[str, Path]] = []
        for task in names:
            claim = tasks.dir / format_claim(task, target)
            echo = f"{where}/{format_state(task, TaskState.QUEUED)}"
            ECHOES.expect(echo, None)  # announced before the rename, as RunTasks does
            try:
                os.rename(tasks.path(task, TaskState.QUEUED), claim)
            except FileNotFoundError:
                ECHOES.withdraw(echo, None)
                continue
            claimed.append((task, claim))
        if not claimed:
            return []
        now = iso(tasks.clock())
        records: list[TaskRecord] = []
        written: list[Path] = []
        temps: list[tuple[Path, Path]] = []  # (temp, claim): records that could not go in place
        try:
            for task, claim in claimed:
                records.append(_rewrite_claim(task, claim, target, now, actor, reason, temps))
                written.append(claim)
            if tasks.durable:
                sync_all(written + [t for t, _ in temps], [tasks.dir])
            for temp, claim in temps:
                os.replace(temp, claim)
        except BaseException:
            for temp, _ in temps:
                _unlink(temp)
            raise
        for task, claim in claimed:
            echo = f"{where}/{format_state(task, target)}"
            ECHOES.expect(None, echo)
            try:
                os.rename(claim, tasks.path(task, target))
            except BaseException:
                ECHOES.withdraw(None, echo)
                raise
        if tasks.durable:
            fsync_dir(tasks.dir)
        source = TaskState.QUEUED.value
        lines = event_lines(
            Event(now, "transition", r.task, source, target.value, actor.value, r.attempt, reason)
            for r in records
        )
        append_line(tasks.run_dir / EVENTS_FILE, lines, durable=tasks.durable)
    return records


def _rewrite_claim(
    task: str,
    claim: Path,
    target: TaskState,
    now: str,
    actor: Actor,
    reason: str,
    temps: list[tuple[Path, Path]],
) -> TaskRecord:
    """Read a claim's old record and give it the new one.

    In place when the new record is at least as long as the old and within one page: a single
    ``pwrite`` at offset 0, which a kill leaves done or not done (never torn), so the claim holds
    the old record or the new, as after the temp file and rename a transition uses. That is one
    inotify event instead of four; the watcher's thread handles each in Python, and a burst of
    tens of thousands overflows the kernel's queue. Otherwise by temp file (``temps``), replaced
    onto the claim once every record is durable."""
    fd = os.open(claim, os.O_RDWR | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        data = b"".join(chunks)
        old = TaskRecord.from_bytes(data) or TaskRecord(task, TaskState.QUEUED)
        record = replace(old, state=target, since=now, actor=actor.value, reason=reason)
        new = encode_record(record)
        if len(data) <= len(new) <= _PAGE:
            os.pwrite(fd, new, 0)
            return record
    finally:
        os.close(fd)
    temp = claim.with_name(f".{claim.name}.{secrets.token_hex(4)}.tmp")
    write_new(temp, new)
    temps.append((temp, claim))
    return record


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
