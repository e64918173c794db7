"""The JSON Schema of manifest v1, printed by ``occoord schema`` for editors and other tools.

The validator in ``manifest`` is the authority (it also checks the dependency graph and reads
prompt files, which a schema cannot); tests keep the two in agreement on a corpus of manifests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["manifest_schema"]

_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_DURATION: dict[str, Any] = {
    "description": "seconds, or a string like '90s', '15m', '2h'",
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
    ],
}
_COMMAND: dict[str, Any] = {
    "description": "a command: a string split like a shell would (no shell runs it) or an argv list",
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ],
}


def manifest_schema() -> dict[str, Any]:
    common: dict[str, Any] = {
        "agent": {"type": "string", "minLength": 1, "description": "OpenCode agent, e.g. 'build'"},
        "model": {"type": "string", "pattern": r"^[^/]+/.+$", "description": "'provider/model'"},
        "directory": {"type": "string", "pattern": "^(/|~)", "description": "absolute project directory"},
        "timeout": _DURATION,
        "retries": {"type": "integer", "minimum": 0, "description": "retries for retryable failures"},
    }
    task: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["id"],
        "properties": {
            "id": {"type": "string", "pattern": _ID},
            "prompt": {"type": "string", "minLength": 1},
            "prompt_file": {"type": "string", "minLength": 1, "description": "relative to directory"},
            "role": {"type": "string"},
            "description": {"type": "string"},
            "depends_on": {
                "oneOf": [
                    {"type": "array", "items": {"type": "string", "pattern": _ID}},
                    {"type": "string", "pattern": _ID},
                ]
            },
            **common,
        },
        "oneOf": [{"required": ["prompt"]}, {"required": ["prompt_file"]}],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:occoord:manifest:1",
        "title": "occoord manifest, version 1",
        "type": "object",
        "additionalProperties": False,
        "required": ["tasks"],
        "properties": {
            "version": {"const": 1},
            "name": {"type": "string", "minLength": 1},
            "concurrency": {"type": "integer", "minimum": 1},
            "defaults": {"type": "object", "additionalProperties": False, "properties": common},
            "hooks": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"on_task_end": _COMMAND, "on_run_end": _COMMAND},
            },
            "tasks": {"type": "array", "minItems": 1, "items": task},
        },
    }
