"""The server's event stream, reduced to the events a coordinator acts on.

OpenCode publishes every change on one SSE stream (``/global/event``), most of it noise for us. We
keep a handful of typed events and fold every other event that names a session into
:class:`Activity`, which is all a watchdog needs to know the session is alive.

The stream has no replay. :class:`EventStream` therefore reconnects forever and, after every
reconnect, yields :class:`StreamReconnected` so the consumer re-reads state it may have missed. It
reads the socket in its own task into a queue, because a client that stops reading makes the server
buffer without bound (a known upstream issue): our memory is the better place for a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from occoord.backoff import Backoff

from .client import OpenCodeClient
from .models import ErrorInfo
from .rawsse import open_raw, raw_target, watch
from .sse import SSEDecoder, read_httpx, sniff_activity

__all__ = [
    "Activity",
    "Event",
    "EventStream",
    "MessageUpdated",
    "PermissionAsked",
    "QuestionAsked",
    "ServerConnected",
    "SessionError",
    "SessionIdle",
    "SessionStatusChanged",
    "StreamReconnected",
    "parse_event",
]

log = logging.getLogger(__name__)

STREAM_PATH = "/global/event"


@dataclass(frozen=True)
class ServerConnected:
    """``server.connected``: the first event of every connection."""

    directory: str


@dataclass(frozen=True)
class SessionStatusChanged:
    """``session.status``: busy, retry (the provider failed; OpenCode retries by itself) or idle."""

    directory: str
    session_id: str
    status: str
    attempt: int | None = None
    message: str | None = None


@dataclass(frozen=True)
class SessionIdle:
    """``session.idle``: the turn ended - successfully or not; the messages tell which."""

    directory: str
    session_id: str


@dataclass(frozen=True)
class SessionError:
    """``session.error``: sent before the idle of a failed or aborted turn."""

    directory: str
    session_id: str | None
    error: ErrorInfo | None


@dataclass(frozen=True)
class MessageUpdated:
    """``message.updated``: an assistant message appearing proves the turn started."""

    directory: str
    session_id: str
    message_id: str
    role: str
    finish: str | None
    error: ErrorInfo | None
    completed: bool


@dataclass(frozen=True)
class PermissionAsked:
    """``permission.asked``: the session waits, still busy, until someone replies."""

    directory: str
    session_id: str
    request_id: str
    permission: str
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class QuestionAsked:
    """``question.asked``: the agent asks the user; nobody is there to answer a headless task."""

    directory: str
    session_id: str
    request_id: str
    questions: tuple[str, ...]


@dataclass(frozen=True)
class StreamReconnected:
    """Synthesized after a reconnect: events were possibly lost, so the consumer must resync."""

    directory: str = ""


@dataclass(frozen=True)
class Activity:
    """Any other event naming a session (part updates, deltas, diffs...): proof of liveness only."""

    directory: str
    session_id: str
    type: str


Event = (
    ServerConnected
    | SessionStatusChanged
    | SessionIdle
    | SessionError
    | MessageUpdated
    | PermissionAsked
    | QuestionAsked
    | StreamReconnected
    | Activity
)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _error(value: object) -> ErrorInfo | None:
    return ErrorInfo.from_api(value) if isinstance(value, Mapping) else None


def _session_of(props: Mapping[str, Any]) -> str | None:
    # Most events name the session at the top of their properties; a few only inside the object.
    return (
        _str(props.get("sessionID"))
        or _str(_map(props.get("info")).get("sessionID"))
        or _str(_map(props.get("part")).get("sessionID"))
    )


def _parse(directory: str, kind: str, props: Mapping[str, Any]) -> Event | None:
    if kind == "server.connected":
        return ServerConnected(directory)
    session_id = _session_of(props)
    if kind == "session.error":
        return SessionError(directory, session_id, _error(props.get("error")))
    if session_id is None:
        return None
    if kind == "session.status":
        status = _map(props.get("status"))
        state = _str(status.get("type"))
        if state is None:
            return None
        return SessionStatusChanged(
            directory, session_id, state, _int(status.get("attempt")), _str(status.get("message"))
        )
    if kind == "session.idle":
        return SessionIdle(directory, session_id)
    if kind == "message.updated":
        info = _map(props.get("info"))
        message_id, role = _str(info.get("id")), _str(info.get("role"))
        if message_id is None or role is None:
            return None
        return MessageUpdated(
            directory,
            session_id,
            message_id,
            role,
            _str(info.get("finish")),
            _error(info.get("error")),
            _map(info.get("time")).get("completed") is not None,
        )
    if kind == "permission.asked":
        request_id, permission = _str(props.get("id")), _str(props.get("permission"))
        if request_id is None or permission is None:
            return None
        patterns = props.get("patterns")
        pats = tuple(p for p in patterns if isinstance(p, str)) if isinstance(patterns, list) else ()
        return PermissionAsked(directory, session_id, request_id, permission, pats)
    if kind == "question.asked":
        request_id = _str(props.get("id"))
        if request_id is None:
            return None
        raw_questions = props.get("questions")
        items = raw_questions if isinstance(raw_questions, list) else []
        questions = tuple(q for q in (_str(_map(item).get("question")) for item in items) if q is not None)
        return QuestionAsked(directory, session_id, request_id, questions)
    return Activity(directory, session_id, kind)


def parse_event(raw: object) -> Event | None:
    """Turn one decoded ``data:`` payload into a typed event; ``None`` for heartbeats, events that
    name no session, and anything malformed (a stream must survive one odd event).

    Accepts the ``/global/event`` envelope ``{"directory", "payload": {"type", "properties"}}`` and
    also a bare ``/event`` payload ``{"type", "properties"}`` (directory then ``""``).
    """
    envelope = _map(raw)
    payload = envelope.get("payload", envelope)
    if not isinstance(payload, Mapping):
        return None
    kind = _str(payload.get("type"))
    if kind is None or kind == "server.heartbeat":
        return None
    directory = _str(envelope.get("directory")) or ""
    try:
        return _parse(directory, kind, _map(payload.get("properties")))
    except ValueError:
        log.debug("ignoring malformed %s event", kind, exc_info=True)
        return None


class EventStream:
    """Iterate the server's events forever, reconnecting with backoff on any error.

    One consumer at a time: iterate it once (``async for``) and call :meth:`aclose` to stop.
    ``connected`` is set while a connection is open, so tests (and a careful coordinator) can wait for
    it before prompting - events sent before the subscription are not replayed.

    With ``on_activity`` set, :class:`Activity` is never yielded: ``on_activity(session_id)`` is
    called from the reading task instead (it must be quick and must not raise). A streaming model
    sends thousands of these a second, and each means no more than "this session is alive".
    """

    def __init__(
        self,
        client: OpenCodeClient,
        *,
        reconnect_min: float = 0.2,
        reconnect_max: float = 5.0,
        silence_timeout: float = 45.0,
        on_activity: Callable[[str], None] | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        self._client = client
        self._connect_timeout = connect_timeout
        # The server sends a heartbeat every ~10 s: a connection silent for much longer is hung
        # (a stalled server or a half-open TCP connection) and is dropped and reopened.
        self._silence = silence_timeout
        self.on_activity = on_activity
        self._backoff = Backoff(base=reconnect_min, cap=max(reconnect_max, reconnect_min))
        self._closed = False
        self._readers: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.reconnects = 0

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_forever(queue), name="occoord-event-reader")
        self._readers.add(reader)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            reader.cancel()
            self._readers.discard(reader)
            await asyncio.wait({reader})

    async def _read_forever(self, queue: asyncio.Queue[Event | None]) -> None:
        failures = 0  # since the last connection that opened
        opened_before = False
        try:
            while not self._closed:
                try:
                    async with self._open(queue) as follow:
                        self.connected.set()
                        failures = 0
                        if opened_before:
                            self.reconnects += 1
                            log.info("event stream reconnected to %s", self._client.url)
                            queue.put_nowait(StreamReconnected())
                        opened_before = True
                        await follow()
                    log.info("event stream from %s ended; reconnecting", self._client.url)
                except TimeoutError:
                    log.warning(
                        "event stream from %s silent for %.0f s; reconnecting",
                        self._client.url,
                        self._silence,
                    )
                except Exception as exc:
                    # Anything at all (refused, reset, bad status, decoder error): the only answer
                    # is to try again; the consumer learns of the gap through StreamReconnected.
                    log.warning("event stream from %s failed: %s", self._client.url, exc)
                finally:
                    self.connected.clear()
                failures += 1
                # Jitter keeps many coordinators from reconnecting in lockstep after a restart.
                await asyncio.sleep(self._backoff.delay(failures) * (0.5 + random.random() / 2))
        finally:
            queue.put_nowait(None)

    @contextlib.asynccontextmanager
    async def _open(self, queue: asyncio.Queue[Event | None]) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """One connection, open; yields what follows it to its end (TimeoutError once silent too
        long): the raw connection where it can be used (see rawsse), else httpx's stream."""
        decoder = SSEDecoder()

        def on_body(chunk: bytes) -> None:
            try:
                for data in decoder.feed(chunk):
                    self._deliver(data, queue)
            except Exception:  # a bug for one event must not cut the connection for all
                log.exception("event stream from %s: delivering an event", self._client.url)

        target = raw_target(self._client)
        if target is None:
            async with self._client.stream() as response:
                yield lambda: read_httpx(response, on_body, self._silence)
        else:
            async with open_raw(target, STREAM_PATH, on_body, self._connect_timeout) as body:
                yield lambda: watch(body, self._silence)

    def _deliver(self, data: bytes, queue: asyncio.Queue[Event | None]) -> None:
        activity = self.on_activity
        if activity is not None:
            session = sniff_activity(data)
            if session is not None:
                activity(session)
                return
        event = self._decode(data)
        if event is None:
            return
        if activity is not None and isinstance(event, Activity):
            activity(event.session_id)
        else:
            queue.put_nowait(event)

    @staticmethod
    def _decode(data: bytes) -> Event | None:
        if not data.strip():
            return None
        try:
            raw = json.loads(data)
        except ValueError:
            log.debug("ignoring undecodable event data %.200r", data)
            return None
        return parse_event(raw)

    async def aclose(self) -> None:
        """Stop reading and close the connection; a running ``async for`` then ends."""
        self._closed = True
        readers = set(self._readers)
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)
