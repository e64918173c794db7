"""A real full disk: the spool on a tiny tmpfs (tests run as root; skipped where mounting is not
allowed). Nothing is lost and nothing stays stuck once the disk has room again."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Engine, manifest, task

from occoord.spool.states import TaskState


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write until the filesystem says ENOSPC; the filler file, to delete later."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        block = b"\0" * 65536
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_delays_the_outcome_and_loses_nothing(tiny_disk: Path) -> None:
    engine = Engine(tiny_disk)

    async def scenario(e: Engine) -> None:
        await e.start()
        run = await e.submit(manifest(task("t"), task("next", depends_on=["t"])))
        sid = e.session(run, "t")
        filler = fill(tiny_disk)
        await e.events(e.client.end_turn(sid, text="the answer " * 200))
        assert e.state(run, "t") is TaskState.PENDING
        assert len(e.co.table) == 1, "the attempt keeps its slot"
        assert any("No space left" in p for p in e.co.problems().values())
        await e.advance(1)
        await e.advance(2)
        assert e.state(run, "t") is TaskState.PENDING
        filler.unlink()
        await e.advance(4)
        await e.advance(8)
        assert e.state(run, "t") is TaskState.DONE
        assert (e.spool.runs / run / "results" / "t.md").read_text().startswith("the answer")
        assert e.state(run, "next") is TaskState.PENDING
        assert e.co.problems() == {}
        assert json.loads((e.spool.root / "watcher.json").read_text())["problems"] == []

    engine.play(scenario)
