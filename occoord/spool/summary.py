"""``summary.json`` and ``summary.md``: written when every task of a run is terminal.

A task whose record has ``details["usage"]`` (cost and tokens, in the shape of
``occoord.opencode.usage.Usage.to_json``) shows it, and the run shows the totals. The spool reads
that shape on its own, without the opencode package: both layers are independent, and a record is a
file anyone may have written, so every number is checked here.

A worktree task's record also holds its result (issue 12): the result commit, its branch and the
diff stats from the task's start commit. :func:`worktree_result` picks those out, checked the same
way, and the summaries show them; a plain task's entries keep exactly their former shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from occoord.fsutil import atomic_write
from occoord.spool.layout import Run
from occoord.spool.jsontext import dumps_rows
from occoord.spool.records import TaskRecord

__all__ = [
    "diff_text",
    "record_usage",
    "sessions_per_server",
    "sum_usage",
    "usage_text",
    "worktree_result",
    "write_summary",
]

_TOKEN_KEYS = ("input", "output", "reasoning")
_CACHE_KEYS = ("read", "write")
_STAT_KEYS = ("files_changed", "insertions", "deletions")
_NAME_KEYS = ("result_commit", "branch")


def _seconds(start: str, end: str) -> float | None:
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((b - a).total_seconds(), 3)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if value == value and abs(value) != float("inf") else 0.0


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def record_usage(details: Mapping[str, Any]) -> dict[str, Any] | None:
    """A record's ``details["usage"]``, normalised (every field present, numbers only); None when
    the record has none."""
    raw = details.get("usage")
    if not isinstance(raw, Mapping):
        return None
    return sum_usage([raw])


def sum_usage(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of usage dicts, in the same shape (``cost``, ``tokens{input, output, reasoning,
    cache{read, write}, total}``, ``messages``, ``sessions``)."""
    cost = 0.0
    tokens = dict.fromkeys(_TOKEN_KEYS, 0)
    cache = dict.fromkeys(_CACHE_KEYS, 0)
    messages = sessions = 0
    for item in items:
        cost += _number(item.get("cost"))
        raw_tokens = _map(item.get("tokens"))
        for key in _TOKEN_KEYS:
            tokens[key] += int(_number(raw_tokens.get(key)))
        raw_cache = _map(raw_tokens.get("cache"))
        for key in _CACHE_KEYS:
            cache[key] += int(_number(raw_cache.get(key)))
        messages += int(_number(item.get("messages")))
        sessions += int(_number(item.get("sessions")))
    total = sum(tokens.values()) + sum(cache.values())
    return {
        "cost": round(cost, 6),
        "tokens": {**tokens, "cache": cache, "total": total},
        "messages": messages,
        "sessions": sessions,
    }


def worktree_result(details: Mapping[str, Any]) -> dict[str, Any]:
    """A worktree task's result as its record holds it: ``result_commit`` and ``branch`` (non-empty
    strings), ``files_changed``, ``insertions`` and ``deletions`` (counts), and ``worktree`` while
    occoord has not removed it (a failed task's, by default). Only what is present and well formed:
    {} for a plain task."""
    out: dict[str, Any] = {}
    for key in _NAME_KEYS:
        value = details.get(key)
        if isinstance(value, str) and value:
            out[key] = value
    for key in _STAT_KEYS:
        value = details.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[key] = value
    worktree = details.get("worktree")
    if isinstance(worktree, str) and worktree and details.get("worktree_removed") is not True:
        out["worktree"] = worktree
    return out


def diff_text(result: Mapping[str, Any]) -> str:
    """``+12 -3 in 2 files`` from :func:`worktree_result`'s stats; "" without them."""
    if not all(key in result for key in _STAT_KEYS):
        return ""
    files = result["files_changed"]
    return f"+{result['insertions']} -{result['deletions']} in {files} file{'' if files == 1 else 's'}"


def _count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 10_000:
        return f"{n / 1000:.0f}k"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return str(n)


def usage_text(usage: Mapping[str, Any] | None, *, detailed: bool = False) -> str:
    """``$0.0123, 1.2k tokens`` (with ``detailed``: ``(in 1000, out 150, ...)`` too); "" for None."""
    if usage is None:
        return ""
    tokens = _map(usage.get("tokens"))
    cache = _map(tokens.get("cache"))
    text = f"${_number(usage.get('cost')):.4f}, {_count(int(_number(tokens.get('total'))))} tokens"
    if detailed:
        parts = [f"{key} {int(_number(tokens.get(key)))}" for key in _TOKEN_KEYS]
        parts += [f"cache {key} {int(_number(cache.get(key)))}" for key in _CACHE_KEYS]
        text += f" ({', '.join(parts)})"
    return text


def write_summary(run: Run, *, durable: bool = True) -> dict[str, Any]:
    records = run.records()
    tasks: list[dict[str, Any]] = []
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
                "usage": record_usage(details),
                **({"server": details["server"]} if isinstance(details.get("server"), str) else {}),
                **worktree_result(details),
            }
        )
    ok = all(t["state"] == "done" for t in tasks)
    counts = {s: sum(1 for t in tasks if t["state"] == s) for s in ("done", "failed")}
    used = [t["usage"] for t in tasks if t["usage"] is not None]
    summary: dict[str, Any] = {
        "protocol": 1,
        "run": run.id,
        "name": run.manifest.name,
        "ok": ok,
        "accepted_at": run.accepted_at,
        "tasks": tasks,
        "counts": counts,
        "usage": sum_usage(used) if used else None,
        "servers": sessions_per_server(records.values()),
    }
    atomic_write(run.dir / "summary.json", dumps_rows(summary), durable=durable)
    atomic_write(run.dir / "summary.md", _markdown(run, summary).encode(), durable=durable)
    return summary


def sessions_per_server(records: Iterable[TaskRecord | None]) -> dict[str, int]:
    """Which servers ran the run and how many sessions each: every attempt's server, as the
    engine counts them in ``details["servers"]`` (a record from before that counts its last)."""
    out: dict[str, int] = {}
    for record in records:
        if record is None:
            continue
        counted = record.details.get("servers")
        if isinstance(counted, Mapping):
            for name, n in counted.items():
                if isinstance(name, str) and isinstance(n, int) and not isinstance(n, bool) and n > 0:
                    out[name] = out.get(name, 0) + n
        elif isinstance(record.details.get("server"), str) and record.attempt > 0:
            name = str(record.details["server"])
            out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


def _markdown(run: Run, summary: dict[str, Any]) -> str:
    counts, tasks, total = summary["counts"], summary["tasks"], summary["usage"]
    lines = [
        f"# {run.manifest.name} ({run.id})",
        "",
        f"**{'all tasks done' if summary['ok'] else 'some tasks failed'}**: "
        f"{counts['done']} done, {counts['failed']} failed",
        "",
    ]
    if total is not None:
        lines += [f"Cost and tokens: {usage_text(total, detailed=True)}", ""]
    usage_head, usage_rule = (" tokens | cost |", "---|---|") if total is not None else ("", "")
    # A run without worktree tasks keeps its former table: the column comes with the first result.
    changes = any("result_commit" in t or "files_changed" in t for t in tasks)
    change_head, change_rule = (" changes | commit |", "---|---|") if changes else ("", "")
    lines += [
        f"| task | state | attempts | duration (s) | session |{usage_head}{change_head} reason |",
        f"|---|---|---|---|---|{usage_rule}{change_rule}---|",
    ]
    for t in tasks:
        reason = str(t["reason"] or "").replace("|", "\\|").replace("\n", " ")
        used = ""
        if total is not None:
            u = t["usage"]
            used = f" {u['tokens']['total']} | {u['cost']:.4f} |" if u else " | |"
        changed = f" {diff_text(t)} | {_cell(t.get('result_commit', '')[:12])} |" if changes else ""
        lines.append(
            f"| {t['task']} | {t['state']} | {t['attempts']} | {t['duration_s'] or ''} "
            f"| {t['session_id'] or ''} |{used}{changed} {reason} |"
        )
    kept = [t for t in tasks if "worktree" in t]
    if kept:
        lines += ["", "Worktrees kept (`occoord clean` removes them):", ""]
        for t in kept:
            branch = f" (branch `{_cell(t['branch'])}`)" if "branch" in t else ""
            lines.append(f"- {t['task']}: `{_cell(t['worktree'])}`{branch}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """``text`` made safe for one table cell or list line: a record is anyone's file."""
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")
