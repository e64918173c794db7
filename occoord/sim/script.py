"""The simulator's prompt directives: what a simulated turn does, read from ``[sim: ...]`` markers.

Tests and benchmarks steer the simulated agent through the prompt text itself, so the code under test
sends exactly what it would send to a real server. Unknown directives are ignored (a real model would
ignore them too); the parser never raises on user text.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

__all__ = [
    "DEFAULT_REPLY",
    "DEFAULT_WORK",
    "ErrorSpec",
    "Script",
    "find_move",
    "parse_script",
    "perform_signal",
    "usage_for",
]

DEFAULT_WORK = 0.05
DEFAULT_REPLY = "ok"

_DIRECTIVE = re.compile(r"\[sim:\s*([A-Za-z_-]+)\s*([^\]]*)\]")
_LABELLED_MV = re.compile(r"^\s*(?:[A-Za-z][\w -]*:\s*)?(mv\s.*)$")


@dataclass(frozen=True)
class ErrorSpec:
    """The error a turn ends with: the assistant's ``info.error`` and the ``session.error`` payload."""

    name: str
    message: str
    retryable: bool | None = None
    status_code: int | None = None

    def to_api(self) -> dict[str, object]:
        """The server's error shape ``{name, data: {message, statusCode?, isRetryable?}}``."""
        data: dict[str, object] = {"message": self.message}
        if self.status_code is not None:
            data["statusCode"] = self.status_code
        if self.retryable is not None:
            data["isRetryable"] = self.retryable
        return {"name": self.name, "data": data}


@dataclass(frozen=True)
class Script:
    """Everything a prompt asks of the simulated turn; the defaults describe a short successful turn."""

    work: float = DEFAULT_WORK
    reply: str = DEFAULT_REPLY
    error: ErrorSpec | None = None
    hang: bool = False
    nostart: bool = False
    ask: str | None = None
    question: bool = False
    signal: str | None = None
    usage: tuple[tuple[str, float], ...] = ()
    subagent: bool = False
    say: str | None = None
    stream: tuple[int, float] | None = None  # (chunks, per second): a streamed answer


def _parse_error(arg: str) -> ErrorSpec:
    """``APIError retryable`` / ``APIError fatal`` / ``NAME [message]``: the few failure kinds a
    coordinator must tell apart (retry later, give up, unknown)."""
    words = arg.split()
    name = words[0] if words else "UnknownError"
    rest = " ".join(words[1:])
    if name == "APIError":
        retryable = rest.lower() != "fatal"
        code = 503 if retryable else 400
        message = "simulated provider overload" if retryable else "simulated invalid request"
        return ErrorSpec(name, message, retryable=retryable, status_code=code)
    return ErrorSpec(name, rest or f"simulated {name}")


def parse_script(text: str) -> Script:
    """Read every ``[sim: ...]`` directive in ``text``; later directives of one kind win."""
    values: dict[str, object] = {}
    for match in _DIRECTIVE.finditer(text):
        kind, arg = match.group(1).lower(), match.group(2).strip()
        if kind == "work":
            try:
                values["work"] = max(0.0, float(arg))
            except ValueError:
                continue
        elif kind == "reply":
            values["reply"] = arg
        elif kind == "error":
            values["error"] = _parse_error(arg)
        elif kind in ("hang", "nostart", "question"):
            values[kind] = True
        elif kind == "ask":
            values["ask"] = arg.split()[0] if arg else "bash"
        elif kind == "signal" and arg.lower() in ("done", "failed"):
            values["signal"] = arg.lower()
        elif kind == "usage":
            values["usage"] = _parse_usage(arg)
        elif kind == "subagent":
            values["subagent"] = True
        elif kind == "say" and arg:
            values["say"] = arg
        elif kind == "stream":
            stream = _parse_stream(arg)
            if stream is not None:
                values["stream"] = stream
    return Script(**values)  # type: ignore[arg-type]


DEFAULT_STREAM_RATE = 50.0


def _parse_stream(arg: str) -> tuple[int, float] | None:
    """``CHUNKS [RATE]``: CHUNKS token chunks at RATE per second (default 50, a fast model)."""
    words = arg.split()
    try:
        chunks = int(words[0]) if words else 0
        rate = float(words[1]) if len(words) > 1 else DEFAULT_STREAM_RATE
    except ValueError:
        return None
    if chunks <= 0 or not 0 < rate < float("inf"):
        return None
    return chunks, rate


_USAGE_KEYS = ("input", "output", "reasoning", "cache_read", "cache_write", "cost")


def _parse_usage(arg: str) -> tuple[tuple[str, float], ...]:
    """``input=N output=N reasoning=N cache_read=N cache_write=N cost=X``, any of them; others and
    non-numbers are ignored."""
    found: dict[str, float] = {}
    for word in arg.split():
        key, _, value = word.partition("=")
        if key in _USAGE_KEYS:
            try:
                number = float(value)
            except ValueError:
                continue
            if number >= 0 and number != float("inf"):
                found[key] = number
    return tuple(found.items())


def usage_for(script: Script, prompt: str) -> tuple[float, dict[str, object]]:
    """``(cost, tokens)`` a successful simulated turn reports on its assistant message and its
    step-finish part, in the real server's shape. Without ``[sim: usage ...]`` the numbers follow
    the text's length (about 4 characters a token) and a typical price, so every turn costs
    something, the same every time."""
    given = dict(script.usage)
    tokens_in = int(given.get("input", len(prompt) // 4 + 10))
    tokens_out = int(given.get("output", len(script.reply) // 4 + 5))
    reasoning = int(given.get("reasoning", 0))
    cache_read = int(given.get("cache_read", 0))
    cache_write = int(given.get("cache_write", 0))
    # $3 per million input tokens and $15 per million output tokens, unless told otherwise.
    cost = given.get("cost", (tokens_in * 3 + (tokens_out + reasoning) * 15) / 1_000_000)
    tokens: dict[str, object] = {
        "total": tokens_in + tokens_out + reasoning + cache_read + cache_write,
        "input": tokens_in,
        "output": tokens_out,
        "reasoning": reasoning,
        "cache": {"read": cache_read, "write": cache_write},
    }
    return round(cost, 9), tokens


def find_move(text: str, outcome: str) -> tuple[str, str] | None:
    """The first ``[label:] mv SRC DST`` line whose DST ends with ``.<outcome>``, as the agent would
    pick it from the prompt's signalling instructions; ``None`` if there is none."""
    for line in text.splitlines():
        match = _LABELLED_MV.match(line)
        if match is None:
            continue
        try:
            words = shlex.split(match.group(1))
        except ValueError:
            continue
        args = [w for w in words[1:] if w != "--"]
        if len(args) == 2 and args[1].endswith(f".{outcome}"):
            return args[0], args[1]
    return None


def perform_signal(text: str, outcome: str) -> str | None:
    """Do what an agent told to signal would do: rename the task's state file. Returns an error
    description (recorded by the simulator, never raised: a real agent's failure is silent too)."""
    move = find_move(text, outcome)
    if move is None:
        return f"no 'mv SRC DST' line ending in .{outcome} in the prompt"
    try:
        os.rename(move[0], move[1])
    except OSError as exc:
        return f"mv {move[0]} {move[1]}: {exc}"
    return None
