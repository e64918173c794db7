"""The JSON Schema of manifest v1, printed by ``occoord schema`` for editors and other tools.

The validator in ``manifest`` is the authority (it also checks the dependency graph, reads
prompt files and directories, and refuses NUL characters and lone surrogates in strings: the
schema leaves those to it); tests keep the two in agreement on a corpus of manifests.
"""

from __future__ import annotations

from typing import Any

from occoord.manifest.model import COMMIT_PATTERN, ID_PATTERN, KEEP_WORKTREE

__all__ = ["manifest_schema"]

# Patterns are searched for (not matched whole) and must mean the same to Python's re (the
# jsonschema package) and to ECMA-262 (editors). Hence no \Z and no bare '$' at the end: '$' also
# matches before a final newline in Python, so '$(?!\n)' stands for "the end" in both.
_END = r"$(?!\n)"
_ID = f"^{ID_PATTERN.pattern}{_END}"
_NOT_BLANK = r"\S"  # holds a character that is not whitespace, as str.strip() sees it
_DURATION: dict[str, Any] = {
    "description": "seconds, or a string like '90s', '15m', '2h'; positive",
    "oneOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": rf"^\s*(?=[0-9.]*[1-9])[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)?\s*{_END}"},
    ],
}
_COMMAND: dict[str, Any] = {
    "description": "a command: a string split like a shell would (no shell runs it) or an argv list",
    "oneOf": [
        {"type": "string", "pattern": _NOT_BLANK},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ],
}
_PROMPT_FILE: dict[str, Any] = {
    "type": "string",
    "description": "relative to directory, and inside it",
    "allOf": [
        {"pattern": _NOT_BLANK},
        {"pattern": "^(?!/)", "description": "not absolute"},
        {"pattern": r"^(?![\s\S]*(^|/)\.\.(?![^/]))", "description": "no '..' component"},
    ],
}


# The parser checks the rest (a real date and time); the schema says the shape.
_MOMENT: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}",
    "description": "not dispatched before this time: ISO 8601 with a UTC offset, e.g. 2026-12-24T18:00:00Z",
}


def manifest_schema() -> dict[str, Any]:
    common: dict[str, Any] = {
        "agent": {"type": "string", "pattern": _NOT_BLANK, "description": "OpenCode agent, e.g. 'build'"},
        "model": {
            "type": "string",
            "pattern": r"^[^/]*[^/\s][^/]*/[\s\S]*\S",
            "description": "'provider/model' (the model part may hold slashes)",
        },
        "directory": {"type": "string", "pattern": "^(/|~)", "description": "absolute project directory"},
        "timeout": _DURATION,
        "retries": {"type": "integer", "minimum": 0, "description": "retries for retryable failures"},
        "worktree": {
            "type": "boolean",
            "description": "work in a git worktree of directory's repository, on a branch of its own",
        },
        "base": {
            "type": "string",
            "description": "the branch, tag or commit a task without dependencies starts from (default HEAD)",
            "allOf": [{"pattern": _NOT_BLANK}, {"pattern": "^(?!-)", "description": "not an option"}],
        },
        "keep_worktree": {
            "enum": list(KEEP_WORKTREE),
            "description": "when the worktree stays after the task ends (default on_failure)",
        },
        "not_before": _MOMENT,
        "server": {
            "type": "string",
            "pattern": _NOT_BLANK,
            "description": "a label of the servers it may run on",
        },
    }
    task: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["id"],
        "properties": {
            "id": {"type": "string", "pattern": _ID},
            "prompt": {"type": "string", "pattern": _NOT_BLANK},
            "prompt_file": _PROMPT_FILE,
            "role": {"type": "string"},
            "description": {"type": "string"},
            "depends_on": {
                "oneOf": [
                    {"type": "array", "items": {"type": "string", "pattern": _ID}},
                    {"type": "string", "pattern": _ID, "description": "one id: a list of one"},
                ]
            },
            **common,
            "base_commit": {
                "type": "string",
                "pattern": f"^({COMMIT_PATTERN.pattern}){_END}",
                "description": "the commit base was resolved to when the run was accepted (in run.json)",
            },
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
            "name": {"type": "string", "pattern": _NOT_BLANK},
            "concurrency": {"type": "integer", "minimum": 1},
            "not_before": _MOMENT,
            "limits": {
                "type": "object",
                "description": "busy sessions of this run at once per 'provider/model' pattern (* ? [...])",
                "propertyNames": {"pattern": _NOT_BLANK},
                "additionalProperties": {"type": "integer", "minimum": 1},
            },
            "defaults": {"type": "object", "additionalProperties": False, "properties": common},
            "hooks": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"on_task_end": _COMMAND, "on_run_end": _COMMAND},
            },
            "tasks": {"type": "array", "minItems": 1, "items": task},
        },
    }
