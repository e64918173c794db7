"""End-to-end helpers of the tests: `occoord watch` with fast test options, and the spool's files.

Tests drive everything through the filesystem, as a user would: copy a manifest into incoming/,
read and rename state files, read summaries. The processes themselves (start, wait, stop by PID)
are tests/support/processes.py's; the fixtures that start them are in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from support.processes import READY, Proc, wait_for, watch_argv

STATES = ("queued", "pending", "done", "failed")

FAST = (
    "--settle-seconds", "0.3", "--rescan-interval", "5", "--retry-base", "0.1",
    "--start-timeout", "5", "--signal-grace", "0.5", "--idle-timeout", "30", "--task-timeout", "60",
)  # fmt: skip

# A hook that writes down what it was given, its argv (after OUT) and its whole environment, to
# OUT/<task>.json (OUT/run.json for a run's hook). Atomically, by temp file and os.replace: a test
# that sees the file reads all of it, never a half-written one.
HOOK = """
import json, os, sys
out, rest = sys.argv[1], sys.argv[2:]
path = os.path.join(out, os.environ.get("OCCOORD_TASK", "run") + ".json")
with open(path + ".tmp", "w") as fh:
    json.dump({"argv": rest, "env": dict(os.environ)}, fh)
os.replace(path + ".tmp", path)
"""


def start_watcher(
    spool: Path,
    workdir: Path,
    *extra: str,
    server: str | None = None,
    name: str = "watch",
    ready: str = READY,
) -> Proc:
    """Start `occoord watch` (on ``server``, or the built-in simulator) and wait for its ``ready``
    line: the coordinator is serving (or, with ready="standby", waiting as the standby)."""
    backend = ["--server", server] if server else ["--simulate"]
    proc = Proc(watch_argv(spool, workdir, *FAST, *backend, *extra), spool.parent / f"{name}.log")
    proc.ready(ready, timeout=30)
    return proc


def task(task_id: str, prompt: str, **more: object) -> dict[str, object]:
    return {"id": task_id, "prompt": prompt, **more}


def manifest(*tasks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "name": top.pop("name", "e2e"), **top, "tasks": list(tasks)}


def drop(spool: Path, name: str, doc: dict[str, Any]) -> Path:
    """Like `cp manifest.json SPOOL/incoming/`: written in place, not atomically."""
    target = spool / "incoming" / name
    target.write_text(json.dumps(doc))
    return target


def drop_atomically(spool: Path, name: str, doc: dict[str, Any]) -> Path:
    """Like `occoord submit`: written in tmp/ and renamed in, so the watcher takes it at once."""
    staging = spool / "tmp" / f".{name}.tmp"
    staging.write_text(json.dumps(doc))
    return staging.rename(spool / "incoming" / name)


def the_run(spool: Path, name: str = "", timeout: float = 20.0) -> Path:
    """The (first) run accepted so far, or the one made of the manifest named ``name``."""
    pattern = f"2*-{name}" if name else "2*"
    return Path(wait_for(lambda: next(iter(sorted((spool / "runs").glob(pattern))), None), timeout=timeout))


def states(run_dir: Path) -> dict[str, str]:
    """Task -> state, from the listing alone (``ls tasks/``)."""
    out = {}
    for entry in os.listdir(run_dir / "tasks"):
        stem, _, suffix = entry.rpartition(".")
        if suffix in STATES and not entry.startswith("."):
            out[stem] = suffix
    return out


def record(run_dir: Path, task: str) -> dict[str, Any]:
    """The task's record. Mid-transition the task is briefly a hidden claim file: wait it out."""

    def read() -> dict[str, Any] | None:
        state = states(run_dir).get(task)
        try:
            return dict(json.loads((run_dir / "tasks" / f"{task}.{state}").read_text())) if state else None
        except FileNotFoundError:
            return None

    return dict(wait_for(read, timeout=5))


def summary(run_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    path = run_dir / "summary.json"
    wait_for(path.exists, timeout=timeout, interval=0.05)
    return dict(json.loads(path.read_text()))


def journal(run_dir: Path) -> Iterator[dict[str, Any]]:
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        yield json.loads(line)


def max_concurrent_pending(run_dirs: Sequence[Path]) -> int:
    """Replay the journals in time order and return the most tasks ever pending at once."""
    events = sorted(
        (e["ts"], e.get("from"), e.get("to")) for d in run_dirs for e in journal(d) if e["kind"] != "run"
    )
    pending = peak = 0
    for _, source, target in events:
        pending += (target == "pending") - (source == "pending")
        peak = max(peak, pending)
    return peak


def sim_sessions(url: str, directory: Path) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/session", params={"directory": str(directory)}, timeout=10)
    response.raise_for_status()
    return list(response.json())


def sim_status(url: str, directory: Path) -> dict[str, Any]:
    response = httpx.get(f"{url}/session/status", params={"directory": str(directory)}, timeout=10)
    response.raise_for_status()
    return dict(response.json())


def in_session(run_dir: Path, *tasks: str) -> bool:
    """Every one of ``tasks`` is pending with its session recorded: its turn is under way."""
    return all(states(run_dir).get(t) == "pending" and record(run_dir, t).get("session_id") for t in tasks)


def wait_state(run_dir: Path, task: str, state: str, timeout: float = 30.0) -> None:
    wait_for(lambda: states(run_dir).get(task) == state, timeout=timeout, interval=0.02)


def hook_record(out: Path, name: str) -> dict[str, Any]:
    """What HOOK wrote down for task ``name`` (or "run"): {"argv": [...], "env": {...}}."""
    return dict(json.loads((out / f"{name}.json").read_text()))
