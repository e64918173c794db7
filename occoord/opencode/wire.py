"""A small HTTP/1.1 client over asyncio streams, for the coordinator's short JSON requests.

Why not httpx for these: measured at 64 concurrent requests, httpx/httpcore spend ~0.9 ms of CPU per
request, most of it scanning every pooled connection for each queued request
(docs/PERFORMANCE.md); the coordinator makes ~4 requests per task. This client keeps idle
connections on a stack (O(1) to take one), writes the request in one ``write`` and reads
``Content-Length`` or chunked bodies. It speaks only plain ``http://`` to one host; anything else
(TLS, a test transport, the SSE stream) stays on httpx.

Errors are :class:`WireError` with ``sent``: False only when no byte of the request can have
reached the server (the connection could not be opened), exactly the line httpx draws between
``ConnectError`` and the rest, so the caller's retry policy is unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from urllib.parse import urlsplit

__all__ = ["Wire", "WireError", "WireResponse"]

# A kept-alive connection unused this long is closed rather than reused: servers drop idle
# connections (Bun after ~10 s), and a request written into one that is closing would fail after
# "sending" (the caller would then have to look again for a session it may not have created).
MAX_IDLE_S = 4.0
MAX_KEPT = 64
# Requests in flight at once (httpx's max_connections was 100): a resync of a thousand attempts
# must not open a thousand sockets. Waiting longer than the timeout for a turn is "not sent".
MAX_OPEN = 100
_MAX_HEADER = 64 * 1024


class WireError(Exception):
    def __init__(self, message: str, *, sent: bool, timeout: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.timeout = timeout


class WireResponse:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Conn:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()

    def usable(self, now: float) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof() or now - self.used > MAX_IDLE_S)

    def close(self) -> None:
        try:
            self.writer.close()
        except (OSError, RuntimeError):  # the loop may already be closed at shutdown
            pass


class Wire:
    """Requests to one ``http://host:port``; ``timeout`` bounds the connect and each read or write."""

    def __init__(self, url: str, *, timeout: float, authorization: str | None = None) -> None:
        self.timeout = timeout
        self.authorization = authorization
        self._idle: deque[_Conn] = deque()
        self._slots: asyncio.Semaphore | None = None  # made in the running loop
        self.host, self.port = "", 0
        self.retarget(url)

    @staticmethod
    def supports(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "http" and bool(parts.hostname) and parts.path in ("", "/")

    def retarget(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host_header = f"{host}:{self.port}" if parts.port else host
        self.close_idle()

    def close_idle(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def aclose(self) -> None:
        self.close_idle()

    async def request(self, method: str, target: str, body: bytes | None) -> WireResponse:
        head = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept: */*"]
        head.append("Accept-Encoding: identity")
        if self.authorization:
            head.append(f"Authorization: {self.authorization}")
        if body is not None:
            head.append("Content-Type: application/json")
            head.append(f"Content-Length: {len(body)}")
        elif method in ("POST", "PUT", "PATCH"):
            head.append("Content-Length: 0")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_OPEN)
        if self._slots.locked():  # all in use: wait a while for one (rare)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise WireError(f"{method} {target}: no free connection in time", sent=False) from exc
        else:
            await self._slots.acquire()  # free: returns at once
        try:
            return await self._exchange(method, target, data)
        finally:
            self._slots.release()

    async def _exchange(self, method: str, target: str, data: bytes) -> WireResponse:
        conn = await self._take()
        try:
            conn.writer.write(data)
            response, reusable = await self._read(conn, method)
        except TimeoutError as exc:
            conn.close()
            raise WireError(f"{method} {target}: timed out", sent=True, timeout=True) from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            raise WireError(f"{method} {target}: {type(exc).__name__}: {exc}", sent=True) from exc
        except BaseException:  # cancelled mid-request: the connection's state is unknown
            conn.close()
            raise
        if reusable and len(self._idle) < MAX_KEPT:
            conn.used = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _take(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to be closing
            if conn.usable(now):
                return conn
            conn.close()
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=_MAX_HEADER)
        except (OSError, TimeoutError) as exc:
            raise WireError(f"cannot connect to {self.host}:{self.port}: {exc!r}", sent=False) from exc
        return _Conn(reader, writer)

    async def _read(self, conn: _Conn, method: str) -> tuple[WireResponse, bool]:
        reader = conn.reader
        async with asyncio.timeout(self.timeout):
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                version, _, rest = lines[0].partition(" ")
                status = int(rest[:3])
                if not 100 <= status < 200:
                    break  # 1xx (e.g. 100 Continue) precede the real answer
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        close = version == "HTTP/1.0"
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            value = value.strip()
            headers.append((name, value))
            key = name.lower()
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif key == "connection":
                token = value.lower()
                close = "close" in token or (close and "keep-alive" not in token)
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif chunked:
            body = await self._chunked(reader)
        elif length is not None:
            async with asyncio.timeout(self.timeout):
                body = await reader.readexactly(length)
        else:
            async with asyncio.timeout(self.timeout):
                body = await reader.read()  # delimited by the end of the connection
            close = True
        return WireResponse(status, headers, body), not close

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        async with asyncio.timeout(self.timeout):
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
