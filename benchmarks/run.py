"""Run every benchmark of occoord against the simulator and print (and save) the figures.

    python -m benchmarks            # the full run (~15-20 minutes on 2 cores)
    python -m benchmarks --quick    # a smoke run on small sizes (~1 minute)

Figures (docs/PERFORMANCE.md explains each and holds the latest results):

1. drop -> dispatch: rename of a manifest into incoming/ -> the simulator receives the prompt;
   against a 1 s poll-and-dispatch baseline measured in the same run.
2. signal -> next dispatch: ``mv T.pending T.done`` -> the dependent task's prompt arrives.
3. throughput: N-task manifests of ``[sim: work 0]`` turns, concurrency 64, --max-sessions 64,
   fsyncs on; against a raw httpx driver of the same sessions (no spool) in the same run.
4. idle cost: CPU seconds and RSS of an idle ``occoord watch``.
5. memory: peak RSS (VmHWM) of the watcher per size.
6. scaling: figures 2 and 3 at each size.
7. streamed events: N sessions streaming token chunks (benchmarks/stream.py): the watcher's CPU
   per event against a bare stdlib SSE reader of the same stream, turn end -> outcome read.
8. a 10,000-task manifest (benchmarks/bulk.py): accept, the loop stall meanwhile, cancel.
Plus a cProfile of the watcher during one throughput run (its hot spots).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import bulk as bulk_bench
from benchmarks import stream as stream_bench
from benchmarks.harness import (
    REPO,
    Proc,
    cpu_seconds,
    drop,
    init_spool,
    journal,
    manifest,
    parse_ts,
    proc_status_kb,
    run_dir,
    start_simulator,
    start_watcher,
    summarize,
    wait_for,
    wait_prompt,
)
from benchmarks.harness import (
    chain as hanging_chain,
)

RESULTS = REPO / "benchmarks" / "results"
CONCURRENCY = 64
STREAM_RATE = 50.0  # token chunks per second per session: a model streaming its answer
# Issue 15 ("Scale"): each a row of the targets table, measured against its baseline in one run.
TARGETS = {
    "drop_create_p50_ms": 5.0,
    "drop_create_speedup_p50": 100.0,
    "signal_p50_ms": 5.0,
    "cpu_ms_per_task": 5.0,
    "lifecycles_per_s": 150.0,
    "raw_ratio": 1.5,
    "idle_cpu_s_per_60s": 0.06,
    "vmhwm_10k_mb": 150.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- environment -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mb": _meminfo_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def _meminfo_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="occoord-bench-"))
        self.counter = 0

    def fresh(self, label: str) -> tuple[Path, Path]:
        """A new spool and work directory."""
        self.counter += 1
        return init_spool(self.root / f"{self.counter:02d}-{label}")

    # -- figure 4: idle cost ---------------------------------------------------------------------

    def idle(self) -> dict[str, Any]:
        seconds = self.args.idle_seconds
        log(f"idle: an idle watcher for {seconds:.0f} s")
        spool, workdir = self.fresh("idle")
        sim = start_simulator()
        watcher = start_watcher(spool, workdir, sim.url, spool.parent / "watch.log")
        try:
            # Start-up done: at least 2 s, then until the CPU counter stays still for 1 s (on a busy
            # box start-up work can spill past 2 s and would be counted as idle cost).
            time.sleep(2.0)
            before = _settled_cpu(watcher.pid, timeout=30.0)
            time.sleep(seconds)
            after = cpu_seconds(watcher.pid)
            rss = proc_status_kb(watcher.pid, "VmRSS") / 1024
        finally:
            watcher.stop()
            sim.stop()
        cpu = after - before
        return {
            "seconds": seconds,
            "cpu_s": cpu,
            "cpu_s_per_60s": cpu * 60.0 / seconds,
            "rss_mb": rss,
            "clock_tick_s": 1.0 / os.sysconf("SC_CLK_TCK"),
        }

    # -- figure 1: drop -> dispatch --------------------------------------------------------------

    def drop_dispatch(self) -> dict[str, Any]:
        reps = self.args.latency_reps
        log(f"drop -> dispatch: {reps} repetitions, occoord and the 1 s poll baseline interleaved")
        spool, workdir = self.fresh("drop")
        sim = start_simulator()
        watcher = start_watcher(spool, workdir, sim.url, spool.parent / "watch.log")
        base_in = spool.parent / "baseline-incoming"
        base_tmp = spool.parent / "baseline-tmp"
        base_in.mkdir()
        base_tmp.mkdir()
        baseline = Proc(
            [
                sys.executable,
                str(REPO / "benchmarks" / "baseline_poll.py"),
                str(base_in),
                sim.url,
                str(workdir),
            ],
            spool.parent / "baseline.log",
        )
        ours: list[float] = []
        theirs: list[float] = []
        ours_create: list[float] = []
        theirs_create: list[float] = []
        task = {"id": "t", "prompt": "[sim: work 0] one task"}
        try:
            wait_for(lambda: "polling" in baseline.output(), timeout=30, interval=0.02)
            for i in range(reps):
                stem = f"d{i:03d}"
                start, created = len(sim.received), len(sim.created)
                mono, _ = drop(spool, f"{stem}.json", manifest(stem, [task], workdir))
                stamp, _ = wait_prompt(sim, start, f"-{stem}/t#")
                ours.append((stamp - mono) * 1000)
                stamp, _ = wait_prompt(sim, created, f"-{stem}/t#", stamps=sim.created)
                ours_create.append((stamp - mono) * 1000)
                wait_for(lambda s=stem: (run_dir(spool, s) / "summary.json").exists(), timeout=30)
                time.sleep(random.uniform(0.05, 0.25))

                stem = f"b{i:03d}"
                start, created = len(sim.received), len(sim.created)
                staging = base_tmp / f"{stem}.json"
                staging.write_text(json.dumps(manifest(stem, [task], workdir)))
                mono = time.monotonic()
                os.rename(staging, base_in / f"{stem}.json")
                stamp, _ = wait_prompt(sim, start, f"baseline {stem}/t")
                theirs.append((stamp - mono) * 1000)
                stamp, _ = wait_prompt(sim, created, f"baseline {stem}/t", stamps=sim.created)
                theirs_create.append((stamp - mono) * 1000)
                time.sleep(random.uniform(0.05, 0.25))
        finally:
            baseline.stop()
            watcher.stop()
            sim.stop()
        occ, base = summarize(ours), summarize(theirs)
        occ_create, base_create = summarize(ours_create), summarize(theirs_create)
        return {
            "unit": "ms",
            "occoord": occ,
            "baseline_poll_1s": base,
            "speedup_p50": base["p50"] / occ["p50"],
            "speedup_p99": base["p99"] / occ["p99"],
            # drop -> the run's first POST /session (the figure), same repetitions
            "create": {
                "occoord": occ_create,
                "baseline_poll_1s": base_create,
                "speedup_p50": base_create["p50"] / occ_create["p50"],
                "speedup_p99": base_create["p99"] / occ_create["p99"],
            },
        }

    # -- figures 2, 3, 5, 6 at one size ----------------------------------------------------------

    def at_size(self, size: int) -> dict[str, Any]:
        reps = self.args.big_reps if size >= 10_000 else self.args.reps
        log(f"size {size}: {reps} throughput repetitions (occoord and raw interleaved), then signals")
        spool, workdir = self.fresh(f"n{size}")
        sim = start_simulator()
        watcher = start_watcher(spool, workdir, sim.url, spool.parent / "watch.log")
        occ_runs: list[dict[str, Any]] = []
        raw_runs: list[dict[str, Any]] = []
        try:
            rss_start = proc_status_kb(watcher.pid, "VmRSS") / 1024
            # Signals first: the chain is the watcher's first run (see PERFORMANCE.md: later runs'
            # task events can be lost by watchdog and are then only seen by the 30 s rescan).
            signal = self.signals(sim, spool, workdir, size)
            for rep in range(reps):
                occ_runs.append(self.throughput_once(sim, watcher, spool, workdir, size, rep))
                raw_runs.append(self.raw_once(sim, workdir, size))
                log(
                    f"  rep {rep + 1}/{reps}: occoord {occ_runs[-1]['elapsed_s']:.3f} s "
                    f"({occ_runs[-1]['lifecycles_per_s']:.0f}/s), raw {raw_runs[-1]['elapsed_s']:.3f} s"
                )
            hwm = proc_status_kb(watcher.pid, "VmHWM") / 1024
            rss_end = proc_status_kb(watcher.pid, "VmRSS") / 1024
        finally:
            watcher.stop()
            sim.stop()
        elapsed = [r["elapsed_s"] for r in occ_runs]
        raw = [r["elapsed_s"] for r in raw_runs]
        ratios = [o / r for o, r in zip(elapsed, raw, strict=True)]
        phase_ratios = [o["dispatch_phase_s"] / r for o, r in zip(occ_runs, raw, strict=True)]
        return {
            "tasks": size,
            "throughput": {
                "occoord_elapsed_s": summarize(elapsed),
                "occoord_lifecycles_per_s": summarize([size / e for e in elapsed]),
                "occoord_accept_s": summarize([r["accept_s"] for r in occ_runs]),
                "occoord_dispatch_phase_s": summarize([r["dispatch_phase_s"] for r in occ_runs]),
                "watcher_cpu_ms_per_task": summarize([r["cpu_ms_per_task"] for r in occ_runs]),
                "raw_elapsed_s": summarize(raw),
                "raw_lifecycles_per_s": summarize([size / e for e in raw]),
                "ratio_occoord_over_raw": summarize(ratios),
                "ratio_dispatch_phase_over_raw": summarize(phase_ratios),
                "runs": occ_runs,
            },
            "signal_dispatch_ms": signal,
            "memory": {"rss_start_mb": rss_start, "rss_end_mb": rss_end, "vmhwm_mb": hwm},
        }

    def throughput_once(
        self, sim: Any, watcher: Proc, spool: Path, workdir: Path, size: int, rep: int
    ) -> dict[str, Any]:
        stem = f"tp{size}r{rep}"
        tasks = [{"id": f"t{i:05d}", "prompt": f"[sim: work 0] task {i}"} for i in range(size)]
        body = manifest(stem, tasks, workdir, concurrency=CONCURRENCY)
        start = len(sim.received)
        cpu0 = cpu_seconds(watcher.pid)
        mono, wall = drop(spool, f"{stem}.json", body)
        run = run_dir(spool, stem, timeout=600)
        wait_for(lambda: len(sim.received) > start, timeout=self.args.start_timeout, what=f"{stem} dispatch")
        finished = wait_for(lambda: _finished_event(run), timeout=3600, interval=0.01, what=f"{stem} end")
        cpu = cpu_seconds(watcher.pid) - cpu0
        summary = json.loads((run / "summary.json").read_text())
        if not summary["ok"]:
            raise RuntimeError(f"{stem}: not every task is done: {summary['counts']}")
        elapsed = parse_ts(finished["ts"]) - wall
        accept = sim.received[start][0] - mono
        return {
            "elapsed_s": elapsed,
            "lifecycles_per_s": size / elapsed,
            "accept_s": accept,  # drop -> first prompt (parse, build the run: one fsynced file per task)
            "dispatch_phase_s": elapsed - accept,
            "cpu_s": cpu,
            "cpu_ms_per_task": cpu * 1000 / size,
        }

    def raw_once(self, sim: Any, workdir: Path, size: int) -> dict[str, Any]:
        # The prompt occoord builds is the task's text plus ~700 characters of signalling advice.
        argv = [
            sys.executable,
            str(REPO / "benchmarks" / "raw_client.py"),
            sim.url,
            str(workdir),
            str(size),
            str(CONCURRENCY),
            "700",
        ]
        done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=REPO, timeout=1800)
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def signals(self, sim: Any, spool: Path, workdir: Path, size: int) -> dict[str, Any]:
        """A chain c0 -> c1 -> ... of hanging tasks plus fillers blocked behind it, ``size`` tasks in
        all; each repetition renames the current link to done and times the next link's prompt."""
        links = min(self.args.signal_reps, size - 1) + 1
        chain, tasks = hanging_chain(links)
        tasks += [
            {"id": f"f{i:05d}", "prompt": "[sim: work 0] filler", "depends_on": [chain[-1]]}
            for i in range(size - links)
        ]
        stem = f"sig{size}"
        start = len(sim.received)
        drop(spool, f"{stem}.json", manifest(stem, tasks, workdir, concurrency=CONCURRENCY))
        _, start = wait_prompt(sim, start, f"-{stem}/{chain[0]}#", timeout=self.args.start_timeout)
        run = run_dir(spool, stem)
        samples: list[float] = []
        lost = 0
        for i in range(links - 1):
            time.sleep(random.uniform(0.02, 0.08))
            src = run / "tasks" / f"{chain[i]}.pending"
            dst = run / "tasks" / f"{chain[i]}.done"
            mono = time.monotonic()
            os.rename(src, dst)
            try:
                stamp, start = wait_prompt(
                    sim, start, f"-{stem}/{chain[i + 1]}#", timeout=self.args.signal_timeout
                )
            except TimeoutError:
                lost += 1  # no inotify event reached the coordinator: only its safety rescan will see it
                log(f"  signal {i}: no dispatch within {self.args.signal_timeout:.0f} s; stopping this chain")
                break
            samples.append((stamp - mono) * 1000)
        (run / "cancel").touch()
        wait_for((run / "summary.json").exists, timeout=600, interval=0.01, what=f"{stem} cancelled")
        return {"unit": "ms", "timeouts": lost, **summarize(samples)}

    # -- the profile ---------------------------------------------------------------------------

    def profile(self, size: int) -> dict[str, Any]:
        log(f"profile: one {size}-task throughput run with the watcher under cProfile")
        spool, workdir = self.fresh(f"profile{size}")
        out = spool.parent / "watch.prof"
        sim = start_simulator()
        watcher = start_watcher(spool, workdir, sim.url, spool.parent / "watch.log", profile_to=out)
        try:
            run = self.throughput_once(sim, watcher, spool, workdir, size, 0)
        finally:
            watcher.stop()
            sim.stop()
        stats = pstats.Stats(str(out))
        total = stats.total_tt  # type: ignore[attr-defined]
        rows = []
        for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append(
                {
                    "function": f"{_short(filename)}:{line}({func})",
                    "calls": nc,
                    "primitive_calls": cc,
                    "tottime_s": tt,
                    "cumtime_s": ct,
                }
            )
        by_tot = sorted(rows, key=lambda r: -r["tottime_s"])[:25]
        ours = [r for r in rows if r["function"].startswith("occoord/")]
        by_cum = sorted(ours, key=lambda r: -r["cumtime_s"])[:30]
        self.args.out.mkdir(parents=True, exist_ok=True)
        kept = self.args.out / f"watch-{size}.prof"
        shutil.copy(out, kept)
        return {
            "tasks": size,
            "run_under_profile": run,
            "profiled_seconds": total,
            "top_tottime": by_tot,
            "top_occoord_cumtime": by_cum,
            "prof_file": str(kept),
        }

    def cleanup(self) -> None:
        if not self.args.keep:
            shutil.rmtree(self.root, ignore_errors=True)


def _settled_cpu(pid: int, timeout: float) -> float:
    """The process's CPU seconds once they stop changing for a second (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now == last:
            return now
        last = now
    return last


def _finished_event(run: Path) -> dict[str, Any] | None:
    """The journal's ``run finished`` line (written after summary.json), once it is there."""
    if not (run / "summary.json").exists():
        return None
    for event in reversed(journal(run)):
        if event["kind"] == "run" and event.get("reason", "").startswith("finished"):
            return event
    return None


def _short(filename: str) -> str:
    for marker in ("/occoord/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            tail = filename.split(marker, 1)[1]
            return ("occoord/" + tail) if marker == "/occoord/" else tail
    return filename


# -- output ------------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, bool):
        return "met" if value else "MISSED"
    return str(value)


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the measured value and whether it is met."""
    out: dict[str, dict[str, Any]] = {}

    def check(name: str, value: float, limit: float, higher_is_better: bool = False) -> None:
        met = value >= limit if higher_is_better else value <= limit
        out[name] = {"value": value, "target": limit, "met": bool(met)}

    drop_fig = results.get("drop_dispatch")
    if drop_fig and "create" in drop_fig:
        create = drop_fig["create"]
        check("drop_create_p50_ms", create["occoord"]["p50"], TARGETS["drop_create_p50_ms"])
        check("drop_create_speedup_p50", create["speedup_p50"], TARGETS["drop_create_speedup_p50"], True)
    sizes = results.get("sizes", {})
    for size, fig in sizes.items():
        check(f"signal_p50_ms@{size}", fig["signal_dispatch_ms"]["p50"], TARGETS["signal_p50_ms"])
        if int(size) >= 1000:
            tp = fig["throughput"]
            check(f"cpu_ms_per_task@{size}", tp["watcher_cpu_ms_per_task"]["p50"], TARGETS["cpu_ms_per_task"])
            check(
                f"lifecycles_per_s@{size}",
                tp["occoord_lifecycles_per_s"]["p50"],
                TARGETS["lifecycles_per_s"],
                True,
            )
            check(f"raw_ratio@{size}", tp["ratio_occoord_over_raw"]["p50"], TARGETS["raw_ratio"])
    if "10000" in sizes:
        check("vmhwm_10k_mb", sizes["10000"]["memory"]["vmhwm_mb"], TARGETS["vmhwm_10k_mb"])
    idle = results.get("idle")
    if idle:
        check("idle_cpu_s_per_60s", idle["cpu_s_per_60s"], TARGETS["idle_cpu_s_per_60s"])
    # The stream and bulk sections name their own rows (benchmarks/stream.py, bulk.py).
    rows = [row for r in results.get("stream", []) for row in stream_bench.targets(r)]
    if b := results.get("bulk"):
        rows += bulk_bench.targets(b)
    for name, value, limit, higher in rows:
        check(name, value, limit, higher)
    return out


def _latency_table(title: str, fig: dict[str, Any]) -> str:
    """occoord against the 1 s poller for one drop figure."""
    o, b = fig["occoord"], fig["baseline_poll_1s"]
    return table(
        title,
        ["", "n", "p50", "p99", "min", "max"],
        [
            ["occoord watch", o["n"], o["p50"], o["p99"], o["min"], o["max"]],
            ["1 s poll baseline", b["n"], b["p50"], b["p99"], b["min"], b["max"]],
            ["speedup (baseline/occoord)", "", fig["speedup_p50"], fig["speedup_p99"], "", ""],
        ],
    )


def report(results: dict[str, Any]) -> str:
    parts: list[str] = []
    m = results["machine"]
    parts.append(
        f"machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['mem_total_mb']} MB, Linux {m['kernel']}, "
        f"Python {m['python']}; load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m.get('loadavg_end', [math.nan])[0]:.2f} at end\n"
    )
    if d := results.get("drop_dispatch"):
        parts.append(
            _latency_table(
                "1. drop -> dispatch (rename into incoming/ -> the simulator receives the prompt), ms", d
            )
        )
        if c := d.get("create"):
            title = "1. drop -> first POST /session (rename into incoming/ -> the session is created), ms"
            parts.append(_latency_table(title, c))
    sizes = results.get("sizes", {})
    if sizes:
        rows = []
        for size, fig in sizes.items():
            s = fig["signal_dispatch_ms"]
            rows.append([int(size), s["n"], s["p50"], s["p99"], s["max"], s.get("timeouts", 0)])
        parts.append(
            table(
                "2. signal -> next dispatch (mv T.pending T.done -> dependent's prompt), ms",
                ["tasks", "n", "p50", "p99", "max", "lost (timeouts)"],
                rows,
            )
        )
        rows = []
        for size, fig in sizes.items():
            tp = fig["throughput"]
            rows.append(
                [
                    int(size),
                    tp["occoord_elapsed_s"]["n"],
                    tp["occoord_lifecycles_per_s"]["p50"],
                    tp["occoord_lifecycles_per_s"]["min"],
                    tp["occoord_elapsed_s"]["p50"],
                    tp["occoord_elapsed_s"]["p99"],
                    tp["occoord_accept_s"]["p50"],
                    tp["raw_elapsed_s"]["p50"],
                    tp["ratio_occoord_over_raw"]["p50"],
                    tp["ratio_occoord_over_raw"]["p99"],
                    tp["ratio_dispatch_phase_over_raw"]["p50"],
                    tp["watcher_cpu_ms_per_task"]["p50"],
                ]
            )
        parts.append(
            table(
                "3/6. throughput and scaling (concurrency 64, --max-sessions 64, fsync on; [sim: work 0])",
                [
                    "tasks",
                    "reps",
                    "tasks/s p50",
                    "tasks/s worst",
                    "elapsed p50 s",
                    "elapsed p99 s",
                    "accept p50 s",
                    "raw p50 s",
                    "occ/raw p50",
                    "occ/raw p99",
                    "dispatch/raw p50",
                    "watcher CPU ms/task",
                ],
                rows,
            )
        )
        rows = []
        for size, fig in sizes.items():
            mem = fig["memory"]
            rows.append([int(size), mem["rss_start_mb"], mem["rss_end_mb"], mem["vmhwm_mb"]])
        parts.append(table("5. watcher memory, MB", ["tasks", "RSS idle", "RSS after", "VmHWM (peak)"], rows))
    if i := results.get("idle"):
        parts.append(
            table(
                "4. idle cost of occoord watch",
                ["seconds", "CPU s", "CPU s per 60 s", "RSS MB"],
                [[i["seconds"], i["cpu_s"], i["cpu_s_per_60s"], i["rss_mb"]]],
            )
        )
    if p := results.get("profile"):
        rows = [[r["function"], r["calls"], r["tottime_s"], r["cumtime_s"]] for r in p["top_tottime"][:15]]
        parts.append(
            table(
                f"profile: watcher during one {p['tasks']}-task run, top by own time "
                f"({p['profiled_seconds']:.1f} s profiled)",
                ["function", "calls", "tottime s", "cumtime s"],
                rows,
            )
        )
        rows = [
            [r["function"], r["calls"], r["tottime_s"], r["cumtime_s"]] for r in p["top_occoord_cumtime"][:15]
        ]
        parts.append(
            table(
                "profile: occoord functions by cumulative time",
                ["function", "calls", "tottime s", "cumtime s"],
                rows,
            )
        )
    for r in results.get("stream", []):
        parts.append(f"7. streamed events ({r['sessions']} sessions)\n{stream_bench.table(r)}\n")
    if b := results.get("bulk"):
        rows = [[k, v] for k, v in b.items()]
        parts.append(
            table(f"8. a {b['tasks']}-task manifest: accept, stall, cancel", ["figure", "value"], rows)
        )
    for size, why in results.get("failed_sizes", {}).items():
        parts.append(f"size {size} FAILED: {why}\n")
    if t := results.get("targets"):
        rows = [[name, v["value"], v["target"], v["met"]] for name, v in t.items()]
        parts.append(table("targets", ["figure", "value", "target", "status"], rows))
    return "\n".join(parts)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: small sizes, few repetitions, 10 s idle")
    p.add_argument("--sizes", help="comma-separated task counts (default 10,100,1000,10000; quick 10,100)")
    p.add_argument("--reps", type=int, help="throughput repetitions below 10,000 tasks (default 5; quick 2)")
    p.add_argument("--big-reps", type=int, help="throughput repetitions at 10,000 tasks (default 3)")
    p.add_argument("--latency-reps", type=int, help="drop -> dispatch repetitions (default 30; quick 5)")
    p.add_argument(
        "--signal-reps", type=int, help="signal -> dispatch repetitions per size (default 20; quick 5)"
    )
    p.add_argument(
        "--signal-timeout", type=float, default=10.0, help="seconds to wait for a dispatch after a signal"
    )
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds a run may take to dispatch")
    p.add_argument("--idle-seconds", type=float, help="idle measurement length (default 60; quick 10)")
    p.add_argument(
        "--profile-size", type=int, help="tasks of the profiled run, 0 = no profile (default: largest size)"
    )
    p.add_argument("--stream-sessions", help="streaming sessions per stream run (default 100,200; quick 10)")
    p.add_argument("--stream-seconds", type=float, help="seconds each session streams (default 8; quick 2)")
    p.add_argument("--bulk-tasks", type=int, help="tasks of the big manifest (default 10000; quick 1000)")
    p.add_argument(
        "--only", help="comma-separated sections: idle,drop,sizes,stream,bulk,profile (default: all)"
    )
    p.add_argument(
        "--out", type=Path, default=RESULTS, help="where the JSON goes (default benchmarks/results)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary spools")
    args = p.parse_args(argv)
    quick = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("10,100" if quick else "10,100,1000,10000")).split(",")]
    args.reps = args.reps or (2 if quick else 5)
    args.big_reps = args.big_reps or (1 if quick else 3)
    args.latency_reps = args.latency_reps or (5 if quick else 30)
    args.signal_reps = args.signal_reps or (5 if quick else 20)
    args.idle_seconds = args.idle_seconds or (10.0 if quick else 60.0)
    if args.profile_size is None:
        args.profile_size = max(args.sizes)
    args.stream_sessions = [
        int(n) for n in (args.stream_sessions or ("10" if quick else "100,200")).split(",")
    ]
    args.stream_seconds = args.stream_seconds or (2.0 if quick else 8.0)
    args.bulk_tasks = args.bulk_tasks or (1000 if quick else 10_000)
    args.only = set((args.only or "idle,drop,sizes,stream,bulk,profile").split(","))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "options": {
            k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
    }
    try:
        if "idle" in args.only:
            results["idle"] = bench.idle()
        if "drop" in args.only:
            results["drop_dispatch"] = bench.drop_dispatch()
        if "sizes" in args.only:
            results["sizes"] = {}
            for n in args.sizes:
                try:
                    results["sizes"][str(n)] = bench.at_size(n)
                except (TimeoutError, RuntimeError, subprocess.SubprocessError) as exc:
                    log(f"size {n}: FAILED: {exc}")
                    results.setdefault("failed_sizes", {})[str(n)] = str(exc)
        if "stream" in args.only:
            results["stream"] = []
            for n in args.stream_sessions:
                log(f"stream: {n} sessions x {STREAM_RATE:g} events/s for {args.stream_seconds:g} s")
                results["stream"].append(stream_bench.measure(n, STREAM_RATE, args.stream_seconds))
        if "bulk" in args.only:
            log(f"bulk: a {args.bulk_tasks}-task manifest")
            results["bulk"] = bulk_bench.measure(args.bulk_tasks)
        if "profile" in args.only and args.profile_size > 0:
            results["profile"] = bench.profile(args.profile_size)
    finally:
        bench.cleanup()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["targets"] = targets(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    text = json.dumps(_no_nan(results), indent=1, default=_json_default, allow_nan=False)
    path.write_text(text + "\n")
    (args.out / "latest.json").write_text(text + "\n")
    print(report(results))
    print(f"raw results: {path}")
    return 0


def _no_nan(obj: Any) -> Any:
    """NaN (a figure with no samples) and infinity (a ratio over nothing) become null: the file
    stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(type(obj))


if __name__ == "__main__":
    sys.exit(main())
