"""A run dropped the moment `occoord watch` is ready: its turns end before the event stream would
have opened, and the stream has no replay. The watcher serves only once its streams are open, so
no turn's end is missed (before, the first one waited ~45 s for the silent-stream reconnect)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2ekit import drop_atomically, manifest, start_watcher, states, summary, task, the_run

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("attempt", range(3))
def test_a_run_dropped_at_ready_is_served_without_waiting_for_a_reconnect(
    spool_dir: Path, simulator: str, workdir: Path, attempt: int
) -> None:
    proc = start_watcher(spool_dir, workdir, server=simulator)
    try:
        tasks = [task(f"t{i}", "[sim: work 0]") for i in range(20)]
        drop_atomically(spool_dir, "now.json", manifest(*tasks, concurrency=20, name="now"))
        run_dir = the_run(spool_dir)
        summary(run_dir, timeout=20.0)  # a missed idle event is only found 45 s later
        assert set(states(run_dir).values()) == {"done"}
    finally:
        proc.stop()
