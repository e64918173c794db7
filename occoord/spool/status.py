"""A spool's state for people and scripts, read from the files alone (no coordinator needed).

Besides the runs and their tasks: the hold switch (``SPOOL/hold``: while it exists the watcher
starts no new session, and running ones go on), the newest rejections with their first reason, and
why each file in ``incoming/`` still waits. Only :func:`set_hold` and :func:`clear_hold` write.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from occoord.errors import NotFound, OccoordError
from occoord.fsutil import atomic_write, fsync_dir
from occoord.spool.layout import Run, Spool
from occoord.spool.names import parse_run_id
from occoord.spool.states import TaskState
from occoord.spool.summary import record_usage, sum_usage, worktree_result

__all__ = [
    "HOLD_FILE",
    "clear_hold",
    "hold_info",
    "incoming_waits",
    "last_line",
    "recent_rejections",
    "resolve_run",
    "result_of",
    "run_summary",
    "run_usage",
    "server_rows",
    "set_hold",
    "task_rows",
    "watcher_report",
]

HOLD_FILE = "hold"  # SPOOL/hold: any content; while it exists no new task is dispatched
LATEST = "latest"


def _since_epoch(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_summary(run: Run) -> dict[str, Any]:
    states = run.tasks.states()
    counts = Counter(states.get(t.id, TaskState.QUEUED).value for t in run.manifest.tasks)
    finished = all(states.get(t.id, TaskState.QUEUED).terminal for t in run.manifest.tasks)
    return {
        "run": run.id,
        "name": run.manifest.name,
        "accepted_at": run.accepted_at,
        "finished": finished,
        "tasks": len(run.manifest.tasks),
        "counts": {s.value: counts.get(s.value, 0) for s in TaskState},
    }


def task_rows(run: Run, *, now: float | None = None) -> list[dict[str, Any]]:
    """One row per task. ``elapsed_s``: how long the current attempt has run (pending), or ran
    (done, failed); None before a first dispatch. ``usage`` as the record holds it, or None. A
    worktree task's row also has what :func:`result_of` finds."""
    wall = time.time() if now is None else now
    rows = []
    for task_id, record in run.records().items():
        details: Mapping[str, Any] = record.details if record else {}
        started = _since_epoch(str(details.get("dispatched_at") or ""))
        elapsed: float | None = None
        if record is not None and started is not None:
            if record.state is TaskState.PENDING:
                elapsed = max(0.0, wall - started)
            elif record.state.terminal:
                ended = _since_epoch(record.since)
                elapsed = max(0.0, ended - started) if ended is not None else None
        rows.append(
            {
                "task": task_id,
                "state": record.state.value if record else None,
                "attempt": record.attempt if record else 0,
                "since": record.since if record else "",
                "session_id": record.session_id if record else None,
                "reason": record.reason if record else "no state file",
                "not_before": record.not_before if record else None,
                "server_version": details.get("server_version"),
                "server": details.get("server"),
                "directory": details.get("directory"),
                "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
                "usage": record_usage(details),
                **result_of(record.state if record else None, details),
            }
        )
    return rows


_RESULT_KEYS = ("result_commit", "files_changed", "insertions", "deletions")


def result_of(state: TaskState | None, details: Mapping[str, Any]) -> dict[str, Any]:
    """The worktree facts of a record (see :func:`occoord.spool.summary.worktree_result`), as they
    stand now. A pending task's result commit and stats are an earlier attempt's (a new attempt
    starts with its predecessor's details): left out, it has none yet. A worktree that is no
    longer on disk (``occoord clean`` removed it, and writes no record) is left out too."""
    found = worktree_result(details)
    if state is TaskState.PENDING:
        for key in _RESULT_KEYS:
            found.pop(key, None)
    if "worktree" in found and not os.path.isdir(found["worktree"]):
        del found["worktree"]
    return found


def run_usage(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's total of its tasks' usage so far; None if no task has any."""
    used = [r["usage"] for r in rows if r.get("usage")]
    return sum_usage(used) if used else None


def last_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a text file (a result), at most 200 characters; "" if none."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - tail))  # the tail is enough for a last line
            text = fh.read(tail).decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def resolve_run(spool: Spool, ref: str) -> str:
    """The run id meant by ``ref``: a run id, ``latest`` (the newest run), or a manifest's name or
    file stem (the newest run of that name). NotFound when nothing matches."""
    ids = spool.run_ids()
    if ref in ids:
        return ref
    if ref == LATEST:
        if not ids:
            raise NotFound(str(spool.runs), "the spool has no runs")
        return ids[-1]
    for run_id in reversed(ids):
        parsed = parse_run_id(run_id)
        if parsed is not None and parsed[1] == ref:
            return run_id
        if _plan_name(spool.runs / run_id) == ref:
            return run_id
    # Spool.run explains (and names the latest run) when nothing matches.
    return spool.run(ref).id


def _plan_name(run_dir: Path) -> str | None:
    try:
        meta = json.loads((run_dir / "run.json").read_bytes())
    except (OSError, ValueError):
        return None
    plan = meta.get("plan") if isinstance(meta, dict) else None
    name = plan.get("name") if isinstance(plan, dict) else None
    return name if isinstance(name, str) else None


def recent_rejections(spool: Spool, limit: int = 5) -> tuple[list[dict[str, str]], int]:
    """The newest ``limit`` rejections (newest first) as ``{"entry", "error", "reason"}`` with
    the first line of the reason, and how many there are in all."""
    try:
        errors = sorted((n for n in os.listdir(spool.rejected) if n.endswith(".error")), reverse=True)
    except FileNotFoundError:
        return [], 0
    shown = []
    for name in errors[:limit]:
        path = spool.rejected / name
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        # The first line says which file and when; the reasons follow, one per line.
        reason = next((line.strip() for line in lines[1:] if line.strip()), "(no reason recorded)")
        shown.append({"entry": name.removesuffix(".error"), "error": str(path), "reason": reason})
    return shown, len(errors)


def incoming_waits(
    spool: Spool, watcher: Mapping[str, Any] | None, *, now: float | None = None
) -> list[dict[str, str]]:
    """Each file in ``incoming/`` and why it is still there: the watcher's own reason when it gave
    one (``watcher.json`` problems), no running watcher, or a writer that is not done yet."""
    wall = time.time() if now is None else now
    running = bool(watcher and watcher.get("running"))
    problems = [str(p.get("what", "")) for p in (watcher or {}).get("problems", []) if isinstance(p, Mapping)]
    out = []
    for path in spool.incoming_files():
        said = next((p for p in problems if f"incoming/{path.name}" in p), None)
        if said is not None:
            why = said
        elif not running:
            why = "no watcher is running (`occoord watch` takes it, or `occoord accept` once)"
        else:
            try:
                age = max(0.0, wall - path.lstat().st_mtime)
            except FileNotFoundError:
                continue  # taken while we looked
            why = f"waiting to be complete (written {age:.0f}s ago)"
        out.append({"file": path.name, "why": why})
    return out


def hold_info(spool: Spool) -> dict[str, str] | None:
    """``{"since", "note"}`` while ``SPOOL/hold`` exists, else None."""
    path = spool.root / HOLD_FILE
    try:
        stat = path.stat()
        note = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"since": "", "note": f"unreadable: {exc.strerror}"}
    since = datetime.fromtimestamp(stat.st_mtime).astimezone().isoformat(timespec="seconds")
    return {"since": since, "note": note.splitlines()[0] if note else ""}


def set_hold(spool: Spool, note: str) -> Path:
    """Create (or rewrite) ``SPOOL/hold`` atomically: from now on no new task is dispatched."""
    path = spool.root / HOLD_FILE
    atomic_write(path, (note.rstrip("\n") + "\n").encode(), durable=spool.durable)
    return path


def clear_hold(spool: Spool) -> bool:
    """Remove ``SPOOL/hold``; False if there was none."""
    path = spool.root / HOLD_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    if spool.durable:
        fsync_dir(spool.root)
    return True


def server_rows(spool: Spool, watcher: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The watcher's servers (``watcher.json`` "servers"), each with ``busy``: how many pending
    tasks the records place on it (the records are the truth; the watcher's view may be older)."""
    busy: Counter[str] = Counter()
    for run_id in spool.run_ids():
        try:
            records = spool.run(run_id).records().values()
        except (OccoordError, OSError):
            continue  # a broken run is reported as unreadable by the overview
        for rec in records:
            if rec is not None and rec.state is TaskState.PENDING:
                busy[str(rec.details.get("server") or "")] += 1
    listed = (watcher or {}).get("servers") or []
    return [{**s, "busy": busy.get(str(s.get("name")), 0)} for s in listed if isinstance(s, Mapping)]


def watcher_report(spool: Spool) -> dict[str, Any] | None:
    """``SPOOL/watcher.json`` (written by the watcher) plus whether its pid still runs; None if the
    spool never had a watcher or the file is unreadable."""
    try:
        doc = json.loads((spool.root / "watcher.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    running = False
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
            running = True
        except ProcessLookupError:
            running = False
        except PermissionError:
            running = True
    return {**doc, "running": running}
