"""Manifests v1: parse JSON or YAML and validate into frozen dataclasses.

Parsing collects every problem it can find (with the field path and a reason) before raising one
:class:`ManifestError`, so a user fixes a manifest in one pass. Past this module, manifests are
immutable and fully resolved: defaults applied, prompt files read, dependencies checked.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from occoord.errors import ManifestError, ManifestProblem
from occoord.fsutil import NotRegularFile, TooLarge, read_limited

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
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
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


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also refuses aliases (billion laughs) and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.YAMLError(f"YAML aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _decode(source: str, data: bytes, fmt: str) -> Any:
    if not data.strip():
        raise ManifestError(source, [ManifestProblem("", "empty file")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(source, [ManifestProblem("", f"not UTF-8 text (byte {exc.start})")]) from exc
    if "\x00" in text:
        raise ManifestError(source, [ManifestProblem("", "binary content (NUL byte)")])
    if fmt == "json":
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except ValueError as exc:
            raise ManifestError(source, [ManifestProblem("", f"invalid JSON: {exc}")]) from exc
    try:
        return yaml.load(text, Loader=_SafeLoader)
    except yaml.constructor.ConstructorError as exc:
        reason = "YAML tags that construct objects are not allowed"
        tag = getattr(exc, "problem", "") or ""
        raise ManifestError(source, [ManifestProblem("", f"{reason} ({tag})")]) from exc
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ManifestError(source, [ManifestProblem("", f"invalid YAML: {detail}")]) from exc


def parse_duration(value: object) -> float | None:
    """Seconds from a number or a string like ``90``, ``90s``, ``15m``, ``2h``; None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
            return seconds if seconds > 0 else None
    return None


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
                self.add(where, f"keys must be strings, got {key!r}")
            elif key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                more = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
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
            self.add(where, f"directory {text!r} does not exist")
            return None
        return str(path)

    def timeout(self, where: str, value: object) -> float | None:
        seconds = parse_duration(value)
        if seconds is None:
            self.add(where, f"must be a positive duration like 600, '90s', '15m' or '2h', got {value!r}")
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
    doc = _decode(source, data, fmt)
    checker = _Checker(check_dirs)
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
