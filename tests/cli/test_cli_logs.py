"""`occoord logs RUN TASK [-f]`: the transcript from the session's messages, followed live over the
event stream until the task ends; against `occoord watch` on the simulator, and once against the
real server with the scripted model."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import FAST, drop_atomically, manifest, states, summary, task, the_run
from support.fakemodel import FakeModel
from support.opencode_env import LoopThread, opencode_env, require_binary
from support.processes import Proc, occoord_argv, wait_for, watch_argv

from occoord.opencode.server import OpenCodeServer


def logs_argv(spool: Path, *args: str) -> list[str]:
    return occoord_argv("logs", "--spool", str(spool), *args)


def plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OCCOORD_", "OPENCODE_"))}


def test_follow_shows_text_and_a_tool_call_while_the_task_runs(
    watcher: Proc, simulator: str, spool_dir: Path, tmp_path: Path
) -> None:
    prompt = "Work a while. [sim: say Looking at the code now] [sim: work 4] [sim: reply all done here]"
    drop_atomically(spool_dir, "logs.json", manifest(task("slow", prompt), name="logs"))
    run_dir = the_run(spool_dir, "logs")
    follower = Proc(logs_argv(spool_dir, "--server", simulator, "-f", "logs", "slow"), tmp_path / "f.log")
    follower.wait_output("[bash: sim work] running", timeout=30)
    follower.wait_output("Looking at the code now", timeout=10)
    assert states(run_dir)["slow"] == "pending", "both were shown while the task ran"
    wait_for(lambda: not follower.alive(), timeout=60, what="the follower ends with the task")
    assert follower.stop() == 0, follower.output()
    lines = follower.output().splitlines()
    assert lines[0].startswith(f"--- {run_dir.name}/slow attempt 1: session ses_")
    order = [
        "Looking at the code now",
        "[bash: sim work] running",
        "[bash: sim work] completed",
        "all done here",
        f"--- {run_dir.name}/slow: done",
    ]
    found = [next(i for i, line in enumerate(lines) if line.startswith(want)) for want in order]
    assert found == sorted(found), lines
    assert states(run_dir)["slow"] == "done"

    # Afterwards, without -f: the whole transcript once, no header; the latest run by name.
    once = subprocess.run(
        logs_argv(spool_dir, "--server", simulator, "logs", "slow"),
        capture_output=True,
        text=True,
        env=plain_env(),
        timeout=60,
    )
    assert once.returncode == 0, once.stderr
    assert once.stdout.splitlines() == [
        "Looking at the code now",
        "[bash: sim work] completed",
        "all done here",
    ]


def test_errors_and_sub_agents_are_in_the_transcript(watcher: Proc, simulator: str, spool_dir: Path) -> None:
    prompt = "Delegate, then fail. [sim: subagent] [sim: work 0.1] [sim: error APIError fatal]"
    drop_atomically(spool_dir, "bad.json", manifest(task("bad", prompt), name="bad"))
    run_dir = the_run(spool_dir, "bad")
    summary(run_dir)
    out = subprocess.run(
        logs_argv(spool_dir, "--server", simulator, run_dir.name, "bad"),
        capture_output=True,
        text=True,
        env=plain_env(),
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "[task: Simulated sub-task (@general subagent)] completed" in out.stdout
    assert "[error] APIError: simulated invalid request" in out.stdout


def test_without_a_server_the_result_is_shown(watcher: Proc, spool_dir: Path) -> None:
    drop_atomically(spool_dir, "quick.json", manifest(task("q", "[sim: reply the answer]"), name="quick"))
    run_dir = the_run(spool_dir, "quick")
    summary(run_dir)
    assert watcher.stop() == 0  # its simulator goes with it: no server is known any more
    out = subprocess.run(
        logs_argv(spool_dir, "latest", "q"), capture_output=True, text=True, env=plain_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "the answer"
    assert "no OpenCode server known" in out.stderr
    unknown = subprocess.run(
        logs_argv(spool_dir, "latest", "nope"), capture_output=True, text=True, env=plain_env(), timeout=60
    )
    assert unknown.returncode == 2 and "no task 'nope'" in unknown.stderr


# ------------------------------------------------------------------------- the real server


@pytest.fixture
def real_server(tmp_path: Path) -> Iterator[tuple[OpenCodeServer, Path]]:
    """A real `opencode serve` on the scripted model (stopped by its object at the end)."""
    binary = require_binary()
    model = FakeModel()
    model.start()
    loop = LoopThread()
    workdir = tmp_path / "work"
    workdir.mkdir()
    server = OpenCodeServer(
        binary=binary,
        cwd=workdir,
        log_path=tmp_path / "opencode.log",
        env=opencode_env(tmp_path / "env", model.url),
    )
    try:
        loop.run(server.start())
        yield server, workdir
    finally:
        loop.run(server.stop(), timeout=30)
        loop.close()
        model.stop()


@pytest.mark.real_opencode
def test_follow_against_the_real_server(real_server: tuple[OpenCodeServer, Path], tmp_path: Path) -> None:
    server, workdir = real_server
    spool = tmp_path / "spool"
    env = {"OCCOORD_SERVER_PASSWORD": server.password}
    watch = Proc(
        watch_argv(spool, workdir, *FAST, "--start-timeout", "90", "--server", server.url),
        tmp_path / "watch.log",
        env=env,
    )
    watch.ready(timeout=60)
    prompt = "Run a command.\n[model: bash sleep 3 && echo slept]"
    drop_atomically(spool, "real.json", manifest(task("r", prompt), name="real"))
    run_dir = the_run(spool, "real")
    follower = Proc(logs_argv(spool, "--server", server.url, "-f", "real", "r"), tmp_path / "f.log", env=env)
    follower.wait_output(re.compile(r"\[bash: .*\] running"), timeout=120)
    assert states(run_dir)["r"] == "pending"
    wait_for(lambda: not follower.alive(), timeout=120, what="the follower ends with the task")
    assert follower.stop() == 0, follower.output()
    out = follower.output()
    assert re.search(r"\[bash: .*\] completed", out) and "finished" in out, out
    assert f"--- {run_dir.name}/r: done" in out
    assert watch.stop() == 0, watch.output()
