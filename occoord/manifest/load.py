"""Manifests v1: parse JSON or YAML and validate into frozen dataclasses.

Parsing collects every problem it can find (with the field path and a reason) before raising one
:class:`ManifestError`, so a user fixes a manifest in one pass. Past this module, manifests are
immutable and fully resolved: defaults applied, prompt files read, dependencies checked.
"""

from __future__ import annotations

from pathlib import Path

from occoord.errors import ManifestError, ManifestProblem
from occoord.fsutil import NotRegularFile, TooLarge, read_limited
from occoord.manifest.build import build_manifest
from occoord.manifest.checks import Checker
from occoord.manifest.decode import decode_manifest
from occoord.manifest.model import MAX_MANIFEST_BYTES, Manifest

__all__ = ["format_for", "load_manifest", "manifest_from_plan", "parse_manifest"]


def parse_manifest(
    data: bytes,
    *,
    source: str = "<manifest>",
    fmt: str = "json",
    check_dirs: bool = True,
) -> Manifest:
    """Decode and validate a manifest. ``fmt`` is ``json`` or ``yaml``; ``source`` names it in errors.

    ``check_dirs``: also check the directories on disk and, for worktree tasks, against git (a
    repository, a ``base`` that names a commit, resolved here into ``base_commit``)."""

    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(source, [ManifestProblem("", f"file is {len(data)} bytes, over the 1 MiB limit")])
    doc = decode_manifest(source, data, fmt)
    checker = Checker(check_dirs)
    manifest = build_manifest(doc, checker, Path(source).stem)
    if checker.problems or manifest is None:
        raise ManifestError(source, checker.problems or [ManifestProblem("", "invalid manifest")])
    return manifest


def manifest_from_plan(doc: object, *, source: str) -> Manifest:
    """Rebuild a run's stored plan (``run.json``), already decoded. It was validated when its
    manifest was accepted, so the size limit does not apply (defaults applied to thousands of tasks
    can make a plan larger than the manifest it came from); it is still fully checked."""

    checker = Checker(False)
    manifest = build_manifest(doc, checker, Path(source).stem)
    if checker.problems or manifest is None:
        raise ManifestError(source, checker.problems or [ManifestProblem("", "invalid manifest")])
    return manifest


def format_for(path: Path) -> str | None:
    """``json`` or ``yaml`` by file extension, None if the extension is not a manifest's."""
    suffix = path.suffix.lower()
    return {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)


def load_manifest(path: Path, *, check_dirs: bool = True) -> Manifest:
    """Read and validate a manifest file (regular file, at most 1 MiB, UTF-8, JSON or YAML)."""
    source = str(path)
    fmt = format_for(path)
    if fmt is None:
        raise ManifestError(source, [ManifestProblem("", "unsupported extension: use .json, .yaml or .yml")])
    try:
        data = read_limited(path, MAX_MANIFEST_BYTES)
    except TooLarge as exc:
        raise ManifestError(source, [ManifestProblem("", f"file too large: {exc}")]) from exc
    except NotRegularFile as exc:
        raise ManifestError(source, [ManifestProblem("", f"not a manifest file: {exc}")]) from exc
    except OSError as exc:
        raise ManifestError(source, [ManifestProblem("", f"cannot read: {exc.strerror}")]) from exc
    return parse_manifest(data, source=source, fmt=fmt, check_dirs=check_dirs)
