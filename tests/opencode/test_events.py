"""parse_event on the server's payload shapes; EventStream against a real (tiny) SSE server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from occoord.opencode.client import OpenCodeClient
from occoord.opencode.events import (
    Activity,
    Event,
    EventStream,
    MessageUpdated,
    PermissionAsked,
    QuestionAsked,
    ServerConnected,
    SessionError,
    SessionIdle,
    SessionStatusChanged,
    StreamReconnected,
    parse_event,
)
from occoord.opencode.models import ErrorInfo

DIR = "/home/u/project"


def envelope(kind: str, properties: dict[str, Any], directory: str = DIR) -> dict[str, Any]:
    return {
        "directory": directory,
        "project": "prj_1",
        "payload": {"id": "evt_1", "type": kind, "properties": properties},
    }


ASSISTANT_INFO: dict[str, Any] = {
    "id": "msg_2",
    "sessionID": "ses_1",
    "role": "assistant",
    "time": {"created": 1700000000000, "completed": 1700000001000},
    "parentID": "msg_1",
    "modelID": "m",
    "providerID": "p",
    "mode": "build",
    "agent": "build",
    "path": {"cwd": DIR, "root": DIR},
    "cost": 0,
    "tokens": {"input": 1, "output": 2, "reasoning": 0, "cache": {"read": 0, "write": 0}},
    "finish": "stop",
}

PARSE_CASES: list[tuple[str, dict[str, Any], Event | None]] = [
    ("connected", envelope("server.connected", {}, "global"), ServerConnected("global")),
    ("heartbeat", envelope("server.heartbeat", {}), None),
    ("busy", envelope("session.status", {"sessionID": "ses_1", "status": {"type": "busy"}}), None),
    (
        "retry",
        envelope(
            "session.status",
            {
                "sessionID": "ses_1",
                "status": {"type": "retry", "attempt": 3, "message": "Internal Server Error", "next": 1},
            },
        ),
        SessionStatusChanged(DIR, "ses_1", "retry", 3, "Internal Server Error"),
    ),
    ("idle", envelope("session.idle", {"sessionID": "ses_1"}), SessionIdle(DIR, "ses_1")),
    (
        "session error",
        envelope(
            "session.error",
            {
                "sessionID": "ses_1",
                "error": {
                    "name": "APIError",
                    "data": {"message": "Bad Request", "statusCode": 400, "isRetryable": False},
                },
            },
        ),
        SessionError(DIR, "ses_1", ErrorInfo("APIError", "Bad Request", False, 400)),
    ),
    ("session error bare", envelope("session.error", {}), SessionError(DIR, None, None)),
    (
        "assistant done",
        envelope("message.updated", {"sessionID": "ses_1", "info": ASSISTANT_INFO}),
        MessageUpdated(DIR, "ses_1", "msg_2", "assistant", "stop", None, True),
    ),
    (
        "assistant aborted",
        envelope(
            "message.updated",
            {
                "sessionID": "ses_1",
                "info": {
                    **ASSISTANT_INFO,
                    "finish": None,
                    "time": {"created": 1},
                    "error": {"name": "MessageAbortedError", "data": {"message": "aborted"}},
                },
            },
        ),
        MessageUpdated(
            DIR, "ses_1", "msg_2", "assistant", None, ErrorInfo("MessageAbortedError", "aborted"), False
        ),
    ),
    (
        "permission",
        envelope(
            "permission.asked",
            {
                "id": "per_9",
                "sessionID": "ses_1",
                "permission": "external_directory",
                "patterns": ["/srv/spool/*"],
                "metadata": {},
                "always": ["/srv/spool/*"],
                "tool": {"messageID": "msg_2", "callID": "call_1"},
            },
        ),
        PermissionAsked(DIR, "ses_1", "per_9", "external_directory", ("/srv/spool/*",)),
    ),
    (
        "question",
        envelope(
            "question.asked",
            {
                "id": "que_3",
                "sessionID": "ses_1",
                "questions": [{"question": "Which file?", "header": "File", "options": []}],
            },
        ),
        QuestionAsked(DIR, "ses_1", "que_3", ("Which file?",)),
    ),
    (
        "part update is activity",
        envelope(
            "message.part.updated",
            {"sessionID": "ses_1", "part": {"id": "prt_1", "type": "step-start"}, "time": 5},
        ),
        Activity(DIR, "ses_1", "message.part.updated"),
    ),
    (
        "delta is activity",
        envelope(
            "message.part.delta",
            {"sessionID": "ses_1", "messageID": "msg_2", "partID": "prt_2", "field": "text", "delta": "hi"},
        ),
        Activity(DIR, "ses_1", "message.part.delta"),
    ),
    ("sessionless noise", envelope("catalog.updated", {}), None),
    ("garbage", {"payload": "nope"}, None),
    ("no type", {"payload": {"properties": {}}}, None),
    ("malformed permission", envelope("permission.asked", {"sessionID": "ses_1"}), None),
]
# The "busy" case checks that status events parse; fix its expectation here to keep the table flat.
PARSE_CASES[2] = (PARSE_CASES[2][0], PARSE_CASES[2][1], SessionStatusChanged(DIR, "ses_1", "busy"))


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_parse_event(raw: dict[str, Any], expected: Event | None) -> None:
    assert parse_event(raw) == expected


def test_parse_event_accepts_bare_instance_payload() -> None:
    raw = {"id": "evt_1", "type": "session.idle", "properties": {"sessionID": "ses_1"}}
    assert parse_event(raw) == SessionIdle("", "ses_1")


# --- EventStream against a real SSE server -------------------------------------------------------


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class _SseServer:
    """A tiny real SSE server on 127.0.0.1 serving /global/event with ``_events``."""

    def __init__(self) -> None:
        self.connections = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/global/event", self._events)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


class FlakySseServer(_SseServer):
    """Serves /global/event. Connection 1 sends two events and dies mid-event; later connections
    send the rest and stay open. ``fail_first`` makes the very first request a 401 instead."""

    def __init__(self, *, fail_first: bool = False) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.open_streams = 0

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        if self.fail_first and self.connections == 1:
            return web.json_response({"name": "Unauthorized", "data": {"message": "no"}}, status=401)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(envelope("server.connected", {}, "global")))
        self.open_streams += 1
        try:
            if self.connections == 1 and not self.fail_first:
                await response.write(b": comment lines are ignored\n\n")
                await response.write(sse(envelope("server.heartbeat", {})))
                await response.write(b"data: {not json\n\n")
                busy = {"sessionID": "ses_1", "status": {"type": "busy"}}
                await response.write(sse(envelope("session.status", busy)))
                # Half an event, then the connection dies: the half must never surface.
                await response.write(b'data: {"payload": {"type": "session.idle", ')
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(sse(envelope("session.idle", {"sessionID": "ses_1"})))
            # Stay open until the client leaves: aiohttp does not cancel a handler whose client is
            # gone, but writing to the closed connection fails.
            while True:
                await asyncio.sleep(0.02)
                await response.write(b": keepalive\n\n")
        except ConnectionError:
            return response
        finally:
            self.open_streams -= 1


async def collect_until_idle(stream: EventStream) -> list[Event]:
    got: list[Event] = []
    async for event in stream:
        got.append(event)
        if isinstance(event, SessionIdle):
            break
    return got


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCODE_SERVER_PASSWORD", raising=False)


def test_stream_reconnects_after_a_drop_and_continues() -> None:
    async def scenario() -> tuple[list[Event], int, bool, int]:
        server = FlakySseServer()
        url = await server.start()
        client = OpenCodeClient(url, timeout=5)
        stream = EventStream(client, reconnect_min=0.01, reconnect_max=0.05)
        try:
            got = await asyncio.wait_for(collect_until_idle(stream), 10)
            # Leaving the loop closed the generator, which closes the connection.
            for _ in range(100):
                if server.open_streams == 0:
                    break
                await asyncio.sleep(0.02)
            return got, server.connections, stream.connected.is_set(), server.open_streams
        finally:
            await stream.aclose()
            await client.aclose()
            await server.stop()

    got, connections, still_connected, open_streams = asyncio.run(scenario())
    assert got == [
        ServerConnected("global"),
        SessionStatusChanged(DIR, "ses_1", "busy"),
        StreamReconnected(),
        ServerConnected("global"),
        SessionIdle(DIR, "ses_1"),
    ]
    assert connections == 2
    assert not still_connected
    assert open_streams == 0


def test_failed_first_attempt_is_not_a_reconnect() -> None:
    async def scenario() -> list[Event]:
        server = FlakySseServer(fail_first=True)
        url = await server.start()
        client = OpenCodeClient(url, timeout=5)
        stream = EventStream(client, reconnect_min=0.01, reconnect_max=0.05)
        try:
            return await asyncio.wait_for(collect_until_idle(stream), 10)
        finally:
            await stream.aclose()
            await client.aclose()
            await server.stop()

    assert asyncio.run(scenario()) == [ServerConnected("global"), SessionIdle(DIR, "ses_1")]


def test_connected_flag_and_aclose_end_a_waiting_iteration() -> None:
    async def scenario() -> tuple[bool, list[Event], bool]:
        server = FlakySseServer(fail_first=True)
        url = await server.start()
        client = OpenCodeClient(url, timeout=5)
        stream = EventStream(client, reconnect_min=0.01, reconnect_max=0.05)
        got: list[Event] = []

        async def consume() -> None:
            async for event in stream:
                got.append(event)

        try:
            task = asyncio.create_task(consume())
            await asyncio.wait_for(stream.connected.wait(), 10)
            was_connected = stream.connected.is_set()
            while len(got) < 2:
                await asyncio.sleep(0.01)
            await stream.aclose()
            await asyncio.wait_for(task, 5)  # the consumer's loop ends on its own
            return was_connected, got, stream.connected.is_set()
        finally:
            await stream.aclose()
            await client.aclose()
            await server.stop()

    was_connected, got, connected_after = asyncio.run(scenario())
    assert was_connected and not connected_after
    assert got == [ServerConnected("global"), SessionIdle(DIR, "ses_1")]


def test_stream_keeps_trying_while_nothing_listens() -> None:
    async def scenario() -> tuple[int, bool]:
        server = FlakySseServer()
        url = await server.start()
        await server.stop()  # the port is now closed: every connect is refused
        client = OpenCodeClient(url, timeout=1)
        stream = EventStream(client, reconnect_min=0.01, reconnect_max=0.02)
        got: list[Event] = []

        async def consume() -> None:
            async for event in stream:
                got.append(event)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        alive = not task.done()
        await stream.aclose()
        await asyncio.wait_for(task, 5)
        await client.aclose()
        return len(got), alive

    count, alive = asyncio.run(scenario())
    assert alive and count == 0


class SilentSseServer(_SseServer):
    """First connection: ``server.connected``, then silence with the socket open (a hung server).
    Later connections send an idle event."""

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(envelope("server.connected", {}, "global")))
        if self.connections == 1:
            await asyncio.sleep(30)  # hung: nothing more, not even heartbeats
            return response
        await response.write(sse(envelope("session.idle", {"sessionID": "ses_1"})))
        await asyncio.sleep(30)
        return response


def test_a_silent_stream_is_dropped_and_reopened() -> None:
    async def scenario() -> tuple[list[Event], int]:
        server = SilentSseServer()
        url = await server.start()
        client = OpenCodeClient(url, timeout=5)
        stream = EventStream(client, reconnect_min=0.01, reconnect_max=0.05, silence_timeout=0.3)
        try:
            got = await asyncio.wait_for(collect_until_idle(stream), 10)
            return got, server.connections
        finally:
            await stream.aclose()
            await client.aclose()
            await server.stop()

    got, connections = asyncio.run(scenario())
    assert connections == 2
    assert got == [
        ServerConnected("global"),
        StreamReconnected(),
        ServerConnected("global"),
        SessionIdle(DIR, "ses_1"),
    ]
