"""Manifests v1: parse JSON or YAML and validate into frozen dataclasses.

Parsing collects every problem it can find (with the field path and a reason) before raising one
:class:`ManifestError`, so a user fixes a manifest in one pass. Past this module, manifests are
immutable and fully resolved: defaults applied, prompt files read, dependencies checked.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from occoord.errors import ManifestError, ManifestProblem
from occoord.fsutil import NotRegularFile, TooLarge, read_limited
from occoord.manifest_decode import decode_manifest

__all__ = [
    "MAX_MANIFEST_BYTES",
    "Hooks",
    "Manifest",
    "ModelRef",
    "TaskSpec",
    "load_manifest",
    "parse_manifest",
]

MAX_MANIFEST_BYTES = 1 << 20
MAX_PROMPT_BYTES = 1 << 20
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class ModelRef:
    provider: str
    model: str

    def __str__(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True)
class Hooks:
    """Commands (argv lists, never shell strings) run when a task or the run ends."""

    on_task_end: tuple[str, ...] = ()
    on_run_end: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    id: str
    prompt: str
    role: str = ""
    description: str = ""
    agent: str | None = None
    model: ModelRef | None = None
    directory: str | None = None
    depends_on: tuple[str, ...] = ()
    timeout: float | None = None
    retries: int = 2


@dataclass(frozen=True)
class Manifest:
    name: str
    tasks: tuple[TaskSpec, ...]
    version: int = 1
    concurrency: int = 4
    hooks: Hooks = field(default_factory=Hooks)

    def task(self, task_id: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.id == task_id:
                return spec
        raise KeyError(task_id)

    def to_json(self) -> dict[str, Any]:
        """The resolved manifest (what ``run.json`` stores as the plan); itself a valid manifest."""
        hooks = {
            k: list(v)
            for k, v in (("on_task_end", self.hooks.on_task_end), ("on_run_end", self.hooks.on_run_end))
            if v
        }
        tasks = []
        for t in self.tasks:
            task: dict[str, Any] = {
                "id": t.id,
                "prompt": t.prompt,
                "role": t.role,
                "description": t.description,
                "depends_on": list(t.depends_on),
                "retries": t.retries,
            }
            optional = {
                "agent": t.agent,
                "model": str(t.model) if t.model else None,
                "directory": t.directory,
                "timeout": t.timeout,
            }
            task.update({k: v for k, v in optional.items() if v is not None})
            tasks.append(task)
        out: dict[str, Any] = {
            "version": self.version,
            "name": self.name,
            "concurrency": self.concurrency,
            "tasks": tasks,
        }
        if hooks:
            out["hooks"] = hooks
        return out


TOP_KEYS = ("version", "name", "concurrency", "defaults", "hooks", "tasks")
DEFAULT_KEYS = ("agent", "model", "directory", "timeout", "retries")
TASK_KEYS = (
    "id",
    "prompt",
    "prompt_file",
    "role",
    "description",
    "agent",
    "model",
    "directory",
    "depends_on",
    "timeout",
    "retries",
)
HOOK_KEYS = ("on_task_end", "on_run_end")


def parse_duration(value: object) -> float | None:
    """Seconds from a number or a string like ``90``, ``90s``, ``15m``, ``2h``; None if invalid.

    A duration is positive and finite: ``.inf``, ``NaN`` and numbers too large for a float are not.
    """
    seconds: float | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an integer with hundreds of digits
            return None
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


class _Checker:
    """Collects problems while walking the decoded document."""

    def __init__(self, check_dirs: bool) -> None:
        self.problems: list[ManifestProblem] = []
        self.check_dirs = check_dirs

    def add(self, where: str, reason: str) -> None:
        self.problems.append(ManifestProblem(where, reason))

    def keys(self, where: str, obj: Mapping[Any, Any], allowed: Sequence[str]) -> None:
        for key in obj:
            if not isinstance(key, str):
                self.add(where, f"keys must be strings, got {show(key)}")
            elif key not in allowed:
                hint = did_you_mean(key, allowed)
                more = f"; did you mean '{hint}'?" if hint else f"; allowed: {', '.join(allowed)}"
                self.add(_join(where, key), f"unknown key{more}")

    def string(self, where: str, value: object, *, empty_ok: bool = True) -> str | None:
        if not isinstance(value, str):
            self.add(where, f"must be a string, got {_kind(value)}")
            return None
        if not empty_ok and not value.strip():
            self.add(where, "must not be empty")
            return None
        return value

    def integer(self, where: str, value: object, minimum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(where, f"must be an integer, got {_kind(value)}")
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
        path = Path(text).expanduser()
        if not path.is_absolute():
            self.add(where, f"must be an absolute path, got {text!r}")
            return None
        if self.check_dirs and not path.is_dir():
            problem = "exists but is not a directory" if path.exists() else "does not exist"
            self.add(where, f"directory {text!r} {problem}")
            return None
        return str(path)

    def timeout(self, where: str, value: object) -> float | None:
        seconds = parse_duration(value)
        if seconds is None:
            self.add(where, f"must be a positive duration like 600, '90s', '15m' or '2h', got {show(value)}")
        return seconds

    def command(self, where: str, value: object) -> tuple[str, ...]:
        if isinstance(value, str) and value.strip():
            try:
                return tuple(shlex.split(value))
            except ValueError as exc:
                self.add(where, f"cannot split command: {exc}")
                return ()
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return tuple(value)
        self.add(where, "must be a command: a non-empty string or list of strings")
        return ()


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: object) -> str:
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
        except (TypeError, ValueError, RecursionError):  # non-string keys, 5000-digit integers, depth
            return _kind(value)
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


def parse_manifest(
    data: bytes,
    *,
    source: str = "<manifest>",
    fmt: str = "json",
    check_dirs: bool = True,
) -> Manifest:
    """Decode and validate a manifest. ``fmt`` is ``json`` or ``yaml``; ``source`` names it in errors."""
    from occoord.manifest_tasks import build_manifest

    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(source, [ManifestProblem("", f"file is {len(data)} bytes, over the 1 MiB limit")])
    doc = decode_manifest(source, data, fmt)
    checker = _Checker(check_dirs)
    manifest = build_manifest(doc, checker, Path(source).stem)
    if checker.problems or manifest is None:
        raise ManifestError(source, checker.problems or [ManifestProblem("", "invalid manifest")])
    return manifest


def manifest_from_plan(doc: object, *, source: str) -> Manifest:
    """Rebuild a run's stored plan (``run.json``), already decoded. It was validated when its
    manifest was accepted, so the size limit does not apply (defaults applied to thousands of tasks
    can make a plan larger than the manifest it came from); it is still fully checked."""
    from occoord.manifest_tasks import build_manifest

    checker = _Checker(False)
    manifest = build_manifest(doc, checker, Path(source).stem)
    if checker.problems or manifest is None:
        raise ManifestError(source, checker.problems or [ManifestProblem("", "invalid manifest")])
    return manifest


def format_for(path: Path) -> str | None:
    """``json`` or ``yaml`` by file extension, None if the extension is not a manifest's."""
    suffix = path.suffix.lower()
    return {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)


def load_manifest(path: Path, *, check_dirs: bool = True) -> Manifest:
    """Read and validate a manifest file (regular file, at most 1 MiB, UTF-8, JSON or YAML)."""
    source = str(path)
    fmt = format_for(path)
    if fmt is None:
        raise ManifestError(source, [ManifestProblem("", "unsupported extension: use .json, .yaml or .yml")])
    try:
        data = read_limited(path, MAX_MANIFEST_BYTES)
    except TooLarge as exc:
        raise ManifestError(source, [ManifestProblem("", f"file too large: {exc}")]) from exc
    except NotRegularFile as exc:
        raise ManifestError(source, [ManifestProblem("", f"not a manifest file: {exc}")]) from exc
    except OSError as exc:
        raise ManifestError(source, [ManifestProblem("", f"cannot read: {exc.strerror}")]) from exc
    return parse_manifest(data, source=source, fmt=fmt, check_dirs=check_dirs)
