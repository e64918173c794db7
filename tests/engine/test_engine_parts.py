"""The engine's small parts on their own: the attempt table, a run's readiness, the prompt, intake."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fakes import FakeClock

from occoord.engine.attempts import Attempt, AttemptTable, Timeouts
from occoord.engine.intake import Intake, IntakeSettings
from occoord.engine.prompting import build_prompt, session_title, signal_command
from occoord.engine.runs import ActiveRun
from occoord.engine.watcher import Hint
from occoord.manifest.model import TaskSpec
from occoord.spool.accept import accept_file
from occoord.spool.layout import Spool
from occoord.spool.states import TaskState


def attempt(run: str, task: str, *, at: float = 0.0, limit: float = 100.0) -> Attempt:
    return Attempt(run, task, 1, "/w", f"occoord {run}/{task}#1", at, at, limit)


def test_the_table_indexes_attempts_by_task_session_and_run_and_knows_their_deadlines() -> None:
    table = AttemptTable(Timeouts(start=10.0, idle=50.0))
    a, b = attempt("r1", "a"), attempt("r1", "b", limit=5.0)
    table.add(a)
    table.add(b)
    table.bind(a, "ses_a")
    assert len(table) == 2 and table.running_in("r1") == 2 and table.by_session("ses_a") is a
    assert table.next_deadline() == 5.0
    assert [(x.attempt.task, x.retryable) for x in table.expired(6.0)] == [("b", False)]
    a.began = True
    b.settling = True
    assert table.next_deadline() == 50.0 and table.expired(11.0) == []
    table.drop(a)
    assert table.by_session("ses_a") is None and table.running_in("r1") == 1 and not table.current(a)
    replacement = attempt("r1", "b")
    table.add(replacement)
    assert table.running_in("r1") == 1 and table.get("r1", "b") is replacement


def test_readiness_follows_dependencies_and_states(spool: Spool) -> None:
    path = spool.incoming / "deps.json"
    tasks = [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "x", "depends_on": ["a"]}]
    tasks.append({"id": "c", "prompt": "x", "depends_on": ["a", "b"]})
    path.write_text(json.dumps({"version": 1, "tasks": tasks}))
    outcome = accept_file(spool, path, settled=True)
    assert outcome.run_id is not None
    active = ActiveRun(spool.run(outcome.run_id))
    assert list(active.ready) == ["a"] and active.unfinished == 3
    active.set_state("a", TaskState.DONE)
    assert list(active.ready) == ["b"]
    active.set_state("b", TaskState.FAILED)
    assert active.blocked_by_failure() == [("c", "b")]
    active.set_state("c", TaskState.FAILED)
    assert active.finished()


def test_the_prompt_says_how_to_signal_and_the_title_is_the_idempotency_key(tmp_path: Path) -> None:
    spec = TaskSpec(id="t", prompt="Fix the bug.", role="reviewer", description="fix it")
    text = build_prompt(spec, spool_root=tmp_path, run_id="R", tasks_dir=tmp_path / "runs/R/tasks")
    assert "Fix the bug." in text and "reviewer" in text
    assert signal_command(tmp_path, "R", "t", "done") in text
    assert "mv " in text and str(tmp_path / "runs/R/tasks/t.pending") in text
    assert session_title("R", "t", 3) == "occoord R/t#3"


def test_intake_waits_for_a_quiet_file_longer_while_it_is_being_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").init()
    clock = FakeClock()
    accepted: list[str] = []
    intake = Intake(spool, clock, IntakeSettings(2.0, 60.0), accepted=lambda run, plan: accepted.append(run))
    path = spool.incoming / "plan.json"
    path.write_text('{"version": 1, "tasks": [{"id": "a", "prompt": "x"}]}')
    intake.hint(Hint("incoming", path=path, writing=True))
    assert intake.next_deadline() == clock.now + 60.0, "a `cp` still open is waited for"
    intake.hint(Hint("incoming", path=path, settled=True))
    assert len(accepted) == 1 and intake.unsettled == {}
    other = spool.incoming / "other.json"
    other.write_text('{"version": 1, "tasks": [{"id": "a", "prompt": "x"}]}')
    old = time.time() - 5
    os.utime(other, (old, old))
    intake.hint(Hint("incoming", path=other))
    clock.advance(2.0)
    intake.tick(clock.now)
    assert len(accepted) == 2
