"""The JSON Schema printed by ``occoord schema`` agrees with the parser on the manifest corpus.

The parser is the authority and checks more (the dependency graph, prompt files, directories),
so agreement means: every good manifest, and every resolved plan, is valid under the schema; and
every structurally bad manifest (wrong types, unknown keys, missing required fields) is rejected
by the schema exactly where the parser reports it: each problem has a schema error at or above its
field, and each schema error is at, above or below a reported problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_manifest_corpus import BadCase, bad_cases, case_param, decode, good_paths, materialize

from occoord.cli import cli
from occoord.manifest import DEFAULT_KEYS, HOOK_KEYS, TASK_KEYS, TOP_KEYS, load_manifest
from occoord.manifest_schema import manifest_schema
from occoord.names import ID_PATTERN

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
    anchored = f"^{ID_PATTERN.pattern}$"
    assert task["id"]["pattern"] == anchored
    assert [alt.get("items", alt)["pattern"] for alt in task["depends_on"]["oneOf"]] == [anchored, anchored]


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


@pytest.mark.parametrize("case", [case_param(c, c.schema_xfail) for c in STRUCTURAL])
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
