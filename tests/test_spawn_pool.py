"""`occoord watch --spawn N` (issue 13): N local servers, each with its own database, recorded in
SPOOL/servers/spawn-K.state for the next watcher, supervised, stopped by --stop-server, recycled
after K sessions. The fake `opencode` is the simulator behind a wrapper that writes down the
environment it was started with; one test runs two real `opencode serve` side by side.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from e2ekit import FAST, drop, manifest, max_concurrent_pending, record, states, summary, task, the_run
from support.processes import Proc, kill_group, occoord_argv, proc_stat, wait_for, watch_argv

from occoord.opencode.server import ServerRecord, process_token

pytestmark = pytest.mark.slow

NAMES = ("spawn-1", "spawn-2")


@dataclass
class World:
    tmp: Path
    binary: str
    env: dict[str, str] = field(default_factory=dict)
    seen: dict[int, str | None] = field(default_factory=dict)  # every server pid -> start token

    @property
    def spool(self) -> Path:
        return self.tmp / "spool"

    @property
    def workdir(self) -> Path:
        return self.tmp / "work"

    def watch(self, name: str, *extra: str, opts: tuple[str, ...] = FAST) -> Proc:
        argv = watch_argv(self.spool, self.workdir, *opts, "--opencode-bin", self.binary, *extra)
        proc = Proc(argv, self.tmp / f"{name}.log", env=self.env)
        proc.ready(timeout=120)
        self.records()
        return proc

    def records(self) -> dict[str, ServerRecord]:
        """The spawned servers as recorded in SPOOL/servers/spawn-K.state."""
        found: dict[str, ServerRecord] = {}
        for name in NAMES:
            path = self.spool / "servers" / f"{name}.state"
            if path.exists():
                rec = ServerRecord.from_bytes(path.read_bytes())
                assert rec is not None, path
                found[name] = rec
                self.seen.setdefault(rec.pid, rec.started)
        return found

    def cleanup(self) -> None:
        for pid, token in self.seen.items():
            if token is not None and process_token(pid) == token:
                kill_group(pid, signal.SIGKILL)


def alive(rec: ServerRecord) -> bool:
    fields = proc_stat(rec.pid)  # a zombie (not yet reaped by its new parent) has stopped
    return fields is not None and fields[0] != "Z" and process_token(rec.pid) == rec.started


def sessions(rec: ServerRecord, directory: Path) -> list[dict[str, object]]:
    auth = ("opencode", rec.password)
    with httpx.Client(base_url=rec.url, auth=auth, timeout=30, trust_env=False) as http:
        found = http.get("/session", params={"directory": str(directory), "limit": 1000})
        found.raise_for_status()
        return list(found.json())


def started_env(envdir: Path, pid: int) -> dict[str, str]:
    """The environment the fake recorded when server ``pid`` started (its record may come first:
    it is written the moment the process exists)."""
    path = envdir / f"env-{pid}.json"
    wait_for(lambda: path.exists() and path.read_text().endswith("}"), timeout=20, what=str(path))
    return dict(json.loads(path.read_text()))


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[World]:
    """A World whose `opencode` records its environment, then becomes the simulator (exec keeps
    the pid, so env-PID.json belongs to the server process recorded)."""
    envdir = tmp_path / "envs"
    envdir.mkdir()
    binary = tmp_path / "bin" / "opencode"
    binary.parent.mkdir()
    record_env = (
        f"import json,os; json.dump(dict(os.environ), open('{envdir}/env-%d.json' % os.getppid(), 'w'))"
    )
    binary.write_text(
        f'#!/bin/sh\n{sys.executable} -c "{record_env}"\nexec {sys.executable} -m occoord simulate --port 0\n'
    )
    binary.chmod(0o755)
    (tmp_path / "work").mkdir()
    world = World(tmp_path, str(binary), {"HOME": str(tmp_path / "home")})
    try:
        yield world
    finally:
        world.cleanup()


def test_spawn_two_spread_own_databases_adopted_and_stopped(fake: World) -> None:
    first = fake.watch("first", "--spawn", "2")
    recs = fake.records()
    assert sorted(recs) == list(NAMES)
    assert not (fake.spool / "server.json").exists(), "server.json stays the lone server's"
    for name in NAMES:
        path = fake.spool / "servers" / f"{name}.state"
        assert path.stat().st_mode & 0o777 == 0o600, "it holds the server's password"
        env = started_env(fake.tmp / "envs", recs[name].pid)
        assert env["OPENCODE_DB"] == str(fake.spool / "servers" / f"{name}.db")
        assert env["HOME"] == fake.env["HOME"], "the user's configuration is shared"
        assert recs[name].password not in Path(f"/proc/{recs[name].pid}/cmdline").read_text()
    assert recs["spawn-1"].pid != recs["spawn-2"].pid
    drop(fake.spool, "spread.json", manifest(*[task(f"t{i}", "[sim: work 1]") for i in range(6)]))
    run_dir = the_run(fake.spool)
    assert summary(run_dir, timeout=60)["ok"] is True
    used = {record(run_dir, f"t{i}")["details"]["server"] for i in range(6)}
    assert used == set(NAMES), used
    # A clean stop leaves both running and recorded; the next watcher re-uses both.
    assert first.stop(timeout=30) == 0, first.output()
    assert all(alive(r) for r in recs.values())
    second = fake.watch("second", "--spawn", "2", "--stop-server")
    assert {n: r.pid for n, r in fake.records().items()} == {n: r.pid for n, r in recs.items()}
    assert second.output().count("re-using opencode") == 2, second.output()
    drop(fake.spool, "more.json", manifest(task("again", "[sim: work 0.2]"), name="more"))
    assert summary(the_run(fake.spool, "more"), timeout=60)["ok"] is True
    # --stop-server: both stop, and their records go with them.
    assert second.stop(timeout=30) == 0, second.output()
    assert not any(alive(r) for r in recs.values())
    assert fake.records() == {}


def test_a_dead_spawned_server_is_restarted(fake: World) -> None:
    watcher = fake.watch("watch", "--spawn", "2")
    old = fake.records()["spawn-2"]
    os.kill(old.pid, signal.SIGKILL)
    new = wait_for(
        lambda: (r := fake.records().get("spawn-2")) and r.pid != old.pid and r.url and r, timeout=30
    )
    assert alive(new) and alive(fake.records()["spawn-1"])
    assert started_env(fake.tmp / "envs", new.pid)["OPENCODE_DB"].endswith("spawn-2.db")
    drop(fake.spool, "after.json", manifest(*[task(f"t{i}", "[sim: work 0.2]") for i in range(4)]))
    assert summary(the_run(fake.spool), timeout=60)["ok"] is True
    assert watcher.stop(timeout=30) == 0, watcher.output()


def test_recycling_after_k_sessions_loses_no_task(fake: World) -> None:
    watcher = fake.watch("watch", "--spawn", "2", "--recycle-after", "2", "--stop-server")
    before = {n: r.pid for n, r in fake.records().items()}
    count = 10
    # Two at a time: the tasks trickle in, so the recycled servers take sessions again.
    tasks = [task(f"t{i}", "[sim: work 0.5]") for i in range(count)]
    drop(fake.spool, "cycle.json", manifest(*tasks, concurrency=2))
    run_dir = the_run(fake.spool)
    verdict = summary(run_dir, timeout=120)
    assert verdict["ok"] is True, (states(run_dir), watcher.output()[-3000:])
    assert all(record(run_dir, f"t{i}")["attempt"] == 1 for i in range(count)), "no task ran twice"
    assert watcher.wait_output("recycled: pid", timeout=30), watcher.output()
    after = fake.records()
    assert any(after[n].pid != before[n] for n in NAMES), "a server was recycled"
    # The fresh servers hold no session twice (each attempt made one session, once).
    titles = [s["title"] for r in after.values() for s in sessions(r, fake.workdir)]
    assert titles and len(titles) == len(set(titles)), titles
    assert watcher.stop(timeout=30) == 0, watcher.output()
    assert not any(alive(r) for r in after.values())


def test_one_server_recycled_by_rss_stays_the_default_member(fake: World) -> None:
    """No --spawn: the lone server of before pools (member default, SPOOL/server.json, the user's
    database), recycled here because any process is above 1 MB."""
    watcher = fake.watch("watch", "--recycle-rss", "1")
    record_file = fake.spool / "server.json"
    before = ServerRecord.from_bytes(record_file.read_bytes())
    assert before is not None and fake.records() == {}
    fake.seen[before.pid] = before.started
    assert "OPENCODE_DB" not in started_env(fake.tmp / "envs", before.pid)
    count = 6
    tasks = [task(f"t{i}", "[sim: work 0.5]") for i in range(count)]
    drop(fake.spool, "rss.json", manifest(*tasks, concurrency=1))
    run_dir = the_run(fake.spool)
    assert summary(run_dir, timeout=120)["ok"] is True, watcher.output()[-3000:]
    assert {record(run_dir, f"t{i}")["details"]["server"] for i in range(count)} == {"default"}
    assert all(record(run_dir, f"t{i}")["attempt"] == 1 for i in range(count))
    assert watcher.wait_output("MB resident (--recycle-rss 1)", timeout=30)
    assert watcher.wait_output("server default recycled: pid", timeout=30)
    after = wait_for(
        lambda: (r := ServerRecord.from_bytes(record_file.read_bytes())) and r.url and r, timeout=30
    )
    fake.seen.setdefault(after.pid, after.started)
    assert after.pid != before.pid
    assert watcher.stop(timeout=30) == 0, watcher.output()


def test_spawn_zero_without_servers_is_an_error(fake: World) -> None:
    fake.spool.mkdir()
    argv = occoord_argv("watch", "--spool", str(fake.spool), "--workdir", str(fake.workdir), "--spawn", "0")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--spawn" in done.stderr and "SPOOL/servers/NAME.json" in done.stderr, done.stderr


# ------------------------------------------------------------------------------ the real server


@pytest.mark.real_opencode
def test_two_real_spawned_servers_run_sessions_at_once_without_locking(tmp_path: Path) -> None:
    from support.fakemodel import FakeModel
    from support.opencode_env import opencode_env, require_binary
    from test_e2e_real import REAL_OPTS, TURN

    binary = require_binary()
    model = FakeModel()
    model.start()
    (tmp_path / "work").mkdir()
    world = World(tmp_path, binary, opencode_env(tmp_path / "opencode-home", model.url, permissive=False))
    try:
        watcher = world.watch("watch", "--spawn", "2", "--stop-server", opts=REAL_OPTS)
        recs = world.records()
        assert sorted(recs) == list(NAMES)
        count = 4
        tasks = [task(f"t{i}", f"Part {i}.\n[model: signal done]") for i in range(count)]
        drop(world.spool, "real.json", manifest(*tasks, concurrency=count))
        run_dir = the_run(world.spool)
        verdict = summary(run_dir, timeout=3 * TURN)
        assert verdict["ok"] is True, states(run_dir)
        used = {record(run_dir, f"t{i}")["details"]["server"] for i in range(count)}
        assert used == set(NAMES), used
        assert max_concurrent_pending([run_dir]) >= 2, "sessions ran at once"
        for name in NAMES:
            assert (world.spool / "servers" / f"{name}.db").exists(), "each server has its own database"
            log = (world.spool / "servers" / f"{name}.log").read_text(errors="replace")
            assert "database is locked" not in log and "SQLITE_BUSY" not in log, log[-3000:]
        # OpenCode's own log (shared by both: it lives with the data they share).
        own = [p.read_text(errors="replace") for p in (tmp_path / "opencode-home").rglob("log/*.log")]
        assert own, "OpenCode wrote its log"
        assert not any("database is locked" in text or "SQLITE_BUSY" in text for text in own)
        assert watcher.stop(timeout=60) == 0, watcher.output()
        assert not any(alive(r) for r in recs.values())
    finally:
        world.cleanup()
        model.stop()
