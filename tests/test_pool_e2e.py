"""A pool of real simulator servers (`occoord simulate` processes) and one real watcher (issue 13):
placement within capacities, servers added and drained through SPOOL/servers/, a server killed and
restarted mid-run, and a bad server file that must not stop the watcher."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import drop_atomically, manifest, record, sim_sessions, sim_status, start_watcher, states, the_run
from support.processes import Proc, free_port, occoord_argv, start_simulator, wait_for

pytestmark = pytest.mark.slow


def all_done(run_dir: Path, count: int) -> bool:
    found = states(run_dir)
    return len(found) == count and all(s == "done" for s in found.values())


def server_file(spool: Path, name: str, doc: dict[str, object]) -> Path:
    """Written elsewhere and renamed in, as a careful admin (or a script) would."""
    folder = spool / "servers"
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{name}.json.tmp"
    staging.write_text(json.dumps(doc))
    return staging.rename(folder / f"{name}.json")


def titles(urls: list[str], workdir: Path) -> list[str]:
    found = [s["title"] for url in urls for s in sim_sessions(url, workdir)]
    assert len(found) == len(set(found)), f"a session was created twice for one attempt: {found}"
    return found


def pool(spool: Path) -> dict[str, dict[str, object]]:
    try:
        doc = json.loads((spool / "watcher.json").read_text())
    except (OSError, ValueError):
        return {}
    return {s["name"]: s for s in doc.get("servers", [])}


def status(spool: Path, *args: str) -> str:
    done = subprocess.run(
        occoord_argv("status", "--spool", str(spool), *args), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Peaks:
    """Samples each simulator's busy sessions in the background: the most seen at once."""

    def __init__(self, urls: dict[str, str], workdir: Path) -> None:
        self.urls, self.workdir = urls, workdir
        self.peak = dict.fromkeys(urls, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for name, url in self.urls.items():
                try:
                    self.peak[name] = max(self.peak[name], len(sim_status(url, self.workdir)))
                except Exception:  # a server being restarted: nothing to count
                    pass
            time.sleep(0.02)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[str]]:
    """Three simulators: their URLs."""
    procs = [start_simulator(tmp_path / f"sim{i}.log") for i in range(3)]
    yield [url for _, url in procs]
    for proc, _ in procs:
        proc.stop()


def test_tasks_spread_across_servers_within_their_capacities(
    spool_dir: Path, workdir: Path, sims: list[str]
) -> None:
    a, b, c = sims
    server_file(spool_dir, "small", {"url": b, "capacity": 1})
    server_file(spool_dir, "mid", {"url": c, "capacity": 2, "labels": ["mid"]})
    watcher = start_watcher(spool_dir, workdir, "--max-sessions", "5", server=a)
    try:
        tasks = [{"id": f"t{i}", "prompt": f"[sim: work 0.6] t{i}"} for i in range(10)]
        tasks.append({"id": "labelled", "prompt": "[sim: work 0.2]", "server": "mid"})
        with Peaks({"default": a, "small": b, "mid": c}, workdir) as peaks:
            drop_atomically(spool_dir, "spread.json", manifest(*tasks, name="spread", concurrency=5))
            run_dir = the_run(spool_dir, "spread")
            wait_for(lambda: all_done(run_dir, 11), timeout=60, interval=0.1)
        assert peaks.peak["small"] <= 1 and peaks.peak["mid"] <= 2, peaks.peak
        by_server = {t: record(run_dir, t)["details"]["server"] for t in states(run_dir)}
        assert set(by_server.values()) == {"default", "small", "mid"}, by_server
        assert by_server["labelled"] == "mid"
        for name, url in (("default", a), ("small", b), ("mid", c)):
            ids = {s["id"] for s in sim_sessions(url, workdir)}
            mine = {record(run_dir, t)["session_id"] for t, on in by_server.items() if on == name}
            assert mine <= ids, f"{name}: the recorded sessions are on the recorded server"
        assert len(titles(sims, workdir)) == 11
        assert set(pool(spool_dir)) == {"default", "small", "mid"}
    finally:
        assert watcher.stop() == 0, watcher.output()


def test_a_server_file_added_and_removed_while_a_run_goes(
    spool_dir: Path, workdir: Path, sims: list[str]
) -> None:
    a, b, _ = sims
    watcher = start_watcher(spool_dir, workdir, "--max-sessions", "4", server=a)
    try:
        tasks = [{"id": f"t{i:02}", "prompt": f"[sim: work 0.8] t{i}"} for i in range(16)]
        drop_atomically(spool_dir, "grow.json", manifest(*tasks, name="grow", concurrency=4))
        run_dir = the_run(spool_dir, "grow")
        wait_for(lambda: sim_status(a, workdir), timeout=20)
        added = server_file(spool_dir, "extra", {"url": b, "capacity": 2})
        wait_for(lambda: sim_status(b, workdir), timeout=20, what="the new server gets sessions")
        added.unlink()
        running_there = [
            t
            for t, s in states(run_dir).items()
            if s == "pending" and record(run_dir, t)["details"].get("server") == "extra"
        ]
        wait_for(lambda: pool(spool_dir).get("extra", {}).get("draining"), timeout=10, interval=0.05)
        drained_at = len(sim_sessions(b, workdir))
        wait_for(lambda: all_done(run_dir, 16), timeout=90, interval=0.1)
        assert len(sim_sessions(b, workdir)) == drained_at, "a drained server gets no new sessions"
        for task in running_there:
            assert states(run_dir)[task] == "done"
        wait_for(lambda: "extra" not in pool(spool_dir), timeout=10, what="the drained server leaves")
        assert "left the pool" in watcher.output()
        assert len(titles([a, b], workdir)) == 16
    finally:
        assert watcher.stop() == 0, watcher.output()


def test_a_server_killed_mid_run_is_reattached_when_it_returns(
    spool_dir: Path, workdir: Path, tmp_path: Path, sims: list[str]
) -> None:
    a = sims[0]
    port = free_port()
    sim, b = start_simulator(tmp_path / "killed.log", port)
    back: Proc | None = None
    watcher = start_watcher(spool_dir, workdir, "--server", b, "--max-sessions", "4", server=a)
    try:
        tasks = [{"id": f"t{i}", "prompt": f"[sim: work 2.5] t{i}"} for i in range(4)]
        drop_atomically(spool_dir, "kill.json", manifest(*tasks, name="kill", concurrency=4))
        run_dir = the_run(spool_dir, "kill")
        wait_for(lambda: len(sim_status(b, workdir)) >= 1 and len(sim_status(a, workdir)) >= 1, timeout=20)
        time.sleep(0.5)  # their turns have begun
        sim.kill9()
        wait_for(
            lambda: pool(spool_dir).get("server-2", {}).get("healthy") is False, timeout=10, interval=0.05
        )
        # While it is down, new work goes to the server that is up.
        drop_atomically(
            spool_dir, "later.json", manifest({"id": "l0", "prompt": "[sim: work 0.1]"}, name="later")
        )
        later = the_run(spool_dir, "later")
        wait_for(lambda: all_done(later, 1), timeout=30, interval=0.1)
        assert record(later, "l0")["details"]["server"] == "server-1"
        back, _ = start_simulator(tmp_path / "back.log", port)  # same port, empty memory
        wait_for(lambda: all_done(run_dir, 4), timeout=60, interval=0.1)
        assert pool(spool_dir)["server-2"]["healthy"] is True
        titles([a, b], workdir)
    finally:
        assert watcher.stop() == 0, watcher.output()
        sim.stop()
        if back is not None:
            back.stop()


def test_a_bad_server_file_does_not_stop_the_watcher(
    spool_dir: Path, workdir: Path, tmp_path: Path, sims: list[str]
) -> None:
    a, b, _ = sims
    loose = tmp_path / "loose-password"
    loose.write_text("hunter2")
    loose.chmod(0o644)
    server_file(spool_dir, "broken", {"url": 42})
    watcher = start_watcher(spool_dir, workdir, server=a)
    try:
        assert "broken.json" in watcher.output() and "'url'" in watcher.output()
        server_file(spool_dir, "loose", {"url": b, "password_file": str(loose)})
        (spool_dir / "servers" / "junk.json").write_text("{half")
        wait_for(lambda: "world-readable" in watcher.output(), timeout=10)
        drop_atomically(spool_dir, "ok.json", manifest({"id": "t0", "prompt": "[sim: work 0.1]"}, name="ok"))
        run_dir = the_run(spool_dir, "ok")
        wait_for(lambda: all_done(run_dir, 1), timeout=30, interval=0.1)
        assert watcher.alive()
        assert set(pool(spool_dir)) == {"default"}
        assert sim_sessions(b, workdir) == []
        assert "hunter2" not in watcher.output()
    finally:
        assert watcher.stop() == 0, watcher.output()
