"""Cancel requests as files: ``runs/RUN/cancel`` cancels the run, ``runs/RUN/cancel.TASK`` one task.

``occoord cancel`` writes them; anyone may ``touch`` them. The coordinator aborts the sessions,
fails the tasks as cancelled and removes the request file.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from occoord.fsutil import atomic_write
from occoord.spool.layout import Run

__all__ = ["pending_cancels", "request_cancel"]


def request_cancel(run: Run | Path, task: str | None = None) -> Path:
    """Drop the request file in ``run`` (a Run, or its directory)."""
    run_dir = run if isinstance(run, Path) else run.dir
    path = run_dir / ("cancel" if task is None else f"cancel.{task}")
    atomic_write(path, b"cancel requested\n")
    return path


def pending_cancels(run_dir: Path, tasks: Collection[str]) -> list[tuple[Path, list[str]]]:
    """The cancel requests in ``run_dir``: (request file, the tasks it cancels) for ``tasks``."""
    out: list[tuple[Path, list[str]]] = []
    for name in os.listdir(run_dir):
        if name == "cancel":
            out.append((run_dir / name, list(tasks)))
        elif name.startswith("cancel.") and name[len("cancel.") :] in tasks:
            out.append((run_dir / name, [name[len("cancel.") :]]))
    return out
