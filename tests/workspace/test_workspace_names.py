"""Branch and worktree names: every id gives a valid, unique, reversible ref name (checked by git
itself with ``git check-ref-format``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from occoord.errors import ConfigError
from occoord.manifest.model import ID_PATTERN
from occoord.workspace.names import (
    BranchName,
    branch_name,
    decode_component,
    default_root,
    encode_component,
    parse_branch,
    parse_worktree_name,
    worktree_path,
)

IDS = st.from_regex(ID_PATTERN, fullmatch=True)
# ids made of the troublesome parts, so hypothesis meets them often
NASTY = st.lists(
    st.sampled_from(["a", "Z9", ".", "..", "-", "-2", "_", "lock", ".lock", "1"]), max_size=8
).map(lambda parts: "x" + "".join(parts))
ANY_ID = (IDS | NASTY).filter(lambda s: ID_PATTERN.fullmatch(s) is not None)
ATTEMPTS = st.integers(1, 12)


def git_accepts(ref: str) -> bool:
    done = subprocess.run(["git", "check-ref-format", "--branch", ref], capture_output=True, timeout=30)
    full = subprocess.run(["git", "check-ref-format", f"refs/heads/{ref}"], capture_output=True, timeout=30)
    return done.returncode == 0 and full.returncode == 0


@settings(max_examples=60, deadline=None)
@given(run=ANY_ID, task=ANY_ID, attempt=ATTEMPTS)
def test_every_branch_name_is_a_valid_ref_and_parses_back(run: str, task: str, attempt: int) -> None:
    name = branch_name(run, task, attempt)
    assert git_accepts(name), name
    assert parse_branch(name) == BranchName(run, task, attempt)
    assert parse_branch(f"refs/heads/{name}") == BranchName(run, task, attempt)


@settings(max_examples=300, deadline=None)
@given(a=ANY_ID, b=ANY_ID, n=ATTEMPTS, m=ATTEMPTS)
def test_different_attempts_never_share_a_branch_or_a_folder(a: str, b: str, n: int, m: int) -> None:
    if (a, n) != (b, m):
        assert branch_name("r", a, n) != branch_name("r", b, m)
        assert worktree_path(Path("/w"), "r", a, n) != worktree_path(Path("/w"), "r", b, m)
    assert decode_component(encode_component(a)) == a
    assert parse_worktree_name(worktree_path(Path("/w"), "r", a, n).name) == (a, n)


@pytest.mark.parametrize(
    ("task", "attempt", "branch"),
    [
        ("build", 1, "occoord/r/build"),
        ("build", 2, "occoord/r/build-2"),
        ("T-1.x", 1, "occoord/r/T-1.x"),
        ("x-2", 1, "occoord/r/x-2="),  # not attempt 2 of x
        ("x-2", 3, "occoord/r/x-2=-3"),
        ("a..b", 1, "occoord/r/a.+b"),
        ("a...b.", 1, "occoord/r/a.++b.="),
        ("db.lock", 1, "occoord/r/db.lock="),
        ("db.lock", 2, "occoord/r/db.lock=-2"),
    ],
)
def test_branch_names_as_documented(task: str, attempt: int, branch: str) -> None:
    assert branch_name("r", task, attempt) == branch
    assert git_accepts(branch)


def test_run_ids_are_escaped_too() -> None:
    run = "20240101T000000Z-plan.lock"
    assert branch_name(run, "a", 1) == "occoord/20240101T000000Z-plan.lock=/a"
    assert parse_branch("occoord/20240101T000000Z-plan.lock=/a") == BranchName(run, "a", 1)


@pytest.mark.parametrize(
    "name",
    ["occoord/r/x-1", "occoord/r", "other/r/x", "occoord/r/x/y", "occoord/r/a..b", "occoord/r/x=", "main"],
)
def test_foreign_branch_names_are_not_ours(name: str) -> None:
    assert parse_branch(name) is None


@pytest.mark.parametrize("bad", ["", ".x", "a/b", "a b", "x" * 129])
def test_invalid_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        branch_name("r", bad, 1)
    with pytest.raises(ValueError):
        worktree_path(Path("/w"), "r", bad, 1)
    with pytest.raises(ValueError):
        branch_name("r", "a", 0)


def test_worktree_path_and_default_root(tmp_path: Path) -> None:
    assert worktree_path(tmp_path, "run1", "x-2", 1) == tmp_path / "run1" / "x-2-1"
    assert default_root({"XDG_DATA_HOME": "/data", "HOME": "/h"}) == Path("/data/occoord/worktrees")
    assert default_root({"XDG_DATA_HOME": "rel", "HOME": "/h"}) == Path("/h/.local/share/occoord/worktrees")
    assert default_root({"HOME": "/h"}) == Path("/h/.local/share/occoord/worktrees")


def test_no_home_at_all_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_home() -> Path:
        raise RuntimeError("no home")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(ConfigError):
        default_root({})
