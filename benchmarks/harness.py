"""Shared plumbing of the benchmarks: processes, the in-thread simulator, manifests, statistics.

Every figure is taken against the simulator on loopback with ``occoord watch --server URL`` as a real
subprocess. The simulator runs in a thread of the benchmark process: its ``received`` list stamps
each prompt with ``time.monotonic()`` as it arrives (CLOCK_MONOTONIC is system-wide, so the driver's
own stamps compare with it). The driver itself only renames files and sleeps, so it hardly competes
with the simulator for the GIL.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from occoord.sim.simulator import Simulator

REPO = Path(__file__).resolve().parent.parent
# The process helpers are the tests' own (tests/support/processes.py). Appended, not prepended:
# nothing tests/ holds may shadow what the benchmarks import.
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))
from support import processes  # noqa: E402
from support.processes import proc_stat, watch_argv  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); with n < 100 samples the p99
    is close to the worst sample."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "samples": list(values),
    }


# -- waiting and processes ---------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.002, what: str = "") -> Any:
    """support.processes.wait_for, polling finer by default: what the benchmarks wait for they time."""
    return processes.wait_for(predicate, timeout, interval, what)


class Proc(processes.Proc):
    """A support.processes.Proc run from the repository, given two minutes to stop on SIGTERM: a
    watcher under cProfile writes its profile on the way out."""

    def __init__(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        super().__init__(argv, log, env, cwd=REPO, grace=120.0)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    fields = proc_stat(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def proc_status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# -- the simulator and the watcher -------------------------------------------------------------


def start_simulator() -> Simulator:
    """A fresh simulator serving from a thread of this process (no SSE heartbeat noise)."""
    sim = Simulator(heartbeat=3600.0)
    sim.start()
    return sim


def start_watcher(
    spool: Path,
    workdir: Path,
    server: str,
    log: Path,
    *extra: str,
    profile_to: Path | None = None,
    max_sessions: int = 64,
) -> Proc:
    """``occoord watch --server URL`` as a real subprocess (optionally under cProfile), ready."""
    options = ["--server", server, "--max-sessions", str(max_sessions), *extra]
    proc = Proc(watch_argv(spool, workdir, *options, verbose=False, profile_to=profile_to), log)
    proc.ready(timeout=60)
    return proc


# -- manifests and the spool -------------------------------------------------------------------


def init_spool(base: Path) -> tuple[Path, Path]:
    """A new spool (``occoord init``) and an empty work directory under ``base``."""
    spool, workdir = base / "spool", base / "work"
    workdir.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "occoord", "init", "--spool", str(spool)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return spool, workdir


def chain(n: int) -> tuple[list[str], list[dict[str, Any]]]:
    """A chain c0000 -> c0001 -> ... of ``n`` hanging tasks: its ids, and its tasks."""
    ids = [f"c{i:04d}" for i in range(n)]
    tasks: list[dict[str, Any]] = []
    for i, name in enumerate(ids):
        task: dict[str, Any] = {"id": name, "prompt": "[sim: hang] link"}
        if i:
            task["depends_on"] = [ids[i - 1]]
        tasks.append(task)
    return ids, tasks


def manifest(name: str, tasks: list[dict[str, Any]], workdir: Path, concurrency: int = 64) -> dict[str, Any]:
    return {
        "version": 1,
        "name": name,
        "concurrency": concurrency,
        "defaults": {"directory": str(workdir)},
        "tasks": tasks,
    }


def drop(spool: Path, name: str, body: dict[str, Any]) -> tuple[float, float]:
    """Write the manifest in tmp/, then rename it into incoming/ (an atomic writer).

    Returns (monotonic, wall) clock readings taken just before the rename."""
    staging = spool / "tmp" / f".{name}.tmp"
    staging.write_text(json.dumps(body))
    mono, wall = time.monotonic(), time.time()
    os.rename(staging, spool / "incoming" / name)
    return mono, wall


def run_dir(spool: Path, stem: str, timeout: float = 120.0) -> Path:
    """The run accepted from the manifest named ``stem``.json."""

    def find() -> Path | None:
        for entry in os.listdir(spool / "runs"):
            if not entry.startswith(".") and entry.endswith("-" + stem):
                return spool / "runs" / entry
        return None

    return Path(wait_for(find, timeout=timeout, interval=0.01, what=f"run {stem}"))


def journal(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line]


def parse_ts(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def wait_prompt(
    sim: Simulator,
    start: int,
    title_part: str,
    timeout: float = 60.0,
    stamps: list[tuple[float, str]] | None = None,
) -> tuple[float, int]:
    """The first prompt at index >= ``start`` of ``sim.received`` (or of ``stamps``, e.g.
    ``sim.created``) whose session title contains ``title_part``: (its monotonic stamp, the index
    after it)."""
    received = sim.received if stamps is None else stamps
    index = start
    deadline = time.monotonic() + timeout
    while True:
        while index < len(received):
            stamp, sid = received[index]
            index += 1
            sess = sim.sessions.get(sid)
            if sess is not None and title_part in sess.title:
                return stamp, index
        if time.monotonic() > deadline:
            raise TimeoutError(f"no prompt for {title_part!r} within {timeout:.0f} s")
        time.sleep(0.0005)
