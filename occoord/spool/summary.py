"""``summary.json`` and ``summary.md``: written when every task of a run is terminal."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from occoord.fsutil import atomic_write
from occoord.spool.layout import Run

__all__ = ["write_summary"]


def _seconds(start: str, end: str) -> float | None:
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((b - a).total_seconds(), 3)


def write_summary(run: Run, *, durable: bool = True) -> dict[str, Any]:
    records = run.records()
    tasks = []
    for spec in run.manifest.tasks:
        record = records.get(spec.id)
        details = dict(record.details) if record else {}
        started = str(details.get("dispatched_at", ""))
        tasks.append(
            {
                "task": spec.id,
                "state": record.state.value if record else None,
                "attempts": record.attempt if record else 0,
                "duration_s": _seconds(started, record.since) if record and started else None,
                "session_id": record.session_id if record else None,
                "reason": record.reason if record else "no state file",
                "server_version": details.get("server_version"),
            }
        )
    ok = all(t["state"] == "done" for t in tasks)
    counts = {s: sum(1 for t in tasks if t["state"] == s) for s in ("done", "failed")}
    summary: dict[str, Any] = {
        "protocol": 1,
        "run": run.id,
        "name": run.manifest.name,
        "ok": ok,
        "accepted_at": run.accepted_at,
        "tasks": tasks,
        "counts": counts,
    }
    atomic_write(run.dir / "summary.json", json.dumps(summary, indent=1).encode() + b"\n", durable=durable)
    lines = [
        f"# {run.manifest.name} ({run.id})",
        "",
        f"**{'all tasks done' if ok else 'some tasks failed'}**: "
        f"{counts['done']} done, {counts['failed']} failed",
        "",
        "| task | state | attempts | duration (s) | session | reason |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks:
        reason = str(t["reason"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {t['task']} | {t['state']} | {t['attempts']} | {t['duration_s'] or ''} "
            f"| {t['session_id'] or ''} | {reason} |"
        )
    atomic_write(run.dir / "summary.md", ("\n".join(lines) + "\n").encode(), durable=durable)
    return summary
