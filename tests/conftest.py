"""Shared fixtures: temporary spools, and the processes of the end-to-end tests (a simulator, a
watcher), each stopped by its PID when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import start_watcher
from support.processes import Proc, start_simulator, stop_all

from occoord.spool.layout import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").init()


@pytest.fixture(autouse=True, scope="module")
def _no_process_left_behind() -> Iterator[None]:
    """Whatever a test module started as a support.processes.Proc is stopped by PID at its end, even
    when a test failed before its own cleanup (module scope: module-wide fixtures keep theirs)."""
    yield
    stop_all()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The directory the agents work in (the watcher's --workdir)."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """Where an end-to-end test's spool goes: not made here, the first occoord process makes it."""
    return tmp_path / "spool"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[str]:
    """`occoord simulate` as a process of its own: its URL."""
    proc, url = start_simulator(tmp_path / "simulator.log")
    yield url
    proc.stop()


@pytest.fixture
def watcher(spool_dir: Path, workdir: Path, simulator: str) -> Iterator[Proc]:
    """`occoord watch` serving ``spool_dir`` on ``simulator``; it must stop cleanly (exit 0)."""
    proc = start_watcher(spool_dir, workdir, server=simulator)
    yield proc
    assert proc.stop() == 0, proc.output()
