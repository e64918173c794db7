"""Running the manifest's ``on_task_end`` / ``on_run_end`` commands.

Facts reach a hook only through environment variables (``OCCOORD_*``), never by interpolation
into a command line, so a task's reason or a file name cannot inject shell syntax. The command
runs without a shell, with a timeout; its output goes to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from occoord.spool.records import TaskRecord

__all__ = ["run_facts", "run_hook", "task_facts"]

log = logging.getLogger(__name__)


async def run_hook(argv: Sequence[str], facts: Mapping[str, str], *, timeout: float = 60.0) -> int | None:
    """Run one hook; return its exit code (None if it could not run or timed out). Never raises."""
    if not argv:
        return None
    env = {**os.environ, **{f"OCCOORD_{k.upper()}": v for k, v in facts.items()}}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # ValueError: an argument no exec can carry (a NUL)
        log.error("hook %s could not start: %s", argv[0], exc)
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        # The hook leads its own process group (start_new_session): kill what it started too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        log.error("hook %s timed out after %.0f s and was killed with its process group", argv[0], timeout)
        return None
    text = out.decode("utf-8", "replace").strip()
    if proc.returncode:
        log.warning("hook %s exited %s: %s", argv[0], proc.returncode, text[-2000:])
    elif text:
        log.info("hook %s: %s", argv[0], text[-2000:])
    return proc.returncode


def task_facts(spool_root: Path, run_dir: Path, record: TaskRecord) -> dict[str, str]:
    """What ``on_task_end`` learns (as OCCOORD_* variables)."""
    return {
        "spool": str(spool_root),
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "task": record.task,
        "state": record.state.value,
        "reason": record.reason,
        "attempt": str(record.attempt),
        "session_id": record.session_id or "",
    }


def run_facts(spool_root: Path, run_dir: Path, *, ok: bool) -> dict[str, str]:
    """What ``on_run_end`` learns (as OCCOORD_* variables)."""
    return {
        "spool": str(spool_root),
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "state": "done" if ok else "failed",
        "summary": str(run_dir / "summary.json"),
    }
