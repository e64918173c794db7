"""occoord/engine/service.py: the wiring around the coordinator.

A spawned server is released or stopped at exit as ``ServerChoice.at_exit`` says.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from spoolkit import new_run

from occoord.engine.service import ServerChoice, _end_server, _stop_server
from occoord.opencode.procinfo import ServerRecord
from occoord.spool.layout import Spool
from occoord.spool.states import TaskState

# ------------------------------------------------------------------ the server at exit


class FakeServer:
    def __init__(self, record: ServerRecord | None) -> None:
        self.kept = record
        self.did: list[str] = []

    async def release(self) -> ServerRecord | None:
        self.did.append("release")
        return self.kept

    async def stop(self) -> None:
        self.did.append("stop")


RECORD = ServerRecord(4242, "http://127.0.0.1:1", "pw", "/bin/opencode", "1", "boot:1", "f")


def _end(tmp_path: Path, record: ServerRecord | None, stop_at_exit: Any, *, state: bool = True) -> list[str]:
    server = FakeServer(record)
    state_file = tmp_path / "server.json" if state else None
    if state_file is not None:
        state_file.write_bytes(RECORD.to_bytes())
    asyncio.run(_end_server(server, state_file, stop_at_exit))  # type: ignore[arg-type]
    return [*server.did, "recorded" if state_file is not None and state_file.exists() else "no record"]


def _broken() -> bool:
    raise OSError("spool unreadable")


def test_the_spawned_server_is_released_unless_told_to_stop(tmp_path: Path) -> None:
    assert _end(tmp_path, RECORD, None) == ["release", "recorded"]
    assert _end(tmp_path, RECORD, lambda: False) == ["release", "recorded"]
    assert _end(tmp_path, RECORD, lambda: True) == ["stop", "no record"]
    assert _end(tmp_path, RECORD, _broken) == ["release", "recorded"], "in doubt, keep it"
    assert _end(tmp_path, None, None) == ["release", "no record"], "it had died: a stale record goes"
    assert _end(tmp_path, RECORD, None, state=False) == ["stop", "no record"], "unfindable: stopped"


def test_run_stops_the_server_only_when_every_run_is_finished(spool: Spool) -> None:
    idle, keep, stop = (ServerChoice(at_exit=a) for a in ("stop_if_idle", "keep", "stop"))
    assert _stop_server(idle, spool) is True, "an empty spool needs no server"
    first = new_run(spool, ["a"], name="first")
    assert _stop_server(idle, spool) is False, "a queued task is unfinished"
    first.tasks.transition("a", TaskState.QUEUED, TaskState.PENDING, attempt=1, session_id="ses_1")
    assert _stop_server(idle, spool) is False
    first.tasks.transition("a", TaskState.PENDING, TaskState.DONE)
    (first.dir / "summary.json").write_text("{}")
    assert _stop_server(idle, spool) is True
    assert _stop_server(keep, spool) is False and _stop_server(stop, spool) is True
