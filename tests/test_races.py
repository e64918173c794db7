"""Real multi-process races: of many processes moving one task at once, exactly one wins."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import time
from pathlib import Path

from filelock import FileLock
from spoolkit import make_manifest, new_run

from occoord.errors import TransitionConflict
from occoord.spool.accept import accept_file
from occoord.spool.journal import last_states
from occoord.spool.layout import Spool
from occoord.spool.names import parse_state
from occoord.spool.states import Actor, TaskState

CTX = mp.get_context("spawn")  # no inherited locks or threads: each racer is a fresh process
TARGETS = [TaskState.DONE, TaskState.FAILED, TaskState.QUEUED]


def _racer(spool_dir: str, run_id: str, tasks: list[str], index: int, barrier: object, out: object) -> None:
    spool = Spool(Path(spool_dir), durable=False)
    run = spool.run(run_id)
    wins = []
    for task in tasks:
        barrier.wait()  # type: ignore[attr-defined]
        target = TARGETS[index % len(TARGETS)]
        raw = index % 2 == 1  # odd racers are lock-less `mv`s, even ones use transition()
        try:
            if raw:
                os.rename(run.tasks.path(task, TaskState.PENDING), run.tasks.path(task, target))
            else:
                actor = Actor.COORDINATOR if target is TaskState.QUEUED else Actor.OUTSIDE
                run.tasks.transition(task, TaskState.PENDING, target, actor=actor)
            wins.append((task, target.value, "mv" if raw else "transition"))
        except (FileNotFoundError, TransitionConflict):
            pass
    out.put(wins)  # type: ignore[attr-defined]


def test_many_processes_move_one_task_exactly_one_wins(spool: Spool) -> None:
    spool.durable = False
    tasks = [f"t{i}" for i in range(25)]
    run = new_run(spool, tasks)
    for task in tasks:
        run.tasks.transition(task, TaskState.QUEUED, TaskState.PENDING)
    racers = 6
    barrier = CTX.Barrier(racers)
    out = CTX.Queue()
    procs = [
        CTX.Process(target=_racer, args=(str(spool.root), run.id, tasks, i, barrier, out))
        for i in range(racers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    wins: dict[str, list[tuple[str, str]]] = {}
    for batch in results:
        for task, target, how in batch:
            wins.setdefault(task, []).append((target, how))
    assert sorted(wins) == sorted(tasks), "every task was won by someone"
    assert all(len(w) == 1 for w in wins.values()), wins
    kinds = {how for w in wins.values() for _, how in w}
    assert kinds == {"mv", "transition"}, f"both kinds of racer should win sometimes: {kinds}"

    run.tasks.reconcile()
    files = [parse_state(n) for n in os.listdir(run.tasks.dir)]
    by_task = {p.task: p.state.value for p in files if p}
    assert len([p for p in files if p]) == len(tasks), "exactly one state file per task"
    for task, [(target, how)] in wins.items():
        # A lock-less mv to queued is not an outside writer's move: reconciliation reverts it.
        expected = "pending" if (how == "mv" and target == "queued") else target
        assert by_task[task] == expected, (task, target, how)
    assert last_states(run.dir) == by_task


def test_flock_from_a_shell_excludes_transitions(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    lock = run.dir / ".lock"
    holder = subprocess.Popen(["flock", str(lock), "sleep", "0.6"])
    try:
        # wait until the shell holds it: a non-blocking flock then fails
        deadline = time.monotonic() + 5
        while subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        run.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING)
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=10)
    assert waited > 0.2, f"transition did not wait for the shell's flock ({waited:.3f} s)"
    assert run.tasks.current("a") is TaskState.PENDING


def test_shell_flock_waits_for_our_lock(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    with FileLock(run.dir / ".lock"):
        assert subprocess.run(["flock", "-n", str(run.dir / ".lock"), "true"]).returncode == 1
    assert subprocess.run(["flock", "-n", str(run.dir / ".lock"), "true"]).returncode == 0


def _accepter(spool_dir: str, name: str, barrier: object, out: object) -> None:
    spool = Spool(Path(spool_dir), durable=False)
    barrier.wait()  # type: ignore[attr-defined]
    outcome = accept_file(spool, spool.incoming / name, settled=True)
    out.put(outcome.kind)  # type: ignore[attr-defined]


def test_concurrent_accepters_make_one_run(spool: Spool) -> None:
    n = 4
    for round_ in range(5):
        name = f"m{round_}.json"
        (spool.incoming / name).write_bytes(make_manifest(["x", "y"]))
        barrier, out = CTX.Barrier(n), CTX.Queue()
        procs = [CTX.Process(target=_accepter, args=(str(spool.root), name, barrier, out)) for _ in range(n)]
        for p in procs:
            p.start()
        kinds = sorted(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert kinds.count("accepted") == 1, kinds
        assert set(kinds) <= {"accepted", "gone"}, kinds
    assert len(spool.run_ids()) == 5
    assert os.listdir(spool.incoming) == []


def test_our_lock_is_reentrant_excludes_a_script_and_times_out(spool: Spool) -> None:
    from occoord.errors import Locked
    from occoord.spool.locking import DirLock

    run = new_run(spool, ["a"])
    lock = DirLock(run.dir / ".lock", timeout=0.05)
    with lock, lock:  # reentrant within a thread
        assert subprocess.run(["flock", "-n", str(run.dir / ".lock"), "true"]).returncode == 1
    assert subprocess.run(["flock", "-n", str(run.dir / ".lock"), "true"]).returncode == 0
    holder = subprocess.Popen(["flock", str(run.dir / ".lock"), "sleep", "1"])
    try:
        time.sleep(0.3)
        started = time.monotonic()
        try:
            with lock:
                raise AssertionError("taken while a script holds it")
        except Locked:
            pass
        assert time.monotonic() - started < 0.5
        with DirLock(run.dir / ".lock"):  # no timeout: waits for the script's second
            assert time.monotonic() - started > 0.4
    finally:
        holder.wait()
