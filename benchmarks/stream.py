"""The streamed-event path: a watcher following N sessions that stream their answers.

    python -m benchmarks.stream --sessions 100 --rate 50 --seconds 8

N tasks of ``[sim: stream CHUNKS RATE]`` (``message.part.delta`` events, a part update every 25),
``concurrency: N``, ``--max-sessions N``, against the in-thread simulator. Session i streams for
SECONDS x (1 + i/N): the turns end one by one over the second half while the others still stream,
as real turns do (``--together``: all for SECONDS, so all N end within a few ms and the figure is
one burst of N settles rather than the stream's cost). Beside the watcher, subscribed to the same
``/global/event`` at the same time, runs the baseline: a bare stdlib SSE reader
(benchmarks/sse_reader.py) that splits lines and ``json.loads`` every payload. Figures:

- CPU per event of the watcher and of the reader (utime+stime, /proc/PID/stat) over the same
  window, and their ratio. The window opens once every session has its prompt (dispatch is over)
  and closes when the first session goes idle (settling has not begun): all N stream throughout.
- turn end -> outcome read: the simulator's stamp of a session's ``session.idle`` to its stamp of
  the first ``GET /session/{id}/message`` served after it; p50/p99/max over the sessions (all but
  the last ends happen while other sessions stream).
- events emitted by the simulator vs received by the reader (nothing lost), the rate achieved in
  the window, and that every task ended done.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    REPO,
    cpu_seconds,
    drop,
    init_spool,
    journal,
    manifest,
    run_dir,
    start_simulator,
    start_watcher,
    summarize,
    wait_for,
)

__all__ = ["measure", "targets"]

RESULTS = REPO / "benchmarks" / "results"
CPU_RATIO_TARGET = 2.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _finished(run: Path) -> dict[str, Any] | None:
    if not (run / "summary.json").exists():
        return None
    for event in reversed(journal(run)):
        if event["kind"] == "run" and event.get("reason", "").startswith("finished"):
            return dict(event)
    return None


def _start_reader(url: str) -> subprocess.Popen[str]:
    reader = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "sse_reader.py"), url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert reader.stdout is not None
    line = reader.stdout.readline().strip()
    if line != "connected":
        reader.kill()
        raise RuntimeError(f"the SSE reader did not connect: {line!r}")
    return reader


def _stop_reader(reader: subprocess.Popen[str]) -> int:
    reader.send_signal(signal.SIGTERM)
    out, _ = reader.communicate(timeout=30)
    return int(json.loads(out.strip().splitlines()[-1])["events"])


def measure(
    sessions: int, rate: float, seconds: float, *, spread: bool = True, profile_to: Path | None = None
) -> dict[str, Any]:
    """One run of ``sessions`` streaming sessions at ``rate`` events/s each for ``seconds`` (with
    ``spread``, session i for ``seconds * (1 + i / sessions)``)."""
    root = Path(tempfile.mkdtemp(prefix="occoord-stream-"))
    spool, workdir = init_spool(root)
    sim = start_simulator()
    reader = watcher = None
    try:
        reader = _start_reader(sim.url)
        watcher = start_watcher(
            spool, workdir, sim.url, root / "watch.log", max_sessions=sessions, profile_to=profile_to
        )
        wait_for(lambda: len(sim.bus.subscribers) >= 2, timeout=30, what="the watcher's event stream")
        chunks = max(1, round(rate * seconds))
        stem = f"stream{sessions}"
        # Spread: session i streams (1 + i/N) times as long, so turns end one by one over the
        # second half while the others still stream (together: all end within a few ms).
        lengths = [round(chunks * (1 + i / sessions)) if spread else chunks for i in range(sessions)]
        tasks = [
            {"id": f"s{i:04d}", "prompt": f"[sim: stream {n} {rate}] [sim: work 0] stream {i}"}
            for i, n in enumerate(lengths)
        ]
        drop(spool, f"{stem}.json", manifest(stem, tasks, workdir, concurrency=sessions))
        run = run_dir(spool, stem, timeout=120)
        engine = sim.engine
        # The window: every session streaming (all prompts in) until the first one ends.
        wait_for(lambda: len(sim.received) >= sessions, timeout=120, interval=0.005, what="dispatch")
        t0, pub0 = time.monotonic(), sim.bus.published
        w0, r0, s0 = cpu_seconds(watcher.pid), cpu_seconds(reader.pid), cpu_seconds(os.getpid())
        all_in_ok = not engine.idled
        wait_for(lambda: engine.idled, timeout=seconds * 4 + 60, interval=0.005, what="the first idle")
        t1, pub1 = time.monotonic(), sim.bus.published
        w1, r1, s1 = cpu_seconds(watcher.pid), cpu_seconds(reader.pid), cpu_seconds(os.getpid())
        wait_for(lambda: _finished(run), timeout=seconds * 4 + 120, interval=0.01, what="the run's end")
        summary = json.loads((run / "summary.json").read_text())
        ids = [sid for _, sid in sim.received[:sessions]]
        latencies = [
            (engine.read_after_idle[sid] - engine.idled[sid]) * 1000
            for sid in ids
            if sid in engine.read_after_idle and sid in engine.idled
        ]
        idles = sorted((engine.idled[sid], sid) for sid in ids if sid in engine.idled)
        by_idle = [
            (round((at - idles[0][0]) * 1000, 1), round((engine.read_after_idle.get(sid, at) - at) * 1000, 1))
            for at, sid in idles
        ]
        time.sleep(0.5)  # the reader drains what it has buffered
        emitted = sim.bus.published
        received = _stop_reader(reader) - 1  # its count includes server.connected
        reader = None
    finally:
        if reader is not None:
            reader.kill()
        if watcher is not None:
            watcher.stop()
        sim.stop()
    events = pub1 - pub0
    if events <= 0 or not all_in_ok:
        raise RuntimeError("no streaming window: a session ended before every session had started")
    watcher_us = (w1 - w0) / events * 1e6
    reader_us = (r1 - r0) / events * 1e6
    shutil.rmtree(root, ignore_errors=True)
    return {
        "sessions": sessions,
        "rate_per_session": rate,
        "seconds": seconds,
        "ends": "spread" if spread else "together",
        "window_s": t1 - t0,
        "window_events": events,
        "achieved_events_per_s": events / (t1 - t0),
        "asked_events_per_s": sessions * rate,
        "watcher_cpu_s": w1 - w0,
        "reader_cpu_s": r1 - r0,
        "simulator_cpu_share": (s1 - s0) / (t1 - t0),  # of one core: near 1.0, it cannot keep up
        "watcher_us_per_event": watcher_us,
        "reader_us_per_event": reader_us,
        "cpu_ratio": watcher_us / reader_us if reader_us > 0 else float("inf"),
        "outcome_read_ms": summarize(latencies),
        "idle_spread_ms": by_idle[-1][0] if by_idle else 0.0,
        "by_idle": by_idle,  # (ms after the first idle, its outcome read latency in ms)
        "emitted": emitted,
        "received_by_reader": received,
        "lost": emitted - received,
        "sim_dropped_subscribers": sim.bus.dropped,
        "all_done": bool(summary["ok"]) and len(latencies) == sessions,
        "counts": summary["counts"],
    }


def targets(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(name, value, target, higher_is_better) rows for the targets table."""
    n = result["sessions"]
    p99_target = 100.0 if n <= 100 else 200.0
    return [
        (f"stream cpu/event vs bare reader ({n} sessions)", result["cpu_ratio"], CPU_RATIO_TARGET, False),
        (
            f"stream turn end -> outcome read p99 ms ({n} sessions)",
            result["outcome_read_ms"]["p99"],
            p99_target,
            False,
        ),
        (f"stream events lost ({n} sessions)", float(result["lost"]), 0.0, False),
        (f"stream tasks not done ({n} sessions)", 0.0 if result["all_done"] else 1.0, 0.0, False),
    ]


def table(result: dict[str, Any]) -> str:
    lat = result["outcome_read_ms"]
    rows = [
        (
            "sessions x rate",
            f"{result['sessions']} x {result['rate_per_session']:g}/s, ends {result['ends']}",
        ),
        (
            "events/s asked, achieved",
            f"{result['asked_events_per_s']:.0f}, {result['achieved_events_per_s']:.0f}",
        ),
        ("window", f"{result['window_s']:.2f} s, {result['window_events']} events"),
        (
            "watcher CPU per event",
            f"{result['watcher_us_per_event']:.1f} us ({result['watcher_cpu_s']:.2f} s)",
        ),
        (
            "bare reader CPU per event",
            f"{result['reader_us_per_event']:.1f} us ({result['reader_cpu_s']:.2f} s)",
        ),
        ("ratio", f"{result['cpu_ratio']:.2f}x"),
        ("simulator CPU (of one core)", f"{result['simulator_cpu_share']:.2f}"),
        ("turn end -> outcome read", f"p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f}  max {lat['max']:.1f} ms"),
        (
            "emitted / received / lost",
            f"{result['emitted']} / {result['received_by_reader']} / {result['lost']}",
        ),
        ("all tasks done", str(result["all_done"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append("")
    for name, value, target, higher in targets(result):
        ok = value >= target if higher else value <= target
        lines.append(
            f"{'ok ' if ok else 'MISS'} {name}: {value:.2f} (target {'>=' if higher else '<='} {target:g})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second per session")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each session streams")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--together", action="store_true", help="every session streams as long (all turns end at once)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="run the watcher under cProfile into FILE")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = []
    for rep in range(args.reps):
        log(f"stream: {args.sessions} sessions x {args.rate:g}/s for {args.seconds:g} s (rep {rep + 1})")
        result = measure(
            args.sessions, args.rate, args.seconds, spread=not args.together, profile_to=args.profile
        )
        results.append(result)
        print(table(result), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    ends = "together" if args.together else "spread"
    path = args.out / f"stream-{args.sessions}-{ends}-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
