"""Accepting and rejecting manifests, crash recovery of half-built runs, and the spool's layout."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from spoolkit import make_manifest, new_run

from occoord.errors import SpoolError
from occoord.manifest.load import load_manifest
from occoord.spool.accept import accept_file, build_run
from occoord.spool.journal import read_events
from occoord.spool.layout import Run, Spool
from occoord.spool.names import parse_run_id
from occoord.spool.recovery import recover
from occoord.spool.states import TaskState
from occoord.spool.submit import submit


def test_layout_is_private_and_versioned(spool: Spool) -> None:
    for sub in ("incoming", "tmp", "runs", "rejected"):
        assert stat.S_IMODE((spool.root / sub).stat().st_mode) == 0o700
    assert (spool.root / "PROTOCOL").read_text() == "occoord-spool 1\n"
    run = new_run(spool, ["a"])
    assert stat.S_IMODE(run.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.tasks.path("a", TaskState.QUEUED).stat().st_mode) == 0o600


def test_other_protocol_version_is_refused(spool: Spool) -> None:
    (spool.root / "PROTOCOL").write_text("occoord-spool 2\n")
    with pytest.raises(SpoolError, match="occoord-spool 2"):
        Spool(spool.root).init()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second filesystem (/dev/shm)")
def test_tmp_on_another_filesystem_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    elsewhere = Path("/dev/shm") / f"occoord-test-{os.getpid()}"
    elsewhere.mkdir()
    try:
        (root / "tmp").symlink_to(elsewhere)
        if os.stat(elsewhere).st_dev == os.stat(root).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        with pytest.raises(SpoolError, match="another filesystem"):
            Spool(root).init()
    finally:
        elsewhere.rmdir()


def test_accept_moves_the_manifest_and_queues_every_task(spool: Spool) -> None:
    path = spool.incoming / "build plan.json"
    path.write_bytes(make_manifest(["a", "b"]))
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "accepted" and outcome.run_id
    assert parse_run_id(outcome.run_id) is not None
    assert outcome.run_id.endswith("-build_plan")
    run = spool.run(outcome.run_id)
    assert not path.exists()
    assert json.loads((run.dir / "manifest.json").read_bytes())["tasks"][0]["id"] == "a"
    assert sorted(os.listdir(run.tasks.dir)) == [".lock", "a.queued", "b.queued"] or sorted(
        n for n in os.listdir(run.tasks.dir) if not n.startswith(".")
    ) == ["a.queued", "b.queued"]
    events = list(read_events(run.dir))
    assert [e.target for e in events if e.kind == "transition"] == ["queued", "queued"]


def test_same_name_same_second_gets_a_suffix(spool: Spool) -> None:
    ids = []
    for _ in range(3):
        path = spool.incoming / "x.yaml"
        path.write_text("tasks:\n  - id: a\n    prompt: hi\n")
        ids.append(accept_file(spool, path, settled=True).run_id)
    assert len(set(ids)) == 3
    assert ids == sorted(ids) or len({i.rsplit("-", 1)[0] for i in ids}) <= 3


def test_unsettled_files_are_left_for_later_even_if_invalid(spool: Spool) -> None:
    path = spool.incoming / "half.json"
    path.write_bytes(make_manifest(["a"])[:15])  # a cp caught mid-copy
    assert accept_file(spool, path, settled=False).kind == "not_ready"
    assert path.exists() and os.listdir(spool.rejected) == []
    path.write_bytes(make_manifest(["a"]))  # the copy finishes
    assert accept_file(spool, path, settled=True).kind == "accepted"


def test_invalid_manifest_is_rejected_with_its_reason_beside_it(spool: Spool) -> None:
    path = spool.incoming / "bad.json"
    path.write_bytes(b'{"tasks": [{"id": "a", "prompt": "x", "depends_on": ["lint"]}]}')
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "rejected"
    assert outcome.path.read_bytes().startswith(b'{"tasks"')
    error = outcome.path.with_name(outcome.path.name + ".error").read_text()
    assert "tasks[0].depends_on: unknown task 'lint'" in error


@pytest.mark.parametrize("name", ["a.txt", "noext"])
def test_unsupported_extensions_are_rejected(spool: Spool, name: str) -> None:
    (spool.incoming / name).write_bytes(make_manifest(["a"]))
    outcome = accept_file(spool, spool.incoming / name, settled=True)
    assert outcome.kind == "rejected" and "unsupported extension" in outcome.reason


@pytest.mark.parametrize("name", [".hidden.json", "x.json.tmp", "x.json~", "x.swp", "x.json.part"])
def test_writers_temporary_names_are_ignored(spool: Spool, name: str) -> None:
    (spool.incoming / name).write_bytes(make_manifest(["a"]))
    assert accept_file(spool, spool.incoming / name, settled=True).kind == "ignored"
    assert spool.incoming_files() == []


def test_symlinks_are_rejected_without_following_them(spool: Spool, tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_bytes(make_manifest(["a"]))
    (spool.incoming / "link.json").symlink_to(outside)
    (spool.incoming / "zero.json").symlink_to("/dev/zero")
    for name in ("link.json", "zero.json"):
        outcome = accept_file(spool, spool.incoming / name, settled=True)
        assert outcome.kind == "rejected" and "symbolic link" in outcome.reason
        assert outcome.path.is_symlink()
    assert outside.exists()


def test_fifos_and_directories_are_left_alone(spool: Spool) -> None:
    os.mkfifo(spool.incoming / "pipe.json")
    (spool.incoming / "dir.json").mkdir()
    for name in ("pipe.json", "dir.json"):
        assert accept_file(spool, spool.incoming / name, settled=True).kind == "ignored"
        assert os.path.lexists(spool.incoming / name)


def test_non_utf8_file_names_are_handled(spool: Spool) -> None:
    raw = os.fsencode(spool.incoming) + b"/caf\xe9.json"
    with open(raw, "wb") as fh:
        fh.write(make_manifest(["a"]))
    [path] = spool.incoming_files()
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "accepted" and outcome.run_id and outcome.run_id.endswith("-caf_")


def test_oversize_manifest_is_rejected(spool: Spool) -> None:
    path = spool.incoming / "big.json"
    path.write_bytes(b" " * (2 << 20))
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "rejected" and "over the limit" in outcome.reason


def test_submit_goes_through_tmp_and_never_clobbers(spool: Spool, tmp_path: Path) -> None:
    src = tmp_path / "plan.json"
    src.write_bytes(make_manifest(["a"]))
    first, second = submit(spool, src), submit(spool, src)
    assert first.name == "plan.json" and second.name == "plan-2.json"
    assert os.listdir(spool.tmp) == []


def test_crash_after_claiming_the_manifest_returns_it_to_incoming(spool: Spool) -> None:
    path = spool.incoming / "plan.json"
    path.write_bytes(make_manifest(["a", "b"]))
    run_id = spool.new_run_id("plan")
    staging = build_run(spool, run_id, load_manifest(path), "plan.json")
    os.rename(path, staging / "manifest.json")  # ... and the process died here
    repairs = recover(spool)
    assert any("returned plan.json" in r for r in repairs)
    assert os.listdir(spool.runs) == [] and (spool.incoming / "plan.json").exists()
    assert accept_file(spool, spool.incoming / "plan.json", settled=True).kind == "accepted"


def test_crash_before_claiming_removes_the_staging_dir(spool: Spool) -> None:
    path = spool.incoming / "plan.json"
    path.write_bytes(make_manifest(["a"]))
    build_run(
        spool,
        spool.new_run_id("plan"),
        load_manifest(path),
        "plan.json",
    )
    recover(spool)
    assert os.listdir(spool.runs) == [] and path.exists()


def test_recover_cleans_only_old_temp_files(spool: Spool) -> None:
    old, new = spool.tmp / ".old.tmp", spool.tmp / ".new.tmp"
    old.write_text("x")
    new.write_text("y")
    os.utime(old, (1, 1))
    recover(spool)
    assert not old.exists() and new.exists()


def test_run_finished_when_every_task_is_terminal(spool: Spool) -> None:
    run = new_run(spool, ["a", "b"])
    run.signal("a", TaskState.DONE)
    assert not run.finished()
    run.signal("b", TaskState.FAILED, "nope")
    assert run.finished()
    assert run.tasks.read("b") is not None and run.tasks.read("b").reason == "nope"  # type: ignore[union-attr]


def test_moved_manifests_become_private(spool: Spool) -> None:
    good, bad = spool.incoming / "good.json", spool.incoming / "bad.json"
    good.write_bytes(make_manifest(["a"]))
    bad.write_bytes(b"{broken")
    for path in (good, bad):
        path.chmod(0o644)  # the author's mode
    accepted = accept_file(spool, good, settled=True)
    rejected = accept_file(spool, bad, settled=True)
    assert accepted.kind == "accepted" and rejected.kind == "rejected"
    assert accepted.run_id is not None
    assert stat.S_IMODE((spool.runs / accepted.run_id / "manifest.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(rejected.path.stat().st_mode) == 0o600


def test_without_renameat2_moves_fall_back_and_submit_still_renames(
    spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from occoord import fsutil

    monkeypatch.setattr(fsutil, "_renameat2", None)
    assert not fsutil.rename_noreplace(spool.tmp / "a", spool.tmp / "b")
    src = tmp_path / "plan.json"
    src.write_bytes(make_manifest(["a"]))
    first, second = submit(spool, src), submit(spool, src)
    assert first.name == "plan.json" and second.name == "plan-2.json"
    assert os.stat(first).st_nlink == 1  # renamed in, not linked: a watcher sees a moved-to
    assert os.listdir(spool.tmp) == []
    assert accept_file(spool, first, settled=True).kind == "accepted"
    (spool.incoming / "bad.json").write_bytes(b"{broken")
    assert accept_file(spool, spool.incoming / "bad.json", settled=True).kind == "rejected"
    other = spool.incoming / "other.json"
    other.write_text("x")
    with pytest.raises(FileExistsError):
        fsutil.move_noclobber(second, other)  # link + unlink refuses an existing target too
    assert second.exists() and other.read_text() == "x"


def test_renameat2_never_replaces(tmp_path: Path) -> None:
    from occoord import fsutil

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    with pytest.raises(FileExistsError):
        fsutil.move_noclobber(a, b)
    assert a.read_text() == "a" and b.read_text() == "b"
    with pytest.raises(FileNotFoundError):
        fsutil.move_noclobber(tmp_path / "missing", tmp_path / "c")
    fsutil.move_noclobber(a, tmp_path / "c")
    assert not a.exists() and (tmp_path / "c").read_text() == "a"


def test_a_reason_left_without_its_manifest_by_a_crash_is_removed(spool: Spool) -> None:
    path = spool.incoming / "bad.json"
    path.write_bytes(b"{broken")
    # Killed after writing the .error, before moving the manifest beside it.
    (spool.rejected / "20260101T000000Z-bad.json.error").write_text("bad.json was rejected at ...")
    # A reason whose manifest someone else removed, for a name not in incoming/, is left alone.
    (spool.rejected / "20260101T000000Z-other.json.error").write_text("other.json was rejected ...")
    repairs = recover(spool)
    assert any("20260101T000000Z-bad.json.error" in r for r in repairs)
    assert sorted(os.listdir(spool.rejected)) == ["20260101T000000Z-other.json.error"]
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "rejected"
    assert outcome.path.with_name(outcome.path.name + ".error").exists()


def test_a_long_rejected_name_keeps_its_extension_and_the_reason_names_it(spool: Spool) -> None:
    name = "é" * 120 + ".yaml"  # 245 bytes
    (spool.incoming / name).write_bytes(b"tasks: [")
    outcome = accept_file(spool, spool.incoming / name, settled=True)
    assert outcome.kind == "rejected"
    assert outcome.path.name.endswith(".yaml") and len(os.fsencode(outcome.path.name)) < 240
    error = outcome.path.with_name(outcome.path.name + ".error").read_text()
    assert error.startswith(f"{name} was rejected at ")


def test_a_run_whose_plan_outgrows_the_manifest_limit_still_loads(spool: Spool, tmp_path: Path) -> None:
    """Defaults are applied to every task in run.json, so a manifest under 1 MiB can make a plan
    over it: the stored plan is trusted for size (it was validated at acceptance) and loads."""
    defaults = {
        "agent": "build",
        "model": "provider/some-model-name",
        "directory": str(tmp_path),
        "timeout": "30m",
    }
    tasks = [{"id": f"task-{i:05d}", "prompt": "p" * 120} for i in range(4000)]
    data = json.dumps({"version": 1, "name": "big", "defaults": defaults, "tasks": tasks}).encode()
    assert len(data) < 1024 * 1024
    path = spool.incoming / "big.json"
    path.write_bytes(data)
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "accepted" and outcome.run_id is not None, outcome
    assert (spool.runs / outcome.run_id / "run.json").stat().st_size > 1024 * 1024
    run = spool.run(outcome.run_id)
    assert len(run.manifest.tasks) == 4000
    assert run.manifest.tasks[-1].agent == "build"


def test_the_accepted_plan_handed_on_equals_the_one_read_back(spool: Spool, tmp_path: Path) -> None:
    """The coordinator uses the manifest accept() returns instead of re-reading run.json: they must
    be the same plan (prompt files inlined, defaults applied)."""
    (tmp_path / "prompt.md").write_text("from a file\n")
    doc = {
        "version": 1,
        "name": "same",
        "defaults": {"directory": str(tmp_path), "retries": 1, "timeout": "5m"},
        "tasks": [{"id": "a", "prompt_file": "prompt.md"}, {"id": "b", "prompt": "x", "depends_on": ["a"]}],
    }
    path = spool.incoming / "same.json"
    path.write_text(json.dumps(doc))
    outcome = accept_file(spool, path, settled=True)
    assert outcome.kind == "accepted" and outcome.run_id is not None and outcome.manifest is not None
    assert Run(spool, outcome.run_id).manifest == outcome.manifest


def test_a_journal_line_lost_with_the_power_is_written_again_when_the_run_is_loaded(spool: Spool) -> None:
    """Transition lines are not fsynced (the state files are): a line the disk never got is
    caught up from the files the next time the run is reconciled."""
    run = new_run(spool, ["a"])
    journal = run.dir / "events.jsonl"
    kept = journal.read_bytes()
    run.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING, reason="dispatched")
    journal.write_bytes(kept)  # as if the appended line never reached the disk
    repairs = spool.run(run.id).tasks.reconcile()
    assert any("journal caught up" in r for r in repairs)
    last = [e for e in read_events(run.dir) if e.task == "a"][-1]
    assert (last.source, last.target) == ("queued", "pending")
