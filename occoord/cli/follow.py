"""Following one run in the foreground (``occoord run``): print its journal as it grows.

The journal (``events.jsonl``) is append-only, so following is reading from the last offset. A
watchdog observer on the run directory says when to read; a slow timer covers lost events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["JournalTail", "RunWatch", "describe"]


class JournalTail:
    """Complete new lines of ``events.jsonl`` since the last read (a torn last line waits)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "events.jsonl"
        self.offset = 0

    def read(self) -> list[dict[str, object]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


def describe(event: dict[str, object]) -> str:
    """One human line for a journal event."""
    ts = str(event.get("ts", ""))[11:19]
    kind = event.get("kind")
    reason = f"  ({event['reason']})" if event.get("reason") else ""
    if kind in ("transition", "repair"):
        who = "" if event.get("actor") in (None, "coordinator") else f" [{event.get('actor')}]"
        return f"{ts} {event.get('task')}: {event.get('from') or '-'} -> {event.get('to')}{who}{reason}"
    return f"{ts} run {reason.strip()[1:-1] if reason else kind}"


class RunWatch(FileSystemEventHandler):
    """Calls ``on_change`` (from watchdog's thread) whenever something under ``run_dir`` changes."""

    def __init__(self, run_dir: Path, on_change: Callable[[], object]) -> None:
        self.on_change = on_change
        self.observer = Observer()
        self.observer.schedule(self, str(run_dir), recursive=True)

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.on_change()

    def __enter__(self) -> RunWatch:
        self.observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)
