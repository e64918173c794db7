"""``[sim: stream CHUNKS RATE]``: a streamed answer as deltas at a rate, and the turn-end stamps."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from test_simulator import Events, messages, new_session, payload, prompt, run

from occoord.sim.script import parse_script
from occoord.sim.simulator import Simulator
from occoord.sim.streaming import UPDATE_EVERY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[sim: stream 100 20]", (100, 20.0)),
        ("[sim: stream 7]", (7, 50.0)),
        ("[sim: stream 0 5]", None),
        ("[sim: stream many]", None),
        ("[sim: stream 5 -1]", None),
        ("[sim: stream 5 inf]", None),
    ],
)
def test_stream_directive_parses(text: str, expected: tuple[int, float] | None) -> None:
    assert parse_script(text).stream == expected


def test_stream_sends_deltas_at_the_rate_with_part_updates() -> None:
    chunks, rate = 60, 100.0

    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        started = time.monotonic()
        await prompt(c, sid, f"[sim: stream {chunks} {rate}] [sim: work 0]")
        await events.idle(sid)
        took = time.monotonic() - started
        mine = events.of(sid)
        deltas = [p["properties"] for p in mine if p["type"] == "message.part.delta"]
        deltas = [d for d in deltas if d["partID"] == deltas[0]["partID"]]  # not the final reply's
        assert len(deltas) == chunks
        assert took >= (chunks - 1) / rate * 0.9  # paced, not all at once
        part_id = deltas[0]["partID"]
        assert all(d["partID"] == part_id and d["field"] == "text" for d in deltas)
        updates = [
            p["properties"]["part"]
            for p in mine
            if p["type"] == "message.part.updated" and p["properties"]["part"]["id"] == part_id
        ]
        streamed = "".join(d["delta"] for d in deltas)
        # The empty part at first, one update every UPDATE_EVERY deltas, and the whole text at the end.
        assert len(updates) == 1 + chunks // UPDATE_EVERY + 1
        assert updates[-1]["text"] == streamed
        # The messages hold the streamed text; reading them after the idle is stamped once.
        assert sid not in sim.engine.read_after_idle
        msgs = await messages(c, sid)
        texts = [p["text"] for p in msgs[-1]["parts"] if p["type"] == "text"]
        assert texts[0] == streamed
        idle_at, read_at = sim.engine.idled[sid], sim.engine.read_after_idle[sid]
        assert idle_at <= read_at <= time.monotonic()
        await messages(c, sid)
        assert sim.engine.read_after_idle[sid] == read_at
        await events.close()

    run(body, time_scale=1.0)


def test_a_burst_of_events_arrives_whole_and_in_order() -> None:
    """The SSE writer sends what is queued in one write: nothing lost or reordered."""

    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        for i in range(2000):
            sim.publish(A_DIR, "sim.burst", {"n": i})
        await events.until(lambda: len(events.items) >= 2001)
        got = [payload(i)["properties"]["n"] for i in events.items if payload(i)["type"] == "sim.burst"]
        assert got == list(range(2000))
        await asyncio.sleep(0.05)
        assert sim.bus.dropped == 0
        await events.close()

    run(body)


A_DIR = "/sim/project-a"
