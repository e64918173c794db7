"""``occoord run --dry-run``: what a run would do, computed from the manifest alone."""

from __future__ import annotations

from pathlib import Path

from occoord.engine.prompting import build_prompt
from occoord.manifest.model import Manifest

__all__ = ["dependency_levels", "format_plan"]


def dependency_levels(manifest: Manifest) -> list[list[str]]:
    """Tasks grouped by depth: level 0 has no dependencies, level n depends on level < n.

    The manifest is already known to be acyclic (the parser rejects cycles)."""
    level: dict[str, int] = {}
    specs = {t.id: t for t in manifest.tasks}
    for spec in manifest.tasks:
        # Depth first with an explicit stack: a chain of thousands listed dependents-first would
        # overflow Python's recursion limit.
        stack = [spec.id]
        while stack:
            task = stack[-1]
            if task in level:
                stack.pop()
                continue
            missing = [d for d in specs[task].depends_on if d not in level]
            if missing:
                stack.extend(missing)
                continue
            level[task] = 1 + max((level[d] for d in specs[task].depends_on), default=-1)
            stack.pop()
    out: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for spec in manifest.tasks:
        out[level[spec.id]].append(spec.id)
    return out


def format_plan(manifest: Manifest, *, spool_root: Path, max_sessions: int, workdir: Path) -> str:
    run_id = "<run-id>"
    lines = [
        f"run {manifest.name!r}: {len(manifest.tasks)} tasks, concurrency {manifest.concurrency}, "
        f"at most {min(manifest.concurrency, max_sessions)} sessions at once (--max-sessions {max_sessions})",
    ]
    for n, tasks in enumerate(dependency_levels(manifest)):
        lines.append(f"level {n}: {', '.join(tasks)}")
    for spec in manifest.tasks:
        model = str(spec.model) if spec.model else "(server default)"
        lines += [
            "",
            f"== task {spec.id}",
            f"directory: {spec.directory or workdir}",
            f"agent: {spec.agent or '(server default)'}   model: {model}",
            f"retries: {spec.retries}   timeout: {spec.timeout or 'coordinator default'}",
            f"depends on: {', '.join(spec.depends_on) or '-'}",
            "prompt:",
        ]
        prompt = build_prompt(
            spec, spool_root=spool_root, run_id=run_id, tasks_dir=spool_root / "runs" / run_id / "tasks"
        )
        lines += ["  " + line for line in prompt.splitlines()]
    return "\n".join(lines)
