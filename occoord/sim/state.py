"""The simulator's state: sessions, messages, pending asks and the event bus, in the real server's
JSON shapes.

Everything lives on one event loop; no locks are needed. The shapes follow OpenCode's OpenAPI spec
closely enough that the real client parses simulator answers and real answers with the same code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
import string
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Bus",
    "BusyLog",
    "BusySpan",
    "PendingAsk",
    "Prompt",
    "SimSession",
    "Subscriber",
    "new_id",
    "now_ms",
]

JSON = dict[str, Any]

_ALPHABET = string.ascii_letters + string.digits
_counter = itertools.count()
_random = random.Random()
_ADJECTIVES = ("brave", "calm", "eager", "gentle", "jolly", "keen", "lucky", "quiet", "swift", "witty")
_NOUNS = ("otter", "falcon", "maple", "river", "comet", "badger", "cedar", "harbor", "lynx", "meadow")


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    """``<prefix>_<12 hex of time+counter><14 random>``: unique and ascending like the real ids, so
    ids sort by creation as the real server's do."""
    stamp = (now_ms() * 0x1000 + next(_counter) % 0x1000) & 0xFFFFFFFFFFFF
    tail = "".join(_random.choices(_ALPHABET, k=14))  # not secret: 14 secrets.choice cost 40 us
    return f"{prefix}_{stamp:012x}{tail}"


def _slug() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"


@dataclass
class Prompt:
    """One accepted prompt waiting for (or running) its turn; ``done`` resolves with the final
    assistant message for the blocking ``POST /session/{id}/message``."""

    text: str
    agent: str
    model: JSON
    user: JSON
    done: asyncio.Future[JSON | None]


@dataclass
class SimSession:
    """A session and its history. ``status`` is ``None`` while idle (idle sessions are absent from
    ``GET /session/status``, as on the real server)."""

    id: str
    directory: str
    title: str
    version: str
    permission: list[Any]
    parent_id: str | None = None
    slug: str = field(default_factory=_slug)
    created: int = field(default_factory=now_ms)
    updated: int = field(default_factory=now_ms)
    messages: list[JSON] = field(default_factory=list)
    status: JSON | None = None
    queue: deque[Prompt] = field(default_factory=deque)
    runner: asyncio.Task[None] | None = None
    aborting: bool = False
    prompts: list[str] = field(default_factory=list)

    def to_api(self) -> JSON:
        info: JSON = {
            "id": self.id,
            "slug": self.slug,
            "projectID": "global",
            "directory": self.directory,
            "title": self.title,
            "version": self.version,
            "time": {"created": self.created, "updated": self.updated},
        }
        if self.permission:
            info["permission"] = self.permission
        if self.parent_id:
            info["parentID"] = self.parent_id
        return info

    def user_message(self, text: str, agent: str, model: JSON) -> tuple[JSON, JSON]:
        """Append a user message with one text part; returns (message, part)."""
        msg_id = new_id("msg")
        info: JSON = {
            "id": msg_id,
            "sessionID": self.id,
            "role": "user",
            "time": {"created": now_ms()},
            "agent": agent,
            "model": model,
        }
        part: JSON = {
            "id": new_id("prt"),
            "sessionID": self.id,
            "messageID": msg_id,
            "type": "text",
            "text": text,
        }
        message: JSON = {"info": info, "parts": [part]}
        self.messages.append(message)
        self.updated = now_ms()
        return message, part

    def assistant_message(self, parent: JSON, agent: str, model: JSON) -> JSON:
        """Append an empty, not yet completed assistant message answering ``parent``."""
        info: JSON = {
            "id": new_id("msg"),
            "sessionID": self.id,
            "role": "assistant",
            "time": {"created": now_ms()},
            "parentID": parent["info"]["id"],
            "modelID": model.get("modelID", "sim-model"),
            "providerID": model.get("providerID", "sim"),
            "mode": agent,
            "agent": agent,
            "path": {"cwd": self.directory, "root": self.directory},
            "cost": 0,
            "tokens": {"input": 0, "output": 0, "reasoning": 0, "cache": {"read": 0, "write": 0}},
        }
        message: JSON = {"info": info, "parts": []}
        self.messages.append(message)
        return message


@dataclass
class BusySpan:
    """One stretch of time a session was busy (``time.monotonic()``, which on Linux is one clock for
    every process, so spans compare with stamps taken elsewhere). ``end`` is None while it lasts."""

    session: str
    title: str  # the session's title when the span began
    start: float
    end: float | None = None

    def to_api(self) -> JSON:
        return {"session": self.session, "title": self.title, "start": self.start, "end": self.end}


class BusyLog:
    """Every span in which a session was busy, seen from the server's side: what tells a harness
    whether two sessions of one task (titles ``occoord RUN/TASK#N``) ever ran at the same time."""

    def __init__(self) -> None:
        self.spans: list[BusySpan] = []
        self._open: dict[str, BusySpan] = {}

    def begin(self, sess: SimSession) -> None:
        if sess.id not in self._open:
            span = BusySpan(sess.id, sess.title, time.monotonic())
            self.spans.append(span)
            self._open[sess.id] = span

    def end(self, sess: SimSession) -> None:
        span = self._open.pop(sess.id, None)
        if span is not None:
            span.end = time.monotonic()

    def to_api(self, prefix: str = "") -> list[JSON]:
        return [span.to_api() for span in self.spans if span.title.startswith(prefix)]


@dataclass
class PendingAsk:
    """A permission or question request that blocks a turn until answered (``future`` gets the
    reply as ``(kind, detail)``: ``once``/``always``/``reject`` with the optional message for
    permissions, ``reply`` with the answers or ``reject`` for questions)."""

    kind: str
    request: JSON
    directory: str
    future: asyncio.Future[tuple[str, Any]]


@dataclass(eq=False)
class Subscriber:
    """One SSE connection. ``directory`` is ``None`` for ``/global/event``. The queue is bounded: a
    subscriber that stops reading is dropped instead of making the server buffer without limit (the
    real server's known failure mode)."""

    directory: str | None
    queue: asyncio.Queue[bytes | None]
    task: asyncio.Task[Any] | None
    transport: asyncio.Transport | None
    dropped: bool = False


class Bus:
    """Fan-out of events to every subscriber in the real wire formats."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.dropped = 0
        self.published = 0

    def subscribe(self, directory: str | None, transport: asyncio.Transport | None) -> Subscriber:
        sub = Subscriber(directory, asyncio.Queue(self.queue_size), asyncio.current_task(), transport)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    @staticmethod
    def frame(obj: JSON) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    @staticmethod
    def payload(type_: str, properties: JSON) -> JSON:
        return {"id": new_id("evt"), "type": type_, "properties": properties}

    def publish(self, directory: str, type_: str, properties: JSON) -> None:
        """Send one event to the global subscribers and to those of ``directory``. Each wire form is
        encoded once, however many subscribers there are."""
        self.published += 1
        if not self.subscribers:
            return
        payload = self.payload(type_, properties)
        global_frame: bytes | None = None
        local_frame: bytes | None = None
        for sub in list(self.subscribers):
            if sub.directory is None:
                if global_frame is None:
                    global_frame = self.frame(
                        {"directory": directory, "project": "global", "payload": payload}
                    )
                self._offer(sub, global_frame)
            elif sub.directory == directory:
                if local_frame is None:
                    local_frame = self.frame(payload)
                self._offer(sub, local_frame)

    def _offer(self, sub: Subscriber, frame: bytes) -> None:
        try:
            sub.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.drop(sub)

    def drop(self, sub: Subscriber) -> None:
        """Cut a subscriber that fell behind: its socket is aborted so a write blocked on a full
        socket buffer fails at once, and its handler is cancelled."""
        if sub.dropped:
            return
        sub.dropped = True
        self.dropped += 1
        self.subscribers.discard(sub)
        if sub.transport is not None:
            sub.transport.abort()
        if sub.task is not None:
            sub.task.cancel()

    def close_all(self) -> None:
        """End every stream cleanly (a ``None`` sentinel), or cut it if its queue is full."""
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(None)
            except asyncio.QueueFull:
                self.drop(sub)
        self.subscribers.clear()
