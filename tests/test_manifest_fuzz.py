"""Value-level fuzzing of manifests (issue 11): structurally valid documents, hostile values.

The documents always have the manifest's shape (the right keys, strings where strings go, numbers
where numbers go), so the parser gets past the structure and has to judge the values themselves:
NUL, lone surrogates, ``~`` and ``~user``, ``..``, control characters, very long strings, huge,
negative and non-integral numbers. Whatever it is given, as JSON or YAML bytes:

* ``parse_manifest`` raises nothing but :class:`ManifestError`, whose problems each have a reason
  (printable: a value cannot forge lines in ``occoord validate`` or a ``.error`` file);
* an accepted manifest round-trips through ``to_json`` (``run.json``) to an equal manifest, and
  every value the engine sends to OpenCode or runs as a hook can be sent or run (no value passes
  validation only to fail at dispatch);
* the spool's real accept path accepts it or rejects it with a ``.error`` file, never raises.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from occoord.cli.main import cli
from occoord.engine.prompting import build_prompt, session_title
from occoord.errors import ManifestError
from occoord.manifest.load import manifest_from_plan, parse_manifest
from occoord.manifest.model import KEEP_WORKTREE, Manifest
from occoord.spool.accept import accept_file
from occoord.spool.layout import Spool
from occoord.spool.summary import write_summary

# modest: the suite runs on two shared cores; CI may ask for more
EXAMPLES = int(os.environ.get("OCCOORD_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ACCEPT_FUZZ = settings(FUZZ, max_examples=max(1, EXAMPLES // 2))

# st.characters() leaves out the surrogates (category Cs): only a JSON or YAML escape makes one
CHARS = st.one_of(st.characters(), st.characters(categories=["Cs"]))
HOSTILE = [
    *("", " ", "\t\n", "\x00", "a\x00b", "\ud800", "x\udcff", "\ud83d\ude00", "\x1b[31m", "\x9b"),
    *("\u2028", "\ufeff", "\x7f", "tâche", "a b", "~", "~/", "~/x", "~root", "~nosuchuser/x", "~\x00"),
    *("..", "../x", "x/..", ".", "/", "//x", "/tmp", "/nonexistent", "a" * 300, "/" + "a" * 300),
    *("/" + "b/" * 2100, "p/m", " p / m ", "/m", "p/", "15m", "90s", "0.5", "1e400", "9" * 400 + "h"),
    *("echo 'x", "<<", "=", "null", "true", "1", "yes", "!!str x", "&a", "*a", "- x", "{}", "#", "x: y"),
]
NUMBERS: list[Any] = [
    *(0, 1, -1, 2, 4, 2**31, 2**63, -(2**63), 10**400, -(10**400)),
    *(0.5, 1.0, 1e308, -0.0, 5e-324),
]


def hostile_texts() -> st.SearchStrategy[str]:
    atom = st.sampled_from(HOSTILE) | st.text(CHARS, max_size=24)
    return atom | st.tuples(atom, atom).map("".join)


def hostile_numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(NUMBERS),
        st.integers(-5, 10),
        st.integers(-(10**400), 10**400),
        st.floats(allow_nan=True, allow_infinity=True),
    )


# any text a manifest may hold: every code point but NUL and the surrogates, control ones too
TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=40)
WORD = TEXT.filter(str.strip)
PART = WORD.filter(lambda t: "/" not in t)  # provider/model: the provider holds no slash
PROMPT_FILES = ("p.md", "sub/q.md", "./p.md", "sub//q.md")
BAD_PROMPT_FILES = ("empty.md", "nul.md", "latin1.md", "sub", "link.md", "missing.md", "p.md/x")
NICE: dict[str, st.SearchStrategy[Any]] = {
    "name": WORD,
    "agent": WORD,
    "model": st.tuples(PART, WORD).map("/".join),
    "timeout": st.one_of(
        st.integers(1, 10**30),
        st.floats(min_value=1e-300, max_value=1e300),
        st.sampled_from(["90s", "15m", "2h", "0.5", " 1.5h ", "250ms"]),
    ),
    "retries": st.integers(0, 10**30),
    "concurrency": st.integers(1, 10**30),
    "prompt": WORD,
    "role": TEXT,
    "description": TEXT,
    "command": WORD | st.lists(TEXT, min_size=1, max_size=3),
    "base": st.sampled_from(["HEAD", "main", "v1", "HEAD~0", "main^{commit}", "no-such-branch"]),
}


@st.composite
def manifests(draw: st.DrawFn, base: str) -> dict[str, Any]:
    """A manifest with the right keys; ``rate`` (drawn once) says how often a value is hostile, so
    that clean manifests, with odd but valid values, are accepted often enough to check them too."""
    rate = draw(st.sampled_from([0, 0, 1, 3, 10]), label="hostile values, in tenths")
    hostile = {
        "text": hostile_texts(),
        "number": hostile_numbers(),
        "directory": hostile_texts() | st.sampled_from([f"{base}/p.md", f"{base}/p.md/x", "/nonexistent"]),
        "prompt_file": hostile_texts() | st.sampled_from(BAD_PROMPT_FILES),
    }
    directories = st.sampled_from([base, f"{base}/sub", f"{base}/", f"{base}//sub/.", f"{base}/sub/..", "~"])

    def value(nice: st.SearchStrategy[Any], bad: str = "text") -> Any:
        return draw(hostile[bad] if draw(st.integers(0, 9)) < rate else nice)

    def fill(out: dict[str, Any], key: str, nice: st.SearchStrategy[Any], bad: str = "text") -> None:
        if draw(st.booleans()):
            out[key] = value(nice, bad)

    def common(out: dict[str, Any]) -> dict[str, Any]:
        fill(out, "agent", NICE["agent"])
        fill(out, "model", NICE["model"])
        fill(out, "directory", directories, "directory")
        fill(out, "timeout", NICE["timeout"], "number" if draw(st.booleans()) else "text")
        fill(out, "retries", NICE["retries"], "number")
        fill(out, "worktree", st.booleans(), "number" if draw(st.booleans()) else "text")
        fill(out, "base", NICE["base"])  # hostile ones go to git itself: the playground is a repository
        fill(out, "keep_worktree", st.sampled_from(KEEP_WORKTREE))
        return out

    doc: dict[str, Any] = {}
    fill(doc, "version", st.just(1), "number")
    fill(doc, "name", NICE["name"])
    fill(doc, "concurrency", NICE["concurrency"], "number")
    defaults = draw(st.booleans())
    if defaults:
        doc["defaults"] = common({})
        if draw(st.booleans()):
            doc["defaults"]["directory"] = value(directories, "directory")  # for prompt files
    if draw(st.booleans()):
        doc["hooks"] = {}
        fill(doc["hooks"], "on_task_end", NICE["command"])
        fill(doc["hooks"], "on_run_end", NICE["command"])
    doc["tasks"] = []
    for i in range(draw(st.integers(1, 4))):
        earlier = [t["id"] for t in doc["tasks"] if isinstance(t["id"], str)]
        task: dict[str, Any] = {"id": value(st.sampled_from([f"t{i}", f"T-{i}.x"]))}
        source = value(st.sampled_from(["prompt", "prompt_file"]), "text")
        if source in ("prompt", "prompt_file"):
            nice = NICE["prompt"] if source == "prompt" else st.sampled_from(PROMPT_FILES)
            task[source] = value(nice, "text" if source == "prompt" else "prompt_file")
        elif draw(st.booleans()):  # a hostile choice: both or neither
            task.update(prompt="x", prompt_file="p.md")
        if draw(st.booleans()) and earlier:
            deps = st.lists(st.sampled_from(earlier), max_size=3)
            task["depends_on"] = value(deps | st.sampled_from(earlier))
        fill(task, "role", NICE["role"])
        fill(task, "description", NICE["description"])
        common(task)
        if "prompt_file" in task and "directory" not in doc.get("defaults", {}):
            task.setdefault("directory", value(directories, "directory"))
        doc["tasks"].append(task)
    return doc


def encode(doc: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=True).encode()  # NaN and Infinity are written: refused
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8")


@pytest.fixture(scope="module")
def playground(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A task directory holding prompt files good and bad, as the strategies name them; a git
    repository (branch ``main``, tag ``v1``), so that worktree tasks can be accepted too."""
    base = tmp_path_factory.mktemp("playground")
    (base / "sub").mkdir()
    (base / "p.md").write_text("Do the thing.\n")
    (base / "sub" / "q.md").write_text("Do the other thing.\n")
    (base / "empty.md").write_text(" \n")
    (base / "nul.md").write_bytes(b"binary\x00\n")
    (base / "latin1.md").write_bytes("caf\xe9\n".encode("latin-1"))
    (base / "link.md").symlink_to(base / "p.md")
    identity = ["-c", "user.name=Fuzz", "-c", "user.email=fuzz@example.com"]
    for args in (
        ["init", "-q", "--initial-branch=main"],
        ["commit", "-q", "--allow-empty", "-m", "x"],
        ["tag", "v1"],
    ):
        subprocess.run(["git", *identity, *args], cwd=base, check=True, capture_output=True, timeout=60)
    return str(base)


def check_parse(data: bytes, fmt: str) -> Manifest | None:
    """The invariants of parsing one document; the manifest if it was accepted."""
    try:
        manifest = parse_manifest(data, source=f"fuzz.{fmt}", fmt=fmt)
    except ManifestError as exc:
        assert exc.problems, "a ManifestError without a problem"
        for problem in exc.problems:
            assert problem.reason.strip(), f"a problem without a reason: {problem!r}"
            assert str(problem).isprintable(), f"a message that can forge lines: {problem!r}"
        event(f"{fmt}: rejected")
        return None
    event(f"{fmt}: accepted")
    plan = json.loads(json.dumps(manifest.to_json(), allow_nan=False))  # as run.json stores it
    assert manifest_from_plan(plan, source="run.json") == manifest
    assert_dispatchable(manifest)
    return manifest


def assert_dispatchable(manifest: Manifest) -> None:
    """Every value the engine sends or runs can be: encoded into the requests it makes (JSON body,
    ``?directory=`` query), passed as a hook's argv, written into ``summary.md``."""
    for spec in manifest.tasks:
        text = build_prompt(spec, spool_root=Path("/spool"), run_id="r", tasks_dir=Path("/spool/t"))
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}], "agent": spec.agent}
        if spec.model is not None:
            body["model"] = {"providerID": spec.model.provider, "modelID": spec.model.model}
        directory = spec.directory or "/"
        title = session_title("r", spec.id, 1)
        httpx.Request(
            "POST", "http://127.0.0.1:9/session", params={"directory": directory}, json={"title": title}
        )
        httpx.Request(
            "POST", "http://127.0.0.1:9/session/s/prompt_async", params={"directory": directory}, json=body
        )
        assert "\x00" not in directory
    for argv in (manifest.hooks.on_task_end, manifest.hooks.on_run_end):
        assert all(b"\x00" not in os.fsencode(arg) for arg in argv)  # what exec needs
    f"# {manifest.name}".encode()


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(["json", "yaml"]))
def test_any_values_give_a_manifest_or_a_manifest_error(
    data: st.DataObject, fmt: str, playground: str
) -> None:
    doc = data.draw(manifests(playground), label="manifest")
    check_parse(encode(doc, fmt), fmt)


STEMS = ("plan", " ", "\udcff", "a\x1bb", "tâche", "x" * 200)  # a file name too may be odd


@pytest.fixture(scope="module")
def fuzz_spool(tmp_path_factory: pytest.TempPathFactory) -> Spool:
    return Spool(tmp_path_factory.mktemp("fuzz") / "spool", durable=False).init()


@ACCEPT_FUZZ
@given(data=st.data(), fmt=st.sampled_from(["json", "yaml", "yml"]), stem=st.sampled_from(STEMS))
def test_the_accept_path_accepts_or_rejects_never_raises(
    data: st.DataObject, fmt: str, stem: str, playground: str, fuzz_spool: Spool
) -> None:
    doc = data.draw(manifests(playground), label="manifest")
    path = fuzz_spool.incoming / f"{stem}.{fmt}"
    path.write_bytes(encode(doc, "json" if fmt == "json" else "yaml"))
    outcome = accept_file(fuzz_spool, path, settled=True)
    event(f"accept: {outcome.kind}")
    assert outcome.kind in ("accepted", "rejected"), outcome
    assert not path.exists()
    if outcome.kind == "rejected":
        error = outcome.path.with_name(f"{outcome.path.name}.error")
        assert outcome.path.is_file()
        assert error.read_text(encoding="utf-8").strip()
        return
    assert outcome.run_id is not None and outcome.manifest is not None
    run = fuzz_spool.run(outcome.run_id)  # the plan read back from run.json
    assert run.manifest == outcome.manifest
    write_summary(run, durable=False)


# -- the two reproductions of issue 11, through ``occoord validate`` ---------------------------


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"tasks": [{"id": "a", "prompt": "x", "directory": "~nosuchuser/x"}]}, "tasks[0].directory"),
        (
            {"defaults": {"directory": "/tmp"}, "tasks": [{"id": "a", "prompt_file": "a\x00b.md"}]},
            "tasks[0].prompt_file",
        ),
    ],
    ids=["tilde-unknown-user", "nul-in-prompt-file"],
)
def test_validate_reports_the_field_instead_of_a_traceback(
    doc: dict[str, Any], field: str, tmp_path: Path
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2
    assert f"{path}: {field}: " in result.stderr
    assert "Traceback" not in result.output


# -- values the corpus cannot hold: permissions, the environment, the file's own name ----------


def problems_of(doc: dict[str, Any], source: str = "plan.json") -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(doc).encode(), source=source)
    return [str(p) for p in info.value.problems]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and searches every directory")
def test_a_directory_this_user_cannot_use_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    (locked / "sub").mkdir(parents=True)
    locked.chmod(0)
    try:
        got = problems_of(
            {
                "tasks": [
                    {"id": "a", "prompt": "x", "directory": str(locked)},
                    {"id": "b", "prompt": "x", "directory": str(locked / "sub")},
                ]
            }
        )
    finally:
        locked.chmod(0o700)
    assert got == [
        f"tasks[0].directory: directory '{locked}' is not readable and searchable by this user",
        f"tasks[1].directory: directory '{locked}/sub' cannot be checked: Permission denied",
    ]


def test_a_home_directory_that_cannot_be_found_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(uid)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert problems_of({"defaults": {"directory": "~/work"}, "tasks": [{"id": "a", "prompt": "x"}]}) == [
        "defaults.directory: cannot expand '~/work': this user has no home directory"
    ]


@pytest.mark.parametrize(
    ("source", "name"),
    [("plan.json", "plan"), ("\udcff.json", "\ufffd"), (" .json", "manifest"), ("a\x00.json", "a\ufffd")],
    ids=["plain", "undecodable-byte", "blank", "nul"],
)
def test_a_nameless_manifest_is_named_by_its_file_with_a_valid_name(source: str, name: str) -> None:
    """The name goes into run.json's plan, which must parse again, and into summary.md (UTF-8)."""
    manifest = parse_manifest(b'{"tasks": [{"id": "a", "prompt": "x"}]}', source=source)
    assert manifest.name == name
    assert manifest_from_plan(json.loads(json.dumps(manifest.to_json())), source="run.json") == manifest
