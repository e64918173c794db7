"""results/T.md is published as a second name of results/T@N.md; a later attempt's text replaces
T.md and leaves T@N.md as it was."""

from __future__ import annotations

from pathlib import Path

from occoord.engine.results import _publish_link
from occoord.fsutil import atomic_write


def test_a_later_write_of_the_latest_name_leaves_the_attempts_file(tmp_path: Path) -> None:
    first, latest = tmp_path / "t@1.md", tmp_path / "t.md"
    atomic_write(first, b"one\n")
    _publish_link(first, latest, durable=True)
    assert latest.read_bytes() == b"one\n" and latest.stat().st_ino == first.stat().st_ino
    second = tmp_path / "t@2.md"
    atomic_write(second, b"two\n")
    _publish_link(second, latest, durable=True)
    assert latest.read_bytes() == b"two\n"
    assert first.read_bytes() == b"one\n"
    atomic_write(latest, b"by hand\n")  # any other writer replaces it too
    assert second.read_bytes() == b"two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md", "t@1.md", "t@2.md"]  # no temp left
