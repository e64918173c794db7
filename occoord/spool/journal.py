"""``events.jsonl``: the append-only history of a run, one JSON object per line.

The state files are the truth; the journal is the story. Every transition and every repair is
appended under the run lock, so line order is the order things happened. Readers must skip a torn
last line (a crash mid-append) and unknown keys (later versions may add some).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from occoord.fsutil import append_line

__all__ = ["Event", "append_event", "event_line", "iso", "last_states", "read_events", "repair_tail"]

EVENTS_FILE = "events.jsonl"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One line of the journal. ``kind`` is ``transition``, ``repair`` or ``run``."""

    ts: str
    kind: str
    task: str | None = None
    source: str | None = None
    target: str | None = None
    actor: str | None = None
    attempt: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": 1, "ts": self.ts, "kind": self.kind}
        if self.task is not None:
            out["task"] = self.task
        if self.source is not None:
            out["from"] = self.source
        if self.target is not None:
            out["to"] = self.target
        if self.actor is not None:
            out["actor"] = self.actor
        if self.attempt is not None:
            out["attempt"] = self.attempt
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Event:
        return cls(
            ts=str(obj.get("ts", "")),
            kind=str(obj.get("kind", "")),
            task=obj.get("task"),
            source=obj.get("from"),
            target=obj.get("to"),
            actor=obj.get("actor"),
            attempt=obj.get("attempt"),
            reason=str(obj.get("reason", "")),
        )


def event_line(event: Event) -> str:
    """One journal line, newline included."""
    # ensure_ascii: file names may hold undecodable bytes (surrogates), which UTF-8 cannot encode.
    return json.dumps(event.to_json(), separators=(",", ":")) + "\n"


def append_event(run_dir: Path, event: Event, *, durable: bool = True) -> None:
    append_line(run_dir / EVENTS_FILE, event_line(event).encode("utf-8"), durable=durable)


def repair_tail(run_dir: Path) -> bool:
    """End a torn last line (crash mid-append) so the next event starts on a line of its own."""
    path = run_dir / EVENTS_FILE
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            if fh.tell() == 0:
                return False
            fh.seek(-1, 2)
            if fh.read(1) == b"\n":
                return False
    except FileNotFoundError:
        return False
    append_line(path, b"\n")
    return True


def read_events(run_dir: Path) -> Iterator[Event]:
    """Every complete event of a run, oldest first (a torn or foreign line is skipped)."""
    try:
        data = (run_dir / EVENTS_FILE).read_bytes()
    except FileNotFoundError:
        return
    for raw in data.splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield Event.from_json(obj)


def last_states(run_dir: Path) -> dict[str, str]:
    """Each task's state as the journal last recorded it (``to`` of its latest event)."""
    states: dict[str, str] = {}
    for event in read_events(run_dir):
        if event.task is not None and event.target is not None:
            states[event.task] = event.target
    return states
