"""`occoord top`: under a real terminal (a tmux pane, captured as a person would see it) against a
spool served by `occoord watch --simulate`, and in plain mode when its output is not a terminal."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import drop_atomically, manifest, start_watcher, states, summary, task, the_run
from support.processes import Proc, occoord_argv, wait_for

from occoord.spool.layout import Spool

TWO_STEPS = manifest(
    task("first", "Step one. [sim: work 2] [sim: reply first step written]"),
    task("second", "Step two. [sim: work 2] [sim: reply second step written]", depends_on=["first"]),
    name="steps",
)


class Tmux:
    """A tmux server of our own (its own socket), one session running one command."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True, timeout=30
        )

    def start(self, command: str) -> None:
        done = self("new-session", "-d", "-s", "top", "-x", "150", "-y", "40", command)
        assert done.returncode == 0, done.stderr

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def alive(self) -> bool:
        return self("has-session", "-t", "top").returncode == 0


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux)")
    server = Tmux(f"occoord-test-{os.getpid()}-{tmp_path.name}")
    yield server
    server("kill-server")  # our own server only: its socket name is this test's


def row(screen: str, task_id: str) -> list[str]:
    """The words of the task's row on the screen ([] if it is not shown)."""
    for line in screen.splitlines():
        words = line.split()
        if words and words[0] == task_id:
            return words
    return []


def test_the_live_view_follows_a_run_and_q_quits(tmux: Tmux, tmp_path: Path, workdir: Path) -> None:
    spool = tmp_path / "spool"
    watcher = start_watcher(spool, workdir)  # --simulate: found through SPOOL/watcher.json
    exit_file = tmp_path / "top.exit"
    argv = occoord_argv("top", "--spool", str(spool))
    tmux.start(f"{shlex.join(argv)} 2>{tmp_path / 'top.err'}; echo $? > {exit_file}")
    wait_for(lambda: "occoord top" in tmux.screen() and "no runs yet" in tmux.screen(), 20, 0.1)

    drop_atomically(spool, "steps.json", TWO_STEPS)
    run_dir = the_run(spool, "steps")
    wait_for(lambda: row(tmux.screen(), "first")[1:2] == ["pending"], 20, 0.05, what="first running")
    screen = tmux.screen()
    assert row(screen, "second")[1:3] == ["queued", "0"], screen
    assert f"{run_dir.name} (steps) active: 0 done, 0 failed, 1 running, 1 queued" in screen
    assert "1.18.33-sim" in screen  # the server's version, from the task records

    wait_for(lambda: row(tmux.screen(), "second")[1:2] == ["pending"], 20, 0.05, what="second running")
    screen = tmux.screen()
    assert row(screen, "first")[1:3] == ["done", "1"], screen
    # What the agent said last, from results/first.md (cut to the column's width, now that the
    # tokens and cost columns have figures).
    assert "first step writ" in screen
    wait_for(lambda: "finished: 2 done" in tmux.screen(), 20, 0.05, what="the run finished")
    assert row(tmux.screen(), "second")[1] == "done"
    assert states(run_dir) == {"first": "done", "second": "done"}

    assert tmux("send-keys", "-t", "top", "q").returncode == 0
    wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), 10, 0.05, what="top exits on q")
    assert exit_file.read_text().strip() == "0", (tmp_path / "top.err").read_text()
    assert watcher.stop() == 0


def test_ctrl_c_quits_too(tmux: Tmux, tmp_path: Path, spool: Spool) -> None:
    exit_file = tmp_path / "top.exit"
    argv = occoord_argv("top", "--spool", str(spool.root))
    tmux.start(f"{shlex.join(argv)}; echo $? > {exit_file}")
    wait_for(lambda: "no runs yet" in tmux.screen(), 20, 0.1)
    tmux("send-keys", "-t", "top", "C-c")
    wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), 10, 0.05, what="top exits on ^C")
    assert exit_file.read_text().strip() == "0"


def test_plain_output_when_piped(watcher: Proc, simulator: str, spool_dir: Path, tmp_path: Path) -> None:
    """Not a terminal: a plain block whenever something changed, ending once the run has; with the
    server known, the running agent's tool shows as its activity."""
    drop_atomically(spool_dir, "steps.json", TWO_STEPS)
    run_dir = the_run(spool_dir, "steps")
    argv = occoord_argv("top", "--spool", str(spool_dir), "--server", simulator, "--interval", "0.2", "steps")
    top = Proc(argv, tmp_path / "top.log")
    wait_for(lambda: not top.alive(), 60, 0.1, what="top ends with the run")
    assert top.stop() == 0, top.output()
    out = top.output()
    assert "\x1b" not in out  # no escape codes in a pipe
    blocks = [b for b in out.split("--- occoord top") if b.strip()]
    assert len(blocks) >= 3, out
    assert "first   pending" in blocks[0] or "first   pending" in blocks[1]
    assert "bash sim work (running)" in out  # read from the server while the agent worked
    assert f"{simulator} (1.18.33-sim)" in blocks[0]
    assert "finished: 2 done, 0 failed, 0 running, 0 queued" in blocks[-1]
    assert summary(run_dir)["ok"] is True


def test_once_and_the_status_alias(watcher: Proc, spool_dir: Path) -> None:
    drop_atomically(spool_dir, "steps.json", TWO_STEPS)
    run_dir = the_run(spool_dir, "steps")
    summary(run_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCCOORD_")}
    once = subprocess.run(
        occoord_argv("top", "--spool", str(spool_dir), "--once"), capture_output=True, text=True, env=env
    )
    assert once.returncode == 0 and f"{run_dir.name} (steps) finished" in once.stdout
    alias = subprocess.run(
        occoord_argv("status", "--spool", str(spool_dir), "--watch", "latest"),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert alias.returncode == 0, alias.stderr
    assert "first step written" in alias.stdout and "second step written" in alias.stdout
