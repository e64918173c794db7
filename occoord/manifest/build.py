"""Building a :class:`Manifest` from a decoded document: defaults, tasks, prompt files, the graph.

``checks`` checks values; this module knows the manifest's structure; ``load`` reads files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

from occoord.fsutil import NotRegularFile, TooLarge, read_limited
from occoord.manifest.checks import Checker, kind, show, shown_path
from occoord.manifest.model import (
    DEFAULT_KEYS,
    HOOK_KEYS,
    MAX_PROMPT_BYTES,
    TASK_KEYS,
    TOP_KEYS,
    Hooks,
    Manifest,
    ModelRef,
    TaskSpec,
    is_valid_id,
)
from occoord.manifest.repos import Repositories, check_worktree

__all__ = ["MAX_CYCLES", "build_manifest", "find_cycles"]

#: cycles reported at most (a pathological graph could have one per dependency, each long)
MAX_CYCLES = 50


def build_manifest(doc: Any, checker: Checker, stem: str) -> Manifest | None:

    if not isinstance(doc, dict):
        checker.add("", f"the manifest must be an object (mapping), got {kind(doc)}")
        return None
    checker.keys("", doc, TOP_KEYS)
    version = doc.get("version", 1)
    if version != 1 or isinstance(version, bool):
        checker.add("version", f"unsupported manifest version {show(version)}; this occoord reads version 1")
    name = _default_name(stem)
    if "name" in doc:
        name = checker.string("name", doc["name"], empty_ok=False) or name
    concurrency = 4
    if "concurrency" in doc:
        concurrency = checker.integer("concurrency", doc["concurrency"], 1) or concurrency

    defaults: dict[str, Any] = {}
    if "not_before" in doc:  # the run's start, as if every task said it (unless it says otherwise)
        defaults["not_before"] = checker.moment("not_before", doc["not_before"])
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        checker.add("defaults", f"must be an object, got {kind(raw_defaults)}")
    else:
        checker.keys("defaults", raw_defaults, DEFAULT_KEYS)
        defaults = {**defaults, **_common_fields(checker, "defaults", raw_defaults)}

    hooks = Hooks()
    raw_hooks = doc.get("hooks", {})
    if not isinstance(raw_hooks, dict):
        checker.add("hooks", f"must be an object, got {kind(raw_hooks)}")
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
    if "tasks" not in doc:
        checker.add("tasks", "missing: a manifest needs a list of tasks")
        return None
    if not isinstance(raw_tasks, list):
        checker.add("tasks", f"must be a list, got {kind(raw_tasks)}")
        return None
    if not raw_tasks:
        checker.add("tasks", "must not be empty")
        return None

    tasks: list[TaskSpec] = []
    seen: dict[str, int] = {}  # valid id -> index of the first task that has it
    graph: dict[str, tuple[str, ...]] = {}  # and its valid dependencies, whatever else is wrong
    deps_at: list[tuple[str, tuple[str, ...]]] = []  # (field, dependencies) of each task
    repos = Repositories()
    for index, raw in enumerate(raw_tasks):
        if index % 256 == 255:
            # A big manifest is parsed in the engine's worker thread: let the loop (and the
            # watcher's threads) have the GIL now and then, not only when the interpreter forces it
            # every 5 ms; each of their system calls would otherwise wait that long to go on.
            time.sleep(0)
        where = f"tasks[{index}]"
        if not isinstance(raw, dict):
            checker.add(where, f"must be an object, got {kind(raw)}")
            continue
        checker.keys(where, raw, TASK_KEYS)
        spec, task_id, depends = _task(checker, repos, where, raw, defaults)
        deps_at.append((f"{where}.depends_on", depends))
        if task_id is None:
            continue
        if task_id in seen:
            checker.add(f"{where}.id", f"duplicate id {task_id!r} (also tasks[{seen[task_id]}])")
            continue
        seen[task_id] = index
        graph[task_id] = depends
        if spec is not None:
            tasks.append(spec)

    # Ids of every task written, valid or not: a task with another problem is not also "unknown".
    written = {raw["id"] for raw in raw_tasks if isinstance(raw, dict) and isinstance(raw.get("id"), str)}
    for where, depends in deps_at:
        for dep in depends:
            if dep not in written:
                checker.add(where, f"unknown task {dep!r}")
    for cycle in find_cycles(graph):
        checker.add(f"tasks[{seen[cycle[0]]}].depends_on", "dependency cycle: " + " -> ".join(cycle))
    if checker.problems:
        return None
    limits = checker.limits("limits", doc["limits"]) if "limits" in doc else ()
    return Manifest(
        name=name, tasks=tuple(tasks), version=1, concurrency=concurrency, hooks=hooks, limits=limits
    )


def _default_name(stem: str) -> str:
    """The name of a manifest that has none: its file's stem, made a valid name, since the plan
    (``run.json``) stores it and must parse again; a file name may hold undecodable bytes
    (surrogate escapes) or be blank (`` .json``)."""
    text = "".join("\ufffd" if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch for ch in stem)
    return text if text.strip() else "manifest"


def _common_fields(checker: Checker, where: str, raw: dict[str, Any]) -> dict[str, Any]:
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
    if "worktree" in raw:
        out["worktree"] = checker.boolean(f"{where}.worktree", raw["worktree"])
    if "base" in raw:
        out["base"] = checker.revision(f"{where}.base", raw["base"])
    if "keep_worktree" in raw:
        out["keep_worktree"] = checker.keep_worktree(f"{where}.keep_worktree", raw["keep_worktree"])
    if "not_before" in raw:
        out["not_before"] = checker.moment(f"{where}.not_before", raw["not_before"])
    if "server" in raw:
        label = checker.string(f"{where}.server", raw["server"], empty_ok=False)
        out["server"] = label.strip() if label else None
    return out


def _task(
    checker: Checker, repos: Repositories, where: str, raw: dict[str, Any], defaults: dict[str, Any]
) -> tuple[TaskSpec | None, str | None, tuple[str, ...]]:
    """(the task or None if it has a problem, its id if valid, its valid dependencies)."""

    before = len(checker.problems)
    task_id = raw.get("id")
    if "id" not in raw:
        checker.add(f"{where}.id", "missing")
    elif not isinstance(task_id, str):
        checker.add(f"{where}.id", f"must be a string, got {kind(task_id)}")
    elif not is_valid_id(task_id):
        checker.add(
            f"{where}.id",
            f"invalid id {task_id!r}: use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    valid_id = task_id if isinstance(task_id, str) and is_valid_id(task_id) else None
    fields = {**defaults, **_common_fields(checker, where, raw)}
    role = checker.string(f"{where}.role", raw["role"]) if "role" in raw else ""
    description = checker.string(f"{where}.description", raw["description"]) if "description" in raw else ""
    depends = (
        _depends(checker, f"{where}.depends_on", raw["depends_on"], valid_id) if "depends_on" in raw else ()
    )
    pinned = checker.commit_id(f"{where}.base_commit", raw["base_commit"]) if "base_commit" in raw else None
    # a directory that was given but is wrong is reported as such, not also as a missing one
    prompt = _prompt(checker, where, raw, fields.get("directory"), given="directory" in fields)
    base_commit = check_worktree(checker, repos, where, raw, fields, pinned)
    if len(checker.problems) > before or valid_id is None or prompt is None:
        return None, valid_id, depends
    model: ModelRef | None = fields.get("model")
    spec = TaskSpec(
        id=valid_id,
        prompt=prompt,
        role=role or "",
        description=description or "",
        agent=fields.get("agent"),
        model=model,
        directory=fields.get("directory"),
        depends_on=depends,
        timeout=fields.get("timeout"),
        retries=fields["retries"] if fields.get("retries") is not None else 2,
        worktree=fields.get("worktree") is True,
        base=fields.get("base"),
        base_commit=base_commit,
        keep_worktree=fields.get("keep_worktree") or "on_failure",
        not_before=fields.get("not_before"),
        server=fields.get("server"),
    )
    return spec, valid_id, depends


def _depends(checker: Checker, where: str, value: object, task_id: str | None) -> tuple[str, ...]:
    """The valid task ids of ``depends_on``: a list of ids, or one id standing for a list of one."""

    if isinstance(value, str):
        items, paths = [value], [where]
    elif isinstance(value, list):
        items, paths = value, [f"{where}[{i}]" for i in range(len(value))]
    else:
        checker.add(where, f"must be a list of task ids, got {kind(value)}")
        return ()
    depends: list[str] = []
    for dep, path in zip(items, paths, strict=True):
        if not isinstance(dep, str) or not is_valid_id(dep):
            checker.add(path, f"invalid task id {show(dep)}")
        elif dep == task_id:
            checker.add(where, f"task {dep!r} depends on itself")
        elif dep not in depends:
            depends.append(dep)
    return tuple(depends)


def _prompt(
    checker: Checker, where: str, raw: dict[str, Any], directory: str | None, *, given: bool
) -> str | None:
    """The task's prompt, read from ``prompt_file`` if need be. ``given``: a directory was written
    (``directory`` is None then if it is invalid, a problem already reported)."""

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
        if not given:
            checker.add(
                f"{where}.prompt_file", "needs a directory (in the task or in defaults) to be read from"
            )
        return None
    path = Path(directory) / pure
    shown = shown_path(path)
    if len(pure.parts) > 1 and not _stays_inside(Path(directory), path.parent):
        # O_NOFOLLOW guards only the last part: a symlinked folder on the way must not lead a
        # prompt (sent to a model) out of the task's directory.
        checker.add(
            f"{where}.prompt_file", f"{shown}: a symbolic link on the way leads outside the task's directory"
        )
        return None
    try:
        data = read_limited(path, MAX_PROMPT_BYTES)
    except (TooLarge, NotRegularFile) as exc:
        checker.add(f"{where}.prompt_file", f"{shown}: {exc}")
        return None
    except OSError as exc:  # missing, a name too long, permission denied, a part that is a file
        checker.add(f"{where}.prompt_file", f"cannot read {shown}: {exc.strerror}")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        checker.add(f"{where}.prompt_file", f"{shown} is not UTF-8 text")
        return None
    if "\x00" in text:  # as for the manifest itself; and an inline prompt may not hold one either
        checker.add(f"{where}.prompt_file", f"{shown} is binary (it holds a NUL byte), not a prompt")
        return None
    if not text.strip():
        checker.add(f"{where}.prompt_file", f"{shown} is empty")
        return None
    return text


def _stays_inside(root: Path, folder: Path) -> bool:
    try:
        real_root, real = os.path.realpath(root), os.path.realpath(folder)
    except (OSError, ValueError):
        return True  # the read below fails too and reports the path's own problem
    return os.path.commonpath([real_root, real]) == real_root


def find_cycles(graph: dict[str, tuple[str, ...]], limit: int = MAX_CYCLES) -> list[list[str]]:
    """Dependency cycles as paths ``[a, b, ..., a]``: one for each edge that closes a cycle in a
    depth-first walk in the graph's order (every cycle of the graph uses one of those edges), at
    most ``limit``. Iterative: no recursion limit. Edges to tasks not in ``graph`` are ignored.
    """
    cycles: list[list[str]] = []
    finished: set[str] = set()
    for root in graph:
        if root in finished:
            continue
        path: list[str] = [root]
        on_path = {root: 0}  # task -> its position in path
        stack = [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                finished.add(path[-1])
                del on_path[path.pop()]
                stack.pop()
            elif nxt in on_path:
                cycles.append([*path[on_path[nxt] :], nxt])
                if len(cycles) >= limit:
                    return cycles
            elif nxt in graph and nxt not in finished:
                on_path[nxt] = len(path)
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return cycles
