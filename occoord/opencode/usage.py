"""What a task cost: ``cost`` and tokens summed over its session and every sub-agent session below it.

OpenCode puts ``cost`` and ``tokens {input, output, reasoning, cache: {read, write}}`` on each
assistant message. A session's own totals leave out its sub-agents: a ``task`` tool call runs in a
child session (``parentID``), found through ``GET /session/{id}/children``, whose messages are
summed here too, children of children included.

The task record keeps a :class:`Usage` as ``details["usage"]`` in the shape of
:meth:`Usage.to_json`; ``spool.summary`` sums those dicts per run without importing this module
(the spool knows nothing of OpenCode), so the shape is part of the spool's file format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from occoord.errors import ApiError

__all__ = [
    "MAX_SESSIONS",
    "JsonReader",
    "Usage",
    "ran_subagents",
    "usage_from_messages",
    "usage_of",
    "usage_with_children",
]

# A bound on the sessions one task may fan out to: a cycle or a runaway sub-agent tree must not
# keep a caller requesting for ever.
MAX_SESSIONS = 500


class JsonReader(Protocol):
    """What reading usage and transcripts needs of a client: ``OpenCodeClient.get_json`` (or a
    fake's, in the engine's tests)."""

    async def get_json(
        self, path: str, directory: str | None = None, params: Mapping[str, str | int] | None = None
    ) -> Any: ...


def _number(value: object) -> float:
    # bool is an int subclass: a boolean count is garbage, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if value == value and abs(value) != float("inf") else 0.0


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Usage:
    """Cost (in the provider's currency, as OpenCode reports it) and tokens of some sessions.

    ``messages`` counts the assistant messages summed, ``sessions`` the sessions read.
    """

    cost: float = 0.0
    input: int = 0
    output: int = 0
    reasoning: int = 0
    cache_read: int = 0
    cache_write: int = 0
    messages: int = 0
    sessions: int = 0

    @property
    def tokens(self) -> int:
        """Every token counted, the way OpenCode's ``tokens.total`` adds them up."""
        return self.input + self.output + self.reasoning + self.cache_read + self.cache_write

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            cost=self.cost + other.cost,
            input=self.input + other.input,
            output=self.output + other.output,
            reasoning=self.reasoning + other.reasoning,
            cache_read=self.cache_read + other.cache_read,
            cache_write=self.cache_write + other.cache_write,
            messages=self.messages + other.messages,
            sessions=self.sessions + other.sessions,
        )

    def to_json(self) -> dict[str, Any]:
        """The shape stored in a task record's ``details["usage"]`` and in ``summary.json``."""
        return {
            "cost": round(self.cost, 6),
            "tokens": {
                "input": self.input,
                "output": self.output,
                "reasoning": self.reasoning,
                "cache": {"read": self.cache_read, "write": self.cache_write},
                "total": self.tokens,
            },
            "messages": self.messages,
            "sessions": self.sessions,
        }

    @classmethod
    def from_json(cls, raw: object) -> Usage | None:
        """Read :meth:`to_json`'s shape back; None for anything that is not an object. Missing or
        ill-typed numbers count as 0 (a record is read, never trusted to be well formed)."""
        if not isinstance(raw, Mapping):
            return None
        tokens = _map(raw.get("tokens"))
        return cls._of(raw.get("cost"), tokens, messages=raw.get("messages"), sessions=raw.get("sessions"))

    @classmethod
    def _of(
        cls, cost: object, tokens: Mapping[str, Any], *, messages: object = 0, sessions: object = 0
    ) -> Usage:
        cache = _map(tokens.get("cache"))
        return cls(
            cost=_number(cost),
            input=int(_number(tokens.get("input"))),
            output=int(_number(tokens.get("output"))),
            reasoning=int(_number(tokens.get("reasoning"))),
            cache_read=int(_number(cache.get("read"))),
            cache_write=int(_number(cache.get("write"))),
            messages=int(_number(messages)),
            sessions=int(_number(sessions)),
        )


def _message_usage(message: Mapping[str, Any]) -> Usage:
    info = _map(message.get("info"))
    if "tokens" in info or "cost" in info:
        return Usage._of(info.get("cost"), _map(info.get("tokens")), messages=1)
    # A server that leaves the totals off the message still reports each step's on its
    # step-finish part, and the message's usage is their sum.
    total = Usage(messages=1)
    parts = message.get("parts")
    for part in parts if isinstance(parts, list) else []:
        part = _map(part)
        if part.get("type") == "step-finish":
            total += Usage._of(part.get("cost"), _map(part.get("tokens")))
    return total


def usage_from_messages(raw: object) -> Usage:
    """The usage of one session from its ``GET /session/{id}/message`` answer (assistant messages
    only; anything malformed counts as nothing). ``sessions`` is 1."""
    total = Usage(sessions=1)
    for message in raw if isinstance(raw, list) else []:
        message = _map(message)
        if _map(message.get("info")).get("role") == "assistant":
            total += _message_usage(message)
    return total


def _child_ids(raw: object) -> Iterable[str]:
    for item in raw if isinstance(raw, list) else []:
        sid = _map(item).get("id")
        if isinstance(sid, str):
            yield sid


def ran_subagents(raw: object) -> bool:
    """Whether a session's messages hold a ``task`` tool call: a sub-agent ran in a child session
    (only then is ``/session/{id}/children`` worth asking)."""
    for message in raw if isinstance(raw, list) else []:
        parts = _map(message).get("parts")
        for part in parts if isinstance(parts, list) else []:
            part = _map(part)
            if part.get("type") == "tool" and part.get("tool") == "task":
                return True
    return False


async def usage_with_children(client: JsonReader, session_id: str, directory: str, raw: object) -> Usage:
    """The usage of a session whose messages (``raw``) were read already, plus its sub-agents'
    sessions (read only if it ran any)."""
    total = usage_from_messages(raw)
    if not ran_subagents(raw):
        return total
    children = await client.get_json(f"/session/{session_id}/children", directory)
    for child in _child_ids(children):
        try:
            total += await usage_of(client, child, directory)
        except ApiError as exc:
            if not exc.not_found:
                raise
    return total


async def usage_of(client: JsonReader, session_id: str, directory: str) -> Usage:
    """Cost and tokens of ``session_id`` and of all its descendant sessions (sub-agents).

    Raises the client's errors (``ServerUnavailable``, ``ApiError``) when the session itself cannot
    be read; a child that vanished between the listing and the read is skipped.
    """
    total = Usage()
    seen: set[str] = set()
    todo = [session_id]
    while todo and len(seen) < MAX_SESSIONS:
        sid = todo.pop()
        if sid in seen:
            continue
        seen.add(sid)
        try:
            messages = await client.get_json(f"/session/{sid}/message", directory)
            children = await client.get_json(f"/session/{sid}/children", directory)
        except ApiError as exc:
            if sid == session_id or not exc.not_found:
                raise
            continue
        total += usage_from_messages(messages)
        todo.extend(c for c in _child_ids(children) if c not in seen)
    return total
