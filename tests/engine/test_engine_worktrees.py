"""Worktree tasks through the whole engine, on real git repositories (the fake server stands in for
the agents: a test writes into the session's directory what an agent would)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from harness import Engine, manifest, task
from support.gitrepo import git, make_repo

from occoord.opencode.models import ErrorInfo
from occoord.spool.states import TaskState


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"README.md": "hello\n", "src/app.py": "print('v1')\n"})


@pytest.fixture
def wt_engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path, worktree_root=tmp_path / "worktrees")


def plan(repo: Path, *tasks: dict[str, object], **defaults: object) -> dict[str, object]:
    return manifest(*tasks, defaults={"directory": str(repo), "worktree": True, **defaults}, concurrency=8)


def agent_writes(e: Engine, run: str, task_id: str, name: str, text: str, attempt: int = 1) -> Path:
    """What an agent would do in its session's directory."""
    directory = Path(e.client.sessions[e.session(run, task_id, attempt)].directory)
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory


def test_parallel_tasks_edit_one_file_on_their_own_branches_and_the_checkout_stays(
    wt_engine: Engine, repo: Path
) -> None:
    (repo / "notes.txt").write_text("the user's own edit, not committed\n")

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(plan(repo, task("a", description="say A"), task("b")))
        where_a = agent_writes(e, run, "a", "README.md", "A\n")
        where_b = agent_writes(e, run, "b", "README.md", "B\n")
        assert where_a != where_b and repo not in (where_a, where_b)
        await e.events(e.client.end_turn(e.session(run, "a")) + e.client.end_turn(e.session(run, "b")))
        assert e.state(run, "a") is TaskState.DONE and e.state(run, "b") is TaskState.DONE
        for name, text in (("a", "A\n"), ("b", "B\n")):
            record = e.record(run, name)
            commit = record.details["result_commit"]
            assert git(repo, "show", f"{commit}:README.md") + "\n" == text
            assert record.details["files_changed"] == 1 and record.details["insertions"] == 1
            assert (e.spool.runs / run / "results" / f"{name}.diff").read_bytes().startswith(b"diff --git")
        assert git(repo, "log", "-1", "--format=%s", e.record(run, "a").details["result_commit"]).endswith(
            "say A"
        )
        assert (repo / "README.md").read_text() == "hello\n", "the main checkout is untouched"
        assert (repo / "notes.txt").exists() and git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
        assert not where_a.exists(), "a done task's worktree is removed (keep_worktree: on_failure)"
        assert ("dispose", str(where_a)) in e.client.calls

    wt_engine.play(scenario)


def test_a_chain_carries_work_forward_and_a_diamond_starts_from_a_merge(
    wt_engine: Engine, repo: Path
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(
            plan(
                repo,
                task("a"),
                task("b", depends_on=["a"]),
                task("c", depends_on=["a"]),
                task("d", depends_on=["b", "c"]),
            )
        )
        agent_writes(e, run, "a", "a.txt", "from a\n")
        await e.events(e.client.end_turn(e.session(run, "a")))
        where_b = agent_writes(e, run, "b", "b.txt", "from b\n")
        assert (where_b / "a.txt").read_text() == "from a\n", "b starts from a's result"
        agent_writes(e, run, "c", "c.txt", "from c\n")
        await e.events(e.client.end_turn(e.session(run, "b")) + e.client.end_turn(e.session(run, "c")))
        where_d = Path(e.client.sessions[e.session(run, "d")].directory)
        assert {p.name for p in where_d.glob("*.txt")} == {"a.txt", "b.txt", "c.txt"}
        start = e.record(run, "d").details["start_commit"]
        parents = git(repo, "rev-list", "--parents", "-n", "1", start).split()[1:]
        assert sorted(parents) == sorted(e.record(run, t).details["result_commit"] for t in "bc")
        await e.events(e.client.end_turn(e.session(run, "d")))
        assert e.summary(run) is not None and e.summary(run)["ok"]  # type: ignore[index]

    wt_engine.play(scenario)


def test_a_conflicting_diamond_fails_before_any_session_naming_the_file(
    wt_engine: Engine, repo: Path
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(plan(repo, task("b"), task("c"), task("d", depends_on=["b", "c"], retries=3)))
        agent_writes(e, run, "b", "README.md", "B\n")
        agent_writes(e, run, "c", "README.md", "C\n")
        await e.events(e.client.end_turn(e.session(run, "b")) + e.client.end_turn(e.session(run, "c")))
        record = e.record(run, "d")
        assert record.state is TaskState.FAILED and "README.md" in record.reason
        assert not [s for s in e.client.sessions.values() if "/d#" in s.title], "no session for d"

    wt_engine.play(scenario)


def test_an_agent_that_signals_done_has_its_work_committed_before_its_dependent_starts(
    wt_engine: Engine, repo: Path
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(plan(repo, task("a"), task("b", depends_on=["a"])))
        agent_writes(e, run, "a", "src/app.py", "print('v2')\n")
        await e.signal(run, "a", TaskState.DONE, "tests pass")
        assert e.state(run, "b") is TaskState.QUEUED, "waits for a's result commit"
        await e.events(e.client.end_turn(e.session(run, "a")))
        assert e.record(run, "a").details.get("result_commit")
        assert e.state(run, "b") is TaskState.PENDING
        where_b = Path(e.client.sessions[e.session(run, "b")].directory)
        assert (where_b / "src" / "app.py").read_text() == "print('v2')\n"
        assert e.record(run, "a").reason == "tests pass"

    wt_engine.play(scenario)


def test_a_task_in_a_subfolder_works_in_the_same_subfolder_of_its_worktree(
    wt_engine: Engine, repo: Path
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t", directory=str(repo / "src"), worktree=True)))
        directory = Path(e.client.sessions[e.session(run, "t")].directory)
        assert directory.name == "src" and (directory / "app.py").exists()
        assert e.record(run, "t").details["branch"] == f"occoord/{run}/t"

    wt_engine.play(scenario)


def test_a_failed_task_keeps_its_worktree_and_a_restart_finds_a_running_one(
    wt_engine: Engine, repo: Path
) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(plan(repo, task("bad", retries=0), task("slow")))
        where_bad = agent_writes(e, run, "bad", "half.txt", "half done\n")
        where_slow = agent_writes(e, run, "slow", "work.txt", "in progress\n")
        await e.events(
            e.client.end_turn(e.session(run, "bad"), error=ErrorInfo("ProviderAuthError", "no key"))
        )
        record = e.record(run, "bad")
        assert record.state is TaskState.FAILED and where_bad.exists()
        assert record.details["worktree"] and record.details["result_commit"]
        e.restart(worktree_root=e.config.worktree_root)
        await e.start()
        attempt = e.co.table.get(run, "slow")
        assert attempt is not None and attempt.directory == str(where_slow)
        assert (where_slow / "work.txt").read_text() == "in progress\n", "the work in progress is kept"
        await e.events(e.client.end_turn(e.session(run, "slow")))
        commit = e.record(run, "slow").details["result_commit"]
        assert git(repo, "show", f"{commit}:work.txt") == "in progress"
        assert git(repo, "branch", "--list", f"occoord/{run}/*").count("occoord/") == 2

    wt_engine.play(scenario)


def test_clean_removes_a_finished_runs_worktrees_refusing_uncommitted_work(
    wt_engine: Engine, repo: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from occoord.cli.main import cli

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(plan(repo, task("x", retries=0), task("y", retries=0)))
        for name in ("x", "y"):
            await e.events(
                e.client.end_turn(e.session(run, name), error=ErrorInfo("ProviderAuthError", "no"))
            )
        kept = [Path(str(e.record(run, name).details["worktree"])) for name in ("x", "y")]
        assert all(p.exists() for p in kept) and e.summary(run) is not None
        (kept[1] / "scratch.txt").write_text("uncommitted\n")
        args = ["clean", "--spool", str(e.spool.root), "--worktree-root", str(tmp_path / "worktrees")]
        refused = CliRunner().invoke(cli, args)
        assert refused.exit_code == 1 and "scratch.txt" in refused.output
        assert not kept[0].exists() and kept[1].exists()
        forced = CliRunner().invoke(cli, [*args, "--force", "--branches", run])
        assert forced.exit_code == 0, forced.output
        assert not kept[1].exists() and git(repo, "branch", "--list", f"occoord/{run}/*") == ""
        assert (repo / "README.md").read_text() == "hello\n"

    wt_engine.play(scenario)


def test_a_retried_attempt_records_its_own_result_not_the_failed_ones(wt_engine: Engine, repo: Path) -> None:
    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(plan(repo, task("t", retries=1), task("d", depends_on=["t"])))
        agent_writes(e, run, "t", "first.txt", "attempt 1\n")
        overloaded = ErrorInfo("APIError", "overloaded", retryable=True)
        await e.events(e.client.end_turn(e.session(run, "t"), error=overloaded))
        failed_commit = e.record(run, "t").details["result_commit"]
        await e.advance(e.config.retry_base)
        record = e.record(run, "t")
        assert record.attempt == 2 and "result_commit" not in record.details, "not the failed attempt's"
        agent_writes(e, run, "t", "second.txt", "attempt 2\n", attempt=2)
        await e.signal(run, "t", TaskState.DONE, "done now")
        assert e.state(run, "d") is TaskState.QUEUED, "d waits for attempt 2's result"
        await e.events(e.client.end_turn(e.session(run, "t", attempt=2)))
        details = e.record(run, "t").details
        assert details["result_commit"] != failed_commit and details["branch"] == f"occoord/{run}/t-2"
        assert git(repo, "show", f"{details['result_commit']}:second.txt") == "attempt 2"
        assert e.state(run, "d") is TaskState.PENDING

    wt_engine.play(scenario)


def test_the_task_end_hook_of_a_signalled_worktree_task_runs_once_its_result_is_committed(
    wt_engine: Engine, repo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hook.txt"
    # What the hook saw: its task, and whether the result's diff existed yet.
    code = (
        "import os, sys; d = os.environ['OCCOORD_RUN_DIR']; t = os.environ['OCCOORD_TASK']; "
        "seen = os.path.exists(os.path.join(d, 'results', t + '.diff')); "
        "open(sys.argv[1], 'a').write(f'{t} {seen}\\n')"
    )
    hooks = {"on_task_end": [sys.executable, "-c", code, str(out)]}

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(
            manifest(task("a"), defaults={"directory": str(repo), "worktree": True}, hooks=hooks)
        )
        agent_writes(e, run, "a", "src/app.py", "print('v2')\n")
        await e.signal(run, "a", TaskState.DONE, "tests pass")
        assert not out.exists(), "not before the result commit"
        await e.events(e.client.end_turn(e.session(run, "a")))
        for _ in range(200):  # the hook is a real process
            if out.exists():
                break
            await asyncio.sleep(0.01)
        assert out.read_text() == "a True\n"
        assert e.record(run, "a").details.get("result_commit")

    wt_engine.play(scenario)
