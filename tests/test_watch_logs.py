"""What `occoord watch` logs (issue 14 item 7): at the default level, one line per run accepted,
per task transition (naming its run) and per run finished (with counts); HTTP requests only at -vv."""

from __future__ import annotations

from pathlib import Path

from e2ekit import FAST, drop_atomically, manifest, summary, task, the_run
from support.processes import Proc, occoord_argv


def watch(spool: Path, workdir: Path, *verbosity: str) -> Proc:
    argv = occoord_argv(
        *verbosity, "watch", "--spool", str(spool), "--workdir", str(workdir), *FAST, "--simulate"
    )
    proc = Proc(argv, spool.parent / f"watch{''.join(verbosity)}.log")
    proc.ready("occoord: watching", timeout=30)
    return proc


def run_one(spool: Path, workdir: Path, *verbosity: str) -> str:
    watcher = watch(spool, workdir, *verbosity)
    try:
        doc = manifest(
            task("ok", "[sim: work 0.05]"), task("bad", "[sim: error APIError fatal]", retries=0), name="logs"
        )
        drop_atomically(spool, "logs.json", doc)
        summary(the_run(spool, "logs"))
    finally:
        assert watcher.stop() == 0
    return watcher.output()


def test_the_default_log_tells_the_runs_story_without_http_lines(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = run_one(tmp_path / "spool", workdir)
    run_id = the_run(tmp_path / "spool", "logs").name
    assert f"as run {run_id} (2 tasks)" in out
    assert f"{run_id}/ok: queued -> pending" in out and f"{run_id}/ok: pending -> done" in out
    assert f"run {run_id} finished: some tasks failed (1 done, 1 failed)" in out
    assert "HTTP Request" not in out and " DEBUG " not in out


def test_http_requests_are_logged_at_vv(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    out = run_one(tmp_path / "spool", workdir, "-vv")
    assert "HTTP Request: POST" in out
