"""Shared fixtures: temporary spools."""

from __future__ import annotations

from pathlib import Path

import pytest

from occoord.spool import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool").init()
