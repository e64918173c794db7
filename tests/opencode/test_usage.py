"""Cost and tokens (occoord.opencode.usage): the sums, the stored shape, and the real routes.

``usage_of`` is checked against the messages themselves, read with plain httpx: the simulator
(and the real server, when installed) reports cost and tokens on its assistant messages, and a
``[sim: subagent]`` turn runs a child session whose usage counts for its parent.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from support.opencode_env import Backend

from occoord.opencode.client import OpenCodeClient
from occoord.opencode.usage import Usage, usage_from_messages, usage_of


def _assistant(cost: Any, tokens: Any, parts: list[Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"id": "msg_1", "sessionID": "ses_1", "role": "assistant"}
    if cost is not None:
        info["cost"] = cost
    if tokens is not None:
        info["tokens"] = tokens
    return {"info": info, "parts": parts or []}


def _tokens(i: int, o: int, r: int = 0, cr: int = 0, cw: int = 0) -> dict[str, Any]:
    return {"input": i, "output": o, "reasoning": r, "cache": {"read": cr, "write": cw}}


def test_sums_assistant_messages_only() -> None:
    user = {"info": {"id": "msg_0", "role": "user", "cost": 99, "tokens": _tokens(99, 99)}, "parts": []}
    raw = [user, _assistant(0.5, _tokens(10, 2, 1, 4, 3)), _assistant(0.25, _tokens(5, 1))]
    usage = usage_from_messages(raw)
    assert usage == Usage(
        cost=0.75, input=15, output=3, reasoning=1, cache_read=4, cache_write=3, messages=2, sessions=1
    )
    assert usage.tokens == 26


def test_step_finish_parts_when_the_message_has_no_totals() -> None:
    steps = [
        {"type": "step-finish", "cost": 0.1, "tokens": _tokens(3, 1)},
        {"type": "text", "text": "hi"},
        {"type": "step-finish", "cost": 0.2, "tokens": _tokens(4, 2)},
    ]
    usage = usage_from_messages([_assistant(None, None, steps)])
    assert (round(usage.cost, 6), usage.input, usage.output, usage.messages) == (0.3, 7, 3, 1)


@pytest.mark.parametrize(
    "raw",
    [None, {}, "x", [1, "two", None], [{"info": "x"}], [_assistant("cheap", {"input": True, "cache": 5})]],
)
def test_malformed_answers_count_as_nothing(raw: Any) -> None:
    usage = usage_from_messages(raw)
    assert (usage.cost, usage.tokens) == (0.0, 0)


def test_json_round_trip_and_tolerant_reading() -> None:
    usage = Usage(
        cost=1.5, input=1, output=2, reasoning=3, cache_read=4, cache_write=5, messages=6, sessions=2
    )
    doc = usage.to_json()
    assert doc == {
        "cost": 1.5,
        "tokens": {"input": 1, "output": 2, "reasoning": 3, "cache": {"read": 4, "write": 5}, "total": 15},
        "messages": 6,
        "sessions": 2,
    }
    assert Usage.from_json(doc) == usage
    assert Usage.from_json("nope") is None
    assert Usage.from_json({"cost": "x", "tokens": {"input": float("nan")}}) == Usage()
    assert usage + usage == Usage(3.0, 2, 4, 6, 8, 10, 12, 4)


def _raw_messages(url: str, password: str, sid: str, directory: str) -> list[Any]:
    response = httpx.get(
        f"{url}/session/{sid}/message", params={"directory": directory}, auth=("opencode", password)
    )
    response.raise_for_status()
    return list(response.json())


async def _turn(client: OpenCodeClient, directory: str, text: str) -> str:
    session = await client.create_session(directory, f"usage test {time.monotonic_ns()}")
    await client.prompt_async(session.id, directory, text)
    deadline = time.monotonic() + 60
    while True:  # polled, not streamed: this test is about the messages, not the events
        messages = await client.messages(session.id, directory)
        ended = any(m.role == "assistant" and m.completed for m in messages)
        if ended and session.id not in await client.session_status(directory):
            return session.id
        assert time.monotonic() < deadline, "the turn did not end"
        await asyncio.sleep(0.05)


def test_the_server_reports_usage_and_usage_of_sums_it(backend: Backend) -> None:
    directory = str(backend.workdir)
    text = "Say something.\n" + backend.directive("reply", "something")

    async def go() -> tuple[str, Usage]:
        client = OpenCodeClient(backend.url, password=backend.password, timeout=30)
        try:
            sid = await _turn(client, directory, text)
            return sid, await usage_of(client, sid, directory)
        finally:
            await client.aclose()

    sid, usage = asyncio.run(go())
    raw = _raw_messages(backend.url, backend.password, sid, directory)
    for message in raw:
        if message["info"]["role"] == "assistant":
            info = message["info"]
            assert isinstance(info["cost"], int | float)
            assert set(info["tokens"]) >= {"input", "output", "reasoning", "cache"}
    assert usage == usage_from_messages(raw)
    assert usage.tokens > 0 and usage.messages >= 1 and usage.sessions == 1


def test_usage_of_includes_child_sessions(simulator: Any, sim_password: str, tmp_path: Any) -> None:
    directory = str(tmp_path)
    text = (
        "Delegate. [sim: subagent] [sim: work 0.05] "
        "[sim: usage input=100 output=20 reasoning=3 cache_read=7 cache_write=2 cost=0.5]"
    )

    async def go() -> tuple[str, Usage, list[Any]]:
        client = OpenCodeClient(simulator.url, password=sim_password, timeout=30)
        try:
            sid = await _turn(client, directory, text)
            children = await client.get_json(f"/session/{sid}/children", directory)
            return sid, await usage_of(client, sid, directory), children
        finally:
            await client.aclose()

    sid, usage, children = asyncio.run(go())
    assert [c["parentID"] for c in children] == [sid]
    parent = usage_from_messages(_raw_messages(simulator.url, sim_password, sid, directory))
    child = usage_from_messages(_raw_messages(simulator.url, sim_password, children[0]["id"], directory))
    assert (parent.input, parent.output, parent.cost) == (100, 20, 0.5)
    assert child.tokens > 0 and child.cost > 0
    assert usage == parent + child
    assert usage.sessions == 2
