"""classify(): the verdict on a turn from the session's messages."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from occoord.opencode.models import ErrorInfo, Message
from occoord.opencode.outcome import TurnOutcome, classify

_ids = iter(range(1_000_000))


def user(text: str = "do it") -> Message:
    return Message(f"msg_{next(_ids)}", "ses_1", "user", None, None, 1, None, text)


def asst(
    text: str = "",
    *,
    finish: str | None = "stop",
    completed: bool = True,
    error: ErrorInfo | None = None,
) -> Message:
    return Message(
        f"msg_{next(_ids)}", "ses_1", "assistant", finish, error, 1, 2 if completed else None, text
    )


ABORTED = ErrorInfo("MessageAbortedError", "The operation was aborted.")
API_RETRY = ErrorInfo("APIError", "Internal Server Error", retryable=True, status_code=500)
API_FATAL = ErrorInfo("APIError", "invalid_request_error", retryable=False, status_code=400)
UNKNOWN = ErrorInfo("ProviderAuthError", "no key")

CASES: list[tuple[str, list[Message], TurnOutcome]] = [
    ("empty", [], TurnOutcome("not_started")),
    ("only the prompt", [user()], TurnOutcome("not_started")),
    ("answered", [user(), asst("all done")], TurnOutcome("done", text="all done")),
    (
        "tool step then summary",
        [user(), asst("running tests", finish="tool-calls"), asst("tests pass")],
        TurnOutcome("done", text="tests pass"),
    ),
    (
        "last step silent",
        [user(), asst("summary first", finish="tool-calls"), asst("")],
        TurnOutcome("done", text="summary first"),
    ),
    (
        "completed without finish",
        [user(), asst("x", finish=None, completed=True)],
        TurnOutcome("done", text="x"),
    ),
    (
        "finish without completed time",
        [user(), asst("x", finish="stop", completed=False)],
        TurnOutcome("done", text="x"),
    ),
    (
        "previous turn done, new prompt not started",
        [user(), asst("old"), user("again")],
        TurnOutcome("not_started"),
    ),
    (
        "aborted",
        [user(), asst("partial", finish=None, error=ABORTED)],
        TurnOutcome("aborted", "MessageAbortedError", "The operation was aborted.", text="partial"),
    ),
    (
        "retryable api error",
        [user(), asst(finish=None, error=API_RETRY)],
        TurnOutcome("failed", "APIError", "Internal Server Error", True),
    ),
    (
        "fatal api error",
        [user(), asst(finish=None, error=API_FATAL)],
        TurnOutcome("failed", "APIError", "invalid_request_error", False),
    ),
    (
        "unknown error is not retryable",
        [user(), asst(finish=None, error=UNKNOWN)],
        TurnOutcome("failed", "ProviderAuthError", "no key", False),
    ),
    (
        "incomplete",
        [user(), asst("half", finish=None, completed=False)],
        TurnOutcome("failed", "Incomplete", "the last assistant message never completed", True, "half"),
    ),
    (
        "error in an earlier turn does not count",
        [user(), asst(error=API_FATAL), user("retry"), asst("fine")],
        TurnOutcome("done", text="fine"),
    ),
    (
        "error before the last step does not count",
        [user(), asst(error=API_RETRY), asst("recovered")],
        TurnOutcome("done", text="recovered"),
    ),
]


@pytest.mark.parametrize(("messages", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_table(messages: list[Message], expected: TurnOutcome) -> None:
    assert classify(messages) == expected


def test_classify_real_message_shapes() -> None:
    """Messages parsed from the server's JSON, as GET /session/{id}/message returns them."""
    raw: list[dict[str, Any]] = [
        {
            "info": {"id": "msg_1", "sessionID": "ses_1", "role": "user", "time": {"created": 1}},
            "parts": [{"id": "prt_1", "type": "text", "text": "fix the bug"}],
        },
        {
            "info": {
                "id": "msg_2",
                "sessionID": "ses_1",
                "role": "assistant",
                "time": {"created": 2, "completed": 3},
                "finish": "stop",
                "modelID": "m",
                "providerID": "p",
            },
            "parts": [
                {"id": "prt_2", "type": "step-start"},
                {"id": "prt_3", "type": "text", "text": "Fixed "},
                {"id": "prt_4", "type": "tool", "tool": "bash", "state": {"status": "completed"}},
                {"id": "prt_5", "type": "text", "text": "it."},
                {"id": "prt_6", "type": "text", "text": "ignored", "ignored": True},
            ],
        },
    ]
    assert classify([Message.from_api(r) for r in raw]) == TurnOutcome("done", text="Fixed it.")


errors = st.one_of(
    st.none(),
    st.builds(
        ErrorInfo,
        name=st.sampled_from(["MessageAbortedError", "APIError", "UnknownError"]),
        message=st.text(max_size=5),
        retryable=st.one_of(st.none(), st.booleans()),
        status_code=st.none(),
    ),
)
messages = st.builds(
    Message,
    id=st.just("msg"),
    session_id=st.just("ses"),
    role=st.sampled_from(["user", "assistant"]),
    finish=st.one_of(st.none(), st.sampled_from(["stop", "tool-calls"])),
    error=errors,
    created_ms=st.just(1),
    completed_ms=st.one_of(st.none(), st.just(2)),
    text=st.text(max_size=5),
)


@given(st.lists(messages, max_size=8))
def test_classify_properties(history: list[Message]) -> None:
    outcome = classify(history)
    tail: list[Message] = []
    for m in reversed(history):
        if m.role == "user":
            break
        tail.insert(0, m)
    if not tail:
        assert outcome == TurnOutcome("not_started")
        return
    last = tail[-1]
    # Only the final assistant message decides; nothing before the last user message matters.
    assert classify(tail) == outcome
    if last.error is not None and last.error.name == "MessageAbortedError":
        assert outcome.kind == "aborted"
    elif last.error is not None:
        assert outcome.kind == "failed" and outcome.error_name == last.error.name
        assert outcome.retryable is (last.error.retryable is True)
    elif last.completed_ms is None and last.finish is None:
        assert (outcome.kind, outcome.error_name, outcome.retryable) == ("failed", "Incomplete", True)
    else:
        assert outcome.kind == "done"
    assert outcome.text in {m.text for m in tail} | {""}
    # A new prompt always resets the verdict.
    assert classify([*history, user()]) == TurnOutcome("not_started")
