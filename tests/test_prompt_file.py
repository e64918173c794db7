"""``prompt_file`` is read from inside the task's directory only, symbolic links on the way included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from occoord.errors import ManifestError
from occoord.manifest.load import parse_manifest
from occoord.manifest.model import Manifest


def _parse(directory: Path, prompt_file: str) -> Manifest:
    doc = {
        "version": 1,
        "name": "p",
        "tasks": [{"id": "a", "directory": str(directory), "prompt_file": prompt_file}],
    }
    return parse_manifest(json.dumps(doc).encode(), source="m.json", fmt="json")


def test_a_prompt_file_in_a_subfolder_is_read(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.md").write_text("do it\n")
    manifest = _parse(tmp_path, "prompts/a.md")
    assert manifest.tasks[0].prompt == "do it\n"


def test_a_symlinked_folder_inside_the_directory_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.md").write_text("inside\n")
    os.symlink("real", tmp_path / "alias")
    manifest = _parse(tmp_path, "alias/a.md")
    assert manifest.tasks[0].prompt == "inside\n"


def test_a_symlinked_folder_leading_outside_is_refused_with_the_field(tmp_path: Path) -> None:
    task_dir, outside = tmp_path / "task", tmp_path / "secrets"
    task_dir.mkdir()
    outside.mkdir()
    (outside / "key.md").write_text("private\n")
    os.symlink(outside, task_dir / "link")
    with pytest.raises(ManifestError) as err:
        _parse(task_dir, "link/key.md")
    [problem] = err.value.problems
    assert problem.field == "tasks[0].prompt_file"
    assert "leads outside the task's directory" in str(problem)
    assert "private" not in str(err.value)
