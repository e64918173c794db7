"""Collecting a manifest's problems: value checks with the field path, and friendly messages."""

from __future__ import annotations

import difflib
import json
import os
import shlex
import stat
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from occoord.errors import ManifestProblem
from occoord.manifest.model import COMMIT_PATTERN, KEEP_WORKTREE, KeepWorktree, ModelRef, parse_duration

__all__ = ["Checker", "did_you_mean", "kind", "show", "shown_path", "unusable_text"]

#: paths longer than this are cut in messages (a 1 MiB name would be repeated whole otherwise)
_PATH_SHOWN = 240


class Checker:
    """Collects problems while walking the decoded document."""

    def __init__(self, check_dirs: bool) -> None:
        self.problems: list[ManifestProblem] = []
        self.check_dirs = check_dirs

    def add(self, where: str, reason: str) -> None:
        self.problems.append(ManifestProblem(where, reason))

    def add_once(self, where: str, reason: str) -> None:
        """``add``, unless that very problem is known: one found in ``defaults`` is reported once,
        not once for each task that inherits it."""
        if ManifestProblem(where, reason) not in self.problems:
            self.add(where, reason)

    def keys(self, where: str, obj: Mapping[Any, Any], allowed: Sequence[str]) -> None:
        for key in obj:
            if not isinstance(key, str):
                self.add(where, f"keys must be strings, got {show(key)}")
            elif key not in allowed:
                hint = did_you_mean(key, allowed)
                more = f"; did you mean '{hint}'?" if hint else f"; allowed: {', '.join(allowed)}"
                # a key with a line break or escape sequence would forge lines in the message
                self.add(join(where, key if key.isprintable() else repr(key)), f"unknown key{more}")

    def string(self, where: str, value: object, *, empty_ok: bool = True) -> str | None:
        if not isinstance(value, str):
            self.add(where, f"must be a string, got {kind(value)}")
            return None
        if (problem := unusable_text(value)) is not None:
            self.add(where, problem)
            return None
        if not empty_ok and not value.strip():
            self.add(where, "must not be empty")
            return None
        return value

    def integer(self, where: str, value: object, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(where, f"must be an integer, got {kind(value)}")
            return None
        if value < minimum:
            self.add(where, f"must be at least {minimum}, got {value}")
            return None
        return value

    def model(self, where: str, value: object) -> ModelRef | None:
        text = self.string(where, value)
        if text is None:
            return None
        provider, slash, model = text.partition("/")
        if not slash or not provider.strip() or not model.strip():
            self.add(where, f"must look like 'provider/model', got {text!r}")
            return None
        return ModelRef(provider.strip(), model.strip())

    def directory(self, where: str, value: object) -> str | None:
        text = self.string(where, value, empty_ok=False)
        if text is None:
            return None
        try:
            path = Path(text).expanduser()
        except RuntimeError:  # '~name' naming no user, or '~' and no home directory
            user = text[1:].partition("/")[0]
            why = f"there is no user {user!r}" if user else "this user has no home directory"
            self.add(where, f"cannot expand {show(text, _PATH_SHOWN)}: {why}")
            return None
        if not path.is_absolute():
            self.add(where, f"must be an absolute path, got {show(text, _PATH_SHOWN)}")
            return None
        problem = _directory_problem(path) if self.check_dirs else None
        if problem is not None:
            self.add(where, f"directory {show(text, _PATH_SHOWN)} {problem}")
            return None
        return str(path)

    def boolean(self, where: str, value: object) -> bool | None:
        if not isinstance(value, bool):
            self.add(where, f"must be true or false, got {kind(value)}")
            return None
        return value

    def keep_worktree(self, where: str, value: object) -> KeepWorktree | None:
        choice = next((c for c in KEEP_WORKTREE if c == value), None)
        if choice is None:
            self.add(where, f"must be one of {', '.join(KEEP_WORKTREE)}, got {show(value)}")
        return choice

    def revision(self, where: str, value: object) -> str | None:
        """A git rev (a branch, tag, commit id, ``HEAD~2``...); whether it names a commit is checked
        against the repository, with the directories."""
        text = self.string(where, value, empty_ok=False)
        if text is not None and text.startswith("-"):
            self.add(where, f"must be a branch, tag or commit, not an option: {show(text)}")
            return None
        return text

    def commit_id(self, where: str, value: object) -> str | None:
        text = self.string(where, value)
        if text is not None and not COMMIT_PATTERN.fullmatch(text):
            self.add(where, f"must be a full commit id (40 or 64 lowercase hex digits), got {show(text)}")
            return None
        return text

    def moment(self, where: str, value: object) -> str | None:
        """An ISO 8601 time with a UTC offset (``2026-12-24T18:00:00Z``), as UTC with a Z."""
        when: datetime | None = None
        if isinstance(value, datetime):  # YAML reads an unquoted timestamp as one
            when = value
        elif isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.strip())
            except ValueError:
                when = None
        if when is None or when.tzinfo is None or when.utcoffset() is None:
            self.add(
                where, f"must be a time with its UTC offset, like '2026-12-24T18:00:00Z', got {show(value)}"
            )
            return None
        try:
            utc = when.astimezone(UTC)
        except (OverflowError, ValueError):
            self.add(where, f"is out of range: {show(value)}")
            return None
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"

    def limits(self, where: str, value: object) -> tuple[tuple[str, int], ...]:
        """``{"provider/model pattern": N}``: a shell-style pattern (``*``, ``?``, ``[...]``) over
        ``provider/model``, and how many sessions of it may be busy at once (at least 1)."""
        if not isinstance(value, dict):
            self.add(where, f"must be an object of 'provider/model pattern': count, got {kind(value)}")
            return ()
        out: list[tuple[str, int]] = []
        for pattern, count in value.items():
            at = join(where, str(pattern))
            text = self.string(at, pattern, empty_ok=False)
            number = self.integer(at, count, 1)
            if text is not None and number is not None:
                out.append((text.strip(), number))
        return tuple(out)

    def timeout(self, where: str, value: object) -> float | None:
        seconds = parse_duration(value)
        if seconds is None:
            self.add(where, f"must be a positive duration like 600, '90s', '15m' or '2h', got {show(value)}")
        return seconds

    def command(self, where: str, value: object) -> tuple[str, ...]:
        if isinstance(value, str) and value.strip():
            if (problem := unusable_text(value)) is not None:
                self.add(where, problem)
                return ()
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                self.add(where, f"cannot split command: {exc}")
                return ()
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            # an argv cannot carry these: the hook would fail when it runs, not here
            problems = [(f"{where}[{i}]", unusable_text(v)) for i, v in enumerate(value)]
            for path, problem in problems:
                if problem is not None:
                    self.add(path, problem)
            return () if any(problem for _, problem in problems) else tuple(value)
        self.add(where, "must be a command: a non-empty string or list of strings")
        return ()


def unusable_text(text: str) -> str | None:
    """Why ``text`` cannot be used as a manifest's string, or None.

    A NUL fits no path, argv or prompt (and the file itself may not hold one raw); a lone surrogate
    (only a JSON or YAML escape like \\ud800 makes one) is not Unicode: it cannot be encoded as
    UTF-8 for a request, a file name or a file, so it would fail only when the task is dispatched.
    """
    if "\x00" in text:
        return "must not hold a NUL character (\\u0000)"
    bad = next((ch for ch in text if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        return f"holds a lone surrogate {bad!r}, which is not Unicode text (it cannot be encoded as UTF-8)"
    return None


def _directory_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a task's directory (it ends 'directory X ...'), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist: a part of it is a file, not a directory"
    except OSError as exc:  # a name too long, a parent that is not searchable, a symlink loop
        return f"cannot be checked: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return "exists but is not a directory"
    if not os.access(path, os.R_OK | os.X_OK):
        return "is not readable and searchable by this user"
    return None


def shown_path(path: Path | str) -> str:
    """A path for a message: as is if it is short and printable, else quoted, escaped and cut."""
    text = str(path)
    return text if text.isprintable() and len(text) <= _PATH_SHOWN else show(text, _PATH_SHOWN)


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def kind(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def show(value: object, limit: int = 80) -> str:
    """A user's value for a message: a string quoted, anything else as JSON (null, true, {"a": 1}),
    cut to about ``limit`` characters."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
            if not text.isprintable():  # C1 controls, surrogates, U+2028: JSON leaves them raw
                text = json.dumps(value, default=str)
        except (TypeError, ValueError, RecursionError):  # non-string keys, 5000-digit integers, depth
            return kind(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def did_you_mean(key: str, allowed: Sequence[str]) -> str | None:
    """The allowed key that ``key`` most likely misspells, or None.

    Keys that share a start with it (``retry``: ``retries``) or hold it come first, the longest
    shared start winning, then the closest spelling; without such a key, difflib's closest match.
    """
    typed = key.lower()

    def shared(name: str) -> int:
        pairs = enumerate(zip(typed, name, strict=False))
        return next((i for i, (a, b) in pairs if a != b), min(len(typed), len(name)))

    def related(name: str) -> bool:
        n = shared(name)
        if n >= 3 or (n >= 2 and n == min(len(typed), len(name))):
            return True
        return min(len(typed), len(name)) >= 4 and (name in typed or typed in name)

    def closeness(name: str) -> float:
        return difflib.SequenceMatcher(None, typed, name).ratio()

    candidates = [name for name in allowed if related(name)]
    if candidates:
        return max(candidates, key=lambda name: (shared(name), closeness(name)))
    hint = difflib.get_close_matches(typed, allowed, n=1)
    return hint[0] if hint else None
