"""How did a turn end? Decided from the session's messages, never from the idle signal alone.

OpenCode reports *idle* after success, failure and abort alike, and a 204 from ``prompt_async`` does
not even promise that a turn started. The messages after the last user message are the only durable
record of what happened, so the coordinator classifies those once the session is idle (or after a
reconnect, when events may have been missed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .models import Message

__all__ = ["ABORTED_ERROR", "INCOMPLETE_ERROR", "OutcomeKind", "TurnOutcome", "classify"]

OutcomeKind = Literal["done", "failed", "aborted", "not_started"]

ABORTED_ERROR = "MessageAbortedError"
# Synthesized name for an assistant message that neither completed nor failed: the server lost it
# (restart, crash) mid-turn. Worth retrying: nothing says the task itself is at fault.
INCOMPLETE_ERROR = "Incomplete"


@dataclass(frozen=True)
class TurnOutcome:
    """The verdict on one turn. ``text`` is what the agent said last (``""`` if nothing)."""

    kind: OutcomeKind
    error_name: str | None = None
    message: str | None = None
    retryable: bool | None = None
    text: str = ""


def _turn_text(assistants: Sequence[Message]) -> str:
    # The final message of a turn is usually the summary; earlier ones are narration between tool
    # calls. When the last step said nothing (e.g. it only ran a tool), fall back to the latest that did.
    for message in reversed(assistants):
        if message.text.strip():
            return message.text
    return ""


def classify(messages: Sequence[Message]) -> TurnOutcome:
    """Classify the latest turn of a session from its full message list (oldest first)."""
    start = 0
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "user":
            start = index + 1
            break
    assistants = [m for m in messages[start:] if m.role == "assistant"]
    if not assistants:
        return TurnOutcome(kind="not_started")
    last = assistants[-1]
    text = _turn_text(assistants)
    error = last.error
    if error is not None:
        if error.name == ABORTED_ERROR:
            return TurnOutcome(kind="aborted", error_name=error.name, message=error.message, text=text)
        # Only APIError states retryability; anything unknown is not retried blindly.
        return TurnOutcome(
            kind="failed",
            error_name=error.name,
            message=error.message,
            retryable=bool(error.retryable),
            text=text,
        )
    if not last.completed:
        return TurnOutcome(
            kind="failed",
            error_name=INCOMPLETE_ERROR,
            message="the last assistant message never completed",
            retryable=True,
            text=text,
        )
    return TurnOutcome(kind="done", text=text)
