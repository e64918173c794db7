"""The file-name grammar of the spool: pure ``format_*``/``parse_*`` pairs.

``parse_*`` functions return ``None`` for names that are not ours, so foreign files (editor
backups, notes, a ``README``) are ignored rather than misread. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from occoord.state import TaskState

__all__ = [
    "ID_PATTERN",
    "MANIFEST_SUFFIXES",
    "ClaimName",
    "StateName",
    "format_claim",
    "format_run_id",
    "format_state",
    "is_ignored_incoming",
    "is_valid_id",
    "parse_claim",
    "parse_run_id",
    "parse_state",
    "run_stamp",
    "sanitize_stem",
]

#: task ids (and run-id stems): no separators, no leading dot, so no path tricks
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")
_IGNORED_SUFFIXES = (".tmp", "~", ".swp", ".part")
_RUN_ID = re.compile(r"(\d{8}T\d{6}Z)-([A-Za-z0-9][A-Za-z0-9._-]*?)(?:-(\d+))?")
_STATES = {s.value: s for s in TaskState}


def is_valid_id(text: str) -> bool:
    return ID_PATTERN.fullmatch(text) is not None


@dataclass(frozen=True)
class StateName:
    task: str
    state: TaskState


def format_state(task: str, state: TaskState) -> str:
    """``<task>.<state>``: the one visible file that says what state a task is in."""
    return f"{task}.{state.value}"


def parse_state(name: str) -> StateName | None:
    task, dot, suffix = name.rpartition(".")
    if not dot or suffix not in _STATES or not is_valid_id(task):
        return None
    return StateName(task, _STATES[suffix])


@dataclass(frozen=True)
class ClaimName:
    task: str
    target: TaskState


def format_claim(task: str, target: TaskState) -> str:
    """``.<task>.<target>.claim``: a state file taken by a transition that is not yet published."""
    return f".{task}.{target.value}.claim"


def parse_claim(name: str) -> ClaimName | None:
    if not (name.startswith(".") and name.endswith(".claim")):
        return None
    parsed = parse_state(name[1 : -len(".claim")])
    return ClaimName(parsed.task, parsed.state) if parsed else None


def run_stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def sanitize_stem(stem: str) -> str:
    """Make a manifest's file stem safe for a run id (non-ASCII and odd characters become ``_``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:64]
    return cleaned or "manifest"


def format_run_id(when: datetime, stem: str, n: int = 1) -> str:
    """``<UTC yyyymmddThhmmssZ>-<stem>``, with ``-<n>`` for the n-th run of that name that second."""
    base = f"{run_stamp(when)}-{sanitize_stem(stem)}"
    return base if n == 1 else f"{base}-{n}"


def parse_run_id(name: str) -> tuple[str, str] | None:
    """Return (stamp, stem) for a run id, None for other names (hidden staging dirs included)."""
    m = _RUN_ID.fullmatch(name)
    return (m.group(1), m.group(2)) if m else None


def is_ignored_incoming(name: str) -> bool:
    """Names a writer uses while it is still writing: never accepted nor rejected."""
    return name.startswith(".") or name.endswith(_IGNORED_SUFFIXES)
