"""What each task's session is told: the task itself and exactly how to signal its outcome."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from occoord.manifest.model import TaskSpec
from occoord.spool.names import format_state
from occoord.spool.states import TaskState

__all__ = ["build_prompt", "session_title", "signal_command"]


def session_title(run_id: str, task: str, attempt: int) -> str:
    """The idempotency key: after a crash, the session of an attempt is found again by its title."""
    return f"occoord {run_id}/{task}#{attempt}"


def signal_command(spool_root: Path, run_id: str, task: str, state: str) -> str:
    """An absolute command line that works in the agent's shell even if occoord is not on PATH."""
    argv = [sys.executable, "-m", "occoord", "signal", "--spool", str(spool_root), run_id, task, state]
    return " ".join(shlex.quote(a) for a in argv)


def build_prompt(spec: TaskSpec, *, spool_root: Path, run_id: str, tasks_dir: Path) -> str:
    pending = tasks_dir / format_state(spec.id, TaskState.PENDING)
    done = tasks_dir / format_state(spec.id, TaskState.DONE)
    failed = tasks_dir / format_state(spec.id, TaskState.FAILED)
    header = [f'You are working on task "{spec.id}" of the occoord run "{run_id}".']
    if spec.role:
        header.append(f"Your role: {spec.role}")
    if spec.description:
        header.append(f"Task: {spec.description}")
    q = shlex.quote
    footer = f"""

---
When you have finished, report the outcome yourself by running exactly one of these shell commands
(add --message 'one line' to say why):
success: {signal_command(spool_root, run_id, spec.id, "done")}
failure: {signal_command(spool_root, run_id, spec.id, "failed")}
If that command does not work, rename the task's state file instead:
success: mv {q(str(pending))} {q(str(done))}
failure: mv {q(str(pending))} {q(str(failed))}
"""
    return "\n".join(header) + "\n\n" + spec.prompt.rstrip() + footer
