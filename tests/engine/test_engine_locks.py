"""A script holding one run's lock (`flock SPOOL/runs/RUN/.lock cmd`, the documented way) holds up
that run only; the loop never waits on it."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from harness import Engine, manifest, task

from occoord.spool.states import TaskState


def hold_lock(path: str) -> subprocess.Popen[bytes]:
    """A real process holding the flock until it is killed (flock(1) creates the file if needed)."""
    holder = subprocess.Popen(
        ["flock", path, "-c", "echo held; exec sleep 60"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    return holder


def release(holder: subprocess.Popen[bytes]) -> None:
    """Kill its whole group: the shell flock(1) started holds the lock too."""
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert holder.stdout is not None
    holder.stdout.close()


def test_a_run_locked_by_a_script_waits_while_every_other_run_goes_on(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        locked = await e.submit(manifest(task("t"), name="locked"), "locked.json")
        free = await e.submit(manifest(task("t"), name="free"), "free.json")
        holder = hold_lock(str(e.spool.runs / locked / ".lock"))
        try:
            began = time.monotonic()
            await e.events(
                e.client.end_turn(e.session(locked, "t")) + e.client.end_turn(e.session(free, "t"))
            )
            assert time.monotonic() - began < 2.0, "the loop did not wait for the script"
            assert e.state(free, "t") is TaskState.DONE
            assert e.co.table.get(locked, "t") is not None, "its outcome waits, holding the slot"
            await e.advance(1)
            assert e.co.table.get(locked, "t") is not None
        finally:
            release(holder)
        await e.advance(2)
        assert e.state(locked, "t") is TaskState.DONE
        assert e.summary(locked) is not None

    engine.play(scenario)


def test_a_hint_about_a_locked_run_is_looked_at_again(engine: Engine) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("a"), task("b", depends_on=["a"])))
        holder = hold_lock(str(e.spool.runs / run / ".lock"))
        try:
            tasks = e.spool.runs / run / "tasks"
            (tasks / "a.pending").rename(tasks / "a.done")  # a script's plain mv, no lock
            from occoord.engine.watcher import Hint

            await e.events([Hint("task", run_id=run, task="a")])
            assert e.co.table.get(run, "a") is not None, "not yet seen: the run is locked"
        finally:
            release(holder)
        await e.advance(0.5)
        assert e.state(run, "b") is TaskState.PENDING

    engine.play(scenario)
