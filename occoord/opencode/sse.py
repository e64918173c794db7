"""The server's SSE bytes, split into event payloads with as little work per event as possible.

A streaming model sends one event per token chunk, thousands a second across sessions, so this is a
hot path: one ``split`` per network read instead of generator layers per line, and the payload kept
as bytes. :func:`sniff_activity` reads the type and session of a token chunk without decoding it:
that event only ever means "this session is alive".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

__all__ = ["SSEDecoder", "read_httpx", "sniff_activity"]

_DATA = b"data:"
_TYPE = b'"type":"'
_PROPERTIES = b'"properties"'
_SESSION = b'"sessionID":"'
# Kinds that are activity whatever their properties say, and carry their sessionID at the top.
_ACTIVITY_ONLY = frozenset({b"message.part.delta"})


class SSEDecoder:
    """Feed it the body's chunks; it returns each complete event's ``data`` (its ``data:`` lines
    joined by newlines). Only ``data`` matters to us: ``event:``, ``id:``, ``retry:`` and comments
    are skipped. Lines may end in LF, CRLF or CR, as the SSE format allows."""

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._rest + chunk if self._rest else chunk
        tail = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # maybe the first half of a CRLF: wait for the next byte
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._rest = lines.pop() + tail
        out: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(_DATA):
                value = line[5:]
                data.append(value[1:] if value[:1] == b" " else value)
            elif line == b"data":
                data.append(b"")
        return out


def sniff_activity(data: bytes) -> str | None:
    """The session id of a token-chunk event (``message.part.delta``), found without decoding the
    payload; ``None`` for every other event, or whenever the bytes are not in the plain shape
    (then the caller decodes the payload in full: the slow path is always the correct one).

    The first ``"type":"`` of the payload is the event's own only if no ``"properties"`` key came
    before it (a nested object's type could come first otherwise); quotes inside strings are
    escaped, so neither pattern can match inside a value."""
    at = data.find(_TYPE)
    if at < 0:
        return None
    start = at + len(_TYPE)
    end = data.find(b'"', start)
    if data[start:end] not in _ACTIVITY_ONLY or data.rfind(_PROPERTIES, 0, at) >= 0:
        return None
    at = data.find(_SESSION, end)
    if at < 0:
        return None
    start = at + len(_SESSION)
    end = data.find(b'"', start)
    session = data[start:end]
    if end < 0 or not session or b"\\" in session:
        return None
    return session.decode("ascii", "replace")


async def read_httpx(response: httpx.Response, on_body: Callable[[bytes], None], silence: float) -> None:
    """Feed an httpx streaming response's body to ``on_body`` until it ends; TimeoutError once no
    byte came for ``silence`` seconds."""
    loop = asyncio.get_running_loop()
    # The deadline moves at most this often: moving a timer per event costs more than reading the
    # event, and a deadline late by a fraction of the timeout changes nothing.
    renew_every = min(1.0, silence / 10)
    renewed = loop.time()
    async with asyncio.timeout(silence) as deadline:
        async for chunk in response.aiter_bytes():
            now = loop.time()
            if now - renewed >= renew_every:
                deadline.reschedule(now + silence)
                renewed = now
            on_body(chunk)
