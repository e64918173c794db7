"""The file-name grammar of the spool: pure ``format_*``/``parse_*`` pairs.

``parse_*`` functions return ``None`` for names that are not ours, so foreign files (editor
backups, notes, a ``README``) are ignored rather than misread. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from occoord.manifest.model import is_valid_id
from occoord.spool.states import TaskState

__all__ = [
    "MANIFEST_SUFFIXES",
    "ClaimName",
    "StateName",
    "format_claim",
    "format_rejected",
    "format_run_id",
    "format_state",
    "is_ignored_incoming",
    "parse_claim",
    "parse_rejected",
    "parse_run_id",
    "parse_state",
    "printable",
    "rejected_part",
    "run_stamp",
    "sanitize_stem",
]

MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")
_IGNORED_SUFFIXES = (".tmp", "~", ".swp", ".part")
_RUN_ID = re.compile(r"(\d{8}T\d{6}Z)-([A-Za-z0-9][A-Za-z0-9._-]*?)(?:-(\d+))?")
_STATES = {s.value: s for s in TaskState}


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


#: a rejected name's part taken from the manifest's name, in bytes: STAMP-N-PART.error must fit in
#: 255 bytes with room for atomic_write's temp name (``.`` + name + ``.xxxxxxxx.tmp``)
MAX_REJECTED_PART = 200
_REJECTED = re.compile(r"(\d{8}T\d{6}Z)-(.+)", re.DOTALL)


def rejected_part(name: str) -> str:
    """The part of a rejected name that comes from the manifest's name ``name``.

    ``name`` itself when it fits; otherwise its start, a ``-`` and 12 hex digits of its SHA-256,
    and its extension (if short), so that ``rejected/STAMP-N-PART.error`` fits in 255 bytes.
    """
    raw = os.fsencode(name)
    if len(raw) <= MAX_REJECTED_PART:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    stem, dot, ext = name.rpartition(".")
    keep_ext = bool(dot and stem and len(os.fsencode(ext)) <= 16)
    suffix = f"-{digest}.{ext}" if keep_ext else f"-{digest}"
    head_raw = os.fsencode(stem if keep_ext else name)[: MAX_REJECTED_PART - len(os.fsencode(suffix))]
    head = os.fsdecode(head_raw)  # a character cut in two stays as its bytes (surrogate escapes)
    return head + suffix


def format_rejected(when: datetime, name: str, n: int = 1) -> str:
    """``STAMP-PART`` (``STAMP-N-PART`` for the n-th rejection of that name that second)."""
    part = rejected_part(name)
    return f"{run_stamp(when)}-{part}" if n == 1 else f"{run_stamp(when)}-{n}-{part}"


def parse_rejected(name: str) -> set[str]:
    """The parts (see :func:`rejected_part`) a rejected entry's name may carry: with ``-N-`` taken
    as a counter, and as part of the manifest's name (``STAMP-2-x.json`` may come from ``2-x.json``)."""
    m = _REJECTED.fullmatch(name)
    if m is None:
        return set()
    rest = m.group(2)
    parts = {rest}
    counter, dash, tail = rest.partition("-")
    if dash and tail and counter.isdigit():
        parts.add(tail)
    return parts


def format_run_id(when: datetime, stem: str, n: int = 1) -> str:
    """``<UTC yyyymmddThhmmssZ>-<stem>``, with ``-<n>`` for the n-th run of that name that second."""
    base = f"{run_stamp(when)}-{sanitize_stem(stem)}"
    return base if n == 1 else f"{base}-{n}"


def parse_run_id(name: str) -> tuple[str, str] | None:
    """Return (stamp, stem) for a run id, None for other names (hidden staging dirs included)."""
    m = _RUN_ID.fullmatch(name)
    return (m.group(1), m.group(2)) if m else None


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` safe to put in a log line or a reason: control and format characters, line
    separators and undecodable bytes (surrogate escapes) become ``\\n``, ``\\x1b``, ``\\u2028``...
    so a file name cannot forge lines or colours."""
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as os.fsdecode gives it
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def is_ignored_incoming(name: str) -> bool:
    """Names a writer uses while it is still writing: never accepted nor rejected."""
    return name.startswith(".") or name.endswith(_IGNORED_SUFFIXES)
