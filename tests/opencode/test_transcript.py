"""The transcript (occoord.opencode.transcript): parts to entries, and against the real routes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from support.opencode_env import Backend

from occoord.opencode.client import OpenCodeClient
from occoord.opencode.transcript import Entry, fetch_transcript, latest_activity, parse_transcript


def _message(parts: list[Any], *, role: str = "assistant", **info: Any) -> dict[str, Any]:
    return {"info": {"id": "msg_1", "sessionID": "ses_1", "role": role, **info}, "parts": parts}


def _tool(status: str, **state: Any) -> dict[str, Any]:
    return {"id": f"prt_{status}", "type": "tool", "tool": "bash", "state": {"status": status, **state}}


def test_text_tools_and_errors_in_order() -> None:
    raw = [
        _message([{"id": "prt_u", "type": "text", "text": "the prompt"}], role="user"),
        _message(
            [
                {"id": "prt_s", "type": "step-start"},
                {"id": "prt_a", "type": "text", "text": "Let me look.\nReading now"},
                _tool("completed", title="ls -la", input={"command": "ls -la"}),
                _tool("error", input={"command": "false"}, error="exit 1"),
                {"id": "prt_i", "type": "text", "text": "discarded", "ignored": True},
            ],
            time={"created": 1, "completed": 2},
            error={"name": "APIError", "data": {"message": "overloaded"}},
        ),
    ]
    entries = parse_transcript(raw)
    assert [e.kind for e in entries] == ["text", "tool", "tool", "error"]
    assert entries[0].text == "Let me look.\nReading now" and entries[0].final
    assert entries[1].render() == "[bash: ls -la] completed"
    assert entries[2].render() == "[bash: false: exit 1] error"
    assert entries[3].render() == "[error] APIError: overloaded"
    assert latest_activity(entries) == "error: APIError: overloaded"
    assert latest_activity(entries[:1]) == "Reading now"


def test_running_tools_and_streaming_text_are_not_final() -> None:
    raw = [_message([_tool("running", input={"description": "Run the tests"})])]
    (entry,) = parse_transcript(raw)
    assert (entry.status, entry.final, entry.text) == ("running", False, "Run the tests")
    assert latest_activity((entry,)) == "bash Run the tests (running)"
    streaming = parse_transcript([_message([{"id": "p", "type": "text", "text": "half"}])])
    assert not streaming[0].final
    done = parse_transcript([_message([{"id": "p", "type": "text", "text": "half", "time": {"end": 3}}])])
    assert done[0].final and done[0].key != streaming[0].key


@pytest.mark.parametrize("raw", [None, "x", [None, 1], [{"info": {"role": "assistant"}, "parts": "x"}]])
def test_odd_answers_give_an_empty_transcript(raw: Any) -> None:
    assert parse_transcript(raw) == ()
    assert latest_activity(()) == ""


def test_a_long_line_is_shortened_for_activity() -> None:
    entry = Entry("text", "s", "m", "p", "word " * 100)
    assert len(entry.activity()) <= 200


def test_a_turn_with_a_tool_call(backend: Backend) -> None:
    """The agent's text and its tool call (the simulator's work is a bash call) are in the transcript."""
    directory = str(backend.workdir)
    if backend.kind == "sim":
        text = "Work. [sim: work 0.05] [sim: reply all finished]"
    else:
        text = "Work.\n" + backend.directive("bash", "echo hi")

    async def go() -> tuple[Entry, ...]:
        client = OpenCodeClient(backend.url, password=backend.password, timeout=30)
        try:
            session = await client.create_session(directory, f"transcript {time.monotonic_ns()}")
            await client.prompt_async(session.id, directory, text)
            deadline = time.monotonic() + 60
            while True:
                entries = await fetch_transcript(client, session.id, directory)
                idle = session.id not in await client.session_status(directory)
                if idle and any(e.kind == "text" and e.final for e in entries):
                    return entries
                assert time.monotonic() < deadline, entries
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    entries = asyncio.run(go())
    tools = [e for e in entries if e.kind == "tool"]
    assert tools and tools[0].tool == "bash" and tools[0].status == "completed"
    texts = [e.text for e in entries if e.kind == "text"]
    assert ("all finished" if backend.kind == "sim" else "finished") in texts[-1]
