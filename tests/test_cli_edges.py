"""Command-line edges from issue 11 item 10: long chains, broken runs, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

from spoolkit import new_run
from test_cli import assert_one_line_error, occoord, pending_run

from occoord.cli.plan import dependency_levels
from occoord.manifest.load import parse_manifest
from occoord.spool.layout import Spool
from occoord.spool.states import TaskState


def test_dry_run_of_a_long_chain_listed_dependents_first_prints_its_levels(tmp_path: Path) -> None:
    n = 3000
    tasks = [
        {"id": f"t{i}", "prompt": "x", "depends_on": [f"t{i + 1}"] if i + 1 < n else []} for i in range(n)
    ]
    plan = tmp_path / "chain.json"
    plan.write_text(json.dumps({"version": 1, "name": "chain", "tasks": tasks}))
    levels = dependency_levels(parse_manifest(plan.read_bytes(), source=str(plan), check_dirs=False))
    assert len(levels) == n and levels[0] == [f"t{n - 1}"] and levels[-1] == ["t0"]
    out = occoord("run", "--dry-run", "--spool", tmp_path / "spool", plan)
    assert out.code == 0 and "Traceback" not in out.stderr
    assert f"level {n - 1}: t0" in out.stdout


def test_status_lists_every_run_even_when_one_plan_is_unreadable(spool: Spool) -> None:
    good = new_run(spool, ["a"])
    broken = new_run(spool, ["b"])
    (broken.dir / "run.json").write_text("{not json")
    out = occoord("status", "--spool", spool.root)
    assert out.code == 0, out
    assert good.id in out.stdout and "active" in out.stdout
    assert f"{broken.id}  unreadable:" in out.stdout
    listing = json.loads(occoord("status", "--json", "--spool", spool.root).stdout)
    assert [r["run"] for r in listing["runs"]] == [good.id]
    assert listing["unreadable"][0]["run"] == broken.id


def test_requeueing_a_pending_task_is_refused_saying_what_to_do(spool: Spool) -> None:
    run = pending_run(spool)
    out = occoord("signal", "--spool", spool.root, run.id, "build", "queued")
    assert_one_line_error(out, 2, "its session may still run", "signal it failed")
    assert "queued for a finished" in " ".join(occoord("signal", "--help").stdout.split())


def test_cancel_of_a_finished_run_says_there_is_nothing_to_cancel(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    run.signal("a", TaskState.DONE, "finished")
    out = occoord("cancel", "--spool", spool.root, run.id)
    assert_one_line_error(out, 1, "nothing to cancel", "the run is finished")
    assert not (run.dir / "cancel").exists()
    out = occoord("cancel", "--spool", spool.root, run.id, "a")
    assert_one_line_error(out, 1, "nothing to cancel", "task a is done")
