"""The benchmark script runs end to end on tiny sizes and writes well-formed figures.

No timing is asserted: the machine may be slow or busy. Only the shape of the results is checked.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from support.processes import Proc

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_summary(fig: dict[str, Any], n: int | None = None) -> None:
    for key in ("n", "p50", "p99", "min", "max", "samples"):
        assert key in fig, key
    assert len(fig["samples"]) == fig["n"]
    if n is not None:
        assert fig["n"] == n
    assert fig["n"] > 0
    assert all(_number(v) and v >= 0 for v in fig["samples"])
    assert fig["min"] <= fig["p50"] <= fig["p99"] <= fig["max"]


def test_quick_run_writes_well_formed_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = [
        sys.executable, "-m", "benchmarks", "--quick", "--sizes", "10", "--reps", "1",
        "--latency-reps", "2", "--signal-reps", "2", "--idle-seconds", "1", "--profile-size", "10",
        "--stream-sessions", "3", "--stream-seconds", "1", "--bulk-tasks", "300",
        "--out", str(out),
    ]  # fmt: skip
    driver = Proc(argv, tmp_path / "benchmarks.log", cwd=REPO)
    try:
        code = driver.popen.wait(timeout=240)
    finally:
        # SIGINT, not SIGTERM: the driver has no SIGTERM handler, and only an exception runs the
        # finally blocks that stop the watchers it started (each in a process group of its own).
        driver.stop(timeout=60, sig=signal.SIGINT)
    output = driver.output()
    assert code == 0, output[-3000:]
    for title in (
        "1. drop -> dispatch",
        "2. signal -> next dispatch",
        "3/6. throughput",
        "4. idle",
        "7. streamed events (3 sessions)",
        "8. a 300-task manifest",
        "targets",
    ):
        assert title in output

    results = json.loads((out / "latest.json").read_text())
    assert results["quick"] is True
    assert results["machine"]["cpus"] >= 1

    drop = results["drop_dispatch"]
    _check_summary(drop["occoord"], 2)
    _check_summary(drop["baseline_poll_1s"], 2)
    assert _number(drop["speedup_p50"]) and drop["speedup_p50"] > 0

    size = results["sizes"]["10"]
    assert size["tasks"] == 10
    after_signal = size["signal_dispatch_ms"]
    assert after_signal["n"] + after_signal["timeouts"] >= 1
    tp = size["throughput"]
    for key in ("occoord_elapsed_s", "occoord_lifecycles_per_s", "raw_elapsed_s", "ratio_occoord_over_raw"):
        _check_summary(tp[key], 1)
    assert all(_number(v) and v > 0 for v in size["memory"].values())

    idle = results["idle"]
    assert _number(idle["cpu_s"]) and idle["cpu_s"] >= 0 and _number(idle["rss_mb"]) and idle["rss_mb"] > 0

    profile = results["profile"]
    assert profile["tasks"] == 10 and profile["top_tottime"] and Path(profile["prof_file"]).exists()

    (stream,) = results["stream"]
    assert stream["sessions"] == 3 and stream["all_done"] and stream["lost"] == 0
    bulk = results["bulk"]
    assert bulk["tasks"] == 300 and bulk["cancelled_failed"] == 300
    for key in ("accept_first_prompt_s", "stall_worst_ms", "cancel_s"):
        assert _number(bulk[key]) and bulk[key] >= 0, key

    for name, target in results["targets"].items():
        assert isinstance(target["met"], bool), name
        # None: not measurable in so short a run (a stream window with no reader CPU tick).
        assert target["value"] is None or _number(target["value"]), name
        assert _number(target["target"]), name
