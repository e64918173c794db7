"""The watcher drops the inotify echoes of its own renames, so its own writes no longer wake its
loop: a turn that ends must still lead at once to the next dispatch (not at the 30 s rescan)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from e2ekit import drop_atomically, manifest, start_watcher, states, summary, task, the_run

pytestmark = pytest.mark.slow


def test_a_freed_slot_is_refilled_without_waiting_for_the_rescan(
    spool_dir: Path, simulator: str, workdir: Path
) -> None:
    proc = start_watcher(spool_dir, workdir, server=simulator)
    try:
        started = time.monotonic()
        tasks = [task(f"t{i}", "[sim: work 0.05]") for i in range(8)]
        drop_atomically(spool_dir, "slots.json", manifest(*tasks, concurrency=1, name="slots"))
        run = the_run(spool_dir)
        summary(run, timeout=20.0)  # one slot: 8 turns in a row, each freeing it for the next
        assert set(states(run).values()) == {"done"}
        assert time.monotonic() - started < 20.0
    finally:
        proc.stop()
