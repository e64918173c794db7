"""Fixtures of the in-process engine tests (the harness is in ``harness``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Engine


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(tmp_path)


@pytest.fixture
def make_engine(tmp_path: Path) -> Callable[..., Engine]:
    def make(**config: Any) -> Engine:
        return Engine(tmp_path, **config)

    return make
