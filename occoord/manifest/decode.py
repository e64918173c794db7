"""Decoding a manifest's bytes into a plain document: UTF-8 text, then strict JSON or safe YAML.

Only plain data gets through: JSON without duplicate keys or the NaN/Infinity extensions; YAML
without tags, aliases, merge keys or duplicate keys. Every failure is a :class:`ManifestError`
about the whole file, never a stray exception from a decoder.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Hashable
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from occoord.errors import ManifestError, ManifestProblem

__all__ = ["decode_manifest"]

_YAML_TAGS = "tag:yaml.org,2002:"
# '<<' (merge, only useful with aliases) and '=' (value) stay plain strings: unknown keys
_NOT_RESOLVED = (f"{_YAML_TAGS}merge", f"{_YAML_TAGS}value")


class _Refused(yaml.YAMLError):
    """Valid YAML that a manifest does not allow (a tag): reported as is, not as invalid YAML."""


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also refuses tags, aliases (billion laughs) and duplicate or unhashable keys."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NOT_RESOLVED]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise yaml.YAMLError(f"YAML aliases are not allowed (line {line})")
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = "!!" + tag.removeprefix(_YAML_TAGS) if tag.startswith(_YAML_TAGS) else tag
            raise _Refused(f"YAML tags are not allowed: {shown!r} (line {line})")
        return super().compose_node(parent, index)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:  # e.g. the date 2024-13-45, a 5000-digit integer
            raise ConstructorError(None, None, f"cannot read this value: {exc}", node.start_mark) from exc

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found unhashable key",
                    key_node.start_mark,
                )
            if isinstance(key, str) and key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with line and column numbers instead of the quoted snippet."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    parts = []
    for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if text:
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            parts.append(" ".join(f"{text}{where}".split()))
    return ", ".join(parts) or " ".join(str(exc).split())


def decode_manifest(source: str, data: bytes, fmt: str) -> Any:
    """The document in ``data`` (``fmt`` is ``json`` or ``yaml``); a UTF-8 BOM is allowed in both."""

    def fail(reason: str) -> ManifestError:
        return ManifestError(source, [ManifestProblem("", reason)])

    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    data = data[bom:]
    if not data.strip():
        raise fail("empty file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start + bom})") from exc
    if "\x00" in text:
        raise fail("binary content (NUL byte)")
    try:
        if fmt == "json":
            try:
                return json.loads(text, object_pairs_hook=_json_pairs, parse_constant=_json_constant)
            except ValueError as exc:
                raise fail(f"invalid JSON: {exc}") from exc
        try:
            return yaml.load(text, Loader=_SafeLoader)
        except _Refused as exc:
            raise fail(str(exc)) from exc
        except yaml.YAMLError as exc:
            raise fail(f"invalid YAML: {_yaml_reason(exc)}") from exc
    except RecursionError as exc:
        raise fail("nested too deeply") from exc
