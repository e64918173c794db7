"""OpenCodeClient against httpx.MockTransport: scoping, auth, retry policy and error mapping."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from occoord.backoff import Backoff
from occoord.errors import ApiError, ServerUnavailable
from occoord.opencode.client import RETRY_BACKOFF, OpenCodeClient
from occoord.opencode.events import PermissionAsked, QuestionAsked, SessionIdle
from occoord.opencode.models import ModelRef, SessionStatus
from occoord.opencode.permissions import PermissionPolicy, PolicyResponder, session_rules

T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]

DIR = "/home/dev/project a"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def session_json(sid: str, title: str = "t", created: int = 1) -> dict[str, Any]:
    return {
        "id": sid,
        "slug": "s",
        "projectID": "p",
        "directory": DIR,
        "title": title,
        "version": "1.18.33",
        "time": {"created": created, "updated": created},
    }


def error_json(name: str, message: str) -> dict[str, Any]:
    return {"name": name, "data": {"message": message}}


class Recorder:
    """A MockTransport handler that records requests and answers from a per-call script."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return answer(request)


def make(handler: Handler, **kwargs: Any) -> OpenCodeClient:
    kwargs.setdefault("backoff", Backoff(base=0.0, cap=0.0))  # no waiting between retries
    return OpenCodeClient("http://127.0.0.1:9/", transport=httpx.MockTransport(handler), **kwargs)


async def using(client: OpenCodeClient, call: Callable[[OpenCodeClient], Awaitable[T]]) -> T:
    try:
        return await call(client)
    finally:
        await client.aclose()


def by_route(request: httpx.Request) -> httpx.Response:
    """A plausible answer for every route the client uses."""
    path, method = request.url.path, request.method
    if path == "/session" and method == "POST":
        return httpx.Response(200, json=session_json("ses_1"))
    if path == "/session" and method == "GET":
        return httpx.Response(200, json=[session_json("ses_1")])
    if path == "/session/status":
        return httpx.Response(200, json={})
    if path == "/permission":
        return httpx.Response(200, json=[])
    if path.endswith("/prompt_async"):
        return httpx.Response(204)
    if path.endswith("/message"):
        return httpx.Response(200, json=[])
    if path == "/session/ses_1" and method == "GET":
        return httpx.Response(200, json=session_json("ses_1"))
    return httpx.Response(200, json=True)


SCOPED_CALLS: list[Callable[[OpenCodeClient], Awaitable[object]]] = [
    lambda c: c.create_session(DIR, "t"),
    lambda c: c.prompt_async("ses_1", DIR, "hi"),
    lambda c: c.abort("ses_1", DIR),
    lambda c: c.delete_session("ses_1", DIR),
    lambda c: c.get_session("ses_1", DIR),
    lambda c: c.list_sessions(DIR),
    lambda c: c.find_sessions(DIR, "t"),
    lambda c: c.messages("ses_1", DIR),
    lambda c: c.session_status(DIR),
    lambda c: c.permissions(DIR),
    lambda c: c.reply_permission("per_1", DIR, "once"),
    lambda c: c.reply_question("que_1", DIR, [["a"]]),
    lambda c: c.reject_question("que_1", DIR),
    lambda c: c.dispose(DIR),
]


@pytest.mark.parametrize("call", SCOPED_CALLS)
def test_every_scoped_call_sends_the_directory(call: Callable[[OpenCodeClient], Awaitable[object]]) -> None:
    rec = Recorder(by_route)
    run(using(make(rec), call))
    assert len(rec.requests) == 1
    assert rec.requests[0].url.params.get("directory") == DIR


def test_health_is_not_scoped_and_parses() -> None:
    rec = Recorder(httpx.Response(200, json={"healthy": True, "version": "1.18.33"}))
    health = run(using(make(rec), lambda c: c.health()))
    assert (health.healthy, health.version) == (True, "1.18.33")
    assert rec.requests[0].url.path == "/global/health"
    assert "directory" not in rec.requests[0].url.params


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_header_when_password_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCODE_SERVER_USERNAME", raising=False)
    rec = Recorder(httpx.Response(200, json={"healthy": True, "version": "x"}))
    run(using(make(rec, password="s3cret"), lambda c: c.health()))
    assert rec.requests[0].headers["authorization"] == basic("opencode", "s3cret")


def test_auth_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCODE_SERVER_PASSWORD", "envpw")
    monkeypatch.setenv("OPENCODE_SERVER_USERNAME", "bob")
    rec = Recorder(httpx.Response(200, json={"healthy": True, "version": "x"}))
    run(using(make(rec), lambda c: c.health()))
    assert rec.requests[0].headers["authorization"] == basic("bob", "envpw")


def test_no_auth_header_without_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCODE_SERVER_PASSWORD", raising=False)
    rec = Recorder(httpx.Response(200, json={"healthy": True, "version": "x"}))
    run(using(make(rec), lambda c: c.health()))
    assert "authorization" not in rec.requests[0].headers


def test_get_is_retried_on_5xx_then_succeeds() -> None:
    rec = Recorder(
        httpx.Response(503, text="busy"),
        httpx.Response(502, text="bad gateway"),
        httpx.Response(200, json=[]),
    )
    assert run(using(make(rec), lambda c: c.messages("ses_1", DIR))) == []
    assert len(rec.requests) == 3


def test_get_is_retried_on_connect_error_and_read_timeout() -> None:
    rec = Recorder(
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, json={}),
    )
    assert run(using(make(rec), lambda c: c.session_status(DIR))) == {}
    assert len(rec.requests) == 3


def test_retries_exhausted_raise_server_unavailable() -> None:
    rec = Recorder(httpx.Response(500, json=error_json("UnknownError", "boom")))
    with pytest.raises(ServerUnavailable) as info:
        run(using(make(rec, retries=2), lambda c: c.abort("ses_1", DIR)))
    assert len(rec.requests) == 3
    assert "500" in info.value.reason and "boom" in info.value.reason


def test_retries_wait_as_the_backoff_policy_says(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def fake_sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    rec = Recorder(httpx.Response(503, text="busy"))
    with pytest.raises(ServerUnavailable):
        run(using(make(rec, retries=3, backoff=Backoff(base=1.0, cap=3.0)), lambda c: c.dispose(DIR)))
    assert waits == [1.0, 2.0, 3.0]
    assert OpenCodeClient("http://127.0.0.1:9").backoff == RETRY_BACKOFF  # the default


def test_connect_error_exhausted_raises_server_unavailable() -> None:
    rec = Recorder(httpx.ConnectError("refused"))
    with pytest.raises(ServerUnavailable) as info:
        run(using(make(rec, retries=1), lambda c: c.dispose(DIR)))
    assert len(rec.requests) == 2
    assert info.value.url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "call",
    [lambda c: c.prompt_async("ses_1", DIR, "hi"), lambda c: c.create_session(DIR, "t")],
    ids=["prompt_async", "create_session"],
)
def test_non_idempotent_calls_are_not_retried_after_read_timeout(
    call: Callable[[OpenCodeClient], Awaitable[object]],
) -> None:
    rec = Recorder(httpx.ReadTimeout("no answer"), by_route)
    with pytest.raises(ServerUnavailable):
        run(using(make(rec), call))
    assert len(rec.requests) == 1


@pytest.mark.parametrize(
    "call",
    [lambda c: c.prompt_async("ses_1", DIR, "hi"), lambda c: c.create_session(DIR, "t")],
    ids=["prompt_async", "create_session"],
)
def test_non_idempotent_calls_are_not_retried_after_5xx(
    call: Callable[[OpenCodeClient], Awaitable[object]],
) -> None:
    rec = Recorder(httpx.Response(500, text="oops"), by_route)
    with pytest.raises(ServerUnavailable):
        run(using(make(rec), call))
    assert len(rec.requests) == 1


def test_prompt_async_is_retried_when_the_request_never_left() -> None:
    rec = Recorder(httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.Response(204))
    run(using(make(rec), lambda c: c.prompt_async("ses_1", DIR, "hi")))
    assert len(rec.requests) == 3


def test_error_body_maps_to_api_error() -> None:
    rec = Recorder(httpx.Response(404, json=error_json("NotFoundError", "Session not found: ses_x")))
    with pytest.raises(ApiError) as info:
        run(using(make(rec), lambda c: c.messages("ses_x", DIR)))
    err = info.value
    assert (err.method, err.path, err.status) == ("GET", "/session/ses_x/message", 404)
    assert (err.name, err.message) == ("NotFoundError", "Session not found: ses_x")
    assert err.not_found
    assert len(rec.requests) == 1  # a 4xx is an answer, not a failure to retry


def test_error_body_of_other_shapes() -> None:
    invalid = {"_tag": "InvalidRequestError", "message": "bad parts", "kind": "Body"}
    rec = Recorder(httpx.Response(400, json=invalid), httpx.Response(401, text="Unauthorized"))
    client = make(rec)

    async def both() -> tuple[ApiError, ApiError]:
        errors = []
        for _ in range(2):
            try:
                await client.prompt_async("ses_1", DIR, "hi")
            except ApiError as exc:
                errors.append(exc)
        await client.aclose()
        return errors[0], errors[1]

    first, second = run(both())
    assert (first.status, first.name, first.message) == (400, "InvalidRequestError", "bad parts")
    assert (second.status, second.name, second.message) == (401, "", "Unauthorized")


def test_malformed_answer_is_a_bad_response() -> None:
    rec = Recorder(httpx.Response(200, json={"id": "ses_1"}), httpx.Response(200, text="not json"))
    client = make(rec)

    async def both() -> list[ApiError]:
        errors = []
        for call in (client.get_session("ses_1", DIR), client.messages("ses_1", DIR)):
            try:
                await call
            except ApiError as exc:
                errors.append(exc)
        await client.aclose()
        return errors

    errors = run(both())
    assert [e.name for e in errors] == ["BadResponse", "BadResponse"]
    assert "title" in errors[0].message


def test_get_session_404_is_none_and_delete_404_is_false() -> None:
    rec = Recorder(httpx.Response(404, json=error_json("NotFoundError", "gone")))
    client = make(rec)

    async def go() -> tuple[object, object]:
        result = await client.get_session("ses_1", DIR), await client.delete_session("ses_1", DIR)
        await client.aclose()
        return result

    assert run(go()) == (None, False)


def test_get_session_parses() -> None:
    rec = Recorder(httpx.Response(200, json=session_json("ses_7", "task-a", 1234)))
    session = run(using(make(rec), lambda c: c.get_session("ses_7", DIR)))
    assert session is not None
    assert (session.id, session.title, session.directory, session.created_ms) == (
        "ses_7",
        "task-a",
        DIR,
        1234,
    )


def test_find_sessions_is_exact_and_newest_first() -> None:
    listing = [
        session_json("ses_a", "occoord run1/task1", 10),
        session_json("ses_b", "occoord run1/task10", 30),
        session_json("ses_c", "occoord run1/task1", 20),
        session_json("ses_d", "OCCOORD run1/task1", 40),
    ]
    rec = Recorder(httpx.Response(200, json=listing))
    found = run(using(make(rec), lambda c: c.find_sessions(DIR, "occoord run1/task1")))
    assert [s.id for s in found] == ["ses_c", "ses_a"]
    assert rec.requests[0].url.params["search"] == "occoord run1/task1"
    assert rec.requests[0].url.params["limit"] == "1000"


def test_session_status_drops_idle_and_parses_retry() -> None:
    body = {
        "ses_1": {"type": "busy"},
        "ses_2": {"type": "retry", "attempt": 2, "message": "overloaded", "next": 99},
        "ses_3": {"type": "idle"},
    }
    rec = Recorder(httpx.Response(200, json=body))
    status = run(using(make(rec), lambda c: c.session_status(DIR)))
    assert status == {"ses_1": SessionStatus("busy"), "ses_2": SessionStatus("retry", 2, "overloaded")}


def test_request_bodies() -> None:
    rec = Recorder(by_route)
    client = make(rec)
    rules = [{"permission": "bash", "pattern": "*", "action": "allow"}]

    async def go() -> None:
        await client.create_session(DIR, "title", permission=rules)
        await client.prompt_async("ses_1", DIR, "do it", agent="build", model=ModelRef("prov", "mod"))
        await client.reply_permission("per_1", DIR, "reject", "no")
        await client.reply_question("que_1", DIR, [["yes"]])
        await client.aclose()

    run(go())
    bodies = [json.loads(r.content) for r in rec.requests]
    assert bodies[0] == {"title": "title", "permission": rules}
    assert bodies[1] == {
        "parts": [{"type": "text", "text": "do it"}],
        "agent": "build",
        "model": {"providerID": "prov", "modelID": "mod"},
    }
    assert bodies[2] == {"reply": "reject", "message": "no"}
    assert bodies[3] == {"answers": [["yes"]]}
    assert [r.url.path for r in rec.requests] == [
        "/session",
        "/session/ses_1/prompt_async",
        "/permission/per_1/reply",
        "/question/que_1/reply",
    ]


def test_abort_answers_bool() -> None:
    rec = Recorder(httpx.Response(200, json=False), httpx.Response(200, json=True))
    client = make(rec)

    async def go() -> list[bool]:
        result = [await client.abort("ses_1", DIR), await client.abort("ses_1", DIR)]
        await client.aclose()
        return result

    assert run(go()) == [False, True]


def test_stream_maps_error_status_and_connect_failure() -> None:
    rec = Recorder(httpx.Response(401, text="Unauthorized"), httpx.ConnectError("refused"))
    client = make(rec)

    async def go() -> list[Exception]:
        errors: list[Exception] = []
        for _ in range(2):
            try:
                async with client.stream():
                    pass
            except (ApiError, ServerUnavailable) as exc:
                errors.append(exc)
        await client.aclose()
        return errors

    first, second = run(go())
    assert isinstance(first, ApiError) and first.status == 401
    assert isinstance(second, ServerUnavailable)
    assert rec.requests[0].headers["accept"] == "text/event-stream"


# --- permissions: the rules sent at create, and the responder that answers asks -------------------


def test_session_rules() -> None:
    rules = session_rules(["/srv/spool/", "/"], allow=("bash", "edit"))
    assert rules == [
        {"permission": "bash", "pattern": "*", "action": "allow"},
        {"permission": "edit", "pattern": "*", "action": "allow"},
        {"permission": "external_directory", "pattern": "/srv/spool", "action": "allow"},
        {"permission": "external_directory", "pattern": "/srv/spool/*", "action": "allow"},
        {"permission": "external_directory", "pattern": "/", "action": "allow"},
        {"permission": "external_directory", "pattern": "/*", "action": "allow"},
        {"permission": "question", "pattern": "*", "action": "deny"},
    ]
    default = session_rules()
    assert {r["permission"] for r in default if r["action"] == "allow"} >= {
        "bash",
        "edit",
        "external_directory",
    }
    assert default[-1] == {"permission": "question", "pattern": "*", "action": "deny"}


def test_policy_rejects_unknown_reply() -> None:
    with pytest.raises(ValueError):
        PermissionPolicy(default="maybe")


def test_policy_responder_answers_every_ask(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(httpx.Response(200, json=True))
    client = make(rec)
    policy = PermissionPolicy(reject=frozenset({"webfetch"}))
    responder = PolicyResponder(client, policy)

    async def go() -> None:
        await responder.handle(PermissionAsked(DIR, "ses_1", "per_1", "bash", ("rm -rf build",)))
        await responder.handle(PermissionAsked(DIR, "ses_1", "per_2", "webfetch", ("https://x",)))
        await responder.handle(QuestionAsked(DIR, "ses_1", "que_1", ("Which one?",)))
        await responder.handle(SessionIdle(DIR, "ses_1"))  # not an ask: ignored
        await client.aclose()

    with caplog.at_level("WARNING", logger="occoord.opencode.permissions"):
        run(go())
    assert [(r.method, r.url.path, r.url.params["directory"]) for r in rec.requests] == [
        ("POST", "/permission/per_1/reply", DIR),
        ("POST", "/permission/per_2/reply", DIR),
        ("POST", "/question/que_1/reject", DIR),
    ]
    assert json.loads(rec.requests[0].content) == {"reply": "once"}
    second = json.loads(rec.requests[1].content)
    assert second["reply"] == "reject" and second["message"]
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 3


def test_policy_responder_logs_api_errors_instead_of_raising(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(httpx.Response(404, json=error_json("PermissionNotFoundError", "already answered")))
    client = make(rec)
    responder = PolicyResponder(client, PermissionPolicy(default="reject"))

    async def go() -> None:
        await responder.handle(PermissionAsked(DIR, "ses_1", "per_1", "bash", ()))
        await client.aclose()

    with caplog.at_level("ERROR", logger="occoord.opencode.permissions"):
        run(go())
    assert json.loads(rec.requests[0].content)["reply"] == "reject"
    assert any("already answered" in r.getMessage() for r in caplog.records)
