"""Value-level fuzzing through the whole engine: structurally valid manifests with hostile values
are dropped into incoming/ of an engine running in this process. Each one is rejected with a
reason, or its run goes to an end (every turn answered by the fake server); the loop never meets
an unexpected error (it would survive one, logging a traceback: that is what this test looks for).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from harness import Engine
from hypothesis import given, settings
from hypothesis import strategies as st
from test_manifest_fuzz import EXAMPLES, encode, manifests, playground  # noqa: F401 (a fixture)

from occoord.engine.watcher import Hint

ENGINE_FUZZ = settings(max_examples=max(1, EXAMPLES // 3), deadline=None)


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.seen.append(self.format(record))


async def run_to_an_end(e: Engine, name: str, data: bytes) -> None:
    await e.start()
    path = e.spool.incoming / name
    path.write_bytes(data)
    e.co.post(Hint("incoming", path=path, settled=True))
    await e.settle()
    for _ in range(50):
        runs = e.spool.run_ids()
        if not runs or all(e.summary(r) is not None for r in runs):
            break
        for session in e.client.busy_sessions():
            await e.events(e.client.end_turn(session.id))
        await e.advance(10)
    runs = e.spool.run_ids()
    rejected = sorted(p.name for p in e.spool.rejected.iterdir())
    if runs:
        assert len(runs) == 1 and not rejected
        summary = e.summary(runs[0])
        assert summary is not None, "the run went to an end"
        assert all(t["state"] in ("done", "failed") for t in summary["tasks"])
    else:
        assert len(rejected) == 2 and any(n.endswith(".error") for n in rejected), rejected
    assert not path.exists()


@ENGINE_FUZZ
@given(data=st.data(), fmt=st.sampled_from(["json", "yaml"]))
def test_every_manifest_is_rejected_or_runs_to_an_end(data: st.DataObject, fmt: str, playground: str) -> None:  # noqa: F811
    doc: dict[str, Any] = data.draw(manifests(playground), label="manifest")
    doc.pop("hooks", None)  # generated argv would run arbitrary programs here
    handler = Tracebacks()
    logging.getLogger("occoord").addHandler(handler)
    try:
        with tempfile.TemporaryDirectory() as root:
            Engine(Path(root)).play(lambda e: run_to_an_end(e, f"plan.{fmt}", encode(doc, fmt)))
    finally:
        logging.getLogger("occoord").removeHandler(handler)
    assert handler.seen == []
