"""Hooks: facts in the environment only, and a hook that overruns is killed with all it started."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from occoord.engine.hooks import run_facts, run_hook, task_facts
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState


def test_a_hook_that_times_out_is_killed_with_its_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    argv = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    began = time.monotonic()
    assert asyncio.run(run_hook(argv, {}, timeout=0.5)) is None
    assert time.monotonic() - began < 10
    grandchild = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, 9)
        raise AssertionError("the hook's own child outlived it")


def test_a_hook_gets_the_facts_as_variables_and_its_exit_code_is_returned(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    code = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w')); sys.exit(3)"
    record = TaskRecord("t", TaskState.FAILED, attempt=2, reason="it's `id`; $(reboot)", session_id="ses_1")
    facts = task_facts(tmp_path, tmp_path / "runs" / "r", record)
    assert asyncio.run(run_hook([sys.executable, "-c", code, str(out)], facts)) == 3
    env = json.loads(out.read_text())
    assert env["OCCOORD_REASON"] == "it's `id`; $(reboot)" and env["OCCOORD_ATTEMPT"] == "2"
    assert run_facts(tmp_path, tmp_path / "runs" / "r", ok=False)["state"] == "failed"


def test_a_hook_that_cannot_start_returns_none() -> None:
    assert asyncio.run(run_hook(["/nonexistent/hook"], {})) is None
    assert asyncio.run(run_hook([], {})) is None
