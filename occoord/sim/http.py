"""HTTP helpers of the simulator: error bodies, Basic auth, request parsing and the SSE streams.

Kept apart from the routes so each piece stays small; all of it mirrors what the real server does on
the wire (error shape ``{name, data: {message}}``, ``data: <json>`` SSE frames, directory selection).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import secrets
from urllib.parse import unquote

from aiohttp import web

from occoord.sim.state import JSON, Bus

__all__ = ["authorized", "error", "not_found", "read_body", "request_directory", "sse_stream"]


def error(status: int, name: str, message: str) -> web.Response:
    """The server's error body ``{name, data: {message}}``."""
    return web.json_response({"name": name, "data": {"message": message}}, status=status)


def not_found(session_id: str) -> web.Response:
    return error(404, "NotFoundError", f"Session not found: {session_id}")


def authorized(header: str, username: str, password: str) -> bool:
    """Check an ``Authorization: Basic`` header in constant time (both parts always compared)."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, given = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user_ok = secrets.compare_digest(user.encode(), username.encode())
    password_ok = secrets.compare_digest(given.encode(), password.encode())
    return user_ok and password_ok


def request_directory(request: web.Request, default: str) -> str:
    """The instance a request names: ``?directory=``, else the percent-encoded
    ``x-opencode-directory`` header, else the server's working directory."""
    raw = request.query.get("directory") or unquote(request.headers.get("x-opencode-directory", ""))
    return os.path.abspath(raw) if raw else default


async def read_body(request: web.Request) -> JSON | None:
    """The JSON object body (``{}`` when empty); ``None`` when it is not a JSON object."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


_BATCH = 512  # frames per write at most


def _server_frame(directory: str | None, type_: str) -> bytes:
    """A server-level event (connected, heartbeat) in the stream's wire form."""
    payload = Bus.payload(type_, {})
    return Bus.frame(payload if directory is not None else {"directory": "global", "payload": payload})


async def sse_stream(
    request: web.Request, bus: Bus, directory: str | None, heartbeat: float
) -> web.StreamResponse:
    """An SSE stream (``directory`` None = ``/global/event``): ``server.connected`` first, then events
    as they happen, and a heartbeat whenever nothing was sent for ``heartbeat`` seconds. The
    subscription is made before anything is written so no event published meanwhile is lost."""
    sub = bus.subscribe(directory, request.transport)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        await response.write(_server_frame(directory, "server.connected"))
        while True:
            try:
                async with asyncio.timeout(heartbeat):
                    frame = await sub.queue.get()
            except TimeoutError:
                frame = _server_frame(directory, "server.heartbeat")
            if frame is None:
                break
            # Whatever else is queued goes in the same write: one syscall (and one chunk) for a
            # burst of events, or a fast stream costs the simulator more than its consumers.
            batch = [frame]
            while not sub.queue.empty() and len(batch) < _BATCH:
                more = sub.queue.get_nowait()
                if more is None:
                    await response.write(b"".join(batch))
                    return response
                batch.append(more)
            await response.write(batch[0] if len(batch) == 1 else b"".join(batch))
    except asyncio.CancelledError:
        # The bus cancels a dropped subscriber's handler: that is a normal end, not a shutdown.
        task = asyncio.current_task()
        if not sub.dropped or task is None:
            raise
        task.uncancel()
    except ConnectionError:
        pass
    finally:
        bus.unsubscribe(sub)
    return response
