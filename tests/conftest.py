"""Shared fixtures: temporary spools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import LIVE

from occoord.spool.layout import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").init()


@pytest.fixture(autouse=True, scope="module")
def _no_process_left_behind() -> Iterator[None]:
    """Whatever a test module started through e2ekit is stopped by PID at its end, even when a test
    failed before its own cleanup (module scope: module-wide fixtures keep their processes)."""
    yield
    while LIVE:
        proc = LIVE.pop()
        if proc.popen.poll() is None:
            proc.stop()
        elif not proc.fh.closed:
            proc.fh.close()
