"""`occoord attach RUN TASK` execs `opencode attach URL --session ID --dir DIR`: here a fake
`opencode` on PATH writes down its argv and environment, for spawned and attached servers alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from occoord.opencode.procinfo import ServerRecord
from occoord.spool.accept import accept_file
from occoord.spool.layout import Run, Spool
from occoord.spool.states import Actor, TaskState

FAKE = """#!{python}
import json, os, sys
with open({out!r}, "w") as fh:
    json.dump({{"argv": sys.argv, "env": dict(os.environ)}}, fh)
sys.exit(7)
"""


@pytest.fixture
def fake_bin(tmp_path: Path) -> tuple[Path, Path]:
    """A directory holding the fake `opencode`, and where it writes what it was given."""
    bindir, out = tmp_path / "bin", tmp_path / "attach.json"
    bindir.mkdir()
    script = bindir / "opencode"
    script.write_text(FAKE.format(python=sys.executable, out=str(out)))
    script.chmod(0o755)
    return bindir, out


def pending_run(spool: Spool, workdir: Path) -> Run:
    workdir.mkdir(exist_ok=True)
    doc = {
        "version": 1,
        "name": "attachable",
        "tasks": [{"id": "a", "prompt": "x", "directory": str(workdir)}, {"id": "b", "prompt": "y"}],
    }
    (spool.incoming / "attachable.json").write_text(json.dumps(doc))
    outcome = accept_file(spool, spool.incoming / "attachable.json", settled=True)
    assert outcome.run_id is not None
    run = spool.run(outcome.run_id)
    run.tasks.transition(
        "a", TaskState.QUEUED, TaskState.PENDING, actor=Actor.COORDINATOR, reason="dispatched"
    )
    run.tasks.update("a", TaskState.PENDING, session_id="ses_attach123")
    return run


def attach(spool: Spool, bindir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OCCOORD_", "OPENCODE_"))}
    environ["PATH"] = f"{bindir}{os.pathsep}{environ.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "occoord", "attach", "--spool", str(spool.root), *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_attach_to_a_given_server(spool: Spool, tmp_path: Path, fake_bin: tuple[Path, Path]) -> None:
    bindir, out = fake_bin
    run = pending_run(spool, tmp_path / "work")
    url = "http://127.0.0.1:4096"
    done = attach(spool, bindir, "--server", url, "--server-password", "s3cret", "latest", "a")
    assert done.returncode == 7, done.stderr  # the UI's own exit code: this process became it
    seen = json.loads(out.read_text())
    assert seen["argv"][1:] == ["attach", url, "--session", "ses_attach123", "--dir", str(tmp_path / "work")]
    assert Path(seen["argv"][0]).resolve() == (bindir / "opencode").resolve()
    assert seen["env"]["OPENCODE_SERVER_PASSWORD"] == "s3cret"
    assert not any("s3cret" in arg for arg in seen["argv"])
    assert run.tasks.current("a") is TaskState.PENDING  # nothing written


def test_attach_reads_the_spawned_servers_record(
    spool: Spool, tmp_path: Path, fake_bin: tuple[Path, Path]
) -> None:
    bindir, out = fake_bin
    run = pending_run(spool, tmp_path / "work")
    # A running process stands in for the server: this test's own.
    record = ServerRecord(
        os.getpid(), "http://127.0.0.1:5555", "recorded-pw", "opencode", "1.18.33", None, "f"
    )
    (spool.root / "server.json").write_bytes(record.to_bytes())
    done = attach(spool, bindir, run.id, "a", env={"OPENCODE_SERVER_PASSWORD": "not-this-one"})
    assert done.returncode == 7, done.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"][2] == "http://127.0.0.1:5555"
    assert seen["env"]["OPENCODE_SERVER_PASSWORD"] == "recorded-pw"


def test_attach_takes_the_watch_environment(
    spool: Spool, tmp_path: Path, fake_bin: tuple[Path, Path]
) -> None:
    bindir, out = fake_bin
    pending_run(spool, tmp_path / "work")
    env = {"OCCOORD_SERVER": "http://127.0.0.1:6000", "OPENCODE_SERVER_PASSWORD": "from-env"}
    done = attach(spool, bindir, "attachable", "a", env=env)
    assert done.returncode == 7, done.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"][2] == "http://127.0.0.1:6000"
    assert seen["env"]["OPENCODE_SERVER_PASSWORD"] == "from-env"


def test_attach_needs_a_session_and_a_server(
    spool: Spool, tmp_path: Path, fake_bin: tuple[Path, Path]
) -> None:
    bindir, out = fake_bin
    pending_run(spool, tmp_path / "work")
    no_session = attach(spool, bindir, "--server", "http://127.0.0.1:1", "latest", "b")
    assert no_session.returncode == 1 and "has no session yet (queued)" in no_session.stderr
    no_server = attach(spool, bindir, "latest", "a")
    assert no_server.returncode == 1 and "no OpenCode server known" in no_server.stderr
    no_task = attach(spool, bindir, "--server", "http://127.0.0.1:1", "latest", "zzz")
    assert no_task.returncode == 2 and "no task 'zzz'" in no_task.stderr
    assert not out.exists()
