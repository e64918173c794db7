#!/usr/bin/env python3
"""Crash torture: SIGKILL and SIGTERM `occoord watch` at random moments while manifests keep flowing in.

One external simulator (`occoord simulate`) plays the OpenCode server for the whole run. A feeder
thread drops a stream of manifests into SPOOL/incoming/ (valid ones with tasks that succeed, fail,
retry, depend on each other or signal their own outcome by renaming their state file; invalid
ones), some written atomically (tmp/ + rename), some in place like a plain `cp`. Meanwhile a
watcher is started, stopped after a random delay (before or after it is ready) and restarted,
KILLS times with SIGKILL (a crash) and TERMS times with SIGTERM (a clean stop, `systemctl
restart`), in a random order. Then a last watcher drains the spool and the files are checked:

  manifests   every manifest dropped is exactly one run or exactly one rejection
  tasks       every task has exactly one state file, terminal, and the outcome its script implies
  sessions    no session was created twice for one attempt (titles `occoord RUN/TASK#N` are unique
              in the simulator's GET /session?directory=...)
  busy        no task ever had two busy sessions at once, as the server saw it (the simulator's
              GET /sim/busy: every span in which each session was busy)
  stops       a watcher sent SIGTERM once it was serving exits 0 within the grace
  temp files  after ageing every leftover temp file past the cleanup age (1 h) and one more
              start-up, none is left
  journal     the last `to` of every task in events.jsonl equals its state file

With --spawn there is no external simulator: the watchers spawn the server (the simulator behind a
fake `opencode`) and hand it on to each other through SPOOL/server.json, so every restart, SIGKILL
or SIGTERM, re-uses the same server; a server that changed, or one left running unrecorded, is a
finding too.

Findings are counted as lost (a manifest or task gone), doubled (made twice, two state files, a
session twice) or stuck (not terminal, not drained, still busy at the end).

Usage:  .venv/bin/python scripts/torture.py [--kills 200] [--terms 100] [--spawn] [--seed 1] [--dir DIR]
                                            [--json FILE]
Exit status 0 when every check holds. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
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
from support.processes import (  # noqa: E402
    READY,
    Proc,
    kill_group,
    occoord_argv,
    spool_server,
    start_simulator,
    stop_spool_server,
    wait_for,
    watch_argv,
)

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
    terms: int = 0
    terms_before_ready: int = 0
    terms_after_ready: int = 0
    slowest_term_seconds: float = 0.0
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
    busy_spans: int = 0
    max_busy_sessions_per_task: int = 0
    servers: int = 0  # --spawn: servers the watchers recorded (all of them handed on: 1)
    lost: int = 0
    doubled: int = 0
    stuck: int = 0
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

    def finding(self, kind: str, what: str) -> None:
        """A problem counted as ``kind``: lost, doubled or stuck."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.problems.append(f"{kind}: {what}")


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


def check(
    spool: Path, workdir: Path, url: str, dropped: list[Dropped], report: Report, auth: Any = None
) -> None:
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
    for marker in [*valid, *invalid]:
        runs, rejections = runs_of[marker], rejected_of[marker]
        want = (1, 0) if marker in valid else (0, 1)
        if (runs, rejections) != want:
            kind = "lost" if runs + rejections == 0 else "doubled"
            report.finding(kind, f"{marker}: {runs} runs, {rejections} rejections (want {want[0]} run)")
    stray_errors = [
        p.name for p in (spool / "rejected").glob("*.error") if not p.with_name(p.name[:-6]).exists()
    ]
    for name in stray_errors:  # a crash between writing the reason and moving the manifest
        report.known.append(f"rejected/{name}: a reason without its manifest (it was rejected again)")
    leftovers = os.listdir(spool / "incoming")
    if leftovers:
        report.finding("stuck", f"incoming/ not empty: {leftovers[:10]}")

    # -- tasks: one terminal state file each, the expected outcome, summary and journal agree
    counts: Counter[str] = Counter()
    expected_titles: set[str] = set()
    for run_dir in run_dirs:
        name = json.loads((run_dir / "run.json").read_text())["plan"]["name"]
        item = valid.get(name)
        found, claims = state_files(run_dir)
        if claims:
            problems.append(f"{run_dir.name}: claims left: {claims}")
        if item is not None:
            for task in sorted(set(item.expected) - set(found)):
                report.finding("lost", f"{run_dir.name}/{task}: no state file")
            if set(found) - set(item.expected):
                problems.append(f"{run_dir.name}: tasks {sorted(found)} != {sorted(item.expected)}")
        for task, names in found.items():
            report.tasks += 1
            if len(names) != 1:
                report.finding("doubled", f"{run_dir.name}/{task}: several state files {names}")
                continue
            state = names[0]
            counts[state] += 1
            if state not in ("done", "failed"):
                report.finding("stuck", f"{run_dir.name}/{task}: not terminal ({state})")
            if item is not None and item.expected.get(task) != state:
                problems.append(
                    f"{run_dir.name}/{task}: ended {state}, its script says {item.expected.get(task)}"
                )
            record = json.loads((run_dir / "tasks" / f"{task}.{state}").read_text())
            report.attempts += int(record.get("attempt", 0))
            expected_titles |= {f"occoord {run_dir.name}/{task}#{n}" for n in range(1, record["attempt"] + 1)}
        summary = run_dir / "summary.json"
        if not summary.exists():
            report.finding("stuck", f"{run_dir.name}: no summary.json")
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
    sessions = httpx.get(f"{url}/session", params={"directory": str(workdir)}, auth=auth, timeout=60).json()
    titles = [s["title"] for s in sessions]
    report.sessions = len(titles)
    for title in [t for t, n in Counter(titles).items() if n > 1]:
        report.finding("doubled", f"session {title!r} created twice for one attempt")
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
    busy = httpx.get(
        f"{url}/session/status", params={"directory": str(workdir)}, auth=auth, timeout=60
    ).json()
    if busy:
        report.finding("stuck", f"{len(busy)} sessions still busy after every task ended")
    spans = httpx.get(f"{url}/sim/busy", params={"prefix": "occoord "}, auth=auth, timeout=60).json()
    check_busy(spans, report)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most of these (start, end) spans that overlap at one moment (touching ends do not)."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    now = peak = 0
    for _, step in edges:  # at one instant an end (-1) sorts before a start (+1)
        now += step
        peak = max(peak, now)
    return peak


def check_busy(spans: list[dict[str, Any]], report: Report) -> None:
    """No task ever had two busy sessions at once: the spans of its sessions (titles
    `occoord RUN/TASK#N`, any N) never overlap, as the server saw them."""
    report.busy_spans = len(spans)
    by_task: dict[str, list[tuple[float, float]]] = {}
    for span in spans:
        task = str(span["title"]).rpartition("#")[0]
        end = span["end"] if span["end"] is not None else float("inf")  # still busy: to the end
        by_task.setdefault(task, []).append((float(span["start"]), float(end)))
    for task, task_spans in sorted(by_task.items()):
        peak = most_at_once(task_spans)
        report.max_busy_sessions_per_task = max(report.max_busy_sessions_per_task, peak)
        if peak > 1:
            report.finding("doubled", f"{task}: {peak} sessions busy at once")


# ---------------------------------------------------------------------------- the run


def terminate(watcher: Proc, ready: bool, report: Report) -> None:
    """A clean stop (SIGTERM), as `systemctl restart` does it. A watcher that was serving must exit
    0 within the grace. Before its handlers exist (still importing) SIGTERM simply kills it, as
    SIGKILL would; both are fine then."""
    began = time.monotonic()
    code = watcher.stop(GRACE, sig=signal.SIGTERM)
    took = time.monotonic() - began
    report.terms += 1
    report.terms_after_ready += ready
    report.terms_before_ready += not ready
    report.slowest_term_seconds = round(max(report.slowest_term_seconds, took), 2)
    if code == -signal.SIGKILL:
        report.finding("stuck", f"{watcher.log.name}: no exit within {GRACE:g} s of SIGTERM")
    elif code != 0 and (ready or code != -signal.SIGTERM):
        report.problems.append(f"{watcher.log.name}: exited {code} on SIGTERM (ready: {ready})")


class Backend:
    """The OpenCode server of a torture: one external simulator for the whole run, or (``spawn``)
    the server the watchers spawn and hand on to each other (adopted from SPOOL/server.json after
    every SIGKILL and SIGTERM), a fake `opencode` that is the simulator."""

    def __init__(self, root: Path, spool: Path, workdir: Path, spawn: bool) -> None:
        self.spool, self.workdir, self.spawn = spool, workdir, spawn
        self.sim: Proc | None = None
        self.recorded: set[int] = set()  # pids of the servers recorded with a URL
        if spawn:
            fake = root / "bin" / "opencode"
            fake.parent.mkdir(parents=True, exist_ok=True)
            fake.write_text(f"#!/bin/sh\nexec {sys.executable} -m occoord simulate --port 0\n")
            fake.chmod(0o755)
            self.options = ["--opencode-bin", str(fake)]
        else:
            self.sim, url = start_simulator(root / "logs" / "simulator.log", timeout=60)
            self.options = ["--server", url]

    def note(self) -> None:
        """After each watcher: which server is recorded now."""
        record = self._record()
        if record is not None and record.get("url") and spool_server(self.spool) is not None:
            self.recorded.add(int(record["pid"]))

    def endpoint(self) -> tuple[str, Any]:
        """The URL and the Basic auth of the server to check."""
        if not self.spawn:
            return self.options[1], None
        record = self._record() or {}
        return str(record.get("url", "")), ("opencode", str(record.get("password", "")))

    def stop(self, report: Report) -> None:
        """Stop the server by its PID; with --spawn, any other left in the workdir is a finding."""
        if self.sim is not None:
            self.sim.stop(GRACE)
            return
        report.servers = len(self.recorded)
        if len(self.recorded) > 1:
            report.finding("lost", f"the server changed ({sorted(self.recorded)}): sessions went with it")
        stop_spool_server(self.spool, GRACE)
        for pid in processes_in(self.workdir):
            report.finding("doubled", f"pid {pid} (a server nobody recorded?) was left running")
            kill_group(pid)

    def _record(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.spool / "server.json").read_text()))
        except (OSError, ValueError):
            return None


def processes_in(directory: Path) -> list[int]:
    """Pids of processes working in ``directory``: a spawned server runs in the watcher's workdir."""
    target, found = str(directory.resolve()), []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd") == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


def torture(
    kills: int,
    *,
    terms: int = 0,
    spawn: bool = False,
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
    backend = Backend(root, spool, workdir, spawn)
    watcher: Proc | None = None
    feeder = Feeder(spool, rng, rate)
    try:
        argv = watch_argv(spool, workdir, *WATCH_OPTIONS, *backend.options)

        def start(n: int) -> Proc:
            report.watcher_starts += 1
            return Proc(argv, logs / f"watch-{n:03d}.log", grace=GRACE)

        feeder.start()
        stops = ["kill"] * kills + ["term"] * terms
        rng.shuffle(stops)
        for n, how in enumerate(stops):
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
            if how == "kill":
                watcher.kill9()
                report.kills += 1
                report.kills_after_ready += ready
                report.kills_before_ready += not ready
            else:
                terminate(watcher, ready, report)
            watcher = None
            backend.note()
            if (n + 1) % 25 == 0:
                elapsed = time.monotonic() - began
                log(f"  {n + 1} stops, {len(feeder.dropped)} manifests dropped, {elapsed:.0f} s")
        feeder.stopping.set()
        feeder.join(30)
        if feeder.error is not None:
            report.problems.append(f"the feeder failed: {feeder.error!r}")
        log(f"  {kills} kills and {terms} terms done; draining {len(feeder.dropped)} manifests")

        def drained() -> bool:
            if os.listdir(spool / "incoming") or any(
                p.name.startswith(".") for p in (spool / "runs").iterdir()
            ):
                return False
            return all((p / "summary.json").exists() for p in (spool / "runs").iterdir())

        watcher = start(len(stops))
        try:
            # Ready first: a SIGTERM during interpreter start-up, before any handler exists, kills it.
            watcher.wait_output(READY, 60)
            wait_for(drained, drain_timeout, 0.5)
        except TimeoutError:
            report.finding("stuck", f"not drained within {drain_timeout:.0f} s")
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
        watcher = start(len(stops) + 1)
        watcher.wait_output(READY, 120)
        watcher.stop()
        watcher = None
        backend.note()
        left = temp_files(spool)
        report.stray_temp_files_after_ageing = len(left)
        for path in left:
            rel = str(path.relative_to(spool))
            cleaned = rel.startswith("tmp/") or "/tasks/" in rel or path.name.endswith((".partial", ".claim"))
            what = f"{rel}: a temp file older than the cleanup age survived a start-up"
            (report.problems if cleaned else report.known).append(what)

        for path in logs.glob("watch-*.log"):
            report.recovery_repairs += path.read_text(errors="replace").count("recovery: ")
        url, auth = backend.endpoint()
        check(spool, workdir, url, feeder.dropped, report, auth)
    finally:
        feeder.stopping.set()
        if watcher is not None:
            watcher.kill9()
        backend.stop(report)
    report.seconds = round(time.monotonic() - began, 1)
    return report


def figures(report: Report) -> str:
    """The headline: stops, tasks, and what went wrong (all zero, and at most 1 busy session)."""
    return (
        f"kills {report.kills}, terms {report.terms}, tasks {report.tasks}, lost {report.lost}, "
        f"doubled {report.doubled}, stuck {report.stuck}, "
        f"max concurrent busy sessions per task {report.max_busy_sessions_per_task}"
    )


def print_report(report: Report) -> None:
    rows = [(k, v) for k, v in asdict(report).items() if k not in ("problems", "known", "counts")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"  {'result':<{width}}  {'OK' if report.ok else 'FAILED'}")
    print(f"  {figures(report)}")
    for problem in report.problems[:50]:
        print(f"  PROBLEM: {problem}")
    for known in report.known[:20]:
        print(f"  KNOWN BUG: {known}")
    if len(report.problems) > 50:
        print(f"  ... and {len(report.problems) - 50} more problems")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs of the watcher (default 200)")
    parser.add_argument("--terms", type=int, default=100, help="SIGTERMs of the watcher (default 100)")
    parser.add_argument(
        "--spawn",
        action="store_true",
        help="the watchers spawn the server (the simulator as a fake opencode) and hand it on",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1.5, help="manifests per second (default 1.5)")
    parser.add_argument("--max-kill-delay", type=float, default=2.0, help="seconds after ready (default 2)")
    parser.add_argument("--dir", type=Path, help="work here (kept); default: a temporary directory, removed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="occoord-torture-"))
    mode = "spawned server" if args.spawn else "external simulator"
    print(f"occoord torture: {args.kills} kills, {args.terms} terms, {mode}, seed {args.seed}, in {root}")
    report = torture(
        args.kills,
        terms=args.terms,
        spawn=args.spawn,
        root=root,
        seed=args.seed,
        rate=args.rate,
        max_kill_delay=args.max_kill_delay,
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
