"""Submitting a manifest: validate it where the user is, then publish a copy into incoming/."""

from __future__ import annotations

import os
import time
from pathlib import Path

from occoord.errors import SpoolError
from occoord.fsutil import atomic_write, fsync_dir, rename_noreplace
from occoord.manifest.load import load_manifest
from occoord.spool.layout import Spool

__all__ = ["submit"]


def submit(spool: Spool, source: Path) -> Path:
    """Validate ``source`` and put a copy into incoming/ atomically (tmp/, then rename).

    The copy is published by a rename that never replaces a file already there, so a watcher
    sees a moved-to (a complete file) and takes it at once: ``renameat2(RENAME_NOREPLACE)``, or,
    where that is missing, a plain rename under the spool lock after checking the name is free.
    """
    load_manifest(source)  # fail here, where the user is, rather than in rejected/
    data = source.read_bytes()
    staging = spool.tmp / f".{source.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    atomic_write(staging, data, durable=spool.durable)
    stem, suffix = source.stem, source.suffix
    for n in range(1, 1000):
        target = spool.incoming / (source.name if n == 1 else f"{stem}-{n}{suffix}")
        try:
            if not rename_noreplace(staging, target):
                # No atomic no-clobber rename here. link + unlink would publish a link, which a
                # watcher cannot tell from a `cp` still writing; so: a plain rename, under the
                # lock every accept and reject holds, of a name checked free.
                with spool.lock:
                    if os.path.lexists(target):
                        continue
                    os.rename(staging, target)
        except FileExistsError:
            continue
        if spool.durable:
            fsync_dir(spool.incoming)
        return target
    raise SpoolError(str(spool.incoming), f"too many files named like {source.name}")
