"""The manifest corpus: what a user sees for each malformed manifest, and that good ones survive.

``manifests/bad/`` holds malformed manifests; ``manifests/bad/expected.json`` declares, next to
them, every problem each must report (field path and reason) and nothing else. ``manifests/good/``
(and the shipped examples) must parse, and their resolved form, ``Manifest.to_json``, must parse
back to the same manifest. ``@MANIFESTS@`` in a file stands for the absolute path of
``manifests/`` (a manifest's directories must be absolute), ``@REPO@`` for a git repository made
for the test (``main`` two commits long with a folder ``src``, a tag ``v1`` on its first commit, a
branch ``feature`` off ``v1``), and ``@PLAIN@`` for a folder in no repository; such files are
copied with them filled in before loading.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from occoord.errors import ManifestError, ManifestProblem
from occoord.manifest.build import MAX_CYCLES, find_cycles
from occoord.manifest.checks import did_you_mean
from occoord.manifest.load import load_manifest, manifest_from_plan, parse_manifest
from occoord.manifest.model import (
    DEFAULT_KEYS,
    HOOK_KEYS,
    MAX_MANIFEST_BYTES,
    MAX_PROMPT_BYTES,
    TASK_KEYS,
    TOP_KEYS,
    Manifest,
)

CORPUS = Path(__file__).parent / "manifests"
BAD = CORPUS / "bad"
GOOD = CORPUS / "good"
EXPECTATIONS = BAD / "expected.json"
EXAMPLES = Path(__file__).parent.parent / "contrib" / "examples"
PLACEHOLDER = "@MANIFESTS@"
REPO, PLAIN = "@REPO@", "@PLAIN@"
ROOT = "(root)"  # the field written in expected.json for a problem about the whole file
GAP = "…"  # separates substrings of an expected reason that must appear in order


# -- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One declared problem: ``FIELD: REASON`` with REASON matched as ordered substrings."""

    text: str
    field: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Expected:
        field, sep, reason = text.partition(": ")
        assert sep and reason, f"expected.json: {text!r} is not 'FIELD: REASON'"
        filled = reason.replace(PLACEHOLDER, str(CORPUS))
        parts = tuple(part.strip() for part in filled.split(GAP) if part.strip())
        return cls(text, "" if field == ROOT else field, parts)

    def matches(self, problem: ManifestProblem) -> bool:
        return problem.field == self.field and self.reason_in(problem.reason)

    def reason_in(self, text: str) -> bool:
        """True if ``text`` holds every part of the reason, in order."""
        position = 0
        for part in self.parts:
            found = text.find(part, position)
            if found < 0:
                return False
            position = found + len(part)
        return True

    def shown_in(self, message: str) -> bool:
        """True if a line of ``message`` (an error as printed) shows this problem."""
        prefix = f"{self.field}: "
        lines = message.splitlines()
        if not self.field:
            return any(self.reason_in(line) for line in lines)
        return any(prefix in line and self.reason_in(line.partition(prefix)[2]) for line in lines)


@dataclass(frozen=True)
class BadCase:
    name: str
    expected: tuple[Expected, ...]
    schema_rejects: bool

    @property
    def path(self) -> Path:
        return BAD / self.name


ENTRY_KEYS = {"problems", "schema"}


def bad_cases() -> list[BadCase]:
    entries: dict[str, Any] = json.loads(EXPECTATIONS.read_text(encoding="utf-8"))
    cases = []
    for name, entry in entries.items():
        if name.startswith("$"):
            continue
        assert set(entry) <= ENTRY_KEYS, f"expected.json: {name}: unknown keys {set(entry) - ENTRY_KEYS}"
        assert entry.get("schema", "reject") == "reject", (
            f"expected.json: {name}: schema is 'reject' or absent"
        )
        problems = tuple(Expected.parse(text) for text in entry["problems"])
        cases.append(BadCase(name, problems, entry.get("schema") == "reject"))
    return cases


def case_param(case: BadCase) -> Any:
    """``pytest.param`` named by the case's file."""
    return pytest.param(case, id=case.name)


def bad_params() -> list[Any]:
    return [case_param(case) for case in bad_cases()]


def good_paths() -> list[Path]:
    examples = [p for p in sorted(EXAMPLES.iterdir()) if p.suffix in (".json", ".yaml", ".yml")]
    return sorted(GOOD.iterdir()) + examples


def materialize(path: Path, tmp_path: Path) -> Path:
    """``path`` itself, or a copy in ``tmp_path`` with the placeholders filled in."""
    data = path.read_bytes()
    if not any(p.encode() in data for p in (PLACEHOLDER, REPO, PLAIN)):
        return path
    data = data.replace(PLACEHOLDER.encode(), str(CORPUS).encode())
    if REPO.encode() in data:
        data = data.replace(REPO.encode(), str(corpus_repo(tmp_path)).encode())
    if PLAIN.encode() in data:
        plain = tmp_path / "plain"
        plain.mkdir(exist_ok=True)
        data = data.replace(PLAIN.encode(), str(plain).encode())
    copy = tmp_path / path.name
    copy.write_bytes(data)
    return copy


def corpus_repo(tmp_path: Path) -> Path:
    """The git repository ``@REPO@`` stands for (made once per test)."""
    repo = tmp_path / "repo"
    if repo.exists():
        return repo

    def git(*args: str) -> None:
        identity = ["-c", "user.name=Corpus", "-c", "user.email=corpus@example.com"]
        subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, timeout=60)

    (repo / "src").mkdir(parents=True)
    (repo / "src" / "app.py").write_text("print('app')\n")
    git("init", "--quiet", "--initial-branch=main")
    git("add", "--all")
    git("commit", "--quiet", "-m", "initial")
    git("tag", "v1")
    git("branch", "feature")
    git("commit", "--quiet", "--allow-empty", "-m", "on main")
    git("checkout", "--quiet", "feature")
    git("commit", "--quiet", "--allow-empty", "-m", "feature work")
    git("checkout", "--quiet", "main")
    return repo


def rev(repo: Path, name: str) -> str:
    done = subprocess.run(["git", "rev-parse", name], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def decode(path: Path) -> Any:
    """The document as a plain JSON or YAML reader sees it (no occoord rules; a BOM is skipped)."""
    text = path.read_text(encoding="utf-8-sig")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def mismatches(
    problems: Sequence[ManifestProblem], expected: Sequence[Expected]
) -> tuple[list[Expected], list[ManifestProblem]]:
    """(declared problems not reported, reported problems not declared); each matches once."""
    unmatched = list(problems)
    missing = []
    for want in sorted(expected, key=lambda e: -sum(map(len, e.parts))):
        hit = next((p for p in unmatched if want.matches(p)), None)
        if hit is None:
            missing.append(want)
        else:
            unmatched.remove(hit)
    return missing, unmatched


def assert_problems(error: ManifestError, expected: Sequence[Expected]) -> None:
    missing, extra = mismatches(error.problems, expected)
    report = "\n".join(
        [f"missing: {e.text}" for e in missing]
        + [f"unexpected: {p.field or ROOT}: {p.reason}" for p in extra]
    )
    assert not missing and not extra, f"{error.source}:\n{report}"


def expect(*texts: str) -> list[Expected]:
    return [Expected.parse(t) for t in texts]


# -- malformed manifests -----------------------------------------------------------------------


def test_every_bad_file_has_declared_problems() -> None:
    files = {p.name for p in BAD.iterdir()} - {EXPECTATIONS.name}
    declared = {case.name for case in bad_cases()}
    assert files == declared, f"without expectations: {files - declared}; without a file: {declared - files}"
    assert all(case.expected for case in bad_cases())
    assert len(declared) >= 30


@pytest.mark.parametrize("case", bad_params())
def test_bad_manifest_reports_exactly_the_declared_problems(case: BadCase, tmp_path: Path) -> None:
    path = materialize(case.path, tmp_path)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.source == str(path)
    assert_problems(info.value, case.expected)


def test_a_manifest_over_one_mib_is_refused_unread(tmp_path: Path) -> None:
    body = b'{"tasks": [{"id": "a", "prompt": "x"}]}'
    path = tmp_path / "huge.json"
    path.write_bytes(body.ljust(MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert_problems(info.value, expect(f"{ROOT}: file too large: 1048577 bytes, over the limit of 1048576"))
    with pytest.raises(ManifestError) as info:
        parse_manifest(path.read_bytes(), source="huge.json")
    assert_problems(info.value, expect(f"{ROOT}: file is 1048577 bytes, over the 1 MiB limit"))


def test_a_manifest_of_exactly_one_mib_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "full.json"
    path.write_bytes(b'{"tasks": [{"id": "a", "prompt": "x"}]}'.ljust(MAX_MANIFEST_BYTES))
    assert load_manifest(path).task("a").prompt == "x"


def test_a_symlinked_manifest_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "plan.json"
    link.symlink_to(GOOD / "minimal.json")
    with pytest.raises(ManifestError) as info:
        load_manifest(link)
    assert_problems(info.value, expect(f"{ROOT}: not a manifest file: is a symbolic link"))


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError) as info:
        load_manifest(fifo)
    assert_problems(info.value, expect(f"{ROOT}: not a manifest file: is not a regular file"))


def test_prompt_files_that_are_symlinks_or_too_large_are_refused(tmp_path: Path) -> None:
    (tmp_path / "link.md").symlink_to(CORPUS / "prompts" / "build.md")
    (tmp_path / "big.md").write_bytes(b"x" * (MAX_PROMPT_BYTES + 1))
    doc = {
        "defaults": {"directory": str(tmp_path)},
        "tasks": [{"id": "link", "prompt_file": "link.md"}, {"id": "big", "prompt_file": "big.md"}],
    }
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(doc).encode())
    assert_problems(
        info.value,
        expect(
            f"tasks[0].prompt_file: {tmp_path}/link.md: is a symbolic link",
            f"tasks[1].prompt_file: {tmp_path}/big.md: 1048577 bytes, over the limit of 1048576",
        ),
    )


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_a_deeply_nested_document_is_an_error_not_a_crash(fmt: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(b"[" * 100_000, source=f"deep.{fmt}", fmt=fmt)
    assert_problems(info.value, expect(f"{ROOT}: nested too deeply"))


@pytest.mark.parametrize(
    ("key", "allowed", "hint"),
    [
        ("retry", DEFAULT_KEYS, "retries"),
        ("retires", DEFAULT_KEYS, "retries"),
        ("dir", TASK_KEYS, "directory"),
        ("worktrees", DEFAULT_KEYS, "worktree"),
        ("keep", TASK_KEYS, "keep_worktree"),
        ("base_ref", DEFAULT_KEYS, "base"),
        ("desc", TASK_KEYS, "description"),
        ("dependencies", TASK_KEYS, "depends_on"),
        ("prompts", TASK_KEYS, "prompt"),
        ("prompt_files", TASK_KEYS, "prompt_file"),
        ("Prompt", TASK_KEYS, "prompt"),
        ("ids", TASK_KEYS, "id"),
        ("task", TOP_KEYS, "tasks"),
        ("on_end", HOOK_KEYS, "on_run_end"),
        ("concurency", TOP_KEYS, "concurrency"),
        ("owner", TOP_KEYS, None),
        ("priority", TASK_KEYS, None),
    ],
)
def test_did_you_mean_prefers_a_shared_start(key: str, allowed: Sequence[str], hint: str | None) -> None:
    assert did_you_mean(key, allowed) == hint


def test_every_cycle_is_found_up_to_a_limit() -> None:
    assert find_cycles({"a": ("b",), "b": ("c",), "c": ()}) == []
    assert find_cycles({"a": ("b", "x"), "b": ("a",)}) == [["a", "b", "a"]]  # x is no task: ignored
    # one long chain whose every task also depends on the first: a cycle per task
    chain = {f"t{i}": (f"t{i + 1}", "t0") for i in range(1000)} | {"t1000": ("t0",)}
    cycles = find_cycles(chain)
    assert len(cycles) == MAX_CYCLES
    assert cycles[0] == [*chain, "t0"]  # depth first: the longest comes first


def test_error_message_names_the_file_and_every_problem() -> None:
    path = BAD / "many-problems.yaml"
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"{path}: {len(info.value.problems)} problems"
    assert lines[1:] == [f"  {p}" for p in info.value.problems]


# -- good manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", good_paths(), ids=lambda p: p.name)
def test_good_manifest_parses_with_its_tasks_in_order(path: Path, tmp_path: Path) -> None:
    path = materialize(path, tmp_path)
    manifest = load_manifest(path)
    assert [t.id for t in manifest.tasks] == [t["id"] for t in decode(path)["tasks"]]
    assert manifest.name == decode(path).get("name", path.stem)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize("path", good_paths(), ids=lambda p: p.name)
def test_to_json_round_trips(path: Path, fmt: str, tmp_path: Path) -> None:
    manifest = load_manifest(materialize(path, tmp_path))
    plan = manifest.to_json()
    # run.json must be strict JSON: allow_nan=False refuses inf and nan
    dump = json.dumps(plan, allow_nan=False) if fmt == "json" else yaml.safe_dump(plan, allow_unicode=True)
    again = parse_manifest(dump.encode(), source=f"run.{fmt}", fmt=fmt)
    assert again == manifest
    assert again.to_json() == plan


def test_resolved_plan_applies_defaults_and_inlines_prompt_files(tmp_path: Path) -> None:
    manifest = load_manifest(materialize(GOOD / "readme-example.yaml", tmp_path))
    build = manifest.task("build")
    assert build.prompt == (CORPUS / "prompts" / "build.md").read_text()
    assert (build.agent, str(build.model), build.directory) == (
        "build",
        "anthropic/claude-sonnet-4",
        str(CORPUS),
    )
    assert (build.timeout, build.retries, build.depends_on) == (1800.0, 2, ("plan",))
    plan_tasks = manifest.to_json()["tasks"]
    assert all("prompt_file" not in t for t in plan_tasks)
    assert plan_tasks[1]["prompt"] == build.prompt


def test_every_field_is_resolved_as_documented(tmp_path: Path) -> None:
    manifest = load_manifest(materialize(GOOD / "every-field.yaml", tmp_path))
    assert (manifest.name, manifest.concurrency) == ("every field", 8)
    assert manifest.hooks.on_task_end == ("notify-send", "task ended")
    assert manifest.hooks.on_run_end == ("/usr/bin/env", "echo", "run ended")
    plan, build = manifest.tasks[:2]
    assert (plan.agent, str(plan.model), plan.directory) == (
        "plan",
        "anthropic/claude-sonnet-4",
        f"{CORPUS}/prompts",
    )
    assert (plan.prompt, plan.timeout, plan.retries) == (
        "Write PLAN.md.\nTwo lines, kept as written.\n",
        90.0,
        5,
    )
    assert build.model is not None
    assert (build.model.provider, build.model.model) == ("openrouter", "meta-llama/llama-3-70b")
    assert [t.timeout for t in manifest.tasks] == [90.0, 0.5, 900.0, 7200.0]
    assert [t.retries for t in manifest.tasks] == [5, 0, 0, 0]
    assert [t.depends_on for t in manifest.tasks] == [(), ("plan",), ("plan", "build"), ()]


def test_a_parsed_manifest_is_immutable() -> None:
    manifest: Manifest = load_manifest(GOOD / "minimal.json")
    with pytest.raises(AttributeError):
        manifest.name = "other"  # type: ignore[misc]


# -- worktree tasks (issue 12) ---------------------------------------------------------------


def test_worktree_fields_are_resolved_and_bases_become_commits(tmp_path: Path) -> None:
    manifest = load_manifest(materialize(GOOD / "worktrees.yaml", tmp_path))
    repo = corpus_repo(tmp_path)
    plan, build, docs, odd, plain = manifest.tasks
    assert (plan.worktree, plan.base, plan.base_commit, plan.keep_worktree) == (
        True,
        "main",
        rev(repo, "main"),
        "on_failure",
    )
    assert (build.directory, build.base_commit, build.keep_worktree) == (
        f"{repo}/src",
        rev(repo, "main"),
        "always",
    )
    assert (docs.base, docs.base_commit, docs.keep_worktree) == ("v1", rev(repo, "v1"), "never")
    assert odd.base_commit == rev(repo, "v1")
    assert (plain.worktree, plain.base_commit) == (False, None)  # git is not asked for it


def test_a_plain_plan_is_unchanged_by_the_worktree_fields(tmp_path: Path) -> None:
    new_keys = {"worktree", "base", "base_commit", "keep_worktree"}
    for name in ("minimal.json", "readme-example.yaml", "every-field.yaml", "diamond.json"):
        plan = load_manifest(materialize(GOOD / name, tmp_path)).to_json()
        assert all(not new_keys & set(task) for task in plan["tasks"]), name


def test_the_base_is_resolved_once_and_the_plan_keeps_the_commit(tmp_path: Path) -> None:
    manifest = load_manifest(materialize(GOOD / "worktrees.yaml", tmp_path))
    repo = corpus_repo(tmp_path)
    before = rev(repo, "main")
    subprocess.run(
        ["git", "-c", "user.name=u", "-c", "user.email=u@e", "commit", "-q", "--allow-empty", "-m", "later"],
        cwd=repo,
        check=True,
    )
    assert rev(repo, "main") != before
    plan = json.loads(json.dumps(manifest.to_json()))
    assert parse_manifest(json.dumps(plan).encode()).task("plan").base_commit == before
    assert manifest_from_plan(plan, source="run.json") == manifest
    fresh = load_manifest(materialize(GOOD / "worktrees.yaml", tmp_path))
    assert fresh.task("plan").base_commit == rev(repo, "main")


def test_a_stored_plan_is_not_checked_against_git() -> None:
    commit = "a" * 40
    plan = {
        "tasks": [
            {"id": "a", "prompt": "x", "worktree": True, "directory": "/gone", "base_commit": commit},
            {"id": "b", "prompt": "x", "worktree": True, "directory": "/gone", "base": "nowhere"},
        ]
    }
    manifest = manifest_from_plan(plan, source="run.json")
    assert [(t.base_commit, t.base) for t in manifest.tasks] == [(commit, None), (None, "nowhere")]
    with pytest.raises(ManifestError) as info:
        manifest_from_plan({"tasks": [{"id": "a", "prompt": "x", "worktree": True}]}, source="run.json")
    assert_problems(info.value, expect("tasks[0].directory: missing: worktree: true needs"))


def test_a_repository_without_commits_has_no_default_base(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["git", "init", "--quiet"], cwd=empty, check=True)
    doc = {"defaults": {"worktree": True, "directory": str(empty)}, "tasks": [{"id": "a", "prompt": "x"}]}
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(doc).encode())
    assert_problems(
        info.value,
        expect(f"defaults.directory: the repository '{empty}' has no commit yet: HEAD, the default base"),
    )
