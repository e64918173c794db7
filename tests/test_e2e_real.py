"""`occoord watch` end to end against the REAL OpenCode server, through the filesystem only.

Each test starts `occoord watch --opencode-bin BIN` as a process that SPAWNS the real `opencode serve`
(with a throwaway HOME/XDG and a config pointing at the scripted model of tests/support/fakemodel.py,
keeping OpenCode's default permission policy), copies a manifest into incoming/ and reads what a user
would: state files, events.jsonl, summary.json, results/*.md, plus the scripted model's request log.
The spawned server is found through SPOOL/server.json (pid, URL, password), which the watcher keeps
for the next watcher. The server outlives its watcher by design (a crash or a clean stop alike; only
`--stop-server` stops it), so the tests stop it themselves, by PID, like every process, orphans
included.

The last section checks the server re-use after a coordinator crash with a fake `opencode` (the
simulator behind a wrapper script): those tests need no real binary and run everywhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2ekit import drop, in_session, journal, manifest, record, states, summary, task, the_run, wait_state
from support.fakemodel import FakeModel
from support.opencode_env import opencode_env, pinned_version, require_binary
from support.processes import (
    Proc,
    kill_group,
    occoord_argv,
    proc_stat,
    stop_spool_server,
    wait_for,
    watch_argv,
)

from occoord.opencode.server import OpenCodeServer, ServerRecord, process_token

# Generous: a first prompt in a new directory makes the real server build an instance (seconds on a
# busy 2-core machine). Nothing here waits for a timeout to fire.
REAL_OPTS = (
    "--settle-seconds", "0.3", "--rescan-interval", "5", "--retry-base", "0.1",
    "--start-timeout", "90", "--idle-timeout", "180", "--task-timeout", "300",
)  # fmt: skip
TURN = 90.0  # upper bound for one scripted turn to be decided, on a noisy machine

real = pytest.mark.real_opencode
slow = pytest.mark.slow


# ------------------------------------------------------------------------------- processes by PID


def _cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def processes_in(directory: Path) -> list[int]:
    """Pids of our processes whose working directory is ``directory``: the server the watcher spawned
    (it runs in the watcher's --workdir) and anything it started there."""
    target, me = str(directory.resolve()), os.getpid()
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me and _cwd(int(e)) == target]


def kill_pid(pid: int, token: str | None) -> None:
    """SIGKILL ``pid``'s process group, if ``pid`` is still the process we knew (same start time)."""
    current = process_token(pid)
    if current is not None and current == token:
        kill_group(pid, signal.SIGKILL)


def running(pid: int, token: str | None) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z" and process_token(pid) == token


# --------------------------------------------------------------------------------------- the world


@dataclass
class Stage:
    """One test's world: spool, workdir, the binary to spawn, its environment, and every process."""

    tmp: Path
    binary: str
    env: dict[str, str]
    model: FakeModel | None = None
    watchers: list[Proc] = field(default_factory=list)
    servers: dict[int, str | None] = field(default_factory=dict)  # pid -> process token

    @property
    def spool(self) -> Path:
        return self.tmp / "spool"

    @property
    def workdir(self) -> Path:
        return self.tmp / "work"

    def watch(self, name: str = "watch", *extra: str) -> Proc:
        """Start `occoord watch` spawning (or re-using) the server; wait until it serves the spool."""
        argv = watch_argv(self.spool, self.workdir, *REAL_OPTS, "--opencode-bin", self.binary, *extra)
        # PYTHONFAULTHANDLER: a watcher that hangs on stop logs every thread's stack (see stop()).
        proc = Proc(argv, self.tmp / f"{name}.log", env={"PYTHONFAULTHANDLER": "1", **self.env})
        self.watchers.append(proc)
        try:
            proc.ready(timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.server_log()}") from None
        self.server()  # remember its server's pid for the cleanup
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop a watcher cleanly (SIGTERM, exit code 0): its server outlives it, still recorded for
        the next watcher. Then the test stops that server by PID, and nothing is left running."""
        before = self.server()
        assert proc.stop(timeout=30, dump_stacks=True) == 0, proc.output()
        assert running(before.pid, before.started), "a clean stop leaves the spawned server running"
        assert self.server() == before, "... and its record, for the next watcher"
        assert "leaving the OpenCode server running" in proc.output()
        assert stop_spool_server(self.spool) == before.pid
        assert not running(before.pid, before.started)
        wait_for(lambda: processes_in(self.workdir) == [], timeout=10, what="nothing left in the workdir")

    def server(self) -> ServerRecord:
        """The spawned server, as the watcher recorded it in SPOOL/server.json."""
        found = ServerRecord.from_bytes((self.spool / "server.json").read_bytes())
        assert found is not None
        self.servers.setdefault(found.pid, found.started)
        return found

    def http(self) -> httpx.Client:
        info = self.server()
        return httpx.Client(base_url=info.url, auth=("opencode", info.password), timeout=30)

    def sessions(self, directory: Path) -> list[dict[str, Any]]:
        with self.http() as http:
            found = http.get("/session", params={"directory": str(directory), "limit": 1000})
            found.raise_for_status()
            return list(found.json())

    def status(self, directory: Path) -> dict[str, Any]:
        with self.http() as http:
            found = http.get("/session/status", params={"directory": str(directory)})
            found.raise_for_status()
            return dict(found.json())

    def server_log(self) -> str:
        path = self.spool / "opencode.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no server log)"

    def cleanup(self) -> None:
        for proc in self.watchers:
            proc.stop(timeout=20)
        for pid, token in self.servers.items():
            kill_pid(pid, token)  # an orphan of a watcher killed with SIGKILL
        for pid in processes_in(self.workdir):
            kill_pid(pid, process_token(pid))


def turns(model: FakeModel, task_id: str) -> list[dict[str, Any]]:
    """The chat requests that START a turn of ``task_id`` (last message from the user, not a tool)."""
    marker = f'task "{task_id}"'
    out = []
    for body in model.chat_requests():
        messages = body.get("messages") or []
        starts = body.get("tools") and messages and messages[-1].get("role") == "user"
        if starts and marker in _text(messages[-1]):
            out.append(body)
    return out


def tool_calls(model: FakeModel, task_id: str) -> list[str]:
    """The bash commands the scripted model had ``task_id``'s agent run (seen in later requests)."""
    marker = f'task "{task_id}"'
    commands: list[str] = []
    for body in model.chat_requests():
        messages = body.get("messages") or []
        if not any(m.get("role") == "user" and marker in _text(m) for m in messages):
            continue
        for message in messages:
            for call in message.get("tool_calls") or []:
                command = json.loads(call["function"]["arguments"])["command"]
                if command not in commands:
                    commands.append(command)
    return commands


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def transitions(run_dir: Path, task_id: str) -> list[dict[str, Any]]:
    return [e for e in journal(run_dir) if e["kind"] == "transition" and e["task"] == task_id]


@pytest.fixture(scope="module")
def opencode_bin() -> str:
    """Skipped without the binary, but FAILED under OCCOORD_REQUIRE_OPENCODE=1 (scripts/test.sh)."""
    return require_binary()


@pytest.fixture
def stage(tmp_path: Path, opencode_bin: str) -> Iterator[Stage]:
    model = FakeModel()
    model.start()
    (tmp_path / "work").mkdir()
    world = Stage(
        tmp_path,
        opencode_bin,
        opencode_env(tmp_path / "opencode-home", model.url, permissive=False),
        model,
    )
    try:
        yield world
    finally:
        world.cleanup()
        model.stop()


def assert_server_version(run_dir: Path, *tasks: str) -> None:
    for name in tasks:
        assert record(run_dir, name)["details"]["server_version"] == pinned_version(), name


# ------------------------------------------------------------------------------ the real server


@real
@slow
def test_dependent_tasks_signal_their_own_completion_by_cli_and_by_mv(stage: Stage) -> None:
    watcher = stage.watch()
    drop(
        stage.spool,
        "plan.json",
        manifest(
            task("plan", "Write the plan.\n[model: signal done]"),
            task("build", "Build it.\n[model: mv done]", depends_on=["plan"]),
            task("check", "Check it.\n[model: signal done]", depends_on=["plan"]),
            concurrency=2,
        ),
    )
    run_dir = the_run(stage.spool)
    verdict = summary(run_dir, timeout=3 * TURN)
    assert verdict["ok"] is True, (states(run_dir), stage.server_log())
    assert states(run_dir) == {"plan": "done", "build": "done", "check": "done"}
    # Every task was decided by its agent's own bash call, not classified by the coordinator.
    for name in ("plan", "build", "check"):
        done = [e for e in transitions(run_dir, name) if e["to"] == "done"]
        assert len(done) == 1 and done[0]["actor"] == "outside", (name, done)
        assert record(run_dir, name)["attempt"] == 1
    assert record(run_dir, "plan")["reason"] == "signalled done by occoord signal"
    assert record(run_dir, "build")["reason"] == "signalled by an outside writer"  # the plain mv
    assert stage.model is not None
    model = stage.model
    # The commands the agents ran show in the model's log with the follow-up request (the tool's
    # result), which may come a moment after the signal itself.
    (plan_cmd,) = wait_for(lambda: tool_calls(model, "plan"), timeout=TURN)
    assert " -m occoord signal " in plan_cmd and plan_cmd.endswith(" plan done"), plan_cmd
    (build_cmd,) = wait_for(lambda: tool_calls(model, "build"), timeout=TURN)
    assert build_cmd.startswith("mv ") and build_cmd.endswith("build.done"), build_cmd
    # The dependency held: build and check were dispatched only after plan was done.
    events = [e for e in journal(run_dir) if e["kind"] == "transition"]
    plan_done = next(i for i, e in enumerate(events) if e["task"] == "plan" and e["to"] == "done")
    for name in ("build", "check"):
        dispatched = next(i for i, e in enumerate(events) if e["task"] == name and e["to"] == "pending")
        assert dispatched > plan_done, name
        assert len(turns(model, name)) == 1
    assert len(turns(model, "plan")) == 1
    assert_server_version(run_dir, "plan", "build", "check")
    with stage.http() as http:
        assert http.get("/global/health").json()["version"] == pinned_version()
    sessions = {t["task"]: t["session_id"] for t in verdict["tasks"]}
    assert all(s and s.startswith("ses_") for s in sessions.values()), sessions
    stage.stop(watcher)


@real
@slow
def test_self_signalled_task_keeps_the_agents_final_text(stage: Stage) -> None:
    watcher = stage.watch()
    drop(stage.spool, "solo.json", manifest(task("solo", "Do it.\n[model: signal done]")))
    run_dir = the_run(stage.spool)
    assert summary(run_dir, timeout=TURN)["ok"] is True
    session = record(run_dir, "solo")["session_id"]
    wait_for(lambda: session not in stage.status(stage.workdir), timeout=TURN)  # the turn has ended
    wait_for(lambda: _read(run_dir / "results" / "solo.md") == "finished", timeout=10, interval=0.1)
    stage.stop(watcher)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


@real
@slow
def test_turn_ending_without_a_signal_is_classified_from_the_messages(stage: Stage) -> None:
    watcher = stage.watch()
    drop(stage.spool, "reply.json", manifest(task("answer", "Answer.\n[model: reply all good here]")))
    run_dir = the_run(stage.spool)
    verdict = summary(run_dir, timeout=TURN)
    assert verdict["ok"] is True, stage.server_log()
    rec = record(run_dir, "answer")
    assert rec["state"] == "done" and rec["actor"] == "coordinator"
    assert "classified from the session's messages" in rec["reason"]
    assert rec["details"]["outcome"] == "done"
    assert (run_dir / "results" / "answer.md").read_text().strip() == "all good here"
    assert_server_version(run_dir, "answer")
    stage.stop(watcher)


@real
@slow
def test_model_endpoint_error_fails_the_task_with_the_error(stage: Stage) -> None:
    watcher = stage.watch()
    drop(stage.spool, "err.json", manifest(task("broken", "Try.\n[model: error 400]", retries=2)))
    run_dir = the_run(stage.spool)
    verdict = summary(run_dir, timeout=TURN)
    assert verdict["ok"] is False
    rec = record(run_dir, "broken")
    assert rec["state"] == "failed", rec
    assert "APIError" in rec["reason"] and "scripted error 400" in rec["reason"], rec["reason"]
    assert rec["attempt"] == 1, "a 400 is not retryable: no second attempt"
    assert rec["details"]["error_name"] == "APIError" and rec["details"]["retryable"] is False
    assert_server_version(run_dir, "broken")
    stage.stop(watcher)


@real
@slow
def test_cancel_aborts_the_busy_turn_in_the_tasks_own_directory(stage: Stage, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # not the watcher's --workdir: the abort must name this one
    elsewhere.mkdir()
    watcher = stage.watch()
    drop(
        stage.spool,
        "long.json",
        manifest(
            task("long", "Take your time.\n[model: slow 30]", directory=str(elsewhere)),
            task("after", "Then this.", depends_on=["long"]),
        ),
    )
    run_dir = the_run(stage.spool)
    assert stage.model is not None
    model = stage.model
    wait_for(lambda: record(run_dir, "long").get("session_id") and turns(model, "long"), timeout=TURN)
    session = record(run_dir, "long")["session_id"]
    assert stage.status(elsewhere).get(session, {}).get("type") == "busy"
    began = time.monotonic()
    subprocess.run(
        occoord_argv("cancel", "--spool", str(stage.spool), run_dir.name, "long"),
        check=True,
        capture_output=True,
        env={**os.environ, **stage.env},
    )
    wait_state(run_dir, "long", "failed", timeout=20)
    took = time.monotonic() - began
    assert took < 15, f"cancelled after {took:.1f} s, not at once (the turn would take 30 s)"
    assert record(run_dir, "long")["reason"] == "cancelled"
    # The abort reached the session: idle in ITS directory, the model's stream cut, no new request.
    wait_for(lambda: session not in stage.status(elsewhere), timeout=10)
    wait_for(model.cut_requests, timeout=10)
    with stage.http() as http:
        messages = http.get(f"/session/{session}/message", params={"directory": str(elsewhere)}).json()
    last = [m for m in messages if m["info"]["role"] == "assistant"][-1]["info"]
    assert last["error"]["name"] == "MessageAbortedError", last
    assert len(turns(model, "long")) == 1
    summary(run_dir, timeout=20)
    assert record(run_dir, "after")["reason"] == "dependency long failed"
    assert not list(run_dir.glob("cancel*")), "the request is consumed"
    stage.stop(watcher)
    assert len(turns(model, "long")) == 1 and not turns(model, "after")


@real
@slow
def test_tool_calls_outside_the_task_directory_never_hang_the_task(stage: Stage, tmp_path: Path) -> None:
    """OpenCode's default policy (kept in this server's config) ASKS before a bash command reads a path
    outside the session's directory (`cat /elsewhere/x` -> an external_directory ask), and an
    unanswered ask keeps the session busy forever: occoord's session rules and policy responder must
    prevent that. (A redirect like `echo > /elsewhere/x` is not asked about; it must work too.)"""
    other = tmp_path / "other-tmp"  # outside the workdir and outside the spool
    other.mkdir()
    (other / "in.txt").write_text("read from outside\n")
    watcher = stage.watch()
    drop(
        stage.spool,
        "outside.json",
        manifest(
            task("read", f"Read outside.\n[model: bash cat {other}/in.txt]"),
            task("write", f"Write outside.\n[model: bash echo outside > {other}/out.txt]"),
        ),
    )
    run_dir = the_run(stage.spool)
    began = time.monotonic()
    summary(run_dir, timeout=TURN)
    assert time.monotonic() - began < TURN
    assert states(run_dir) == {"read": "done", "write": "done"}, (record(run_dir, "read"), stage.server_log())
    assert stage.model is not None
    tool_results = [
        _text(m)
        for body in stage.model.chat_requests()
        for m in body.get("messages") or []
        if m.get("role") == "tool"
    ]
    assert any("read from outside" in r for r in tool_results), ("the read was not allowed", tool_results)
    assert (other / "out.txt").read_text() == "outside\n", "the write really ran"
    assert (run_dir / "results" / "read.md").read_text().strip() == "finished"
    stage.stop(watcher)


@real
@slow
def test_watcher_killed_with_sigkill_resumes_on_the_same_server(stage: Stage) -> None:
    tasks = [
        task("t0", "One.\n[model: slow 8] [model: signal done]"),
        task("t1", "Two.\n[model: slow 8] [model: mv done]"),
        task("t2", "Three.\n[model: slow 8] [model: reply three is fine]"),
        task("last", "After t0.\n[model: reply bye]", depends_on=["t0"]),
    ]
    first = stage.watch("first")
    drop(stage.spool, "crash.json", manifest(*tasks, concurrency=3))
    run_dir = the_run(stage.spool)
    assert stage.model is not None
    model = stage.model
    busy = ("t0", "t1", "t2")
    wait_for(
        lambda: all(record(run_dir, t).get("session_id") and turns(model, t) for t in busy), timeout=TURN
    )
    server = stage.server()
    first.kill9()
    # The server has its own process group: it outlives the watcher, turns and all.
    assert running(server.pid, server.started), "the spawned server died with its watcher"
    second = stage.watch("second")
    assert stage.server().pid == server.pid, "the restarted watcher re-used the running server"
    assert "re-using" in second.output()
    assert stage.server_log().count("starting ") == 1, "no second server was started"
    verdict = summary(run_dir, timeout=3 * TURN)
    assert verdict["ok"] is True, (states(run_dir), second.output()[-3000:])
    for spec in tasks:
        name = str(spec["id"])
        assert record(run_dir, name)["attempt"] == 1, name
        assert len(turns(model, name)) == 1, f"{name} was prompted more than once"
    assert (run_dir / "results" / "t2.md").read_text().strip() == "three is fine"
    titles = [s["title"] for s in stage.sessions(stage.workdir)]
    ours = [t for t in titles if t.startswith("occoord ")]
    assert sorted(ours) == sorted(f"occoord {run_dir.name}/{t['id']}#1" for t in tasks), titles
    assert_server_version(run_dir, *(str(t["id"]) for t in tasks))
    stage.stop(second)


def assert_ran_once_and_never_failed(run_dir: Path, task_id: str) -> None:
    """One attempt, no failure counted, and the journal shows accepted -> pending -> done only."""
    rec = record(run_dir, task_id)
    assert rec["state"] == "done" and rec["attempt"] == 1, rec
    assert not rec["details"].get("failures") and not rec["details"].get("unreachable"), rec
    moves = [(e.get("from"), e["to"]) for e in transitions(run_dir, task_id)]
    assert moves == [(None, "queued"), ("queued", "pending"), ("pending", "done")], moves


@real
@slow
def test_watcher_stopped_with_sigterm_resumes_on_the_same_server(stage: Stage) -> None:
    """`systemctl restart`: SIGTERM while turns run. The server outlives the watcher with its
    turns; the next watcher re-uses it and the tasks (no retries allowed) end done, run once."""
    tasks = [
        task("t0", "One.\n[model: slow 10] [model: signal done]", retries=0),
        task("t1", "Two.\n[model: slow 10] [model: reply two is fine]", retries=0),
    ]
    first = stage.watch("first")
    drop(stage.spool, "term.json", manifest(*tasks, concurrency=2))
    run_dir = the_run(stage.spool)
    assert stage.model is not None
    model = stage.model
    wait_for(
        lambda: all(record(run_dir, t).get("session_id") and turns(model, t) for t in ("t0", "t1")),
        timeout=TURN,
    )
    server = stage.server()
    assert first.stop(timeout=30, dump_stacks=True) == 0, first.output()
    assert "leaving the OpenCode server running" in first.output()
    assert running(server.pid, server.started), "the spawned server died with its watcher's clean stop"
    assert stage.server() == server, "its record stays for the next watcher"
    assert states(run_dir) == {"t0": "pending", "t1": "pending"}, "a clean stop fails nothing"
    busy = stage.status(stage.workdir)
    assert all(busy.get(record(run_dir, t)["session_id"], {}).get("type") == "busy" for t in ("t0", "t1")), (
        busy
    )
    second = stage.watch("second")
    assert stage.server().pid == server.pid, "the restarted watcher re-used the running server"
    assert "re-using" in second.output()
    assert stage.server_log().count("starting ") == 1, "no second server was started"
    verdict = summary(run_dir, timeout=3 * TURN)
    assert verdict["ok"] is True, (states(run_dir), second.output()[-3000:])
    for name in ("t0", "t1"):
        assert_ran_once_and_never_failed(run_dir, name)
        assert len(turns(model, name)) == 1, f"{name} was prompted more than once"
    assert (run_dir / "results" / "t1.md").read_text().strip() == "two is fine"
    stage.stop(second)


@real
@slow
def test_watcher_with_stop_server_stops_its_server_at_exit(stage: Stage) -> None:
    watcher = stage.watch("watch", "--stop-server")
    drop(stage.spool, "one.json", manifest(task("one", "Answer.\n[model: reply fine]")))
    assert summary(the_run(stage.spool), timeout=TURN)["ok"] is True
    server = stage.server()
    assert watcher.stop(timeout=30, dump_stacks=True) == 0, watcher.output()
    assert not running(server.pid, server.started), "--stop-server stops the spawned server"
    assert not (stage.spool / "server.json").exists(), "... and removes its record"
    wait_for(lambda: processes_in(stage.workdir) == [], timeout=10, what="nothing left in the workdir")


# ------------------------------------------------- server re-use with a fake `opencode` (no binary)


@pytest.fixture
def fake_stage(tmp_path: Path) -> Iterator[Stage]:
    """A Stage whose `opencode` is the simulator behind a wrapper (it speaks the same API and
    announces itself with the real server's stdout line)."""
    binary = tmp_path / "bin" / "opencode"
    binary.parent.mkdir()
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} -m occoord simulate --port 0\n")
    binary.chmod(0o755)
    (tmp_path / "work").mkdir()
    env = {"HOME": str(tmp_path / "home")}
    world = Stage(tmp_path, str(binary), env)
    try:
        yield world
    finally:
        world.cleanup()


@slow
def test_fake_restarted_watcher_reuses_the_server_it_spawned(fake_stage: Stage) -> None:
    stage = fake_stage
    first = stage.watch("first")
    record_file = stage.spool / "server.json"
    assert record_file.stat().st_mode & 0o777 == 0o600, "it holds the server's password"
    drop(stage.spool, "crash.json", manifest(*[task(f"t{i}", "[sim: work 3]") for i in range(3)]))
    run_dir = the_run(stage.spool)
    wait_for(lambda: in_session(run_dir, *(f"t{i}" for i in range(3))), timeout=30)
    server = stage.server()
    first.kill9()
    assert running(server.pid, server.started)
    second = stage.watch("second")
    assert stage.server().pid == server.pid
    assert summary(run_dir, timeout=60)["ok"] is True
    titles = [s["title"] for s in stage.sessions(stage.workdir)]
    assert len(titles) == len(set(titles)) == 3, titles
    assert all(record(run_dir, f"t{i}")["attempt"] == 1 for i in range(3))
    stage.stop(second)


@slow
def test_fake_stale_server_record_is_replaced(fake_stage: Stage) -> None:
    """A recorded pid that is gone, or now some other process (here: pytest itself), is left alone
    and a new server is started and recorded."""
    stage = fake_stage
    stage.spool.mkdir()
    me = ServerRecord(os.getpid(), "http://127.0.0.1:9", "pw", stage.binary, "1", "someone-else", "x")
    (stage.spool / "server.json").write_bytes(me.to_bytes())
    watcher = stage.watch()
    fresh = stage.server()
    assert fresh.pid != os.getpid() and fresh.started == process_token(fresh.pid)
    drop(stage.spool, "one.json", manifest(task("x", "[sim: work 0.1]")))
    assert summary(the_run(stage.spool), timeout=30)["ok"] is True
    stage.stop(watcher)


def _spawn_fake(binary: str, password: str) -> tuple[subprocess.Popen[bytes], str]:
    """A fake server started the way a watcher starts one, whose watcher then 'died'."""
    proc = subprocess.Popen(
        [binary, "serve", "--hostname", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OPENCODE_SERVER_PASSWORD": password},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        proc.stdout.close()  # the reader is gone, as after SIGKILL
        assert "opencode server listening on " in line, line
    except BaseException:
        kill_group(proc.pid)  # the caller's cleanup never gets the pid: stop it here
        proc.wait(timeout=10)
        raise
    return proc, line.rsplit(" ", 1)[1].strip()


def test_fake_adopt_checks_identity_binary_and_health(fake_stage: Stage, tmp_path: Path) -> None:
    binary = fake_stage.binary
    proc, url = _spawn_fake(binary, "secret")
    try:
        owner = OpenCodeServer(binary=binary, cwd=tmp_path)
        good = ServerRecord(
            proc.pid, url, "secret", binary, "", process_token(proc.pid), owner._fingerprint()
        )

        async def scenario() -> None:
            # A reused pid (another start time) is not ours: refused, and the process left alone.
            assert (
                await OpenCodeServer(binary=binary, cwd=tmp_path).adopt(
                    ServerRecord(**{**good.__dict__, "started": "another-process"})
                )
                is False
            )
            assert proc.poll() is None
            # Ours: adopted with the recorded URL and password; the version comes from its health.
            server = OpenCodeServer(binary=binary, cwd=tmp_path)
            assert await server.adopt(good) is True
            assert server.alive() and server.adopted and server.url == url and server.password == "secret"
            assert server.version.endswith("-sim") and server.pid == proc.pid
            assert server.record() == ServerRecord(**{**good.__dict__, "version": server.version})
            await server.stop()
            assert not server.alive()

        asyncio.run(scenario())
        assert proc.wait(timeout=10) is not None
    finally:
        kill_pid(proc.pid, process_token(proc.pid))
        proc.wait(timeout=10)


def test_fake_adopt_stops_its_own_server_started_otherwise(fake_stage: Stage, tmp_path: Path) -> None:
    """Ours but not what we would start now (another binary): it would share our data dir, so it is
    stopped and the caller starts a new one."""
    binary = fake_stage.binary
    proc, url = _spawn_fake(binary, "secret")
    try:
        server = OpenCodeServer(binary=binary, cwd=tmp_path)
        other = ServerRecord(
            proc.pid, url, "secret", "/old/opencode", "", process_token(proc.pid), server._fingerprint()
        )
        assert asyncio.run(server.adopt(other)) is False
        assert proc.wait(timeout=10) is not None
        assert not server.alive() and not server.adopted
    finally:
        kill_pid(proc.pid, process_token(proc.pid))
        proc.wait(timeout=10)


def test_server_record_round_trip_and_garbage() -> None:
    rec = ServerRecord(12, "http://127.0.0.1:1", "pw", "/bin/opencode", "1.18.33", None, "f")
    assert ServerRecord.from_bytes(rec.to_bytes()) == rec
    for junk in (b"", b"{", b"[]", b'{"pid": "12"}', rec.to_bytes().replace(b'"pw"', b"3")):
        assert ServerRecord.from_bytes(junk) is None


@slow
def test_fake_server_that_dies_is_restarted_and_the_run_completes(fake_stage: Stage) -> None:
    """kill -9 of the spawned server: the watcher notices at once, starts a new one, records it, and
    the turns lost with the old process run again on the new one."""
    stage = fake_stage
    watcher = stage.watch()
    drop(stage.spool, "die.json", manifest(*[task(f"t{i}", "[sim: work 2]") for i in range(2)]))
    run_dir = the_run(stage.spool)
    wait_for(lambda: in_session(run_dir, *(f"t{i}" for i in range(2))), timeout=30)
    old = stage.server()
    os.kill(old.pid, signal.SIGKILL)
    new = wait_for(lambda: (r := stage.server()).pid != old.pid and r, timeout=20)
    assert running(new.pid, new.started)
    assert summary(run_dir, timeout=60)["ok"] is True
    for i in range(2):
        rec = record(run_dir, f"t{i}")
        assert rec["attempt"] == 2, "the attempt lost with the old server was started again"
    assert "died; restarting it" in watcher.output()
    stage.stop(watcher)


@slow
def test_fake_sigterm_keeps_the_server_and_stop_server_stops_it(fake_stage: Stage) -> None:
    """Without the real binary: a clean stop mid-turn leaves the server (and the turns) running,
    the next watcher re-uses it and the tasks end done at attempt 1; with --stop-server (env
    OCCOORD_STOP_SERVER) the last watcher stops it and removes the record."""
    stage = fake_stage
    first = stage.watch("first")
    drop(stage.spool, "term.json", manifest(*[task(f"t{i}", "[sim: work 3]", retries=0) for i in range(2)]))
    run_dir = the_run(stage.spool)
    wait_for(lambda: in_session(run_dir, "t0", "t1"), timeout=30)
    server = stage.server()
    assert first.stop(timeout=30) == 0, first.output()
    assert running(server.pid, server.started) and stage.server() == server
    assert states(run_dir) == {"t0": "pending", "t1": "pending"}
    stage.env["OCCOORD_STOP_SERVER"] = "1"
    second = stage.watch("second")
    assert stage.server().pid == server.pid
    assert summary(run_dir, timeout=60)["ok"] is True
    for name in ("t0", "t1"):
        assert_ran_once_and_never_failed(run_dir, name)
    assert len(stage.sessions(stage.workdir)) == 2
    assert second.stop(timeout=30) == 0, second.output()
    assert not running(server.pid, server.started)
    assert not (stage.spool / "server.json").exists()


def _occoord_run(stage: Stage, name: str, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = stage.tmp / name
    path.write_text(json.dumps(doc))
    argv = occoord_argv(
        "run", "--spool", str(stage.spool), "--workdir", str(stage.workdir), *REAL_OPTS,
        "--opencode-bin", stage.binary, str(path),
    )  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **stage.env})


@slow
def test_fake_occoord_run_stops_the_server_only_when_no_run_is_left_unfinished(fake_stage: Stage) -> None:
    """`occoord run` coordinating by itself: alone in the spool, it stops the server it spawned at
    the end; with another run unfinished (a watcher stopped with a turn still running), it leaves
    the server running for that run's sessions."""
    stage = fake_stage
    alone = _occoord_run(stage, "alone.json", manifest(task("a", "[sim: work 0.2]"), name="alone"))
    assert alone.returncode == 0, alone.stderr
    assert not (stage.spool / "server.json").exists(), "no run left unfinished: the server was stopped"
    assert processes_in(stage.workdir) == []

    watcher = stage.watch()
    drop(stage.spool, "long.json", manifest(task("long", "[sim: hang]"), name="long"))
    long_run = the_run(stage.spool, "long")
    wait_for(lambda: in_session(long_run, "long"), timeout=30)
    server = stage.server()
    assert watcher.stop(timeout=30) == 0, watcher.output()
    other = _occoord_run(stage, "quick.json", manifest(task("q", "[sim: work 0.2]"), name="quick"))
    assert other.returncode == 0, other.stderr
    assert "re-using" in other.stderr
    assert running(server.pid, server.started), "run 'long' is unfinished: its server stays"
    assert stage.server() == server
    session = record(long_run, "long")["session_id"]
    assert stage.status(stage.workdir).get(session, {}).get("type") == "busy", "its turn still runs"
    assert stop_spool_server(stage.spool) == server.pid


def _recorded(spool: Path) -> ServerRecord | None:
    try:
        return ServerRecord.from_bytes((spool / "server.json").read_bytes())
    except FileNotFoundError:
        return None


@slow
def test_fake_server_whose_watcher_died_before_it_listened_is_stopped_not_orphaned(fake_stage: Stage) -> None:
    """A server is recorded (with no URL yet) as soon as it is spawned: a watcher SIGKILLed while
    its server starts leaves a record, and the next watcher stops that server instead of leaving an
    orphan beside the one it starts."""
    stage = fake_stage
    slow_bin = stage.tmp / "bin" / "slow-opencode"
    slow_bin.write_text(f"#!/bin/sh\nsleep 2\nexec {sys.executable} -m occoord simulate --port 0\n")
    slow_bin.chmod(0o755)
    stage.binary = str(slow_bin)
    argv = watch_argv(stage.spool, stage.workdir, *REAL_OPTS, "--opencode-bin", stage.binary)
    first = Proc(argv, stage.tmp / "first.log", env=stage.env)
    stage.watchers.append(first)
    early = wait_for(lambda: _recorded(stage.spool), timeout=30, what="the record of the spawned server")
    stage.servers[early.pid] = early.started  # the cleanup's net, should it survive
    assert early.url == "" and running(early.pid, early.started)
    first.kill9()
    assert running(early.pid, early.started), "an orphan, known only by its record"
    second = stage.watch("second")
    assert not running(early.pid, early.started), "the next watcher stopped it"
    assert "its starter died before it was listening" in second.output()
    now = stage.server()
    assert now.pid != early.pid and now.url.startswith("http://127.0.0.1:")
    stage.stop(second)
