"""In-memory adapters for the engine's ports: a clock that jumps, and an OpenCode server in a dict.

The fake client keeps the server's facts the engine relies on (sessions per directory, exactly one
turn per prompt, idle after success, failure and abort alike, messages as the record of a turn)
and logs every call, so a test can assert what the engine asked and when. Failures are scripted per
method (``fail_next``); turns end when the test says so (``end_turn``), which returns the events the
real server would stream.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from occoord.opencode import events as ev
from occoord.opencode.models import ErrorInfo, Message, ModelRef, Session, SessionStatus

START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds from 1000 and a wall clock that moves with it; only ``advance`` moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return START + timedelta(seconds=self.now - 1000.0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeSession:
    id: str
    title: str
    directory: str
    created_ms: int
    messages: list[Message] = field(default_factory=list)
    busy: bool = False
    prompts: list[str] = field(default_factory=list)
    aborted: int = 0
    parent: str | None = None  # a sub-agent's session names its parent

    def info(self) -> Session:
        return Session(self.id, self.title, self.directory, self.created_ms)


class FakeOpenCode:
    """The engine's OpenCodePort, in memory."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix  # several fake servers: their session ids must differ, as real ones do
        self.sessions: dict[str, FakeSession] = {}
        self.calls: list[tuple[str, ...]] = []
        self._failures: dict[str, list[BaseException]] = {}
        self._lost: dict[str, list[BaseException]] = {}
        self.usage: dict[str, dict[str, object]] = {}  # message id -> its cost and tokens
        self.subagent_calls: set[str] = set()  # assistant messages whose turn ran a sub-agent
        self.pending_subagent: set[str] = set()  # sessions whose running turn started a sub-agent
        self._ids = itertools.count(1)
        # Called after a prompt is taken; a test may end the turn at once, for instance.
        self.on_prompt: Callable[[FakeSession, str], None] | None = None

    # -- scripting -----------------------------------------------------------------------------

    def fail_next(self, method: str, *errors: BaseException) -> None:
        """The next calls of ``method`` raise these, in order."""
        self._failures.setdefault(method, []).extend(errors)

    def lose_reply(self, method: str, error: BaseException) -> None:
        """The next call of ``method`` takes effect on the server, then its answer is lost."""
        self._lost.setdefault(method, []).append(error)

    def _enter(self, method: str, *args: str) -> None:
        self.calls.append((method, *args))
        queue = self._failures.get(method)
        if queue:
            raise queue.pop(0)

    def _leave(self, method: str) -> None:
        queue = self._lost.get(method)
        if queue:
            raise queue.pop(0)

    def calls_of(self, method: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == method]

    def _message(self, session: FakeSession, role: str, **kw: object) -> Message:
        n = next(self._ids)
        return Message(
            id=f"msg_{n:04d}",
            session_id=session.id,
            role=role,
            finish=kw.get("finish"),  # type: ignore[arg-type]
            error=kw.get("error"),  # type: ignore[arg-type]
            created_ms=n,
            completed_ms=kw.get("completed_ms"),  # type: ignore[arg-type]
            text=str(kw.get("text", "")),
        )

    def start_turn(self, session_id: str) -> list[object]:
        """The model begins answering: busy, and an assistant message appears."""
        session = self.sessions[session_id]
        session.busy = True
        return [
            ev.SessionStatusChanged(session.directory, session_id, "busy"),
            ev.MessageUpdated(
                session.directory, session_id, f"msg_a{len(session.messages)}", "assistant", None, None, False
            ),
        ]

    def end_turn(
        self,
        session_id: str,
        *,
        text: str = "finished",
        error: ErrorInfo | None = None,
        cost: float = 0.0,
        tokens: dict[str, object] | None = None,
    ) -> list[object]:
        """The turn ends (with ``error``, or successfully): the session goes idle."""
        session = self.sessions[session_id]
        session.busy = False
        finish = None if error else "stop"
        message = self._message(session, "assistant", text=text, error=error, finish=finish, completed_ms=1)
        session.messages.append(message)
        if session_id in self.pending_subagent:
            self.pending_subagent.discard(session_id)
            self.subagent_calls.add(message.id)
        if cost or tokens:
            self.usage[message.id] = {"cost": cost, "tokens": tokens or {}}
        return [
            ev.SessionStatusChanged(session.directory, session_id, "idle"),
            ev.SessionIdle(session.directory, session_id),
        ]

    def add_child(self, parent_id: str, *, cost: float, tokens: dict[str, object]) -> FakeSession:
        """A sub-agent's session under ``parent_id`` that answered once."""
        parent = self.sessions[parent_id]
        n = next(self._ids)
        child = FakeSession(
            f"ses_{self.prefix}{n:04d}", "subagent", parent.directory, created_ms=n, parent=parent_id
        )
        self.sessions[child.id] = child
        self.end_turn(child.id, cost=cost, tokens=tokens)
        self.pending_subagent.add(parent_id)
        return child

    def session_of(self, title_prefix: str) -> FakeSession:
        found = [s for s in self.sessions.values() if s.title.startswith(title_prefix)]
        assert len(found) == 1, f"{len(found)} sessions titled {title_prefix}*"
        return found[0]

    def busy_sessions(self) -> list[FakeSession]:
        return [s for s in self.sessions.values() if s.busy]

    # -- the port ------------------------------------------------------------------------------

    async def create_session(
        self, directory: str, title: str, *, permission: list[dict[str, str]] | None = None
    ) -> Session:
        self._enter("create_session", directory, title)
        n = next(self._ids)
        session = FakeSession(f"ses_{self.prefix}{n:04d}", title, directory, created_ms=n)
        self.sessions[session.id] = session
        self._leave("create_session")
        return session.info()

    async def find_sessions(self, directory: str, title: str) -> Sequence[Session]:
        self._enter("find_sessions", directory, title)
        found = [s for s in self.sessions.values() if s.directory == directory and s.title == title]
        return [s.info() for s in sorted(found, key=lambda s: -s.created_ms)]

    async def get_session(self, session_id: str, directory: str) -> Session | None:
        self._enter("get_session", session_id, directory)
        session = self.sessions.get(session_id)
        return session.info() if session and session.directory == directory else None

    async def prompt_async(
        self,
        session_id: str,
        directory: str,
        text: str,
        *,
        agent: str | None = None,
        model: ModelRef | None = None,
    ) -> None:
        self._enter("prompt_async", session_id, directory)
        session = self.sessions[session_id]
        session.prompts.append(text)
        session.messages.append(self._message(session, "user", text=text))
        session.busy = True
        if self.on_prompt is not None:
            self.on_prompt(session, text)
        self._leave("prompt_async")

    async def messages(self, session_id: str, directory: str) -> Sequence[Message]:
        self._enter("messages", session_id, directory)
        session = self.sessions.get(session_id)
        if session is None or session.directory != directory:
            return []
        return list(session.messages)

    async def session_status(self, directory: str) -> Mapping[str, SessionStatus]:
        self._enter("session_status", directory)
        return {
            s.id: SessionStatus("busy") for s in self.sessions.values() if s.directory == directory and s.busy
        }

    async def get_json(
        self, path: str, directory: str | None = None, params: Mapping[str, str | int] | None = None
    ) -> object:
        """The raw answers the engine reads: a session's messages (with cost and tokens, and the
        ``task`` tool call of a sub-agent) and its children. Reading messages fails as scripted
        for ``messages`` (``fail_next("messages", ...)``): it is the same read."""
        self._enter("messages" if path.endswith("/message") else "get_json", path)
        parts = path.strip("/").split("/")
        session = self.sessions.get(parts[1]) if len(parts) == 3 and parts[0] == "session" else None
        if session is None:
            from occoord.errors import ApiError

            raise ApiError("GET", path, 404, "NotFoundError", "no such session")
        if parts[2] == "children":
            return [{"id": s.id} for s in self.sessions.values() if s.parent == session.id]
        raw = []
        for m in session.messages:
            info: dict[str, object] = {
                "id": m.id,
                "sessionID": m.session_id,
                "role": m.role,
                "finish": m.finish,
                "time": {
                    "created": m.created_ms,
                    **({"completed": m.completed_ms} if m.completed_ms else {}),
                },
            }
            info.update(self.usage.get(m.id, {}))
            if m.error is not None:
                data: dict[str, object] = {"message": m.error.message}
                if m.error.retryable is not None:
                    data["isRetryable"] = m.error.retryable
                if m.error.status_code is not None:
                    data["statusCode"] = m.error.status_code
                info["error"] = {"name": m.error.name, "data": data}
            parts: list[dict[str, object]] = []
            if m.text:
                parts.append({"type": "text", "id": f"prt_{m.id}", "text": m.text})
            if m.id in self.subagent_calls:  # a sub-agent ran: OpenCode shows a `task` tool call
                parts.append(
                    {"type": "tool", "tool": "task", "id": f"prt_t{m.id}", "state": {"status": "completed"}}
                )
            raw.append({"info": info, "parts": parts})
        return raw

    async def dispose(self, directory: str) -> None:
        self._enter("dispose", directory)

    async def abort(self, session_id: str, directory: str) -> bool:
        self._enter("abort", session_id, directory)
        session = self.sessions.get(session_id)
        if session is None or session.directory != directory:
            return False  # the real server silently ignores an abort sent to the wrong directory
        session.aborted += 1
        if session.busy:
            session.busy = False
            aborted = ErrorInfo("MessageAbortedError", "aborted")
            session.messages.append(self._message(session, "assistant", error=aborted, completed_ms=1))
        self._leave("abort")
        return True
