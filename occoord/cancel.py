"""Cancel requests as files: ``runs/RUN/cancel`` cancels the run, ``runs/RUN/cancel.TASK`` one task.

``occoord cancel`` writes them; anyone may ``touch`` them. The coordinator aborts the sessions,
fails the tasks as cancelled and removes the request file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from occoord.fsutil import atomic_write

if TYPE_CHECKING:
    from occoord.runstate import ActiveRun
    from occoord.spool import Run

__all__ = ["pending_cancels", "request_cancel"]


def request_cancel(run: Run, task: str | None = None) -> Path:
    path = run.dir / ("cancel" if task is None else f"cancel.{task}")
    atomic_write(path, b"cancel requested\n")
    return path


def pending_cancels(active: ActiveRun) -> list[tuple[Path, list[str]]]:
    out: list[tuple[Path, list[str]]] = []
    for name in os.listdir(active.run.dir):
        if name == "cancel":
            out.append((active.run.dir / name, list(active.specs)))
        elif name.startswith("cancel.") and name[len("cancel.") :] in active.specs:
            out.append((active.run.dir / name, [name[len("cancel.") :]]))
    return out
