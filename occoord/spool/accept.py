"""Accepting a manifest from incoming/ into runs/, and undoing a half-built run after a crash.

The order makes a crash at any point lose nothing and accept nothing twice:

1. parse and validate the file's bytes (the file stays in incoming/);
2. under the spool lock, build the run in a hidden ``runs/.<run-id>.partial/``;
3. move the manifest into it by rename (the claim: if the file is gone, another watcher took it);
4. rename the staging directory to ``runs/<run-id>`` (the run becomes visible, complete).

A crash before 3 leaves a staging dir without a manifest: it is deleted. A crash between 3 and 4
leaves one with the manifest: the manifest goes back to incoming/ and is accepted again. The claim
is one ``renameat2(RENAME_NOREPLACE)``; where that is missing it is a link then an unlink, and a
crash between those leaves the manifest in incoming/ and in the staging dir as one inode: the
staged link is dropped, and the manifest is accepted again, once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from occoord.errors import ManifestError, SpoolError
from occoord.fsutil import (
    DIR_MODE,
    NotRegularFile,
    TooLarge,
    atomic_write,
    fsync_dir,
    make_private,
    move_noclobber,
    read_limited,
    sync_all,
    write_new,
)
from occoord.manifest.load import format_for, parse_manifest
from occoord.manifest.model import MAX_MANIFEST_BYTES, Manifest
from occoord.spool.jsontext import dumps_rows
from occoord.spool.bulk import encode_record, event_lines
from occoord.spool.journal import EVENTS_FILE, Event, iso
from occoord.spool.layout import Spool
from occoord.spool.names import format_rejected, format_state, is_ignored_incoming, printable
from occoord.spool.records import TaskRecord
from occoord.spool.states import Actor, TaskState
from occoord.spool.tasks import TASKS_DIR

__all__ = ["AcceptOutcome", "accept_file", "build_run", "reject", "undo_partial"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AcceptOutcome:
    """What happened to one file in incoming/: accepted, rejected, not_ready, ignored or gone."""

    kind: str
    path: Path
    run_id: str | None = None
    reason: str = ""
    manifest: Manifest | None = None  # accepted: the plan just written (saves re-reading run.json)


def accept_file(
    spool: Spool, path: Path, *, settled: bool, publishing: Callable[[str], None] | None = None
) -> AcceptOutcome:
    """Accept, reject or leave one file of incoming/ (the steps in the module's doc).

    ``publishing`` is told the run id just before the run becomes visible (the engine, accepting in
    a worker thread, marks the run as arriving so its loop does not load it from the files)."""
    name = path.name
    if is_ignored_incoming(name):
        return AcceptOutcome("ignored", path, reason="a temporary name")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return AcceptOutcome("gone", path)
    if stat.S_ISLNK(info.st_mode):
        with spool.lock:
            return reject(spool, path, "symbolic links are not accepted: copy the manifest itself")
    if not stat.S_ISREG(info.st_mode):
        log.warning("incoming/%s is not a regular file; left alone", printable(name))
        return AcceptOutcome("ignored", path, reason="not a regular file")
    fmt = format_for(path)
    if fmt is None:
        if not settled:
            return AcceptOutcome("not_ready", path)
        with spool.lock:
            return reject(spool, path, "unsupported extension: manifests end .json, .yaml or .yml")
    if not settled:
        return AcceptOutcome("not_ready", path)
    try:
        data = read_limited(path, MAX_MANIFEST_BYTES)
        manifest = parse_manifest(data, source=name, fmt=fmt)
    except FileNotFoundError:
        return AcceptOutcome("gone", path)
    except (TooLarge, NotRegularFile) as exc:
        with spool.lock:
            return reject(spool, path, f"{name}: {exc}")
    except ManifestError as exc:
        with spool.lock:
            return reject(spool, path, str(exc))
    except OSError as exc:
        with spool.lock:
            return reject(spool, path, f"{name}: cannot read: {exc.strerror}")

    with spool.lock:
        if not os.path.lexists(path):
            return AcceptOutcome("gone", path)
        run_id = spool.new_run_id(path.stem)
        try:
            staging = build_run(spool, run_id, manifest, name)
        except BaseException:
            shutil.rmtree(spool.runs / f".{run_id}.partial", ignore_errors=True)
            raise
        claimed = staging / f"manifest.{path.suffix.lstrip('.').lower()}"
        try:
            move_noclobber(path, claimed)
        except FileNotFoundError:
            shutil.rmtree(staging)
            return AcceptOutcome("gone", path)
        try:
            make_private(claimed)  # it kept its author's mode until now
        except OSError as exc:
            log.warning("cannot make %s private: %s", claimed, exc.strerror)
        if spool.durable:
            fsync_dir(staging)
        if publishing is not None:
            publishing(run_id)
        os.rename(staging, spool.runs / run_id)
        if spool.durable:
            fsync_dir(spool.runs)
            fsync_dir(spool.incoming)
    log.info("accepted %s as run %s (%d tasks)", printable(name), run_id, len(manifest.tasks))
    return AcceptOutcome("accepted", path, run_id=run_id, manifest=manifest)


def undo_partial(spool: Spool, staging: Path) -> list[str]:
    """Undo a run that a crash left half-built (called under the spool lock)."""
    manifests = [p for p in staging.glob("manifest.*") if p.is_file()]
    repairs: list[str] = []
    if manifests:
        try:
            meta = json.loads((staging / "run.json").read_bytes())
            original = str(meta["source_name"])
        except (OSError, ValueError, KeyError):
            original = manifests[0].name
        stem, dot, ext = original.rpartition(".")
        for n in range(1, 1000):
            target = spool.incoming / (original if n == 1 else f"{stem}-{n}{dot}{ext}")
            if _same_inode(manifests[0], target):
                # Killed between the link and the unlink of the claim: the manifest never left.
                os.unlink(manifests[0])
                repairs.append(
                    f"{printable(original)} was still in incoming/: dropped its half-built run's link"
                )
                break
            try:
                move_noclobber(manifests[0], target)
            except FileExistsError:
                continue
            shown = printable(target.name)
            repairs.append(f"returned {printable(original)} from a half-built run to incoming/ as {shown}")
            break
    shutil.rmtree(staging)
    repairs.append(f"removed half-built run {staging.name}")
    return repairs


def _same_inode(a: Path, b: Path) -> bool:
    try:
        x, y = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def build_run(spool: Spool, run_id: str, manifest: Manifest, source_name: str) -> Path:
    """Write a run's files into a hidden staging directory; return it (not yet visible).

    Nobody sees the staging directory, and a crash before its publishing rename undoes it whole
    (:func:`undo_partial`), so its files need neither temp names nor an fsync each: they are
    written plainly and made durable together before :func:`accept_file` publishes them.
    """
    staging = spool.runs / f".{run_id}.partial"
    staging.mkdir(mode=DIR_MODE)
    tasks_dir = staging / TASKS_DIR
    tasks_dir.mkdir(mode=DIR_MODE)
    (staging / "results").mkdir(mode=DIR_MODE)
    now = iso(spool.clock())
    meta = {
        "protocol": 1,
        "run": run_id,
        "source_name": source_name,
        "accepted_at": now,
        "plan": manifest.to_json(),
    }
    written = [staging / "run.json", staging / EVENTS_FILE]
    write_new(written[0], dumps_rows(meta))
    events = [Event(now, "run", reason=f"accepted {source_name}")]
    coordinator = Actor.COORDINATOR.value
    for spec in manifest.tasks:
        first = TaskRecord(
            spec.id, TaskState.QUEUED, since=now, reason="accepted", not_before=spec.not_before
        )
        path = tasks_dir / format_state(spec.id, TaskState.QUEUED)
        write_new(path, encode_record(first))
        written.append(path)
        events.append(Event(now, "transition", spec.id, None, "queued", coordinator, 0, "accepted"))
    write_new(written[1], event_lines(events))
    if spool.durable:
        sync_all(written, [tasks_dir, staging / "results", staging])
    return staging


def reject(spool: Spool, path: Path, reason: str) -> AcceptOutcome:
    """Move a bad manifest to rejected/ with ``<name>.error`` beside it (error first: no loss).

    Called under the spool lock. A crash between the two leaves a ``.error`` without its
    manifest, which :meth:`recover` removes (the manifest, still in incoming/, is rejected again).
    """
    name = path.name
    shown = printable(name)
    # The reason names the file too (ManifestError's source): escape the name as a whole first,
    # then whatever else each line holds; the reason's own line breaks stay.
    reason = "\n".join(printable(line) for line in reason.replace(name, shown).split("\n"))
    when = spool.clock()
    for n in range(1, 1000):
        base = format_rejected(when, name, n)
        target = spool.rejected / base
        error = spool.rejected / f"{base}.error"
        if os.path.lexists(target) or os.path.lexists(error):
            continue
        text = f"{shown} was rejected at {iso(spool.clock())}:\n{reason}\n"
        atomic_write(error, text.encode("utf-8", "replace"), durable=spool.durable)
        try:
            move_noclobber(path, target)
        except FileExistsError:
            os.unlink(error)
            continue
        except FileNotFoundError:
            os.unlink(error)
            return AcceptOutcome("gone", path)
        _make_private(target)
        if spool.durable:
            fsync_dir(spool.rejected)
            fsync_dir(spool.incoming)
        log.warning("rejected %s: %s", shown, reason.replace("\n", "; "))
        return AcceptOutcome("rejected", target, reason=reason)
    raise SpoolError(str(spool.rejected), f"too many rejections named {shown}")


def _make_private(path: Path) -> None:
    """Give a manifest moved into the spool mode 0600 (it kept its author's until now)."""
    try:
        make_private(path)
    except OSError as exc:
        log.warning("cannot make %s private: %s", printable(str(path)), exc.strerror)
