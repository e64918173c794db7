"""The streamed-event path: SSE splitting, the delta sniffer, the raw connection, on_activity."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import test_events
from test_events import DIR, envelope

from occoord.opencode import events as events_module
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.events import (
    Activity,
    Event,
    EventStream,
    ServerConnected,
    SessionIdle,
    SessionStatusChanged,
    parse_event,
)
from occoord.opencode.rawsse import _Body, raw_target
from occoord.opencode.sse import SSEDecoder, sniff_activity
from occoord.sim.simulator import Simulator


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCODE_SERVER_PASSWORD", raising=False)


def wire(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- SSEDecoder -----------------------------------------------------------------------------------

STREAM = (
    b": a comment\n\n"
    b"event: message\ndata: one\n\n"
    b"data: two\r\n\r\n"
    b"data:three\rid: 7\r\r"
    b"data: multi\ndata: line\nretry: 10\n\n"
    b"data\n\n"
    b"data: last\n\n"
    b"data: never ends"
)
EXPECTED = [b"one", b"two", b"three", b"multi\nline", b"", b"last"]


def test_decoder_reads_every_line_ending_and_field() -> None:
    assert SSEDecoder().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_decoder_gives_the_same_events_however_the_bytes_are_cut(size: int) -> None:
    decoder = SSEDecoder()
    got = [data for at in range(0, len(STREAM), size) for data in decoder.feed(STREAM[at : at + size])]
    assert got == EXPECTED


# --- the delta sniffer ----------------------------------------------------------------------------

DELTA = {"sessionID": "ses_9", "messageID": "msg_1", "partID": "prt_1", "field": "text", "delta": "hi"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (wire(envelope("message.part.delta", DELTA)), "ses_9"),
        (wire({"type": "message.part.delta", "properties": DELTA}), "ses_9"),  # /event's bare shape
        # Text that looks like a key is escaped inside its string: it never matches.
        (wire(envelope("message.part.delta", {**DELTA, "delta": '"sessionID":"ses_x"'})), "ses_9"),
        # Properties before the type: the first "type" may be a nested one, so decode in full.
        (wire({"payload": {"properties": DELTA, "type": "message.part.delta"}}), None),
        (wire(envelope("session.idle", {"sessionID": "ses_9"})), None),
        (wire(envelope("message.part.updated", {"part": {"sessionID": "ses_9"}})), None),
        (wire(envelope("message.part.delta", {"messageID": "msg_1"})), None),  # no session
        (json.dumps(envelope("message.part.delta", DELTA)).encode(), None),  # not compact: decode
        (b'{"payload":{"type":"message.part.delta","properties":{"sessionID":"a\\u0062"}}}', None),
        (b"", None),
        (b'{"type":"message.part.delta', None),
    ],
)
def test_sniff_activity(data: bytes, expected: str | None) -> None:
    assert sniff_activity(data) == expected
    if expected is not None:  # the fast path agrees with the full decode
        assert parse_event(json.loads(data)) == Activity(
            DIR if b"directory" in data else "", expected, "message.part.delta"
        )


# --- the raw connection -----------------------------------------------------------------------------


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, at = b"", 0
    for size in sizes:
        piece = body[at : at + size]
        at += size
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 9, 1000])
def test_raw_body_undoes_chunking_however_the_bytes_are_cut(cut: int) -> None:
    async def scenario() -> tuple[bytes, bool]:
        got: list[bytes] = []
        body = _Body(got.append, "http://x", "/global/event")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire_bytes = head + chunked(STREAM, [3, 40, 1, 17, 100, 500])
        for at in range(0, len(wire_bytes), cut):
            body.data_received(wire_bytes[at : at + cut])
            if body.head.done():
                body.start()  # held bytes first, then as they come
        return b"".join(got), body.closed.done()

    data, closed = asyncio.run(scenario())
    assert data == STREAM
    assert closed  # the last chunk ends the stream


def test_raw_target_only_for_the_plain_case() -> None:
    async def scenario() -> None:
        plain = OpenCodeClient("http://127.0.0.1:4096/")
        secret = OpenCodeClient("http://127.0.0.1:4096", password="pw")
        tls = OpenCodeClient("https://127.0.0.1:4096")
        mocked = OpenCodeClient(
            "http://127.0.0.1:4096", transport=httpx.MockTransport(lambda _: httpx.Response(200))
        )
        try:
            target = raw_target(plain)
            assert target is not None and (target.host, target.port, target.path) == ("127.0.0.1", 4096, "")
            assert target.headers == ()
            auth = raw_target(secret)
            assert auth is not None and auth.headers[0][0] == "Authorization"
            assert raw_target(tls) is None and raw_target(mocked) is None
        finally:
            for client in (plain, secret, tls, mocked):
                await client.aclose()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "name",
    [
        "test_stream_reconnects_after_a_drop_and_continues",
        "test_failed_first_attempt_is_not_a_reconnect",
        "test_a_silent_stream_is_dropped_and_reopened",
    ],
)
def test_the_httpx_path_behaves_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream scenarios of test_events (the raw path there) again through httpx."""
    monkeypatch.setattr(events_module, "raw_target", lambda _client: None)
    getattr(test_events, name)()


# --- on_activity against the simulator, with a password (the raw path's Basic auth) ---------------


@pytest.mark.parametrize("raw", [True, False])
def test_on_activity_takes_activity_out_of_the_stream(raw: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not raw:
        monkeypatch.setattr(events_module, "raw_target", lambda _client: None)

    async def scenario() -> tuple[list[Event], list[str], str]:
        sim = Simulator(password="sesame", heartbeat=3600)
        await sim.astart()
        client = OpenCodeClient(sim.url, password="sesame")
        seen: list[str] = []
        stream = EventStream(client, reconnect_min=0.01, reconnect_max=0.05, on_activity=seen.append)
        got: list[Event] = []

        async def consume() -> None:
            async for event in stream:
                got.append(event)
                if isinstance(event, SessionIdle):
                    return

        consumer = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(stream.connected.wait(), 5)
            session = await client.create_session(DIR, title="t")
            await client.prompt_async(session.id, DIR, "[sim: stream 30 1000] [sim: work 0]")
            await asyncio.wait_for(consumer, 10)
            return got, seen, session.id
        finally:
            await stream.aclose()
            await client.aclose()
            await sim.astop()

    got, seen, sid = asyncio.run(scenario())
    assert not any(isinstance(event, Activity) for event in got)
    assert isinstance(got[0], ServerConnected)
    assert SessionStatusChanged(DIR, sid, "busy") in got and got[-1] == SessionIdle(DIR, sid)
    # 30 deltas + the reply's, the part updates: every one reached on_activity.
    assert seen.count(sid) >= 31 + 30 // 25
