#!/usr/bin/env python3
"""Crash torture: SIGKILL `occoord watch` at random moments while manifests keep flowing in.

One external simulator (`occoord simulate`) plays the OpenCode server for the whole run. A feeder
thread drops a stream of manifests into SPOOL/incoming/ (valid ones with tasks that succeed, fail,
retry, depend on each other or signal their own outcome by renaming their state file; invalid
ones), some written atomically (tmp/ + rename), some in place like a plain `cp`. Meanwhile a
watcher is started, killed with SIGKILL after a random delay (before or after it is ready), and
restarted, KILLS times. Then a last watcher drains the spool and the files are checked:

  manifests   every manifest dropped is exactly one run or exactly one rejection
  tasks       every task has exactly one state file, terminal, and the outcome its script implies
  sessions    no session was created twice for one attempt (titles `occoord RUN/TASK#N` are unique
              in the simulator's GET /session?directory=...)
  temp files  after ageing every leftover temp file past the cleanup age (1 h) and one more
              start-up, none is left
  journal     the last `to` of every task in events.jsonl equals its state file

Usage:  .venv/bin/python scripts/torture.py [--kills 200] [--seed 1] [--dir DIR] [--json FILE]
Exit status 0 when every check holds. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

# The process helpers are the tests' own (tests/support/processes.py); pytest has tests/ on sys.path
# already, and appending (not prepending) it shadows nothing this script imports.
TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if TESTS not in sys.path:
    sys.path.append(TESTS)
from support.processes import READY, Proc, occoord_argv, start_simulator, wait_for, watch_argv  # noqa: E402

STATES = ("queued", "pending", "done", "failed")
TMP_MAX_AGE = 3600.0  # occoord.spool.recovery.TMP_MAX_AGE: the cleanup age of stray temp files
WATCH_OPTIONS = (
    "--settle-seconds", "0.3", "--rescan-interval", "2", "--retry-base", "0.1",
    "--start-timeout", "10", "--idle-timeout", "30", "--task-timeout", "120", "--max-sessions", "8",
)  # fmt: skip
GRACE = 30.0  # seconds a watcher gets to stop on SIGTERM: the last one may have many runs to close


# ---------------------------------------------------------------------------- the manifest stream


@dataclass
class Dropped:
    marker: str  # the manifest's name (valid) or a string inside it (invalid): how we find it again
    valid: bool
    style: str  # "rename" or "cp"
    expected: dict[str, str] = field(default_factory=dict)  # task -> final state its script implies


KINDS = {
    # kind: (prompt directive, extra task fields, final state on its own)
    "work": ("[sim: work {t}]", {}, "done"),
    "reply": ("[sim: work {t}] [sim: reply fine]", {}, "done"),
    "signal": ("[sim: work {t}] [sim: signal done]", {}, "done"),
    "fatal": ("[sim: work {t}] [sim: error APIError fatal]", {}, "failed"),
    "retryable": ("[sim: work {t}] [sim: error APIError retryable]", {"retries": 1}, "failed"),
}
KIND_WEIGHTS = {"work": 5, "reply": 2, "signal": 3, "fatal": 1, "retryable": 1}


def make_manifest(rng: random.Random, seq: int) -> tuple[bytes, Dropped]:
    marker = f"torture-{seq:05d}"
    if rng.random() < 0.12:
        if rng.random() < 0.5:
            return f'{{"version": 1, "name": "{marker}", "tasks": [ oops'.encode(), Dropped(marker, False, "")
        doc = {"version": 1, "name": marker, "tasks": [{"id": "a", "prompt": "x", "depends_on": ["nope"]}]}
        return json.dumps(doc).encode(), Dropped(marker, False, "")
    tasks: list[dict[str, Any]] = []
    expected: dict[str, str] = {}
    for i in range(rng.randint(1, 4)):
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        directive, extra, outcome = KINDS[kind]
        task: dict[str, Any] = {"id": f"t{i}", "prompt": directive.format(t=round(rng.uniform(0.05, 0.6), 2))}
        task.update(extra)
        if i and rng.random() < 0.5:
            dep = f"t{rng.randrange(i)}"
            task["depends_on"] = [dep]
            if expected[dep] != "done":
                outcome = "failed"  # never starts: its dependency failed
        tasks.append(task)
        expected[task["id"]] = outcome
    doc = {"version": 1, "name": marker, "concurrency": rng.randint(1, 3), "tasks": tasks}
    return json.dumps(doc).encode(), Dropped(marker, True, "", expected)


class Feeder(threading.Thread):
    """Drops manifests into incoming/ at about ``rate`` per second until stopped."""

    def __init__(self, spool: Path, rng: random.Random, rate: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.spool, self.rng, self.rate = spool, rng, rate
        self.dropped: list[Dropped] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            seq = 0
            while not self.stopping.is_set():
                data, item = make_manifest(self.rng, seq)
                name = f"m{seq:05d}.json"
                if self.rng.random() < 0.5:
                    item.style = "rename"
                    staging = self.spool / "tmp" / f".{name}.feeder.tmp"
                    staging.write_bytes(data)
                    os.rename(staging, self.spool / "incoming" / name)
                else:
                    item.style = "cp"  # written in place, in two pieces, like a slow cp
                    with open(self.spool / "incoming" / name, "wb") as fh:
                        cut = self.rng.randrange(len(data))
                        fh.write(data[:cut])
                        fh.flush()
                        fh.write(data[cut:])
                self.dropped.append(item)
                seq += 1
                self.stopping.wait(self.rng.expovariate(self.rate))
        except BaseException as exc:  # reported by the checks
            self.error = exc


# ---------------------------------------------------------------------------- checks


@dataclass
class Report:
    kills: int = 0
    kills_before_ready: int = 0
    kills_after_ready: int = 0
    watcher_starts: int = 0
    recovery_repairs: int = 0
    seconds: float = 0.0
    manifests: int = 0
    manifests_valid: int = 0
    manifests_invalid: int = 0
    dropped_by_rename: int = 0
    dropped_by_cp: int = 0
    runs: int = 0
    rejections: int = 0
    tasks: int = 0
    tasks_done: int = 0
    tasks_failed: int = 0
    attempts: int = 0
    sessions: int = 0
    journal_lines: int = 0
    journal_torn_lines: int = 0
    stray_temp_files_before_ageing: int = 0
    stray_temp_files_after_ageing: int = 0
    problems: list[str] = field(default_factory=list)
    # Findings of known bugs, each pinned by a deterministic test in tests/test_torture.py, kept apart
    # so the short pytest version can assert everything else: temp files where recovery never looks
    # (results/, the run directory, rejected/), a reason whose manifest was rejected again, and a
    # dispatch rolled forward from a claim that still held the queued record (attempt 0, title #0).
    known: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.known


def temp_files(spool: Path) -> list[Path]:
    """Every temp file left anywhere in the spool: hidden ``.tmp`` names, claims, half-built runs."""
    out = []
    for path in spool.rglob("*"):
        name = path.name
        if (name.startswith(".") and (name.endswith(".tmp") or name.endswith(".claim"))) or (
            name.startswith(".") and name.endswith(".partial")
        ):
            out.append(path)
    return out


def state_files(run_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    found: dict[str, list[str]] = {}
    claims = []
    for entry in os.listdir(run_dir / "tasks"):
        if entry.endswith(".claim"):
            claims.append(entry)
            continue
        stem, _, suffix = entry.rpartition(".")
        if suffix in STATES and not entry.startswith("."):
            found.setdefault(stem, []).append(suffix)
    return found, claims


def check(spool: Path, workdir: Path, url: str, dropped: list[Dropped], report: Report) -> None:
    problems = report.problems
    valid = {d.marker: d for d in dropped if d.valid}
    invalid = {d.marker: d for d in dropped if not d.valid}
    report.manifests = len(dropped)
    report.manifests_valid, report.manifests_invalid = len(valid), len(invalid)
    report.dropped_by_rename = sum(d.style == "rename" for d in dropped)
    report.dropped_by_cp = sum(d.style == "cp" for d in dropped)

    # -- manifests: exactly one run or exactly one rejection each
    runs_of: Counter[str] = Counter()
    run_dirs = sorted(p for p in (spool / "runs").iterdir() if not p.name.startswith("."))
    report.runs = len(run_dirs)
    for run_dir in run_dirs:
        runs_of[json.loads((run_dir / "run.json").read_text())["plan"]["name"]] += 1
    rejected_of: Counter[str] = Counter()
    rejected = [p for p in (spool / "rejected").iterdir() if not p.name.endswith(".error")]
    report.rejections = len(rejected)
    for path in rejected:
        text = path.read_bytes().decode("utf-8", "replace")
        markers = re.findall(r"torture-\d{5}", text)
        for marker in set(markers):
            rejected_of[marker] += 1
        if not path.with_name(path.name + ".error").exists():
            problems.append(f"rejected/{path.name} has no .error beside it")
    for marker in valid:
        if runs_of[marker] != 1 or rejected_of[marker]:
            problems.append(
                f"{marker}: {runs_of[marker]} runs, {rejected_of[marker]} rejections (want 1 run)"
            )
    for marker in invalid:
        if rejected_of[marker] != 1 or runs_of[marker]:
            problems.append(
                f"{marker}: {runs_of[marker]} runs, {rejected_of[marker]} rejections (want 1 rejection)"
            )
    stray_errors = [
        p.name for p in (spool / "rejected").glob("*.error") if not p.with_name(p.name[:-6]).exists()
    ]
    for name in stray_errors:  # a crash between writing the reason and moving the manifest
        report.known.append(f"rejected/{name}: a reason without its manifest (it was rejected again)")
    leftovers = os.listdir(spool / "incoming")
    if leftovers:
        problems.append(f"incoming/ not empty: {leftovers[:10]}")

    # -- tasks: one terminal state file each, the expected outcome, summary and journal agree
    counts: Counter[str] = Counter()
    expected_titles: set[str] = set()
    for run_dir in run_dirs:
        name = json.loads((run_dir / "run.json").read_text())["plan"]["name"]
        item = valid.get(name)
        found, claims = state_files(run_dir)
        if claims:
            problems.append(f"{run_dir.name}: claims left: {claims}")
        if item is not None and set(found) != set(item.expected):
            problems.append(f"{run_dir.name}: tasks {sorted(found)} != {sorted(item.expected)}")
        for task, names in found.items():
            report.tasks += 1
            if len(names) != 1:
                problems.append(f"{run_dir.name}/{task}: several state files {names}")
                continue
            state = names[0]
            counts[state] += 1
            if state not in ("done", "failed"):
                problems.append(f"{run_dir.name}/{task}: not terminal ({state})")
            if item is not None and item.expected.get(task) != state:
                problems.append(
                    f"{run_dir.name}/{task}: ended {state}, its script says {item.expected.get(task)}"
                )
            record = json.loads((run_dir / "tasks" / f"{task}.{state}").read_text())
            report.attempts += int(record.get("attempt", 0))
            expected_titles |= {f"occoord {run_dir.name}/{task}#{n}" for n in range(1, record["attempt"] + 1)}
        summary = run_dir / "summary.json"
        if not summary.exists():
            problems.append(f"{run_dir.name}: no summary.json")
        else:
            verdict = {t["task"]: t["state"] for t in json.loads(summary.read_text())["tasks"]}
            if verdict != {t: s[0] for t, s in found.items()}:
                problems.append(f"{run_dir.name}: summary.json disagrees with the state files")
        last: dict[str, str] = {}
        for raw in (run_dir / "events.jsonl").read_bytes().splitlines():
            report.journal_lines += 1
            try:
                event = json.loads(raw)
            except ValueError:
                report.journal_torn_lines += 1
                continue
            if event.get("task") and event.get("to"):
                last[event["task"]] = event["to"]
        if last != {t: s[0] for t, s in found.items()}:
            problems.append(f"{run_dir.name}: journal says {last}, files say {found}")
    report.tasks_done, report.tasks_failed = counts["done"], counts["failed"]
    report.counts = dict(counts)

    # -- sessions: one per attempt, never two
    sessions = httpx.get(f"{url}/session", params={"directory": str(workdir)}, timeout=60).json()
    titles = [s["title"] for s in sessions]
    report.sessions = len(titles)
    dupes = [t for t, n in Counter(titles).items() if n > 1]
    if dupes:
        problems.append(f"{len(dupes)} sessions created twice for one attempt: {dupes[:5]}")
    for title in sorted(set(titles) - expected_titles):
        run_id, _, rest = title.removeprefix("occoord ").partition("/")
        task, _, attempt = rest.rpartition("#")
        record_path = next((spool / "runs" / run_id / "tasks").glob(f"{task}.*"), None)
        record = json.loads(record_path.read_text()) if record_path else {}
        if attempt == "0" and record.get("attempt") == 0:
            report.known.append(
                f"session {title!r}: a dispatch rolled forward with its old record (attempt 0)"
            )
        else:
            problems.append(f"session {title!r}: for an attempt no record counts ({record.get('attempt')})")
    busy = httpx.get(f"{url}/session/status", params={"directory": str(workdir)}, timeout=60).json()
    if busy:
        problems.append(f"{len(busy)} sessions still busy after every task ended")


# ---------------------------------------------------------------------------- the run


def torture(
    kills: int,
    *,
    root: Path,
    seed: int = 1,
    rate: float = 1.5,
    max_kill_delay: float = 2.0,
    drain_timeout: float = 600.0,
    log: Callable[[str], None] = print,
) -> Report:
    rng = random.Random(seed)
    report = Report()
    spool, workdir, logs = root / "spool", root / "work", root / "logs"
    for d in (workdir, logs):
        d.mkdir(parents=True, exist_ok=True)
    subprocess.run(occoord_argv("init", "--spool", str(spool)), check=True, capture_output=True)
    began = time.monotonic()
    sim, url = start_simulator(logs / "simulator.log", timeout=60)
    watcher: Proc | None = None
    feeder = Feeder(spool, rng, rate)
    try:
        argv = watch_argv(spool, workdir, *WATCH_OPTIONS, "--server", url)

        def start(n: int) -> Proc:
            report.watcher_starts += 1
            return Proc(argv, logs / f"watch-{n:03d}.log", grace=GRACE)

        feeder.start()
        for n in range(kills):
            watcher = start(n)
            if rng.random() < 0.4:
                time.sleep(rng.uniform(0.0, 1.2))  # anywhere in start-up: imports, recovery, first scan
            else:
                try:
                    watcher.wait_output(READY, 60)
                except TimeoutError:
                    pass
                time.sleep(rng.uniform(0.0, max_kill_delay))
            ready = READY in watcher.output()
            if not watcher.alive():
                report.problems.append(
                    f"watcher {n} exited by itself ({watcher.returncode}): see {watcher.log}"
                )
            watcher.kill9()
            watcher = None
            report.kills += 1
            report.kills_after_ready += ready
            report.kills_before_ready += not ready
            if (n + 1) % 25 == 0:
                elapsed = time.monotonic() - began
                log(f"  {n + 1} kills, {len(feeder.dropped)} manifests dropped, {elapsed:.0f} s")
        feeder.stopping.set()
        feeder.join(30)
        if feeder.error is not None:
            report.problems.append(f"the feeder failed: {feeder.error!r}")
        log(f"  {kills} kills done; draining {len(feeder.dropped)} manifests with one last watcher")

        def drained() -> bool:
            if os.listdir(spool / "incoming") or any(
                p.name.startswith(".") for p in (spool / "runs").iterdir()
            ):
                return False
            return all((p / "summary.json").exists() for p in (spool / "runs").iterdir())

        watcher = start(kills)
        try:
            # Ready first: a SIGTERM during interpreter start-up, before any handler exists, kills it.
            watcher.wait_output(READY, 60)
            wait_for(drained, drain_timeout, 0.5)
        except TimeoutError:
            report.problems.append(f"not drained within {drain_timeout:.0f} s")
        code = watcher.stop()
        watcher = None
        if code != 0:
            report.problems.append(f"the last watcher exited {code} on SIGTERM")

        # Age every leftover temp file past the cleanup age; one more start-up must clean them all.
        strays = temp_files(spool)
        report.stray_temp_files_before_ageing = len(strays)
        old = time.time() - TMP_MAX_AGE - 600
        for path in strays:
            os.utime(path, (old, old), follow_symlinks=False)
        watcher = start(kills + 1)
        watcher.wait_output(READY, 120)
        watcher.stop()
        watcher = None
        left = temp_files(spool)
        report.stray_temp_files_after_ageing = len(left)
        for path in left:
            rel = str(path.relative_to(spool))
            cleaned = rel.startswith("tmp/") or "/tasks/" in rel or path.name.endswith((".partial", ".claim"))
            what = f"{rel}: a temp file older than the cleanup age survived a start-up"
            (report.problems if cleaned else report.known).append(what)

        for path in logs.glob("watch-*.log"):
            report.recovery_repairs += path.read_text(errors="replace").count("recovery: ")
        check(spool, workdir, url, feeder.dropped, report)
    finally:
        feeder.stopping.set()
        if watcher is not None:
            watcher.kill9()
        sim.stop(GRACE)
    report.seconds = round(time.monotonic() - began, 1)
    return report


def print_report(report: Report) -> None:
    rows = [(k, v) for k, v in asdict(report).items() if k not in ("problems", "known", "counts")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"  {'result':<{width}}  {'OK' if report.ok else 'FAILED'}")
    for problem in report.problems[:50]:
        print(f"  PROBLEM: {problem}")
    for known in report.known[:20]:
        print(f"  KNOWN BUG: {known}")
    if len(report.problems) > 50:
        print(f"  ... and {len(report.problems) - 50} more problems")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs of the watcher (default 200)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1.5, help="manifests per second (default 1.5)")
    parser.add_argument("--max-kill-delay", type=float, default=2.0, help="seconds after ready (default 2)")
    parser.add_argument("--dir", type=Path, help="work here (kept); default: a temporary directory, removed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="occoord-torture-"))
    print(f"occoord torture: {args.kills} kills, seed {args.seed}, in {root}")
    report = torture(
        args.kills, root=root, seed=args.seed, rate=args.rate, max_kill_delay=args.max_kill_delay
    )
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "ok": report.ok}, indent=1) + "\n")
    if args.dir is None and not args.keep and report.ok:
        shutil.rmtree(root, ignore_errors=True)
    elif not report.ok:
        print(f"  files kept in {root}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
