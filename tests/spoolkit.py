"""Helpers shared by the spool tests: a polling ``wait_for`` and manifest/run builders."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from occoord.spool.accept import accept_file
from occoord.spool.layout import Run, Spool


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


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
