"""Property test of the task state machine over a real spool, with outside writers and crashes.

A model holds each task's expected state; every rule acts on the real files (transition(),
``mv``, ``flock mv``, ``touch``, ``occoord signal``, a crash between a transition's steps, a
deleted or garbled file), reconciles, and the invariants compare the files with the model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from spoolkit import new_run

from occoord.errors import IllegalTransition
from occoord.spool.journal import last_states
from occoord.spool.layout import Spool
from occoord.spool.names import format_claim, parse_claim, parse_state
from occoord.spool.records import TaskRecord
from occoord.spool.states import TRANSITIONS, Actor, TaskState

TASKS = ["a", "b", "c"]
STATES = list(TaskState)
task_ids = st.sampled_from(TASKS)
states = st.sampled_from(STATES)


def outside_may(source: TaskState, to: TaskState) -> bool:
    return Actor.OUTSIDE in TRANSITIONS.get((source, to), frozenset())


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="occoord-sm-"))
        # durable=False: fsync proves nothing here and makes each step 10x slower.
        self.spool = Spool(self.root / "spool", durable=False).init()
        self.run = new_run(self.spool, TASKS)
        self.run.tasks.durable = False
        self.model = dict.fromkeys(TASKS, TaskState.QUEUED)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def path(self, task: str, state: TaskState) -> Path:
        return self.run.tasks.path(task, state)

    # -- the coordinator ---------------------------------------------------------------------

    @rule(task=task_ids, to=states)
    def coordinator_transition(self, task: str, to: TaskState) -> None:
        source = self.model[task]
        legal = (source, to) in TRANSITIONS
        if not legal:
            with pytest.raises(IllegalTransition):
                self.run.tasks.transition(task, source, to)
            return
        record = self.run.tasks.transition(task, source, to, reason="rule")
        assert record.state is to
        self.model[task] = to

    @rule(task=task_ids, session=st.text(alphabet="abc123", min_size=1, max_size=6))
    def coordinator_update(self, task: str, session: str) -> None:
        record = self.run.tasks.update(task, self.model[task], session_id=session)
        assert record.session_id == session
        assert self.run.tasks.read(task) == record

    # -- outside writers -----------------------------------------------------------------------

    @rule(task=task_ids, to=states, locked=st.booleans())
    def outside_mv(self, task: str, to: TaskState, locked: bool) -> None:
        source = self.model[task]
        if source is to:
            return
        src, dst = str(self.path(task, source)), str(self.path(task, to))
        if locked:
            lock = str(self.run.dir / ".lock")
            subprocess.run(["flock", lock, "mv", src, dst], check=True)
        else:
            os.rename(src, dst)
        self.run.tasks.reconcile([task])
        if outside_may(source, to):
            self.model[task] = to

    @rule(task=task_ids, to=states)
    def outside_touch(self, task: str, to: TaskState) -> None:
        source = self.model[task]
        self.path(task, to).touch()
        self.run.tasks.reconcile([task])
        if to.terminal and not source.terminal and outside_may(source, to):
            self.model[task] = to

    @rule(task=task_ids, to=st.sampled_from([TaskState.DONE, TaskState.FAILED, TaskState.QUEUED]))
    def outside_signal(self, task: str, to: TaskState) -> None:
        source = self.model[task]
        if source is to or outside_may(source, to):
            assert self.run.signal(task, to, "by the test").state is to
            self.model[task] = to
        else:
            with pytest.raises(IllegalTransition):
                self.run.signal(task, to)

    @rule(task=task_ids)
    def outside_delete(self, task: str) -> None:
        os.unlink(self.path(task, self.model[task]))
        self.run.tasks.reconcile([task])

    @rule(task=task_ids, junk=st.sampled_from([b"", b"{", b"null", b'{"task": 1}']))
    def outside_garble(self, task: str, junk: bytes) -> None:
        self.path(task, self.model[task]).write_bytes(junk)
        self.run.tasks.reconcile([task])

    # -- crashes ---------------------------------------------------------------------------------

    @rule(task=task_ids, to=states, step=st.sampled_from(["claimed", "written", "published"]))
    def crash_mid_transition(self, task: str, to: TaskState, step: str) -> None:
        """Do a legal transition's first steps by hand, as if the process died, then recover."""
        source = self.model[task]
        if (source, to) not in TRANSITIONS:
            return
        tasks = self.run.tasks
        claim = tasks.dir / format_claim(task, to)
        os.rename(tasks.path(task, source), claim)
        if step in ("written", "published"):
            old = TaskRecord.from_bytes(claim.read_bytes())
            assert old is not None
            claim.write_bytes(TaskRecord(task, to, attempt=old.attempt).to_bytes())
        if step == "published":
            os.rename(claim, tasks.path(task, to))  # died before the journal line
        tasks.reconcile()  # recovery is a full reconcile, as at start-up
        # Died before the new record was written: nothing was done, so the claim is undone;
        # once written, the transition is completed.
        self.model[task] = source if step == "claimed" else to

    @rule(task=task_ids, to=states)
    def crash_before_journal(self, task: str, to: TaskState) -> None:
        source = self.model[task]
        if (source, to) not in TRANSITIONS:
            return
        with mock.patch.object(type(self.run.tasks), "_journal", lambda self, event: None):
            self.run.tasks.transition(task, source, to)
        self.run.tasks.reconcile()
        self.model[task] = to

    @rule()
    def torn_journal_line(self) -> None:
        with open(self.run.dir / "events.jsonl", "ab") as fh:
            fh.write(b'{"v":1,"kind":"transi')
        self.run.tasks.reconcile()

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def one_state_file_per_task_matching_the_model(self) -> None:
        names = os.listdir(self.run.tasks.dir)
        seen: dict[str, list[TaskState]] = {}
        for name in names:
            assert parse_claim(name) is None, f"claim left behind: {name}"
            assert not name.endswith(".tmp"), f"temp file left behind: {name}"
            parsed = parse_state(name)
            if parsed:
                seen.setdefault(parsed.task, []).append(parsed.state)
        assert seen == {t: [s] for t, s in self.model.items()}, (seen, self.model)

    @invariant()
    def content_agrees_with_name(self) -> None:
        for task, state in self.model.items():
            record = TaskRecord.from_bytes(self.path(task, state).read_bytes())
            assert record is not None and record.state is state and record.task == task

    @invariant()
    def journal_agrees_with_files(self) -> None:
        journal = last_states(self.run.dir)
        assert journal == {t: s.value for t, s in self.model.items()}


SpoolMachine.TestCase.settings = settings(
    max_examples=300 if os.environ.get("CI") else 100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSpoolMachine = SpoolMachine.TestCase

assert sys.platform.startswith("linux"), "the protocol relies on Linux rename/flock semantics"
