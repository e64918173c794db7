"""Helpers shared by the spool tests: a polling ``wait_for`` and manifest/run builders."""

from __future__ import annotations

import json
from typing import Any

from support.processes import wait_for  # noqa: F401 (the tests import it from here too)

from occoord.spool.accept import accept_file
from occoord.spool.layout import Run, Spool


def make_manifest(task_ids: list[str], **extra: Any) -> bytes:
    tasks = [{"id": t, "prompt": f"do {t}"} for t in task_ids]
    return json.dumps({"version": 1, "tasks": tasks, **extra}).encode()


def new_run(spool: Spool, task_ids: list[str], name: str = "plan") -> Run:
    path = spool.incoming / f"{name}.json"
    path.write_bytes(make_manifest(task_ids))
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "accepted", outcome
    assert outcome.run_id is not None
    return spool.run(outcome.run_id)
