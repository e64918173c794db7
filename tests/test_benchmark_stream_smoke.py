"""benchmarks/stream.py end to end on a tiny size: well-formed figures, no timing asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_a_tiny_stream_run_gives_well_formed_figures(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks.stream", "--sessions", "3", "--rate", "40", "--seconds", "1.5"]
    done = subprocess.run(
        [*argv, "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stream cpu/event vs bare reader (3 sessions)" in done.stdout
    (path,) = tmp_path.glob("stream-3-spread-*.json")
    (result,) = json.loads(path.read_text())
    assert result["all_done"] and result["lost"] == 0 and result["sim_dropped_subscribers"] == 0
    assert result["emitted"] == result["received_by_reader"] > 3 * 60
    for key in ("window_s", "achieved_events_per_s", "watcher_us_per_event", "reader_us_per_event"):
        assert _number(result[key]) and result[key] >= 0, key
    # A tiny window may show no reader CPU at all (10 ms ticks): then the ratio is infinite.
    assert isinstance(result["cpu_ratio"], float) and result["cpu_ratio"] >= 0
    latency = result["outcome_read_ms"]
    assert latency["n"] == 3 and latency["min"] <= latency["p50"] <= latency["p99"] <= latency["max"]
