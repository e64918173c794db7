"""End-to-end helpers: real processes (`occoord simulate`, `occoord watch`) and the spool's files.

Tests drive everything through the filesystem, as a user would: copy a manifest into incoming/,
read and rename state files, read summaries. Every process is started here and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from spoolkit import wait_for

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
STATES = ("queued", "pending", "done", "failed")


LIVE: list[Proc] = []  # every Proc started; tests/conftest.py stops leftovers after each test


class Proc:
    """A child process in its own process group, with its output kept in a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            list(argv),
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.fh.close()
        return self.popen.returncode


def occoord_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "occoord", *args]


def start_simulator(tmp: Path) -> tuple[Proc, str]:
    proc = Proc(occoord_argv("simulate", "--port", "0"), tmp / "simulator.log")
    found = wait_for(lambda: LISTENING.search(proc.output()) or proc.popen.poll() is not None, timeout=30)
    if not isinstance(found, re.Match):
        raise AssertionError(f"simulator did not start:\n{proc.output()}")
    return proc, found.group(1)


FAST = (
    "--settle-seconds", "0.3", "--rescan-interval", "5", "--retry-base", "0.1",
    "--start-timeout", "5", "--signal-grace", "0.5", "--idle-timeout", "30", "--task-timeout", "60",
)  # fmt: skip


def start_watcher(
    spool: Path,
    workdir: Path,
    *extra: str,
    server: str | None = None,
    name: str = "watch",
    ready: str = "occoord: watching",
) -> Proc:
    """Start `occoord watch` and wait for its ``ready`` line (the coordinator is serving)."""
    backend = ["--server", server] if server else ["--simulate"]
    argv = occoord_argv(
        "-v", "watch", "--spool", str(spool), "--workdir", str(workdir), *FAST, *backend, *extra
    )
    proc = Proc(argv, spool.parent / f"{name}.log")
    try:
        wait_for(lambda: ready in proc.output() or proc.popen.poll() is not None, timeout=30)
    except AssertionError:
        proc.stop()  # never leave a process behind
        raise
    if proc.popen.poll() is not None:
        raise AssertionError(f"occoord watch exited:\n{proc.output()}")
    return proc


def drop(spool: Path, name: str, manifest: dict[str, Any]) -> Path:
    """Like `cp manifest.json SPOOL/incoming/`: written in place, not atomically."""
    target = spool / "incoming" / name
    target.write_text(json.dumps(manifest))
    return target


def manifest(*tasks: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "name": top.pop("name", "e2e"), **top, "tasks": list(tasks)}


def the_run(spool: Path, timeout: float = 20.0) -> Path:
    return Path(wait_for(lambda: next(iter(sorted((spool / "runs").glob("2*"))), None), timeout=timeout))


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


def wait_state(run_dir: Path, task: str, state: str, timeout: float = 30.0) -> None:
    wait_for(lambda: states(run_dir).get(task) == state, timeout=timeout, interval=0.02)


def age(path: Path) -> float:
    return time.time() - path.stat().st_mtime
