"""The command line: exit codes, messages, ``--spool``/OCCOORD_SPOOL, and what each command changes.

Most tests run the real entry point (``occoord.cli.main:main``, what the ``occoord`` script calls) in
process under click's CliRunner isolation; a few run ``python -m occoord`` as a subprocess, the
way users and scripts do. Exit codes: 0 success, 1 operational error, 2 bad input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from spoolkit import make_manifest, new_run
from test_manifest_corpus import BAD, GOOD, BadCase, bad_cases, bad_params, materialize

from occoord.cli.main import cli, main
from occoord.manifest.schema import manifest_schema
from occoord.spool.journal import read_events
from occoord.spool.layout import Run, Spool
from occoord.spool.states import Actor, TaskState

SPOOL_COMMANDS = ("init", "submit", "accept", "signal", "status")
# bad manifests that once crashed the parser (TypeError, ValueError, OverflowError): a traceback
ONCE_CRASHING = ("id-list.json", "yaml-unhashable-key.yaml", "yaml-bad-date.yaml", "timeout-overflow.json")


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str


def occoord(*args: str | Path, env: dict[str, str | None] | None = None) -> Outcome:
    """Run ``occoord ARGS`` in process through ``main``; OCCOORD_SPOOL is unset unless given."""
    with CliRunner().isolation(env={"OCCOORD_SPOOL": None, **(env or {})}) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return Outcome(code, out.getvalue().decode(), err.getvalue().decode())


def occoord_process(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> Outcome:
    """Run ``python -m occoord ARGS`` as a real process."""
    environ = {k: v for k, v in os.environ.items() if k != "OCCOORD_SPOOL"} | (env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "occoord", *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(outcome: Outcome, code: int, *fragments: str) -> None:
    """A failure is an exit code and one ``occoord: ...`` line on stderr, nothing else."""
    assert outcome.code == code, outcome
    assert "Traceback" not in outcome.stderr
    assert outcome.stdout == ""
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("occoord: "), outcome.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def task_files(run: Run) -> dict[str, str]:
    """Task -> state, read from the names in tasks/ alone (as ``ls`` shows them)."""
    names = [n for n in os.listdir(run.dir / "tasks") if not n.startswith(".")]
    return dict(n.rsplit(".", 1) for n in names)


def pending_run(spool: Spool) -> Run:
    """A run with tasks plan (queued) and build (pending: dispatched by the coordinator)."""
    run = new_run(spool, ["plan", "build"])
    run.tasks.transition("build", TaskState.QUEUED, TaskState.PENDING, actor=Actor.COORDINATOR)
    return run


# -- help, version, schema -----------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command: str) -> None:
    outcome = occoord(command, "--help")
    assert outcome.code == 0, outcome
    assert outcome.stdout.startswith(f"Usage: occoord {command}")
    if command in SPOOL_COMMANDS:
        assert "--spool" in outcome.stdout and "OCCOORD_SPOOL" in outcome.stdout


def test_main_help_lists_the_commands() -> None:
    outcome = occoord("--help")
    assert outcome.code == 0
    for command in (*SPOOL_COMMANDS, "validate", "schema"):
        assert command in outcome.stdout


def test_unknown_command_is_a_usage_error() -> None:
    outcome = occoord("frobnicate")
    assert outcome.code == 2
    assert "No such command 'frobnicate'" in outcome.stderr
    assert "Traceback" not in outcome.stderr


def test_schema_prints_the_manifest_schema() -> None:
    outcome = occoord("schema")
    assert outcome.code == 0
    assert json.loads(outcome.stdout) == manifest_schema()


# -- validate -----------------------------------------------------------------------------------


def test_validate_good_manifests_exits_0_with_one_line_each(tmp_path: Path) -> None:
    paths = [materialize(GOOD / n, tmp_path) for n in ("minimal.json", "readme-example.yaml", "short.yml")]
    outcome = occoord("validate", *paths)
    assert outcome.code == 0, outcome
    assert outcome.stderr == ""
    assert outcome.stdout.splitlines() == [
        f"{paths[0]}: valid: 'minimal', 1 tasks, concurrency 4",
        f"{paths[1]}: valid: 'greeter', 2 tasks, concurrency 2",
        f"{paths[2]}: valid: 'short', 1 tasks, concurrency 4",
    ]


def test_validate_quiet_prints_nothing_when_valid() -> None:
    outcome = occoord("validate", "-q", GOOD / "minimal.json")
    assert outcome == Outcome(0, "", "")


@pytest.mark.parametrize("case", bad_params())
def test_validate_prints_every_problem_naming_the_file(case: BadCase, tmp_path: Path) -> None:
    path = materialize(case.path, tmp_path)
    outcome = occoord("validate", path)
    assert outcome.code == 2, outcome
    assert outcome.stdout == ""
    assert outcome.stderr.startswith(f"{path}: ")
    missing = [want.text for want in case.expected if not want.shown_in(outcome.stderr)]
    assert not missing, f"not shown: {missing}\n{outcome.stderr}"
    lines = outcome.stderr.splitlines()  # "FILE: PROBLEM", or "FILE: N problems" and one line each
    shown = 1 if len(lines) == 1 else len(lines) - 1
    assert shown == len(case.expected), outcome.stderr
    if shown > 1:
        assert lines[0] == f"{path}: {shown} problems"


def test_validate_reports_each_bad_file_and_still_lists_good_ones(tmp_path: Path) -> None:
    good, bad1, bad2 = GOOD / "minimal.json", BAD / "cycle.json", BAD / "tasks-empty.json"
    outcome = occoord("validate", bad1, good, bad2)
    assert outcome.code == 2
    assert outcome.stdout == f"{good}: valid: 'minimal', 1 tasks, concurrency 4\n"
    assert outcome.stderr.splitlines() == [
        f"{bad1}: tasks[1].depends_on: dependency cycle: a -> b -> c -> a",
        f"{bad2}: tasks: must not be empty",
    ]


def test_validate_missing_file_is_bad_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    outcome = occoord("validate", missing)
    assert outcome.code == 2
    assert outcome.stderr == f"{missing}: cannot read: No such file or directory\n"


def test_validate_needs_a_file() -> None:
    outcome = occoord("validate")
    assert outcome.code == 2
    assert "Missing argument 'FILES...'" in outcome.stderr


# -- init, --spool and OCCOORD_SPOOL ----------------------------------------------------------


def test_init_defaults_to_spool_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = occoord("init")
    assert outcome == Outcome(0, f"spool ready: {tmp_path / 'spool'}\n", "")
    assert (tmp_path / "spool" / "PROTOCOL").read_text() == "occoord-spool 1\n"
    for sub in ("incoming", "tmp", "runs", "rejected"):
        assert (tmp_path / "spool" / sub).is_dir()


def test_init_is_idempotent(tmp_path: Path) -> None:
    assert occoord("init", "--spool", tmp_path / "s").code == 0
    (tmp_path / "s" / "incoming" / "keep.json").write_bytes(make_manifest(["a"]))
    assert occoord("init", "--spool", tmp_path / "s").code == 0
    assert (tmp_path / "s" / "incoming" / "keep.json").exists()


def test_spool_comes_from_the_environment_and_the_option_wins(tmp_path: Path) -> None:
    from_env, from_option = tmp_path / "env-spool", tmp_path / "option-spool"
    outcome = occoord("init", env={"OCCOORD_SPOOL": str(from_env)})
    assert outcome.stdout == f"spool ready: {from_env}\n"
    outcome = occoord("init", "--spool", from_option, env={"OCCOORD_SPOOL": str(from_env)})
    assert outcome.stdout == f"spool ready: {from_option}\n"
    assert (from_option / "PROTOCOL").is_file()


def test_spool_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    outcome = occoord("status", "--spool", tmp_path / "file")
    assert outcome.code == 2
    assert "is a file" in outcome.stderr
    assert "Traceback" not in outcome.stderr


def test_status_of_a_missing_spool_does_not_create_it(tmp_path: Path) -> None:
    outcome = occoord("status", "--spool", tmp_path / "nowhere")
    assert_one_line_error(outcome, 1, str(tmp_path / "nowhere"), "not an occoord spool")
    assert not (tmp_path / "nowhere").exists()


def test_spool_of_another_protocol_version_is_refused(spool: Spool) -> None:
    (spool.root / "PROTOCOL").write_text("occoord-spool 2\n")
    outcome = occoord("status", "--spool", spool.root)
    assert_one_line_error(outcome, 1, "spool speaks 'occoord-spool 2'")


# -- submit and accept --------------------------------------------------------------------------


def test_submit_prints_where_the_manifest_went(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    source = GOOD / "minimal.json"
    first = occoord("submit", "--spool", spool_dir, source)
    second = occoord("submit", "--spool", spool_dir, source)
    assert (first.code, second.code) == (0, 0)
    assert first.stdout == f"{spool_dir / 'incoming' / 'minimal.json'}\n"
    assert second.stdout == f"{spool_dir / 'incoming' / 'minimal-2.json'}\n"
    assert (spool_dir / "incoming" / "minimal-2.json").read_bytes() == source.read_bytes()
    assert os.listdir(spool_dir / "tmp") == []


def test_submit_refuses_an_invalid_manifest_and_leaves_incoming_empty(spool: Spool) -> None:
    outcome = occoord("submit", "--spool", spool.root, BAD / "unknown-dependency.json")
    assert_one_line_error(outcome, 2, str(BAD / "unknown-dependency.json"), "unknown task 'lint'")
    assert spool.incoming_files() == []


def test_submit_of_a_missing_file_is_a_usage_error(spool: Spool, tmp_path: Path) -> None:
    outcome = occoord("submit", "--spool", spool.root, tmp_path / "nope.json")
    assert outcome.code == 2
    assert "does not exist" in outcome.stderr


def test_accept_leaves_a_fresh_file_for_later(spool: Spool) -> None:
    (spool.incoming / "plan.json").write_bytes(make_manifest(["a"]))
    outcome = occoord("accept", "--spool", spool.root)
    assert outcome == Outcome(0, "", "left plan.json for later: still being written?\n")
    assert spool.run_ids() == []


def test_accept_turns_a_settled_manifest_into_a_run(spool: Spool) -> None:
    path = spool.incoming / "plan.json"
    path.write_bytes(make_manifest(["a", "b"]))
    old = time.time() - 60
    os.utime(path, (old, old))
    outcome = occoord("accept", "--spool", spool.root)
    (run_id,) = spool.run_ids()
    assert outcome == Outcome(0, f"accepted plan.json as run {run_id}\n", "")
    assert task_files(spool.run(run_id)) == {"a": "queued", "b": "queued"}
    assert not path.exists()


def test_accept_wait_rejects_a_bad_manifest_with_its_reasons(spool: Spool) -> None:
    (spool.incoming / "bad.json").write_bytes((BAD / "unknown-dependency.json").read_bytes())
    outcome = occoord("accept", "--wait", "--spool", spool.root)
    assert outcome.code == 0
    (error_file,) = spool.rejected.glob("*.error")
    assert outcome.stderr == f"rejected bad.json: see {error_file}\n"
    assert "tasks[2].depends_on: unknown task 'lint'" in error_file.read_text()
    assert spool.incoming_files() == [] and spool.run_ids() == []


# -- signal -------------------------------------------------------------------------------------


def test_signal_done_moves_the_state_file_and_records_the_message(spool: Spool) -> None:
    run = pending_run(spool)
    outcome = occoord("signal", "--spool", spool.root, run.id, "build", "done", "-m", "tests pass")
    assert outcome == Outcome(0, f"{run.id}/build: done\n", "")
    assert task_files(run) == {"plan": "queued", "build": "done"}
    record = json.loads((run.dir / "tasks" / "build.done").read_bytes())
    assert (record["state"], record["actor"], record["reason"]) == ("done", "outside", "tests pass")
    last = list(read_events(run.dir))[-1]
    assert (last.task, last.source, last.target, last.actor, last.reason) == (
        "build",
        "pending",
        "done",
        "outside",
        "tests pass",
    )


def test_signal_can_skip_fail_and_requeue(spool: Spool) -> None:
    run = new_run(spool, ["a", "b"])
    assert occoord("signal", "--spool", spool.root, run.id, "a", "done").code == 0
    assert occoord("signal", "--spool", spool.root, run.id, "b", "failed", "--message", "no").code == 0
    assert task_files(run) == {"a": "done", "b": "failed"}
    assert occoord("signal", "--spool", spool.root, run.id, "b", "queued").code == 0
    assert task_files(run) == {"a": "done", "b": "queued"}


def test_signal_to_the_current_state_is_a_no_op(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    occoord("signal", "--spool", spool.root, run.id, "a", "done", "-m", "first")
    outcome = occoord("signal", "--spool", spool.root, run.id, "a", "done", "-m", "second")
    assert outcome == Outcome(0, f"{run.id}/a: done\n", "")
    assert json.loads((run.dir / "tasks" / "a.done").read_bytes())["reason"] == "first"


@pytest.mark.parametrize(
    ("setup", "target", "message"),
    [
        ("done", "failed", "task build: illegal transition done -> failed: a done task can only be requeued"),
        (
            "pending",
            "queued",
            "task build: illegal transition pending -> queued: its session may still run; "
            "signal it failed (or cancel it), then requeue it",
        ),
    ],
)
def test_illegal_signal_is_refused_and_changes_nothing(
    spool: Spool, setup: str, target: str, message: str
) -> None:
    run = pending_run(spool)
    if setup == "done":
        run.tasks.transition("build", TaskState.PENDING, TaskState.DONE)
    before = task_files(run)
    outcome = occoord("signal", "--spool", spool.root, run.id, "build", target)
    assert_one_line_error(outcome, 2)
    assert outcome.stderr == f"occoord: {message}\n"
    assert task_files(run) == before


def test_signal_unknown_run_or_task_is_bad_input(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    outcome = occoord("signal", "--spool", spool.root, "20990101T000000Z-nope", "a", "done")
    assert_one_line_error(outcome, 2, "no such run", f"latest: {run.id}")
    outcome = occoord("signal", "--spool", spool.root, run.id, "zzz", "done")
    assert_one_line_error(outcome, 2, "run has no task 'zzz'")
    assert task_files(run) == {"a": "queued"}


def test_signal_to_a_state_outsiders_cannot_name_is_a_usage_error(spool: Spool) -> None:
    run = new_run(spool, ["a"])
    outcome = occoord("signal", "--spool", spool.root, run.id, "a", "pending")
    assert outcome.code == 2
    assert "Error: Invalid value for '{done|failed|queued}': 'pending' is not one of" in outcome.stderr
    assert task_files(run) == {"a": "queued"}


# -- status -------------------------------------------------------------------------------------


def test_status_of_an_empty_spool(spool: Spool) -> None:
    assert occoord("status", "--spool", spool.root) == Outcome(0, "no runs\n", "")
    outcome = occoord("status", "--spool", spool.root, "--json")
    listing = json.loads(outcome.stdout)
    assert listing["runs"] == [] and listing["incoming"] == [] and listing["unreadable"] == []


def test_status_json_matches_the_files(spool: Spool) -> None:
    run = pending_run(spool)
    run.tasks.transition("plan", TaskState.QUEUED, TaskState.DONE, actor=Actor.OUTSIDE, reason="skipped")
    (spool.incoming / "next.yaml").write_text("tasks: []\n")
    overview = json.loads(occoord("status", "--spool", spool.root, "--json").stdout)
    assert overview["incoming"] == ["next.yaml"]
    (summary,) = overview["runs"]
    assert (summary["run"], summary["name"], summary["tasks"], summary["finished"]) == (
        run.id,
        "plan",
        2,
        False,
    )
    assert summary["counts"] == {"queued": 0, "pending": 1, "done": 1, "failed": 0}

    detail = json.loads(occoord("status", "--spool", spool.root, "--json", run.id).stdout)
    assert {row["task"]: row["state"] for row in detail["task_states"]} == task_files(run)
    for row in detail["task_states"]:
        on_disk = json.loads((run.dir / "tasks" / f"{row['task']}.{row['state']}").read_bytes())
        assert (row["attempt"], row["since"], row["reason"]) == (
            on_disk["attempt"],
            on_disk["since"],
            on_disk["reason"],
        )


def test_status_follows_a_plain_mv(spool: Spool) -> None:
    run = pending_run(spool)
    tasks = run.dir / "tasks"
    os.rename(tasks / "build.pending", tasks / "build.done")
    detail = json.loads(occoord("status", "--spool", spool.root, "--json", run.id).stdout)
    assert {row["task"]: row["state"] for row in detail["task_states"]} == {"plan": "queued", "build": "done"}


def test_status_text_names_runs_and_tasks(spool: Spool) -> None:
    run = pending_run(spool)
    overview = occoord("status", "--spool", spool.root)
    assert overview.code == 0
    assert overview.stdout.startswith(f"{run.id}  active")
    assert "pending 1" in overview.stdout
    detail = occoord("status", "--spool", spool.root, run.id).stdout.splitlines()
    assert detail[0] == f"{run.id} (active)"
    assert [line.split()[:2] for line in detail[1:]] == [["plan", "queued"], ["build", "pending"]]


def test_status_of_an_unknown_run_is_bad_input(spool: Spool) -> None:
    outcome = occoord("status", "--spool", spool.root, "../../etc")
    assert_one_line_error(outcome, 2, "no such run; the spool has no runs")


# -- as a real process --------------------------------------------------------------------------


def test_process_help_and_version(tmp_path: Path) -> None:
    outcome = occoord_process("--help", cwd=tmp_path)
    assert outcome.code == 0 and outcome.stdout.startswith("Usage: occoord")
    outcome = occoord_process("--version", cwd=tmp_path)
    assert outcome.code == 0 and outcome.stdout.startswith("occoord, version ")


def test_process_schema_is_json(tmp_path: Path) -> None:
    outcome = occoord_process("schema", cwd=tmp_path)
    assert outcome.code == 0
    assert json.loads(outcome.stdout) == manifest_schema()


def test_process_validate_reports_every_bad_file_without_a_traceback(tmp_path: Path) -> None:
    cases = bad_cases()
    paths = [materialize(case.path, tmp_path) for case in cases]
    outcome = occoord_process("validate", *paths, cwd=tmp_path)
    assert outcome.code == 2
    assert "Traceback" not in outcome.stderr
    assert outcome.stdout == ""
    for path in paths:
        assert f"{path}: " in outcome.stderr


@pytest.mark.parametrize("name", ONCE_CRASHING)
def test_process_validate_never_prints_a_traceback(name: str, tmp_path: Path) -> None:
    outcome = occoord_process("validate", BAD / name, cwd=tmp_path)
    assert "Traceback" not in outcome.stderr
    assert outcome.code == 2


def test_process_round_trip_through_the_environment_spool(tmp_path: Path) -> None:
    env = {"OCCOORD_SPOOL": str(tmp_path / "spool")}
    manifest = tmp_path / "job.json"
    manifest.write_bytes(make_manifest(["plan", "build"]))

    def run(*args: str | Path) -> Outcome:
        return occoord_process(*args, cwd=tmp_path, env=env)

    assert run("submit", manifest).stdout == f"{tmp_path / 'spool' / 'incoming' / 'job.json'}\n"
    accepted = run("accept", "--wait")
    assert accepted.code == 0 and accepted.stdout.startswith("accepted job.json as run ")
    run_id = accepted.stdout.split()[-1]

    signalled = run("signal", run_id, "plan", "done", "-m", "skipped by hand")
    assert signalled == Outcome(0, f"{run_id}/plan: done\n", "")
    illegal = run("signal", run_id, "plan", "failed")
    assert_one_line_error(illegal, 2, "illegal transition done -> failed")

    status: dict[str, Any] = json.loads(run("status", "--json", run_id).stdout)
    states = {row["task"]: row["state"] for row in status["task_states"]}
    assert states == task_files(Spool(tmp_path / "spool").run(run_id)) == {"plan": "done", "build": "queued"}
