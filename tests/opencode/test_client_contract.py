"""The client suite against every backend: the simulator and, when installed, the real opencode.

The same assertions run against both, so the simulator is held to what the real server does and the
client is proven against the real wire format. Turns are scripted with ``backend.directive``:
``[sim: ...]`` for the simulator, ``[model: ...]`` for the scripted model behind the real server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from support.opencode_env import Backend

from occoord.errors import ApiError
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.events import (
    Event,
    EventStream,
    MessageUpdated,
    PermissionAsked,
    SessionError,
    SessionIdle,
    SessionStatusChanged,
)
from occoord.opencode.outcome import TurnOutcome, classify
from occoord.opencode.permissions import PolicyResponder

T = TypeVar("T")
TURN_TIMEOUT = 60.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def title() -> str:
    return f"occoord-test {secrets.token_hex(4)}"


class Watch:
    """Collects the event stream in the background so a test can wait for a given event."""

    def __init__(self, client: OpenCodeClient) -> None:
        self.stream = EventStream(client, reconnect_min=0.05, reconnect_max=0.5)
        self.events: list[Event] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._pump())
        # No replay: the subscription must be open before anything is prompted.
        await asyncio.wait_for(self.stream.connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    async def _pump(self) -> None:
        async for event in self.stream:
            self.events.append(event)

    async def wait(self, match: Callable[[Event], bool], timeout: float = TURN_TIMEOUT) -> Event:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if match(event):
                    return event
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise AssertionError(f"event not seen within {timeout}s; got {self.events!r}")
            await asyncio.sleep(0.02)

    def of(self, session_id: str) -> list[Event]:
        return [e for e in self.events if getattr(e, "session_id", None) == session_id]


def idle(session_id: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, SessionIdle) and e.session_id == session_id


def busy(session_id: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, SessionStatusChanged) and e.session_id == session_id and e.status == "busy"


def assistant_started(session_id: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, MessageUpdated) and e.session_id == session_id and e.role == "assistant"


def client_for(backend: Backend, **kwargs: Any) -> OpenCodeClient:
    return OpenCodeClient(backend.url, password=backend.password, timeout=30, **kwargs)


def long_turn(backend: Backend) -> str:
    """A directive that keeps the turn busy far longer than the test (until aborted)."""
    return backend.directive("hang") if backend.kind == "sim" else backend.directive("slow", "60")


def test_health(backend: Backend) -> None:
    async def go() -> None:
        client = client_for(backend)
        try:
            health = await client.health()
        finally:
            await client.aclose()
        assert health.healthy is True
        assert health.version

    run(go())


def test_wrong_password_is_an_api_error(backend: Backend) -> None:
    async def go() -> None:
        client = OpenCodeClient(backend.url, password="not-the-password", timeout=30)
        try:
            with pytest.raises(ApiError) as info:
                await client.health()
        finally:
            await client.aclose()
        assert info.value.status == 401

    run(go())


def test_create_get_list_find(backend: Backend) -> None:
    directory = str(backend.workdir)
    name = title()

    async def go() -> None:
        client = client_for(backend)
        try:
            created = await client.create_session(directory, name)
            assert created.id.startswith("ses")
            assert created.title == name
            assert os.path.realpath(created.directory) == os.path.realpath(directory)
            assert created.created_ms is not None

            fetched = await client.get_session(created.id, directory)
            assert fetched == created

            other = await client.create_session(directory, name + " other")
            listed = {s.id for s in await client.list_sessions(directory)}
            assert {created.id, other.id} <= listed

            assert [s.id for s in await client.find_sessions(directory, name)] == [created.id]
            assert await client.find_sessions(directory, name + " missing") == []

            assert await client.get_session("ses_doesnotexist00000000000", directory) is None
            # A fresh session has no turn yet.
            assert classify(await client.messages(created.id, directory)) == TurnOutcome("not_started")
        finally:
            await client.aclose()

    run(go())


def test_prompt_turn_completes_and_classifies_done(backend: Backend) -> None:
    directory = str(backend.workdir)

    async def go() -> None:
        client = client_for(backend)
        try:
            session = await client.create_session(directory, title())
            async with Watch(client) as watch:
                prompt = f"Say hello.\n{backend.directive('reply', 'hello from the turn')}"
                await client.prompt_async(session.id, directory, prompt)
                await watch.wait(idle(session.id))
                events = watch.of(session.id)
            assert any(busy(session.id)(e) for e in events)
            finished = [e for e in events if assistant_started(session.id)(e)]
            assert finished and isinstance(finished[-1], MessageUpdated) and finished[-1].completed
            assert not [e for e in events if isinstance(e, SessionError)]

            messages = await client.messages(session.id, directory)
            assert messages[0].role == "user"
            outcome = classify(messages)
            assert outcome.kind == "done", outcome
            assert "hello from the turn" in outcome.text
            # Idle sessions are absent from the status map.
            assert session.id not in await client.session_status(directory)
        finally:
            await client.aclose()

    run(go())


def test_abort_a_running_turn(backend: Backend) -> None:
    directory = str(backend.workdir)

    async def go() -> None:
        client = client_for(backend)
        try:
            session = await client.create_session(directory, title())
            async with Watch(client) as watch:
                await client.prompt_async(session.id, directory, f"Work.\n{long_turn(backend)}")
                await watch.wait(assistant_started(session.id))

                status = await client.session_status(directory)
                assert session.id in status
                assert status[session.id].type == "busy"

                assert await client.abort(session.id, directory) is True
                await watch.wait(idle(session.id), timeout=20)
                updates = [e for e in watch.of(session.id) if assistant_started(session.id)(e)]
            # The real server sends no session.error for an abort; the assistant message carries it.
            last = updates[-1]
            assert isinstance(last, MessageUpdated) and last.completed
            assert last.error is not None and last.error.name == "MessageAbortedError"

            outcome = classify(await client.messages(session.id, directory))
            assert outcome.kind == "aborted", outcome
            assert outcome.error_name == "MessageAbortedError"
            assert session.id not in await client.session_status(directory)
            # Aborting an idle session is harmless (what it answers differs by version: not checked).
            await client.abort(session.id, directory)
            assert session.id not in await client.session_status(directory)
        finally:
            await client.aclose()

    run(go())


def test_delete_session(backend: Backend) -> None:
    directory = str(backend.workdir)

    async def go() -> None:
        client = client_for(backend)
        try:
            session = await client.create_session(directory, title())
            assert await client.delete_session(session.id, directory) is True
            assert await client.get_session(session.id, directory) is None
            assert await client.find_sessions(directory, session.title) == []
            # A repeated delete (e.g. a retry after a lost answer) is not an error.
            assert await client.delete_session(session.id, directory) is False
            with pytest.raises(ApiError) as info:
                await client.messages(session.id, directory)
            assert info.value.status == 404
        finally:
            await client.aclose()

    run(go())


def test_dispose_keeps_sessions(backend: Backend) -> None:
    directory = str(backend.workdir)

    async def go() -> None:
        client = client_for(backend)
        try:
            session = await client.create_session(directory, title())
            await client.dispose(directory)
            assert (await client.health()).healthy
            # Disposing frees the instance, not the stored sessions: they come back with it.
            assert await client.get_session(session.id, directory) == session
            assert await client.session_status(directory) == {}
        finally:
            await client.aclose()

    run(go())


def test_failed_turn_classifies_failed(backend: Backend) -> None:
    directory = str(backend.workdir)
    failing = (
        backend.directive("error", "APIError fatal")
        if backend.kind == "sim"
        else backend.directive("error", "400")
    )

    async def go() -> None:
        client = client_for(backend)
        try:
            session = await client.create_session(directory, title())
            async with Watch(client) as watch:
                await client.prompt_async(session.id, directory, f"Fail.\n{failing}")
                await watch.wait(idle(session.id))
                errors = [e for e in watch.of(session.id) if isinstance(e, SessionError)]
            # Idle is not success: the error comes first, and the messages carry it too.
            assert errors and errors[-1].error is not None and errors[-1].error.name == "APIError"
            outcome = classify(await client.messages(session.id, directory))
            assert (outcome.kind, outcome.error_name, outcome.retryable) == ("failed", "APIError", False)
        finally:
            await client.aclose()

    run(go())


def test_policy_responder_answers_a_permission_ask(backend: Backend) -> None:
    directory = str(backend.workdir)
    # Per-session rules make bash ask, whatever the server's config allows.
    ask_bash = [{"permission": "bash", "pattern": "*", "action": "ask"}]
    asking = (
        backend.directive("ask", "bash") if backend.kind == "sim" else backend.directive("bash", "echo hi")
    )

    async def go() -> None:
        client = client_for(backend)
        responder = PolicyResponder(client)
        try:
            session = await client.create_session(directory, title(), permission=ask_bash)
            async with Watch(client) as watch:
                await client.prompt_async(session.id, directory, f"Run it.\n{asking}")
                ask = await watch.wait(
                    lambda e: isinstance(e, PermissionAsked) and e.session_id == session.id
                )
                assert isinstance(ask, PermissionAsked) and ask.permission == "bash"
                pending = await client.permissions(directory)
                assert ask.request_id in {p.get("id") for p in pending}
                await responder.handle(ask)
                await watch.wait(idle(session.id))
            assert await client.permissions(directory) == []
            outcome = classify(await client.messages(session.id, directory))
            assert outcome.kind == "done", outcome
        finally:
            await client.aclose()

    run(go())
