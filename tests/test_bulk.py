"""Many tasks at once (occoord.spool.bulk): a run's first records, and a batch that fails queued tasks.

The batch must leave each task, after a SIGKILL at any moment and a reconcile, with exactly one
state file whose record agrees with its name (queued, or failed as asked), and the journal's last
word on each task equal to its file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occoord import fsutil
from occoord.errors import Locked
from occoord.spool.accept import accept_file
from occoord.spool.bulk import encode_record, event_lines, fail_queued_batch
from occoord.spool.journal import Event, last_states, read_events
from occoord.spool.layout import Spool
from occoord.spool.names import parse_state
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState

REPO = Path(__file__).resolve().parent.parent

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    task=text.filter(bool),
    state=st.sampled_from(list(TaskState)),
    attempt=st.integers(0, 10**6),
    since=text,
    reason=text,
    session_id=st.none() | text,
    not_before=st.none() | text,
)
def test_the_fast_record_encoding_is_byte_for_byte_to_bytes(
    task: str,
    state: TaskState,
    attempt: int,
    since: str,
    reason: str,
    session_id: str | None,
    not_before: str | None,
) -> None:
    record = TaskRecord(task, state, attempt, since, "coordinator", reason, session_id, not_before)
    assert encode_record(record) == record.to_bytes()
    detailed = TaskRecord(task, state, details={"failures": attempt, "note": reason})
    assert encode_record(detailed) == detailed.to_bytes()


def test_journal_lines_in_one_write_read_back_as_the_events() -> None:
    events = [
        Event("2026-01-01T00:00:00.000Z", "transition", f"t{i}", None, "queued", "coordinator", 0, "x")
        for i in range(3)
    ]
    events.append(Event("2026-01-01T00:00:00.000Z", "run", reason="accepted \u00e9"))
    lines = event_lines(events).decode().splitlines()
    assert [Event.from_json(json.loads(line)) for line in lines] == events


def _spool(root: Path, tasks: int, durable: bool = True) -> tuple[Spool, str]:
    spool = Spool(root / "spool", durable=durable).init()
    doc = {
        "version": 1,
        "name": "bulk",
        "defaults": {"directory": str(root)},
        "tasks": [{"id": f"t{i:04d}", "prompt": "p"} for i in range(tasks)],
    }
    path = spool.incoming / "bulk.json"
    path.write_text(json.dumps(doc))
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "accepted" and outcome.run_id
    return spool, outcome.run_id


def test_an_accepted_run_has_one_queued_record_and_one_journal_line_per_task(tmp_path: Path) -> None:
    spool, run_id = _spool(tmp_path, 50)
    run = spool.run(run_id)
    assert run.tasks.states() == {f"t{i:04d}": TaskState.QUEUED for i in range(50)}
    record = run.tasks.read("t0007")
    assert record is not None and record.reason == "accepted" and record.since
    assert (run.dir / "tasks" / "t0007.queued").read_bytes() == record.to_bytes()
    assert last_states(run.dir) == {f"t{i:04d}": "queued" for i in range(50)}
    assert not [n for n in os.listdir(run.dir / "tasks") if n.startswith(".")]


def test_without_syncfs_every_file_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsutil, "_syncfs_loaded", True)
    monkeypatch.setattr(fsutil, "_syncfs", None)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    spool, run_id = _spool(tmp_path, 20)
    assert len(synced) >= 20 + 2  # every task file, run.json and the journal (and directories)
    assert len(spool.run(run_id).tasks.states()) == 20


def test_the_batch_fails_the_queued_tasks_and_leaves_the_others(tmp_path: Path) -> None:
    spool, run_id = _spool(tmp_path, 30)
    run = spool.run(run_id)
    run.tasks.transition("t0001", TaskState.QUEUED, TaskState.PENDING)
    names = [f"t{i:04d}" for i in range(30)]
    records = fail_queued_batch(run.tasks, names, "cancelled")
    assert sorted(r.task for r in records) == [n for n in names if n != "t0001"]
    states = run.tasks.states()
    assert states.pop("t0001") is TaskState.PENDING
    assert set(states.values()) == {TaskState.FAILED}
    for name in states:
        record = run.tasks.read(name)
        assert record is not None and record.state is TaskState.FAILED and record.reason == "cancelled"
        assert (run.dir / "tasks" / f"{name}.failed").read_bytes() == record.to_bytes()
    assert run.tasks.reconcile() == []  # nothing to repair: files and journal agree
    assert not [n for n in os.listdir(run.dir / "tasks") if n.startswith(".")]


def test_a_record_longer_than_its_new_one_goes_by_temp_file(tmp_path: Path) -> None:
    spool, run_id = _spool(tmp_path, 3)
    run = spool.run(run_id)
    run.tasks.update("t0000", TaskState.QUEUED, reason="retry 3 in 30 s: " + "x" * 300)
    fail_queued_batch(run.tasks, ["t0000", "t0001", "t0002"], "cancelled")
    record = run.tasks.read("t0000")
    assert record is not None and record.state is TaskState.FAILED and record.reason == "cancelled"
    assert (run.dir / "tasks" / "t0000.failed").read_bytes() == record.to_bytes()


def test_a_run_being_accepted_in_a_worker_is_not_loaded_from_its_files(tmp_path: Path) -> None:
    spool, run_id = _spool(tmp_path, 2)
    spool.arriving.add(run_id)
    with pytest.raises(Locked):
        spool.run(run_id)
    assert spool.waiting_at_most(1.0).arriving is spool.arriving
    spool.arriving.discard(run_id)
    assert spool.run(run_id).id == run_id


_CHILD = """
import sys
from pathlib import Path
from occoord.spool.bulk import fail_queued_batch
from occoord.spool.layout import Spool
spool = Spool(Path(sys.argv[1]))
run = spool.run(sys.argv[2])
names = [t.id for t in run.manifest.tasks]
print("go", flush=True)
fail_queued_batch(run.tasks, names, "cancelled")
print("done", flush=True)
"""


def test_a_batch_killed_at_any_moment_reconciles_to_one_consistent_state_per_task(tmp_path: Path) -> None:
    rng = random.Random(15)
    outcomes: set[str] = set()
    interrupted = 0  # kills that left claims: a batch cut short in steps 1-3
    for trial in range(12):
        spool, run_id = _spool(tmp_path / f"trial{trial}", 400)
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(spool.root), run_id],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline() == "go\n"
        time.sleep(rng.uniform(0.0, 0.06))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        run = spool.run(run_id)
        before = os.listdir(run.dir / "tasks")
        interrupted += any(n.endswith(".claim") for n in before)
        run.tasks.reconcile()
        names = os.listdir(run.dir / "tasks")
        assert not [n for n in names if n.startswith(".")], "no claim or temp file is left"
        visible = [parse_state(n) for n in names]
        assert sorted(p.task for p in visible if p) == [f"t{i:04d}" for i in range(400)], "one file each"
        journal = last_states(run.dir)
        for parsed in visible:
            assert parsed is not None
            record = run.tasks.read(parsed.task)
            assert record is not None and record.state is parsed.state and record.task == parsed.task
            assert parsed.state in (TaskState.QUEUED, TaskState.FAILED)
            if parsed.state is TaskState.FAILED:
                assert record.reason == "cancelled"
            assert journal[parsed.task] == parsed.state.value
            outcomes.add(parsed.state.value)
        failed = sum(1 for e in read_events(run.dir) if e.target == "failed")
        assert failed == sum(1 for p in visible if p and p.state is TaskState.FAILED), "journalled once"
    assert outcomes == {"queued", "failed"}, "the kills fell both before and after the batch"
    assert interrupted, "some kill fell inside a batch (claims were left)"


def test_cancel_with_no_coordinator_fails_queued_and_pending_tasks_at_once(tmp_path: Path) -> None:
    from spoolkit import new_run
    from test_cli import occoord

    spool = Spool(tmp_path / "spool").init()
    run = new_run(spool, ["a", "b", "c", "d"])
    run.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING)
    run.tasks.transition("d", TaskState.QUEUED, TaskState.DONE)
    outcome = occoord("cancel", "--spool", spool.root, run.id)
    assert outcome.code == 0, outcome
    assert outcome.stdout.splitlines() == [f"{run.id}/{t}: failed (cancelled)" for t in "abc"]
    assert run.tasks.states() == {
        "a": TaskState.FAILED,
        "b": TaskState.FAILED,
        "c": TaskState.FAILED,
        "d": TaskState.DONE,
    }
    for name in "abc":
        record = run.tasks.read(name)
        assert record is not None and record.actor == "outside"
        assert record.reason == "cancelled (no coordinator was running)"
    assert run.tasks.reconcile() == [] and not (run.dir / "cancel").exists()
    assert occoord("cancel", "--spool", spool.root, run.id, "zz").code != 0
