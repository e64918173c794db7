"""The JSON Schema printed by ``occoord schema`` agrees with the parser on the manifest corpus.

The parser is the authority and checks more (the dependency graph, prompt files, directories),
so agreement means: every good manifest, and every resolved plan, is valid under the schema; and
every structurally bad manifest (wrong types, unknown keys, missing required fields) is rejected
by the schema exactly where the parser reports it: each problem has a schema error at or above its
field, and each schema error is at, above or below a reported problem.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_manifest_corpus import BadCase, bad_cases, case_param, decode, good_paths, materialize

from occoord.cli.main import cli
from occoord.errors import ManifestError
from occoord.manifest.load import load_manifest, parse_manifest
from occoord.manifest.model import DEFAULT_KEYS, HOOK_KEYS, ID_PATTERN, TASK_KEYS, TOP_KEYS, is_valid_id
from occoord.manifest.schema import manifest_schema

jsonschema = pytest.importorskip("jsonschema")

STRUCTURAL = [case for case in bad_cases() if case.schema_rejects]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Any:
    return jsonschema.Draft202012Validator(schema)


def field_path(parts: Iterable[str | int]) -> str:
    """``["tasks", 0, "id"]`` -> ``tasks[0].id``: the parser's way of naming a field."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def error_fields(error: Any) -> list[str]:
    """Where a schema error points, as field paths; unknown and missing keys get their own."""
    base = list(error.absolute_path)
    if error.validator == "additionalProperties":
        extras = [k for k in error.instance if k not in error.schema.get("properties", {})]
        return [field_path([*base, k]) if isinstance(k, str) else field_path(base) for k in extras]
    if error.validator == "required":
        return [field_path([*base, k]) for k in error.validator_value if k not in error.instance]
    return [field_path(base)]


def within(inner: str, outer: str) -> bool:
    """True if field ``inner`` is ``outer`` or inside it (the root holds only itself)."""
    if inner == outer:
        return True
    return bool(outer) and inner.startswith((f"{outer}.", f"{outer}["))


def test_schema_is_a_valid_draft_2020_12_schema(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_cli_prints_the_packaged_schema(schema: dict[str, Any]) -> None:
    assert schema == manifest_schema()


def test_schema_has_exactly_the_parsers_keys(schema: dict[str, Any]) -> None:
    task = schema["properties"]["tasks"]["items"]
    assert list(schema["properties"]) == list(TOP_KEYS)
    assert sorted(task["properties"]) == sorted(TASK_KEYS)
    assert sorted(schema["properties"]["defaults"]["properties"]) == sorted(DEFAULT_KEYS)
    assert sorted(schema["properties"]["hooks"]["properties"]) == sorted(HOOK_KEYS)
    for obj in (schema, task, schema["properties"]["defaults"], schema["properties"]["hooks"]):
        assert obj["additionalProperties"] is False


def test_schema_task_id_is_the_protocols_grammar(schema: dict[str, Any]) -> None:
    task = schema["properties"]["tasks"]["items"]["properties"]
    anchored = f"^{ID_PATTERN.pattern}$(?!\\n)"  # '$' alone matches before a final newline in Python
    assert task["id"]["pattern"] == anchored
    assert [alt.get("items", alt)["pattern"] for alt in task["depends_on"]["oneOf"]] == [anchored, anchored]


def schema_patterns(node: Any) -> set[str]:
    """Every ``pattern`` in the schema."""
    if isinstance(node, dict):
        own = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
        return own.union(*(schema_patterns(v) for k, v in node.items() if k != "pattern"))
    if isinstance(node, list):
        return set().union(*(schema_patterns(v) for v in node))
    return set()


# strings that tell the end-of-text, whitespace, '..' and digit rules of regex engines apart
PATTERN_SAMPLES = [
    *("a", "a\n", "a\n\n", "\na", "A" * 128, "A" * 129, "a b", "tâche", "-a", "a.b_c-9"),
    *("../x", "x/..", "x/../y", "..", "...", "..x", "x..", "..\n", "/etc", "~/x", "prompts/build.md"),
    *("", " ", " \t\n", "ok ", "\u00a0", "\u3000x"),
    *("5s", "0s", "0.0m", " 15m ", "15m\n", "1.5h", "0.5", "00", "10", "\u0665s", "15M", "1d"),
    *("a/b", "/b", "a/", " /b", "a/ ", "p/m/x", "a/b\nc"),
    *(
        "-",
        "--all",
        "HEAD~2",
        "main@{1}",
        "0123456789abcdef" * 2 + "01234567",
        "0123456789ABCDEF" * 2 + "01234567",
    ),
    *("never", "on_failure", "always", "Always", "always\n"),
]


def test_schema_patterns_mean_the_same_to_ecma_262(schema: dict[str, Any], tmp_path: Path) -> None:
    """Editors validate with ECMA-262 regexes, jsonschema with Python's re: both must agree."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node for an ECMA-262 regex engine")
    patterns = sorted(schema_patterns(schema))
    script = tmp_path / "match.js"
    script.write_text(
        "const [patterns, samples] = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "console.log(JSON.stringify(patterns.map(p => [new RegExp(p), new RegExp(p, 'u')].map(\n"
        "  re => samples.map(s => re.test(s))))));\n"
    )
    proc = subprocess.run(
        [node, str(script)],
        input=json.dumps([patterns, PATTERN_SAMPLES]),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    ecma = json.loads(proc.stdout)
    for pattern, (plain, unicode) in zip(patterns, ecma, strict=True):
        python = [re.search(pattern, s) is not None for s in PATTERN_SAMPLES]
        differ = [
            s for s, p, e, u in zip(PATTERN_SAMPLES, python, plain, unicode, strict=True) if not p == e == u
        ]
        assert not differ, f"{pattern!r}: Python and ECMA-262 disagree on {differ}"


@pytest.mark.parametrize(
    ("field", "wrap"),
    [
        ("id", lambda v: {"tasks": [{"id": v, "prompt": "x"}]}),
        ("depends_on", lambda v: {"tasks": [{"id": "t", "prompt": "x", "depends_on": [v]}]}),
        ("timeout", lambda v: {"tasks": [{"id": "t", "prompt": "x", "timeout": v}]}),
        ("model", lambda v: {"tasks": [{"id": "t", "prompt": "x", "model": v}]}),
        ("agent", lambda v: {"tasks": [{"id": "t", "prompt": "x", "agent": v}]}),
        ("prompt", lambda v: {"tasks": [{"id": "t", "prompt": v}]}),
        ("name", lambda v: {"name": v, "tasks": [{"id": "t", "prompt": "x"}]}),
        ("prompt_file", lambda v: {"tasks": [{"id": "t", "prompt_file": v, "directory": "/nonexistent"}]}),
        ("base", lambda v: {"defaults": {"base": v}, "tasks": [{"id": "t", "prompt": "x"}]}),
        ("base_commit", lambda v: {"tasks": [{"id": "t", "prompt": "x", "base_commit": v}]}),
        ("keep_worktree", lambda v: {"tasks": [{"id": "t", "prompt": "x", "keep_worktree": v}]}),
    ],
)
def test_schema_and_parser_agree_on_string_values(field: str, wrap: Any, validator: Any) -> None:
    """For every sample string in a field, the schema accepts it exactly when the parser does.

    Only the parser's problems with the field itself count, and for a prompt_file only those with
    its form: its directory does not exist, so it is never read. A depends_on names a task.
    """
    disagree = []
    for value in PATTERN_SAMPLES:
        doc = wrap(value)
        if field == "depends_on" and is_valid_id(value):
            doc["tasks"].append({"id": value, "prompt": "x"})
        try:
            parse_manifest(json.dumps(doc).encode(), check_dirs=False)
            parser_ok = True
        except ManifestError as exc:
            mine = [p for p in exc.problems if p.field.split(".")[-1].startswith(field)]
            # a prompt_file of the right form fails only when read: "cannot read ..."
            parser_ok = all(field == "prompt_file" and "must" not in p.reason for p in mine)
        schema_ok = not list(validator.iter_errors(doc))
        if parser_ok != schema_ok:
            disagree.append((value, parser_ok, schema_ok))
    assert not disagree, f"{field}: (value, parser accepts, schema accepts): {disagree}"


def test_every_structural_case_is_decodable() -> None:
    assert len(STRUCTURAL) >= 20
    for case in STRUCTURAL:
        decode(case.path)  # raises if the case is really an encoding or syntax case


@pytest.mark.parametrize("path", good_paths(), ids=lambda p: p.name)
def test_good_manifest_is_valid(path: Path, validator: Any, tmp_path: Path) -> None:
    errors = [e.message for e in validator.iter_errors(decode(materialize(path, tmp_path)))]
    assert errors == []


@pytest.mark.parametrize("path", good_paths(), ids=lambda p: p.name)
def test_resolved_plan_is_valid(path: Path, validator: Any, tmp_path: Path) -> None:
    plan = load_manifest(materialize(path, tmp_path)).to_json()
    errors = [e.message for e in validator.iter_errors(json.loads(json.dumps(plan)))]
    assert errors == []


@pytest.mark.parametrize("case", [case_param(c) for c in STRUCTURAL])
def test_structural_mistake_is_rejected_where_the_parser_says(
    case: BadCase, validator: Any, tmp_path: Path
) -> None:
    errors = list(validator.iter_errors(decode(materialize(case.path, tmp_path))))
    assert errors, "the schema accepts it"
    schema_fields = [(f, e.message) for e in errors for f in error_fields(e)]
    parser_fields = [want.field for want in case.expected]
    uncovered = [f for f in parser_fields if not any(within(f, s) for s, _ in schema_fields)]
    assert not uncovered, f"parser problems the schema misses: {uncovered}; schema errors: {schema_fields}"
    stray = [(s, m) for s, m in schema_fields if not any(within(f, s) or within(s, f) for f in parser_fields)]
    assert not stray, f"schema errors where the parser sees no problem: {stray}"
