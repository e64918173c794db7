"""The event stream's own HTTP/1.1 connection: one GET whose body bytes go straight to a callback.

An SSE body through httpx passes half a dozen async generator layers (h11, httpcore, the pool,
httpx) per HTTP chunk, and a server that streams a model's answer writes one chunk per token: that
was most of the watcher's CPU per event. Here the body is read by an :class:`asyncio.Protocol`
(no coroutine per chunk), its chunked framing undone with a few ``find``/slice operations per read.

Only where the client's short requests take its lean path too (:func:`raw_target`: an ``http://``
URL with no path, no test transport); anything else (TLS, a test's mock transport) keeps the httpx
stream, which is always correct.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from occoord.errors import ApiError, ServerUnavailable

__all__ = ["RawTarget", "open_raw", "raw_target", "watch"]

_HEAD_LIMIT = 64 * 1024  # response headers larger than this are not an SSE server's


@dataclass(frozen=True)
class RawTarget:
    host: str
    port: int
    path: str  # the base URL's path, the stream's path is appended
    headers: tuple[tuple[str, str], ...]


def raw_target(client: Any) -> RawTarget | None:
    """Where and how the raw connection goes for ``client`` (an OpenCodeClient): the endpoint of
    its lean HTTP path (plain ``http://``, no test transport), or None where httpx carries all."""
    endpoint = getattr(client, "lean_endpoint", None)
    found = endpoint() if callable(endpoint) else None
    if found is None:
        return None
    host, port, authorization = found
    return RawTarget(host, port, "", (("Authorization", authorization),) if authorization else ())


class _Body(asyncio.Protocol):
    """Parses the response head, then hands every piece of body to ``on_body`` as it arrives."""

    def __init__(self, on_body: Callable[[bytes], None], url: str, path: str) -> None:
        self._on_body = on_body
        self._url, self._path = url, path
        self._loop = asyncio.get_running_loop()
        self.head: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.last_data = self._loop.time()
        self._head = b""
        self._in_head = True
        self._chunked = False
        self._buf = b""
        self._left = 0  # bytes of the current chunk still to come; -1: its CRLF is next
        self._held: list[bytes] | None = []  # body bytes until start()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_data = self._loop.time()
        if self._in_head:
            self._parse_head(data)
        elif self._held is not None:
            self._held.append(data)
        elif self._chunked:
            self._dechunk(data)
        else:
            self._on_body(data)

    def start(self) -> None:
        """Deliver the body from now on (what came with the head or since, first): the consumer
        must learn of the new connection before any of its events."""
        held, self._held = self._held, None
        for data in held or ():
            self.data_received(data)

    def _parse_head(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _HEAD_LIMIT:
                self._fail(ServerUnavailable(self._url, "GET event stream: response head too large"))
            return
        head, rest = self._head[:end].decode("latin-1"), self._head[end + 4 :]
        self._head = b""
        status_line, *lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            self._fail(ServerUnavailable(self._url, f"GET event stream: bad status line {status_line!r}"))
            return
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip().lower()
        if not 200 <= status < 300:
            reason = parts[2] if len(parts) > 2 else ""
            self._fail(ApiError("GET", self._path, status, "HTTPError", reason))
            return
        if fields.get("content-encoding", "identity") != "identity":
            self._fail(ServerUnavailable(self._url, "GET event stream: an encoded body is not supported"))
            return
        self._chunked = "chunked" in fields.get("transfer-encoding", "")
        self._in_head = False
        self.head.set_result(None)
        if rest:
            self._held = [*(self._held or ()), rest]

    def _dechunk(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos, end, out = 0, len(buf), []
        while pos < end:
            if self._left > 0:
                take = min(self._left, end - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._left = -1
            elif self._left < 0:
                if end - pos < 2:
                    break
                pos += 2  # the CRLF after a chunk's data
                self._left = 0
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > 1024:
                        self._fail(ServerUnavailable(self._url, "GET event stream: bad chunk size line"))
                        return
                    break
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    self._fail(ServerUnavailable(self._url, "GET event stream: bad chunk size line"))
                    return
                pos = eol + 2
                if size == 0:  # the last chunk: the stream ended cleanly
                    if out:
                        self._on_body(b"".join(out))
                    self._buf = b""
                    self._close()
                    return
                self._left = size
        self._buf = buf[pos:]
        if out:
            self._on_body(out[0] if len(out) == 1 else b"".join(out))

    def _fail(self, exc: Exception) -> None:
        for future in (self.head, self.closed):
            if not future.done():
                future.set_exception(exc)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.closed.done():
            self.closed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        lost = ServerUnavailable(self._url, f"GET event stream: connection lost ({exc or 'closed'})")
        if not self.head.done():
            self.head.set_exception(lost)
        if not self.closed.done():
            self.closed.set_result(None)  # the end of a stream, clean or not: reconnect either way


@contextlib.asynccontextmanager
async def open_raw(
    target: RawTarget, path: str, on_body: Callable[[bytes], None], connect_timeout: float
) -> AsyncIterator[_Body]:
    """Connect, send ``GET path`` and wait for a 2xx head; yields the protocol (``closed`` is done
    once the stream ends, ``last_data`` is when bytes last came). Connection failures raise
    ServerUnavailable, an error status ApiError; the connection is closed on the way out."""
    loop = asyncio.get_running_loop()
    full = target.path + path
    url = f"http://{target.host}:{target.port}"
    try:
        async with asyncio.timeout(connect_timeout):
            transport, protocol = await loop.create_connection(
                lambda: _Body(on_body, url, full), target.host, target.port
            )
    except (OSError, TimeoutError) as exc:
        raise ServerUnavailable(url, f"GET {path}: {type(exc).__name__}: {exc}", sent=False) from exc
    try:
        host = target.host if ":" not in target.host else f"[{target.host}]"
        lines = [
            f"GET {full} HTTP/1.1",
            f"Host: {host}:{target.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-store",
            "Accept-Encoding: identity",
            *(f"{name}: {value}" for name, value in target.headers),
        ]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        async with asyncio.timeout(connect_timeout):
            await protocol.head
        yield protocol
    except TimeoutError as exc:
        raise ServerUnavailable(url, f"GET {path}: no answer within {connect_timeout:.0f} s") from exc
    finally:
        transport.close()
        if not protocol.closed.done():
            protocol.closed.set_result(None)
        # A failure nobody awaited any more must not be logged as never retrieved.
        for future in (protocol.head, protocol.closed):
            if future.done() and not future.cancelled():
                future.exception()


async def watch(body: _Body, silence: float) -> None:
    """Wait for the connection's end; TimeoutError once no byte came for ``silence`` seconds. One
    look at the last bytes' time per silence period: no timer moves per event."""
    loop = asyncio.get_running_loop()
    body.start()
    while not body.closed.done():
        quiet = loop.time() - body.last_data
        if quiet >= silence:
            raise TimeoutError
        await asyncio.wait({body.closed}, timeout=silence - quiet)
    body.closed.result()
