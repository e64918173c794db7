"""A session's transcript for people: what the agent said, each tool call and its status, errors.

``models.Message`` keeps only what a coordinator decides by (how a turn ended, the final text);
this module reads the other parts of ``GET /session/{id}/message``: text as it streams, tool calls
(``tool``, ``state.status``, ``state.title``, ``state.error``) and the errors on assistant messages.
Nothing here raises on an odd answer: a part it cannot read is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .usage import JsonReader

__all__ = ["Entry", "EntryKind", "fetch_transcript", "latest_activity", "parse_transcript"]

EntryKind = Literal["text", "tool", "error"]

# Tool inputs that say best what a call does when the server sent no title yet (a running call).
_INPUT_KEYS = ("description", "command", "filePath", "pattern", "url", "path", "prompt")
_SHORT = 200


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _one_line(text: str, limit: int = _SHORT) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class Entry:
    """One line (or paragraph) of a transcript.

    ``text`` is the agent's words for a text entry, the call's title for a tool, the message for
    an error. ``final`` is False while a text part still streams or a tool call still runs.
    """

    kind: EntryKind
    session_id: str
    message_id: str
    part_id: str
    text: str
    tool: str = ""
    status: str = ""
    final: bool = True

    @property
    def key(self) -> tuple[str, str, str, bool]:
        """Tells one state of an entry from the next: a follower prints each key once."""
        return (self.kind, self.part_id, self.status, self.final)

    def render(self) -> str:
        if self.kind == "tool":
            detail = f": {self.text}" if self.text else ""
            return f"[{self.tool}{detail}] {self.status}"
        if self.kind == "error":
            return f"[error] {self.text}"
        return self.text

    def activity(self) -> str:
        """The entry in one short line, as a live view shows what the agent does now."""
        if self.kind == "tool":
            detail = f" {self.text}" if self.text else ""
            return _one_line(f"{self.tool}{detail} ({self.status})")
        if self.kind == "error":
            return _one_line(f"error: {self.text}")
        lines = [line for line in self.text.splitlines() if line.strip()]
        return _one_line(lines[-1]) if lines else ""


def _tool_title(state: Mapping[str, Any]) -> str:
    title = _str(state.get("title"))
    if title:
        return _one_line(title)
    arguments = _map(state.get("input"))
    for key in _INPUT_KEYS:
        value = _str(arguments.get(key))
        if value:
            return _one_line(value)
    return ""


def _part_entry(part: Mapping[str, Any], session_id: str, message_id: str, *, done: bool) -> Entry | None:
    kind, part_id = part.get("type"), _str(part.get("id"))
    if kind == "text":
        # "ignored" parts were discarded by OpenCode; "synthetic" ones were written by it, not said.
        if part.get("ignored") or part.get("synthetic"):
            return None
        text = _str(part.get("text"))
        if not text.strip():
            return None
        final = done or _map(part.get("time")).get("end") is not None
        return Entry("text", session_id, message_id, part_id, text, final=final)
    if kind == "tool":
        state = _map(part.get("state"))
        status = _str(state.get("status")) or "pending"
        title = _tool_title(state)
        if status == "error":
            error = _one_line(_str(state.get("error")))
            title = f"{title}: {error}" if title and error else title or error
        final = status in ("completed", "error")
        return Entry("tool", session_id, message_id, part_id, title, _str(part.get("tool")), status, final)
    return None


def _error_text(raw: Mapping[str, Any]) -> str:
    name = _str(raw.get("name")) or "UnknownError"
    message = _str(_map(raw.get("data")).get("message")) or _str(raw.get("message"))
    return f"{name}: {message}" if message else name


def parse_transcript(raw: object) -> tuple[Entry, ...]:
    """The assistant's side of a ``GET /session/{id}/message`` answer, in order."""
    entries: list[Entry] = []
    for message in raw if isinstance(raw, list) else []:
        message = _map(message)
        info = _map(message.get("info"))
        if info.get("role") != "assistant":
            continue
        session_id, message_id = _str(info.get("sessionID")), _str(info.get("id"))
        completed = _map(info.get("time")).get("completed") is not None or info.get("finish") is not None
        parts = message.get("parts")
        items = [_map(p) for p in parts] if isinstance(parts, list) else []
        for i, part in enumerate(items):
            # A text part followed by another part is complete even before its message is.
            entry = _part_entry(part, session_id, message_id, done=completed or i < len(items) - 1)
            if entry is not None:
                entries.append(entry)
        error = info.get("error")
        if isinstance(error, Mapping):
            entries.append(Entry("error", session_id, message_id, f"{message_id}:error", _error_text(error)))
    return tuple(entries)


def latest_activity(entries: tuple[Entry, ...]) -> str:
    """What the agent does or said last, in one line ("" for an empty transcript)."""
    for entry in reversed(entries):
        shown = entry.activity()
        if shown:
            return shown
    return ""


async def fetch_transcript(
    client: JsonReader, session_id: str, directory: str, *, last: int | None = None
) -> tuple[Entry, ...]:
    """Read the session's messages (only the ``last`` few, if given) and parse them."""
    params = {"limit": last} if last is not None else None
    raw = await client.get_json(f"/session/{session_id}/message", directory, params)
    return parse_transcript(raw)
