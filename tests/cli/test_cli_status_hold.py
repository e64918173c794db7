"""`occoord status` (runs by name or `latest`, rejections, incoming files and why they wait, usage,
hold, not_before), `occoord hold`/`resume`, and the usage totals in summary.json/summary.md."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from spoolkit import new_run

from occoord.cli.main import main
from occoord.opencode.usage import Usage
from occoord.spool.accept import accept_file
from occoord.spool.layout import Run, Spool
from occoord.spool.states import Actor, TaskState
from occoord.spool.summary import write_summary


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def occoord(*args: str | Path) -> Outcome:
    with CliRunner().isolation(env={"OCCOORD_SPOOL": None}) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return Outcome(code, out.getvalue().decode(), err.getvalue().decode())


def usage(cost: float, i: int, o: int) -> dict[str, Any]:
    return Usage(cost=cost, input=i, output=o, cache_read=1, messages=1, sessions=1).to_json()


def with_usage(run: Run, task: str, state: TaskState, doc: dict[str, Any]) -> None:
    record = run.tasks.read(task)
    assert record is not None
    run.tasks.update(task, state, details={**record.details, "usage": doc})


def test_hold_and_resume(spool: Spool) -> None:
    held = occoord("hold", "--spool", spool.root, "-m", "deploy window")
    assert held.code == 0 and "no new dispatches" in held.stdout
    path = spool.root / "hold"
    assert path.read_text() == "deploy window\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [n for n in os.listdir(spool.root) if n.endswith(".tmp")]  # written by rename
    shown = occoord("status", "--spool", spool.root)
    assert "hold: no new dispatches" in shown.stdout and "deploy window" in shown.stdout
    listing = json.loads(occoord("status", "--spool", spool.root, "--json").stdout)
    assert listing["hold"]["note"] == "deploy window"
    assert occoord("resume", "--spool", spool.root) == Outcome(0, "resumed: dispatching again\n", "")
    assert not path.exists()
    assert occoord("resume", "--spool", spool.root) == Outcome(0, "", "not on hold\n")
    assert "hold" not in occoord("status", "--spool", spool.root).stdout


def test_a_plain_touch_is_a_hold_too(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    (spool.root / "hold").touch()
    detail = occoord("status", "--spool", spool.root, run.id).stdout
    assert detail.splitlines()[-1].startswith("hold: no new dispatches")


def test_runs_by_id_name_stem_and_latest(spool: Spool) -> None:
    first = new_run(spool, ["a"], name="alpha")
    time.sleep(1.1)  # run ids carry the second of acceptance
    second = new_run(spool, ["b"], name="beta")
    for ref, expected in (("latest", second), ("alpha", first), ("beta", second), (first.id, first)):
        out = occoord("status", "--spool", spool.root, ref)
        assert out.code == 0 and out.stdout.startswith(f"{expected.id} ("), (ref, out)
    missing = occoord("status", "--spool", spool.root, "gamma")
    assert missing.code == 2 and f"latest: {second.id}" in missing.stderr


def test_a_run_is_found_by_its_manifest_name(spool: Spool) -> None:
    path = spool.incoming / "file-stem.json"
    doc = {"version": 1, "name": "the-name", "tasks": [{"id": "a", "prompt": "x"}]}
    path.write_text(json.dumps(doc))
    outcome = accept_file(spool, path, settled=True)
    out = occoord("status", "--spool", spool.root, "the-name")
    assert out.code == 0 and out.stdout.startswith(f"{outcome.run_id} (")


def test_rejections_with_their_first_reason(spool: Spool) -> None:
    (spool.incoming / "broken.json").write_text('{"version": 1, "tasks": "nope"}')
    (spool.incoming / "worse.yaml").write_text("version: 1\ntasks: []\nbogus: 1\n")
    for path in spool.incoming_files():
        accept_file(spool, path, settled=True)
    out = occoord("status", "--spool", spool.root).stdout
    lines = [line for line in out.splitlines() if line.startswith("rejected: ")]
    assert len(lines) == 2
    assert any("broken.json" in line and "tasks" in line for line in lines)
    assert all(not line.endswith(": ") and "was rejected at" not in line for line in lines)
    listing = json.loads(occoord("status", "--spool", spool.root, "--json").stdout)
    assert listing["rejected_total"] == 2 and listing["rejected"][0]["reason"]


def test_incoming_files_say_why_they_wait(spool: Spool) -> None:
    (spool.incoming / "a.json").write_text("{}")
    (spool.incoming / "b.json").write_text("{}")
    out = occoord("status", "--spool", spool.root).stdout
    assert "incoming: a.json: no watcher is running" in out
    # A watcher that runs (this process stands in for it) and has a problem with one of them.
    problem = {"what": "cannot accept incoming/b.json yet: [Errno 28] No space left", "since": "t"}
    doc = {"protocol": 1, "pid": os.getpid(), "started_at": "t", "problems": [problem]}
    (spool.root / "watcher.json").write_text(json.dumps(doc))
    out = occoord("status", "--spool", spool.root).stdout
    assert "incoming: b.json: cannot accept incoming/b.json yet: [Errno 28] No space left" in out
    assert "incoming: a.json: waiting to be complete (written " in out
    listing = json.loads(occoord("status", "--spool", spool.root, "--json").stdout)
    assert listing["incoming"] == ["a.json", "b.json"]
    assert listing["incoming_waits"][0]["why"].startswith("waiting to be complete")


def test_usage_and_not_before_per_task(spool: Spool) -> None:
    run = new_run(spool, ["a", "b", "c"])
    run.tasks.transition("a", TaskState.QUEUED, TaskState.DONE, actor=Actor.OUTSIDE, reason="ok")
    with_usage(run, "a", TaskState.DONE, usage(0.25, 1000, 200))
    run.tasks.update("b", TaskState.QUEUED, not_before="2099-01-01T00:00:00.000Z")
    detail = occoord("status", "--spool", spool.root, run.id).stdout.splitlines()
    assert detail[0] == f"{run.id} (active)  $0.2500, 1.2k tokens"
    assert "$0.2500, 1.2k tokens" in detail[1]
    assert "not before 2099-01-01T00:00:00.000Z" in detail[2]
    data = json.loads(occoord("status", "--spool", spool.root, "--json", run.id).stdout)
    assert data["usage"]["tokens"]["total"] == 1201
    rows = {r["task"]: r for r in data["task_states"]}
    assert rows["a"]["usage"] == usage(0.25, 1000, 200) and rows["c"]["usage"] is None


def test_summary_totals_equal_the_sum_of_the_tasks(spool: Spool) -> None:
    run = new_run(spool, ["a", "b", "c"])
    docs = {"a": usage(0.5, 100, 20), "b": usage(0.125, 7, 3)}
    for task in ("a", "b", "c"):
        run.tasks.transition(task, TaskState.QUEUED, TaskState.DONE, actor=Actor.OUTSIDE, reason="ok")
    for task, doc in docs.items():
        with_usage(run, task, TaskState.DONE, doc)
    write_summary(run, durable=False)
    summary = json.loads((run.dir / "summary.json").read_text())
    per_task = {t["task"]: t["usage"] for t in summary["tasks"]}
    assert per_task == {**docs, "c": None}
    a, b = Usage.from_json(docs["a"]), Usage.from_json(docs["b"])
    assert a is not None and b is not None
    total = a + b
    assert Usage.from_json(summary["usage"]) == total
    assert summary["usage"] == total.to_json()
    markdown = (run.dir / "summary.md").read_text()
    assert "Cost and tokens: $0.6250, 132 tokens" in markdown
    assert "| tokens | cost |" in markdown and "| 121 | 0.5000 |" in markdown


def test_a_summary_without_usage_keeps_its_shape(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    run.tasks.transition("a", TaskState.QUEUED, TaskState.DONE, actor=Actor.OUTSIDE, reason="ok")
    summary = write_summary(run, durable=False)
    assert summary["usage"] is None and summary["tasks"][0]["usage"] is None
    assert "tokens" not in (run.dir / "summary.md").read_text()
