"""Building a :class:`Manifest` from a decoded document: defaults, tasks, prompt files, the graph.

Split from ``manifest`` to keep each module about one thing: that one decodes and checks values,
this one knows the manifest's structure.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from occoord.fsutil import NotRegularFile, TooLarge, read_limited
from occoord.names import is_valid_id

if TYPE_CHECKING:
    from occoord.manifest import Manifest, ModelRef, TaskSpec, _Checker

__all__ = ["build_manifest", "find_cycle"]


def build_manifest(doc: Any, checker: _Checker, stem: str) -> Manifest | None:
    from occoord.manifest import (
        DEFAULT_KEYS,
        HOOK_KEYS,
        TASK_KEYS,
        TOP_KEYS,
        Hooks,
        Manifest,
    )

    if not isinstance(doc, dict):
        checker.add("", f"the manifest must be an object (mapping), got {_kind(doc)}")
        return None
    checker.keys("", doc, TOP_KEYS)
    version = doc.get("version", 1)
    if version != 1 or isinstance(version, bool):
        checker.add("version", f"unsupported manifest version {version!r}; this occoord reads version 1")
    name = stem
    if "name" in doc:
        name = checker.string("name", doc["name"], empty_ok=False) or stem
    concurrency = 4
    if "concurrency" in doc:
        concurrency = checker.integer("concurrency", doc["concurrency"], 1) or concurrency

    defaults: dict[str, Any] = {}
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        checker.add("defaults", f"must be an object, got {_kind(raw_defaults)}")
    else:
        checker.keys("defaults", raw_defaults, DEFAULT_KEYS)
        defaults = _common_fields(checker, "defaults", raw_defaults)

    hooks = Hooks()
    raw_hooks = doc.get("hooks", {})
    if not isinstance(raw_hooks, dict):
        checker.add("hooks", f"must be an object, got {_kind(raw_hooks)}")
    else:
        checker.keys("hooks", raw_hooks, HOOK_KEYS)
        hooks = Hooks(
            on_task_end=checker.command("hooks.on_task_end", raw_hooks["on_task_end"])
            if "on_task_end" in raw_hooks
            else (),
            on_run_end=checker.command("hooks.on_run_end", raw_hooks["on_run_end"])
            if "on_run_end" in raw_hooks
            else (),
        )

    raw_tasks = doc.get("tasks")
    if raw_tasks is None:
        checker.add("tasks", "missing: a manifest needs a list of tasks")
        return None
    if not isinstance(raw_tasks, list):
        checker.add("tasks", f"must be a list, got {_kind(raw_tasks)}")
        return None
    if not raw_tasks:
        checker.add("tasks", "must not be empty")
        return None

    tasks: list[TaskSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_tasks):
        where = f"tasks[{index}]"
        if not isinstance(raw, dict):
            checker.add(where, f"must be an object, got {_kind(raw)}")
            continue
        checker.keys(where, raw, TASK_KEYS)
        spec = _task(checker, where, raw, defaults)
        if spec is None:
            continue
        if spec.id in seen:
            checker.add(f"{where}.id", f"duplicate id {spec.id!r} (also tasks[{seen[spec.id]}])")
            continue
        seen[spec.id] = index
        tasks.append(spec)

    # Ids of every task written, valid or not: a task with another problem is not also "unknown".
    written = {raw.get("id") for raw in raw_tasks if isinstance(raw, dict)}
    for index, raw in enumerate(raw_tasks):
        if not isinstance(raw, dict) or not isinstance(raw.get("depends_on"), list):
            continue
        for dep in raw["depends_on"]:
            if isinstance(dep, str) and is_valid_id(dep) and dep not in written:
                checker.add(f"tasks[{index}].depends_on", f"unknown task {dep!r}")
    if not checker.problems:
        cycle = find_cycle({t.id: t.depends_on for t in tasks})
        if cycle:
            first = seen[cycle[0]]
            checker.add(f"tasks[{first}].depends_on", "dependency cycle: " + " -> ".join(cycle))
    if checker.problems:
        return None
    return Manifest(name=name, tasks=tuple(tasks), version=1, concurrency=concurrency, hooks=hooks)


def _common_fields(checker: _Checker, where: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Fields a task shares with ``defaults``."""
    out: dict[str, Any] = {}
    if "agent" in raw:
        out["agent"] = checker.string(f"{where}.agent", raw["agent"], empty_ok=False)
    if "model" in raw:
        out["model"] = checker.model(f"{where}.model", raw["model"])
    if "directory" in raw:
        out["directory"] = checker.directory(f"{where}.directory", raw["directory"])
    if "timeout" in raw:
        out["timeout"] = checker.timeout(f"{where}.timeout", raw["timeout"])
    if "retries" in raw:
        out["retries"] = checker.integer(f"{where}.retries", raw["retries"], 0)
    return out


def _task(checker: _Checker, where: str, raw: dict[str, Any], defaults: dict[str, Any]) -> TaskSpec | None:
    from occoord.manifest import TaskSpec

    before = len(checker.problems)
    task_id = raw.get("id")
    if task_id is None:
        checker.add(f"{where}.id", "missing")
    elif not isinstance(task_id, str):
        checker.add(f"{where}.id", f"must be a string, got {_kind(task_id)}")
    elif not is_valid_id(task_id):
        checker.add(
            f"{where}.id",
            f"invalid id {task_id!r}: use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    fields = {**defaults, **{k: v for k, v in _common_fields(checker, where, raw).items()}}
    role = checker.string(f"{where}.role", raw["role"]) if "role" in raw else ""
    description = checker.string(f"{where}.description", raw["description"]) if "description" in raw else ""
    depends: list[str] = []
    if "depends_on" in raw:
        value = raw["depends_on"]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            checker.add(f"{where}.depends_on", f"must be a list of task ids, got {_kind(value)}")
        else:
            for i, dep in enumerate(value):
                if not isinstance(dep, str) or not is_valid_id(dep):
                    checker.add(f"{where}.depends_on[{i}]", f"invalid task id {dep!r}")
                elif dep == task_id:
                    checker.add(f"{where}.depends_on", f"task {dep!r} depends on itself")
                elif dep not in depends:
                    depends.append(dep)
    prompt = _prompt(checker, where, raw, fields.get("directory"))
    if len(checker.problems) > before or not isinstance(task_id, str) or prompt is None:
        return None
    model: ModelRef | None = fields.get("model")
    return TaskSpec(
        id=task_id,
        prompt=prompt,
        role=role or "",
        description=description or "",
        agent=fields.get("agent"),
        model=model,
        directory=fields.get("directory"),
        depends_on=tuple(depends),
        timeout=fields.get("timeout"),
        retries=fields["retries"] if fields.get("retries") is not None else 2,
    )


def _prompt(checker: _Checker, where: str, raw: dict[str, Any], directory: str | None) -> str | None:
    from occoord.manifest import MAX_PROMPT_BYTES

    has_prompt, has_file = "prompt" in raw, "prompt_file" in raw
    if has_prompt and has_file:
        checker.add(where, "give either prompt or prompt_file, not both")
        return None
    if has_prompt:
        return checker.string(f"{where}.prompt", raw["prompt"], empty_ok=False)
    if not has_file:
        checker.add(where, "missing prompt (or prompt_file)")
        return None
    rel = checker.string(f"{where}.prompt_file", raw["prompt_file"], empty_ok=False)
    if rel is None:
        return None
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        checker.add(
            f"{where}.prompt_file",
            f"must be a relative path inside the task's directory, got {rel!r}",
        )
        return None
    if directory is None:
        checker.add(f"{where}.prompt_file", "needs a directory (in the task or in defaults) to be read from")
        return None
    path = Path(directory) / pure
    try:
        data = read_limited(path, MAX_PROMPT_BYTES)
    except (TooLarge, NotRegularFile) as exc:
        checker.add(f"{where}.prompt_file", f"{path}: {exc}")
        return None
    except OSError as exc:
        checker.add(f"{where}.prompt_file", f"cannot read {path}: {exc.strerror}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        checker.add(f"{where}.prompt_file", f"{path} is not UTF-8 text")
        return None
    if not text.strip():
        checker.add(f"{where}.prompt_file", f"{path} is empty")
        return None
    return text


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle as a path ``[a, b, ..., a]``, or None. Iterative DFS: no recursion limit."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in graph:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack = [iter(graph.get(root, ()))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph.get(nxt, ())))
    return None


def _kind(value: object) -> str:
    from occoord.manifest import _kind as kind

    return kind(value)
