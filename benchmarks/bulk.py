"""Big manifests and big cancels: accepting a 10,000-task manifest, and cancelling that run.

    python -m benchmarks.bulk --tasks 10000

Against the simulator with a real ``occoord watch --server URL``:

(a) accept: the rename of an N-task manifest into incoming/ -> the run's directory visible in
    runs/, and -> its first prompt at the simulator. The tasks are ``[sim: hang]`` with
    concurrency 4, so nearly all stay queued (they are what (c) cancels).
(b) stall: a small chain run of ``[sim: hang]`` tasks is already running; every ~20 ms the driver
    renames the current link ``T.pending -> T.done`` and stamps the dependent link's prompt. The
    quiet p50 is taken before the drop; the stall is the worst signal -> prompt latency of the
    signals in flight while (a) happens (drop -> first prompt).
(c) cancel: ``occoord cancel RUN`` started -> ``summary.json`` of the run written (the engine
    writes it once every task is terminal); then every task file is checked to be ``.failed``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    drop,
    init_spool,
    manifest,
    percentile,
    proc_status_kb,
    run_dir,
    start_simulator,
    start_watcher,
    wait_for,
    wait_prompt,
)
from benchmarks.harness import (
    chain as hanging_chain,
)

__all__ = ["measure", "targets"]

CHAIN = 600  # links of the small run: enough for ~20 ms signals through a slow acceptance
QUIET = 25  # signals before the drop (the quiet p50)
SIGNAL_TIMEOUT = 120.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class _FirstPrompt(threading.Thread):
    """Stamps the big run's directory appearing and its first prompt, polling beside the driver."""

    def __init__(self, sim: Any, spool: Path, stem: str, start: int) -> None:
        super().__init__(daemon=True)
        self.sim, self.spool, self.stem, self.start_index = sim, spool, stem, start
        self.visible: float | None = None
        self.prompt: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            runs = self.spool / "runs"
            index = self.start_index
            deadline = time.monotonic() + 600
            while self.prompt is None and time.monotonic() < deadline:
                if self.visible is None and any(
                    not e.startswith(".") and e.endswith("-" + self.stem) for e in os.listdir(runs)
                ):
                    self.visible = time.monotonic()
                received = self.sim.received
                while index < len(received):
                    stamp, sid = received[index]
                    index += 1
                    sess = self.sim.sessions.get(sid)
                    if sess is not None and f"-{self.stem}/" in sess.title:
                        self.prompt = stamp
                        break
                time.sleep(0.002)
        except BaseException as exc:  # reported by the driver
            self.error = exc


def measure(tasks: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="occoord-bulk-"))
    spool, workdir = init_spool(root)
    sim = start_simulator()
    watcher = start_watcher(spool, workdir, sim.url, root / "watch.log")
    try:
        result = _measure(sim, watcher, spool, workdir, tasks)
        result["watcher_vmhwm_mb"] = proc_status_kb(watcher.pid, "VmHWM") / 1024
        return result
    finally:
        watcher.stop()
        sim.stop()


def _measure(sim: Any, watcher: Any, spool: Path, workdir: Path, tasks: int) -> dict[str, Any]:
    chain, links = hanging_chain(CHAIN)
    start = len(sim.received)
    drop(spool, "chain.json", manifest("chain", links, workdir))
    _, start = wait_prompt(sim, start, f"-chain/{chain[0]}#", timeout=120)
    small = run_dir(spool, "chain")

    stem = "bulk"
    big = manifest(
        stem,
        [{"id": f"t{i:05d}", "prompt": "[sim: hang] bulk"} for i in range(tasks)],
        workdir,
        concurrency=4,
    )
    body = json.dumps(big)
    (spool / "tmp" / ".bulk.tmp").write_text(body)  # written before the timing; drop() writes it again
    samples: list[tuple[float, float]] = []  # (signal's monotonic stamp, latency ms)
    watcher_first: _FirstPrompt | None = None
    dropped = 0.0
    for i in range(CHAIN - 1):
        if i == QUIET:
            log(f"accept: dropping a {tasks}-task manifest ({len(body) / 1e6:.1f} MB)")
            watcher_first = _FirstPrompt(sim, spool, stem, len(sim.received))
            watcher_first.start()
            dropped, _ = drop(spool, f"{stem}.json", big)
        if watcher_first is not None and watcher_first.prompt is not None and i > QUIET + 10:
            break
        time.sleep(0.02)
        src = small / "tasks" / f"{chain[i]}.pending"
        mono = time.monotonic()
        os.rename(src, small / "tasks" / f"{chain[i]}.done")
        stamp, start = wait_prompt(sim, start, f"-chain/{chain[i + 1]}#", timeout=SIGNAL_TIMEOUT)
        samples.append((mono, (stamp - mono) * 1000))
    assert watcher_first is not None
    watcher_first.join(timeout=600)
    if watcher_first.error is not None or watcher_first.prompt is None:
        raise RuntimeError(f"the big run never started: {watcher_first.error}")
    first = watcher_first.prompt
    quiet = [ms for mono, ms in samples[:QUIET]]
    # A signal is "during acceptance" if it was in flight at any moment between drop and first prompt.
    inflight = [(mono, ms) for mono, ms in samples[QUIET:] if mono <= first and mono + ms / 1000 >= dropped]
    during = [ms for _, ms in inflight]
    worst_at = max(inflight, key=lambda x: x[1])[0] - dropped if inflight else 0.0
    visible = watcher_first.visible if watcher_first.visible is not None else first

    # (c) cancel the big run: nearly every task is queued.
    big_dir = run_dir(spool, stem)
    time.sleep(1.0)
    log(f"cancel: occoord cancel {big_dir.name}")
    begin = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "occoord", "cancel", "--spool", str(spool), big_dir.name],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    returned = time.monotonic()
    wait_for((big_dir / "summary.json").exists, timeout=600, interval=0.005, what="summary")
    ended = time.monotonic()
    names = os.listdir(big_dir / "tasks")
    failed = sum(1 for n in names if n.endswith(".failed"))
    if failed != tasks:
        raise RuntimeError(f"after the cancel {failed} of {tasks} tasks are failed")
    (small / "cancel").touch()
    wait_for((small / "summary.json").exists, timeout=120, interval=0.01, what="chain cancelled")
    return {
        "tasks": tasks,
        "accept_visible_s": visible - dropped,
        "accept_first_prompt_s": first - dropped,
        "signal_quiet_p50_ms": percentile(quiet, 50),
        "signals_during_accept": len(during),
        "stall_worst_ms": max(during) if during else 0.0,
        "stall_over_quiet_ms": (max(during) if during else 0.0) - percentile(quiet, 50),
        "stall_signal_at_s": worst_at,  # when the worst signal was sent, from the drop
        "signal_during_p50_ms": percentile(during, 50),
        "cancel_command_s": returned - begin,
        "cancel_s": ended - begin,
        "cancelled_failed": failed,
    }


def targets(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(name, value, target, higher_is_better) rows for the targets table."""
    n = result["tasks"]
    return [
        (f"accept {n}-task manifest: drop -> first prompt (s)", result["accept_first_prompt_s"], 2.0, False),
        (
            "longest loop stall during that accept, over quiet p50 (ms)",
            result["stall_over_quiet_ms"],
            50.0,
            False,
        ),
        (f"cancel a {n}-task run: command -> summary written (s)", result["cancel_s"], 2.0, False),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bulk", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args(argv)
    results = []
    for _ in range(args.reps):
        result = measure(args.tasks)
        results.append(result)
        print(json.dumps(result, indent=1))
        for name, value, target, higher in targets(result):
            ok = value >= target if higher else value <= target
            print(
                f"  {name:<62} {value:10.3f}  target {'>=' if higher else '<='} {target:g}",
                "ok" if ok else "MISS",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
