"""opencode/wire.py against a hand-written HTTP server on loopback: framing, reuse, errors, and
the client's retry policy on top of it (sent / not sent)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from occoord.backoff import Backoff
from occoord.errors import ServerUnavailable
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.wire import Wire, WireError

Answer = Callable[[bytes], bytes | None]  # request head+body -> raw response (None: hang up)


async def serve(answer: Answer, seen: list[bytes], conns: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                seen.append(request)
                raw = answer(request)
                if raw is None:
                    break
                writer.write(raw)
                await writer.drain()
                if b"Connection: close" in raw:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def url_of(server: asyncio.Server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def run(answer: Answer, body: Callable[[str, list[bytes], list[int]], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        seen: list[bytes] = []
        conns: list[int] = []
        server = await serve(answer, seen, conns)
        try:
            return await body(url_of(server), seen, conns)
        finally:
            server.close()

    return asyncio.run(main())


def json_ok(payload: bytes) -> Answer:
    return lambda _: (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (
            len(payload),
            payload,
        )
    )


def test_keeps_one_connection_for_sequential_requests() -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        wire = Wire(url, timeout=5)
        for _ in range(5):
            answer = await wire.request("GET", "/x", None)
            assert (answer.status, answer.body) == (200, b'{"a":1}')
        await wire.aclose()
        assert len(conns) == 1 and len(seen) == 5

    run(json_ok(b'{"a":1}'), body)


def test_chunked_and_close_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2;x=y\r\n2]\r\n0\r\n\r\n"
    closing = b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"z":0}'
    answers = [chunked, closing, chunked]

    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        wire = Wire(url, timeout=5)
        assert (await wire.request("GET", "/a", None)).body == b"[1,2]"
        assert (await wire.request("GET", "/b", None)).body == b'{"z":0}'
        assert (await wire.request("GET", "/c", None)).body == b"[1,2]"
        await wire.aclose()
        assert len(conns) == 2  # the close-delimited answer ended its connection

    run(lambda _: answers.pop(0), body)


def test_204_has_no_body_and_keeps_the_connection() -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        wire = Wire(url, timeout=5)
        for _ in range(3):
            answer = await wire.request("POST", "/p", b"{}")
            assert (answer.status, answer.body) == (204, b"")
        await wire.aclose()
        assert len(conns) == 1
        assert b"Content-Length: 2\r\n" in seen[0] and seen[0].endswith(b"\r\n\r\n{}")

    run(lambda _: b"HTTP/1.1 204 No Content\r\n\r\n", body)


def test_refused_connection_is_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there

    async def main() -> None:
        with pytest.raises(WireError) as info:
            await Wire(f"http://127.0.0.1:{port}", timeout=2).request("POST", "/session", b"{}")
        assert info.value.sent is False

    asyncio.run(main())


def test_hang_up_after_the_request_counts_as_sent_and_is_not_retried_for_a_create() -> None:
    """A create whose answer was lost may have been acted on: never retried blindly."""

    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        client = OpenCodeClient(url, backoff=Backoff(base=0.0, cap=0.0), retries=3)
        with pytest.raises(ServerUnavailable) as info:
            await client.create_session("/d", "title")
        await client.aclose()
        assert info.value.maybe_delivered
        assert len(seen) == 1

    run(lambda _: None, body)


def test_client_scopes_and_escapes_like_httpx() -> None:
    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        client = OpenCodeClient(url, password="pw", username="me")
        assert await client.get_json("/session/status", directory="/home/dev/project a&b") == {}
        await client.aclose()
        line = seen[0].split(b"\r\n", 1)[0]
        assert line == b"GET /session/status?directory=%2Fhome%2Fdev%2Fproject%20a%26b HTTP/1.1"
        assert b"Authorization: Basic bWU6cHc=\r\n" in seen[0]

    run(json_ok(b"{}"), body)


def test_at_most_max_open_requests_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from occoord.opencode import wire

    monkeypatch.setattr(wire, "MAX_OPEN", 3)

    async def body(url: str, seen: list[bytes], conns: list[int]) -> None:
        client = Wire(url, timeout=5)
        answers = await asyncio.gather(*(client.request("GET", f"/{i}", None) for i in range(10)))
        assert [a.status for a in answers] == [200] * 10
        assert len(conns) <= 3
        await client.aclose()

    run(json_ok(b"{}"), body)
