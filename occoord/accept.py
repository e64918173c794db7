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
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from occoord.errors import ManifestError
from occoord.fsutil import (
    NotRegularFile,
    TooLarge,
    fsync_dir,
    make_private,
    move_noclobber,
    read_limited,
)
from occoord.manifest import MAX_MANIFEST_BYTES, format_for, parse_manifest
from occoord.names import is_ignored_incoming, printable

if TYPE_CHECKING:
    from occoord.spool import AcceptOutcome, Spool

__all__ = ["accept_file", "undo_partial"]


def accept_file(spool: Spool, path: Path, *, settled: bool) -> AcceptOutcome:
    from occoord.spool import AcceptOutcome, log

    name = path.name
    if is_ignored_incoming(name):
        return AcceptOutcome("ignored", path, reason="a temporary name")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return AcceptOutcome("gone", path)
    if stat.S_ISLNK(info.st_mode):
        with spool.lock:
            return spool.reject(path, "symbolic links are not accepted: copy the manifest itself")
    if not stat.S_ISREG(info.st_mode):
        log.warning("incoming/%s is not a regular file; left alone", printable(name))
        return AcceptOutcome("ignored", path, reason="not a regular file")
    fmt = format_for(path)
    if fmt is None:
        if not settled:
            return AcceptOutcome("not_ready", path)
        with spool.lock:
            return spool.reject(path, "unsupported extension: manifests end .json, .yaml or .yml")
    if not settled:
        return AcceptOutcome("not_ready", path)
    try:
        data = read_limited(path, MAX_MANIFEST_BYTES)
        manifest = parse_manifest(data, source=name, fmt=fmt)
    except FileNotFoundError:
        return AcceptOutcome("gone", path)
    except (TooLarge, NotRegularFile) as exc:
        with spool.lock:
            return spool.reject(path, f"{name}: {exc}")
    except ManifestError as exc:
        with spool.lock:
            return spool.reject(path, str(exc))
    except OSError as exc:
        with spool.lock:
            return spool.reject(path, f"{name}: cannot read: {exc.strerror}")

    with spool.lock:
        if not os.path.lexists(path):
            return AcceptOutcome("gone", path)
        run_id = spool.new_run_id(path.stem)
        try:
            staging = spool.build_run(run_id, manifest, name)
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
