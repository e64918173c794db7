"""Start-up recovery of a spool after a crash (protocol v1, docs/PROTOCOL.md section 7).

The listing is the truth: half-built runs are undone (their manifest goes back to incoming/),
rejections a crash interrupted are finished, temp files older than an hour are removed wherever
atomic_write leaves them, and every run that may need it is reconciled.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

from occoord.errors import SpoolError
from occoord.fsutil import fsync_dir, is_atomic_write_temp
from occoord.spool.accept import undo_partial
from occoord.spool.layout import Spool
from occoord.spool.names import is_ignored_incoming, parse_rejected, printable, rejected_part

__all__ = ["TMP_MAX_AGE", "recover"]

log = logging.getLogger(__name__)
TMP_MAX_AGE = 3600.0  # temp files older than this are a crashed writer's leftovers


def recover(spool: Spool) -> list[str]:
    """After a crash: undo half-built runs and interrupted rejections, clean old temp files,
    reconcile every unfinished run."""
    repairs: list[str] = []
    with spool.lock:
        for name in sorted(os.listdir(spool.runs)):
            if name.startswith(".") and name.endswith(".partial"):
                repairs += undo_partial(spool, spool.runs / name)
        rejected = _recover_rejections(spool, repairs)
    now = time.time()
    for name in os.listdir(spool.tmp):
        path = spool.tmp / name
        try:
            if now - path.lstat().st_mtime > TMP_MAX_AGE:
                path.unlink()
                repairs.append(f"removed stale temp file tmp/{printable(name)}")
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
    # Temp files atomic_write leaves wherever it publishes: the spool's root (PROTOCOL,
    # server.json), rejected/ (.error), each run's directory (summaries) and its results/.
    # tasks/ is reconcile's; incoming/ belongs to the writers.
    repairs += _remove_old_temps(spool, spool.root, now)
    repairs += _remove_old_temps(spool, spool.rejected, now, rejected)
    for run_id in spool.run_ids():
        repairs += _remove_old_temps(spool, spool.runs / run_id, now)
        repairs += _remove_old_temps(spool, spool.runs / run_id / "results", now)
        if spool.looks_finished(run_id):
            continue  # nothing to repair: loading its plan would only cost start-up time
        try:
            run = spool.run(run_id)
        except SpoolError as exc:
            log.error("cannot recover run %s: %s", run_id, exc)
            continue
        repairs += run.tasks.reconcile()
    return repairs


def _recover_rejections(spool: Spool, repairs: list[str]) -> list[str]:
    """Finish rejections a crash interrupted (under the spool lock); return rejected/'s names.

    - killed between the link and the unlink of the move (where renameat2 is missing): the
      manifest is in incoming/ and in rejected/ as one inode: the incoming/ name is dropped.
    - killed between writing ``X.error`` and moving the manifest to ``X``: the manifest is still
      in incoming/ and will be rejected again, so the orphan ``X.error`` is removed.
    """
    try:
        names = os.listdir(spool.rejected)
    except FileNotFoundError:
        return []
    linked: dict[tuple[int, int], str] = {}
    parts: set[str] = set()
    for name in os.listdir(spool.incoming):
        if is_ignored_incoming(name):
            continue
        parts.add(rejected_part(name))
        try:
            info = os.lstat(spool.incoming / name)
        except FileNotFoundError:
            continue
        if info.st_nlink > 1:
            linked[(info.st_dev, info.st_ino)] = name
    present = set(names)
    for entry in names:
        if entry.startswith(".") or entry.endswith(".error"):
            continue
        if linked:
            try:
                info = os.lstat(spool.rejected / entry)
            except FileNotFoundError:
                continue
            name = linked.pop((info.st_dev, info.st_ino), "")
            if name:
                os.unlink(spool.incoming / name)
                parts.discard(rejected_part(name))
                repairs.append(
                    f"incoming/{printable(name)} was already rejected as rejected/{printable(entry)}:"
                    " removed it (a move interrupted by a crash)"
                )
    for entry in names:
        if not entry.endswith(".error") or entry.startswith("."):
            continue
        base = entry[: -len(".error")]
        if base not in present and parse_rejected(base) & parts:
            os.unlink(spool.rejected / entry)
            present.discard(entry)
            repairs.append(
                f"removed rejected/{printable(entry)}: its manifest is still in incoming/ and will be"
                " rejected again (a rejection interrupted by a crash)"
            )
    if repairs and spool.durable:
        fsync_dir(spool.rejected)
        fsync_dir(spool.incoming)
    return sorted(present)


def _remove_old_temps(spool: Spool, directory: Path, now: float, names: list[str] | None = None) -> list[str]:
    """Remove atomic_write's temp files older than TMP_MAX_AGE from ``directory`` (one listdir)."""
    if names is None:
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            return []
    repairs = []
    for name in names:
        if not is_atomic_write_temp(name):
            continue
        path = directory / name
        try:
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > TMP_MAX_AGE:
                path.unlink()
                repairs.append(f"removed stale temp file {printable(str(path.relative_to(spool.root)))}")
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove stale temp file %s: %s", printable(str(path)), exc.strerror)
    return repairs
