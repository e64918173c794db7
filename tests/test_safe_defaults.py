"""Safe defaults, tested from the outside.

One watcher runs under ``umask 000`` (the most permissive a user could have) and spawns its own
server: a fake ``opencode`` that records how it was started and then becomes the simulator. While
it runs we read ``/proc``: the server's command line, environment and listening sockets. Then the
spool's files are checked for their modes, the hooks for what reached them, and the logs and files
for the server's password.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from e2ekit import FAST, HOOK, hook_record, manifest, summary, the_run
from support.processes import Proc, occoord_argv, wait_for, watch_argv

from occoord.cli.main import main as occoord_main
from occoord.opencode.server import OpenCodeServer
from occoord.spool.accept import accept_file
from occoord.spool.layout import Spool

pytestmark = pytest.mark.slow

needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")

# A fake `opencode`: it notes its argv and pid, then becomes the simulator on the host and port it
# was given (and with the password from its environment, as the real server takes it).
FAKE_OPENCODE = """\
#!{python}
import json, os, sys
with open({record!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "pid": os.getpid()}}) + "\\n")
args = sys.argv[1:]
host, port = args[args.index("--hostname") + 1], args[args.index("--port") + 1]
code = "import sys; from occoord.sim.simulator import main; main(int(sys.argv[2]), sys.argv[1])"
os.execv(sys.executable, [sys.executable, "-c", code, host, port])
"""

HOSTILE_REASON = 'x\'; touch PWN1; echo $(touch PWN2) `touch PWN3` "$HOME" && rm -rf ./nothing #'
HOSTILE_FILE = "$(touch PWN4);`touch PWN5`.json"


@dataclass
class Scenario:
    root: Path
    spool: Path
    hooks: Path
    fake_argv: list[str] = field(default_factory=list)
    server_pid: int = 0
    server_cmdline: list[bytes] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)
    watcher_cmdline: list[bytes] = field(default_factory=list)
    url: str = ""
    listeners: list[str] = field(default_factory=list)
    health_without_auth: int = 0
    health_with_auth: int = 0
    watcher_log: str = ""
    run_dir: Path = Path()
    modes: dict[str, int] = field(default_factory=dict)
    running_modes: dict[str, int] = field(default_factory=dict)  # the spool's files while it ran

    @property
    def password(self) -> str:
        return self.server_env.get("OPENCODE_SERVER_PASSWORD", "")


def proc_cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def proc_environ(pid: int) -> dict[str, str]:
    out = {}
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        key, eq, value = item.partition(b"=")
        if eq:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def tcp_listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc shows them) of every socket listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                found.append(address)
    return found


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    root = tmp_path_factory.mktemp("safe")
    sc = Scenario(root=root, spool=root / "spool", hooks=root / "hooks")
    sc.hooks.mkdir()
    workdir = root / "work"
    workdir.mkdir()
    record = root / "fake-argv.jsonl"
    fake = root / "bin" / "opencode"
    fake.parent.mkdir()
    fake.write_text(FAKE_OPENCODE.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    argv = watch_argv(sc.spool, workdir, *FAST, "--opencode-bin", str(fake))
    # Nothing of the caller's OpenCode or occoord settings (a server password, a spool) may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCODE_", "OCCOORD_"))}
    umask = ["sh", "-c", 'umask 000; exec "$@"', "sh"]
    watcher = Proc([*umask, *argv], root / "watch.log", env=env, inherit=False)
    try:
        watcher.ready(timeout=30)
        started = json.loads(record.read_text().splitlines()[0])
        sc.fake_argv, sc.server_pid = started["argv"], started["pid"]
        sc.server_cmdline = proc_cmdline(sc.server_pid)
        sc.server_env = proc_environ(sc.server_pid)
        sc.watcher_cmdline = proc_cmdline(watcher.pid)
        log = (sc.spool / "opencode.log").read_text()
        sc.url = log.split("listening on ")[1].split()[0]
        sc.listeners = tcp_listeners(int(sc.url.rsplit(":", 1)[1]))
        sc.health_without_auth = httpx.get(f"{sc.url}/global/health", timeout=10).status_code
        auth = ("opencode", sc.password)
        sc.health_with_auth = httpx.get(f"{sc.url}/global/health", auth=auth, timeout=10).status_code

        hook = [sys.executable, "-c", HOOK, str(sc.hooks), "$OCCOORD_REASON", "`touch PWN6`", "$(touch PWN7)"]
        run_hook = f"{sys.executable} -c {shlex.quote(HOOK)} {sc.hooks} $OCCOORD_RUN;touch PWN8"
        doc = manifest(
            {"id": "ok", "prompt": "[sim: work 0.05] [sim: reply all good]"},
            {"id": "blocker", "prompt": "[sim: hang]"},
            {"id": "victim", "prompt": "x", "depends_on": ["blocker"]},
            hooks={"on_task_end": hook, "on_run_end": run_hook},
        )
        (sc.spool / "incoming" / HOSTILE_FILE).write_text(json.dumps(doc))
        (sc.spool / "incoming" / "bad.json").write_text("{not json")
        sc.run_dir = the_run(sc.spool)
        signal = occoord_argv("signal", "--spool", str(sc.spool), sc.run_dir.name)
        wait_for(lambda: (sc.run_dir / "tasks" / "blocker.pending").exists(), timeout=20)
        subprocess.run([*signal, "victim", "failed", "-m", HOSTILE_REASON], check=True, capture_output=True)
        subprocess.run([*signal, "blocker", "done", "-m", "by hand"], check=True, capture_output=True)
        summary(sc.run_dir, timeout=30)
        wait_for(lambda: len(list(sc.hooks.glob("*.json"))) == 4, timeout=30)
        wait_for(lambda: list((sc.spool / "rejected").glob("*.error")), timeout=20)
        sc.watcher_log = watcher.output()
        for path in sc.spool.rglob("*"):
            sc.running_modes[str(path.relative_to(sc.spool))] = path.lstat().st_mode
    finally:
        assert watcher.stop() == 0, watcher.output()[-3000:]
    for path in [sc.spool, *sc.spool.rglob("*")]:
        sc.modes[str(path.relative_to(sc.spool))] = path.lstat().st_mode
    yield sc


# ---------------------------------------------------------------------------- the spawned server


@needs_proc
def test_spawned_server_listens_on_loopback_only(scenario: Scenario) -> None:
    assert scenario.fake_argv == ["serve", "--hostname", "127.0.0.1", "--port", "0"]
    assert scenario.url.startswith("http://127.0.0.1:")
    assert scenario.listeners == ["0100007F"], "one listener, on 127.0.0.1 (not 0.0.0.0 or ::)"


@needs_proc
def test_spawned_server_gets_a_generated_password_that_it_enforces(scenario: Scenario) -> None:
    assert len(scenario.password) >= 24
    assert scenario.health_without_auth == 401
    assert scenario.health_with_auth == 200
    # Generated afresh for each server (not a constant, not derived from the spool).
    passwords = {OpenCodeServer(cwd=scenario.root).password for _ in range(20)}
    assert len(passwords) == 20 and scenario.password not in passwords


@needs_proc
def test_password_is_never_in_argv_logs_files_or_hooks(scenario: Scenario) -> None:
    secret = scenario.password.encode()
    assert secret
    assert not any(secret in arg for arg in scenario.server_cmdline), scenario.server_cmdline
    assert not any(secret in arg for arg in scenario.watcher_cmdline)
    assert secret.decode() not in scenario.watcher_log
    for path in scenario.spool.rglob("*"):  # opencode.log, journals, records, summaries, results
        if path.is_file() and not path.is_symlink() and path.name != "server.json":
            assert secret not in path.read_bytes(), path
    for path in scenario.hooks.glob("*.json"):
        env = json.loads(path.read_text())["env"]
        assert secret.decode() not in json.dumps(env), f"hook {path.name} saw the password"


# ---------------------------------------------------------------------------- file modes


def user_file(rel: str) -> bool:
    """Manifests are the user's own files, moved (not written) by occoord: their mode is the user's."""
    parts = rel.split("/")
    return (parts[0] == "runs" and parts[-1].startswith("manifest.")) or (
        parts[0] == "rejected" and not rel.endswith(".error")
    )


def test_spool_dirs_0700_files_0600_even_under_umask_000(scenario: Scenario) -> None:
    modes = scenario.modes
    names = set(modes)
    run = f"runs/{scenario.run_dir.name}"
    for expected in (
        f"{run}/events.jsonl",
        f"{run}/summary.json",
        f"{run}/summary.md",
        f"{run}/run.json",
        f"{run}/results/ok.md",
        f"{run}/tasks/ok.done",
        f"{run}/.lock",
        ".lock",
        ".watcher.lock",
        "PROTOCOL",
    ):
        assert expected in names, f"{expected} missing: {sorted(names)}"
    wrong = []
    for rel, mode in modes.items():
        if rel == "opencode.log" or user_file(rel):
            continue  # the server log has its own test; manifests keep the user's mode
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        if (stat.S_ISREG(mode) and stat.S_IMODE(mode) != want) or (
            stat.S_ISDIR(mode) and stat.S_IMODE(mode) != want
        ):
            wrong.append(f"{rel}: {stat.S_IMODE(mode):o}")
    assert not wrong, wrong


def test_files_are_private_while_the_watcher_runs_too(scenario: Scenario) -> None:
    """Also what exists only while it runs (e.g. a record of the spawned server, which may hold its
    password: the one file allowed to)."""
    wrong = [
        f"{rel}: {stat.S_IMODE(mode):o}"
        for rel, mode in scenario.running_modes.items()
        if rel != "opencode.log"
        and not user_file(rel)
        and not rel.startswith("incoming/")
        and stat.S_IMODE(mode) != (0o700 if stat.S_ISDIR(mode) else 0o600)
    ]
    assert not wrong, wrong


def test_server_log_is_private(scenario: Scenario) -> None:
    assert stat.S_IMODE(scenario.modes["opencode.log"]) == 0o600


# ---------------------------------------------------------------------------- hooks


def test_hooks_get_data_only_through_the_environment(scenario: Scenario) -> None:
    victim = hook_record(scenario.hooks, "victim")
    # The values arrive verbatim in the environment ...
    assert victim["env"]["OCCOORD_REASON"] == HOSTILE_REASON
    assert victim["env"]["OCCOORD_TASK"] == "victim" and victim["env"]["OCCOORD_STATE"] == "failed"
    # ... and the argv is the manifest's, word for word: nothing expanded, nothing run.
    assert victim["argv"] == ["$OCCOORD_REASON", "`touch PWN6`", "$(touch PWN7)"]
    ran = hook_record(scenario.hooks, "run")
    assert ran["argv"] == ["$OCCOORD_RUN;touch", "PWN8"], "a string hook is split into words, not run by sh"
    assert ran["env"]["OCCOORD_RUN"] == scenario.run_dir.name
    for n in range(1, 9):
        found = [p for p in (scenario.root, Path.cwd(), scenario.spool) if list(p.rglob(f"PWN{n}"))]
        assert not found, f"PWN{n} was created: a shell ran"


# ---------------------------------------------------------------------------- names and paths


def test_run_id_of_a_hostile_file_name_stays_in_runs(scenario: Scenario) -> None:
    name = scenario.run_dir.name
    assert scenario.run_dir.parent == scenario.spool / "runs"
    assert all(c.isalnum() or c in "._-" for c in name), name
    assert json.loads((scenario.run_dir / "run.json").read_text())["source_name"] == HOSTILE_FILE


def run_cli(*args: str) -> int:
    try:
        occoord_main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_ids_and_paths_given_to_the_cli_never_escape_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool").init()
    path = spool.incoming / "plan.json"
    path.write_text(json.dumps(manifest({"id": "a", "prompt": "x"})))
    run_id = accept_file(spool, path, settled=True).run_id
    assert run_id is not None
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    s = str(spool.root)
    bad_runs = ["..", "../..", "../../etc", f"{run_id}/../{run_id}", "/etc", f"../runs/{run_id}"]
    bad_tasks = ["../a", "../../../tmp/x", "/etc/passwd", "a/../a", ".lock", "..", "a.done"]
    codes = []
    for bad in bad_runs:
        codes += [
            run_cli("signal", "--spool", s, bad, "a", "done"),
            run_cli("cancel", "--spool", s, bad),
            run_cli("retry", "--spool", s, bad),
            run_cli("status", "--spool", s, bad),
        ]
    for bad in bad_tasks:
        codes += [
            run_cli("signal", "--spool", s, run_id, bad, "done"),
            run_cli("cancel", "--spool", s, run_id, bad),
            run_cli("retry", "--spool", s, run_id, bad),
        ]
    assert all(code == 2 for code in codes), codes
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before, "nothing was created or moved"
    assert Spool(spool.root).run(run_id).tasks.current("a") is not None


# ---------------------------------------------------------------------------- filesystems


def other_filesystem(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the tests' temporary directory")
    return shm / f"occoord-test-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.mark.parametrize("sub", ["tmp", "runs", "incoming"])
def test_spool_split_across_filesystems_is_refused(tmp_path: Path, sub: str) -> None:
    elsewhere = other_filesystem(tmp_path)
    elsewhere.mkdir()
    try:
        root = tmp_path / "spool"
        root.mkdir()
        (root / sub).symlink_to(elsewhere)
        env = {**os.environ, "OCCOORD_SPOOL": str(root)}
        for argv in (["watch", "--simulate"], ["accept"]):
            done = subprocess.run(
                occoord_argv(*argv),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            assert done.returncode != 0, done
            assert "another filesystem" in done.stderr and str(root / sub) in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
        assert list(elsewhere.iterdir()) == [], "nothing was written there"
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_fake_opencode_is_what_the_scenario_ran(scenario: Scenario) -> None:
    """Guard for the other tests: the server really was spawned by the watcher (not attached)."""
    assert scenario.server_cmdline[:2] == [os.fsencode(sys.executable), b"-c"]
    assert "opencode server listening on" in (scenario.spool / "opencode.log").read_text()
    assert b"--server" not in scenario.watcher_cmdline
