"""The simulator's engine: sessions and their turns, played out as the real server plays them.

Each session with work gets one asyncio task (its runner) that plays the queued prompts in order;
thousands of sessions cost thousands of cheap tasks, never threads. The event order of a turn is the
real one: ``message.updated`` (user) -> ``session.status`` busy -> ``message.updated`` (assistant) ->
``message.part.updated`` ... -> ``message.updated`` (assistant, finish/error, ``time.completed``) ->
[``session.error``] -> ``session.status`` idle -> ``session.idle``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from occoord.sim.script import ErrorSpec, Script, parse_script, perform_signal, usage_for
from occoord.sim.state import JSON, Bus, BusyLog, PendingAsk, Prompt, SimSession, new_id, now_ms
from occoord.sim.streaming import stream_text

__all__ = ["ABORTED", "Engine"]

ABORTED = ErrorSpec("MessageAbortedError", "The operation was aborted.")
_PERMISSION_REJECTED = "The user rejected permission to use this specific tool call."
_QUESTION_REJECTED = "The user dismissed this question."


class _TurnFailed(Exception):
    """Ends a turn with an error on the assistant message (and a ``session.error`` event)."""

    def __init__(self, spec: ErrorSpec) -> None:
        super().__init__(spec.name)
        self.spec = spec


class Engine:
    """All simulated state, owned by one event loop."""

    def __init__(self, *, version: str, time_scale: float, queue_size: int, activity_interval: float) -> None:
        self.version = version
        self.time_scale = time_scale
        self.activity_interval = activity_interval
        # When each session last went idle and when its messages were first read after that
        # (time.monotonic(), system-wide): the turn end -> outcome read latency of benchmarks.
        self.idled: dict[str, float] = {}
        self.read_after_idle: dict[str, float] = {}
        self.sessions: dict[str, SimSession] = {}
        self.busy: dict[str, SimSession] = {}
        self.pending: dict[str, PendingAsk] = {}
        self.bus = Bus(queue_size)
        self.busy_log = BusyLog()
        self.signal_errors: list[str] = []
        # (time.monotonic(), session id) of every prompt as it is accepted, in order: one append per
        # prompt, read by benchmarks to time "file renamed -> prompt received" (CLOCK_MONOTONIC is
        # system-wide on Linux, so other processes' monotonic stamps compare with these).
        self.received: list[tuple[float, str]] = []
        # The same for every session creation (``POST /session``), stamped on arrival.
        self.created: list[tuple[float, str]] = []

    # ----------------------------------------------------------------- sessions
    def create_session(
        self, directory: str, title: str | None, permission: list[Any], parent_id: str | None
    ) -> SimSession:
        arrived = time.monotonic()
        stamp = now_ms()
        sess = SimSession(
            id=new_id("ses"),
            directory=directory,
            title=title if title else f"New session - {stamp}",
            version=self.version,
            permission=permission,
            parent_id=parent_id,
        )
        self.sessions[sess.id] = sess
        self.created.append((arrived, sess.id))
        self._emit(sess, "session.created", {"sessionID": sess.id, "info": sess.to_api()})
        return sess

    def delete_session(self, sess: SimSession) -> None:
        """Forget the session; a running turn is cut without events (the session no longer exists)."""
        self.sessions.pop(sess.id, None)
        self.busy.pop(sess.id, None)
        self.busy_log.end(sess)
        sess.status = None
        if sess.runner is not None and not sess.runner.done():
            sess.runner.cancel()
        self._emit(sess, "session.deleted", {"sessionID": sess.id, "info": sess.to_api()})

    def messages_read(self, sess: SimSession) -> None:
        """``GET /session/{id}/message`` was served: stamp the first read after the turn ended."""
        idle = self.idled.get(sess.id)
        if idle is not None and self.read_after_idle.get(sess.id, 0.0) < idle:
            self.read_after_idle[sess.id] = time.monotonic()

    def status_map(self, directory: str) -> dict[str, JSON]:
        return {sid: s.status for sid, s in self.busy.items() if s.directory == directory and s.status}

    # ----------------------------------------------------------------- prompts
    def prompt(self, sess: SimSession, text: str, agent: str, model: JSON) -> Prompt:
        """Accept a prompt: the user message exists at once (as on the real server), the turn runs in
        the session's runner. ``[sim: nostart]`` accepts and then never starts a turn."""
        self.received.append((time.monotonic(), sess.id))
        sess.prompts.append(text)
        message, part = sess.user_message(text, agent, model)
        self._emit(sess, "message.updated", {"sessionID": sess.id, "info": message["info"]})
        self._emit(sess, "message.part.updated", {"sessionID": sess.id, "part": part, "time": now_ms()})
        done: asyncio.Future[JSON | None] = asyncio.get_running_loop().create_future()
        prompt = Prompt(text=text, agent=agent, model=model, user=message, done=done)
        if parse_script(text).nostart:
            done.set_result(None)
            return prompt
        sess.queue.append(prompt)
        if sess.runner is None or sess.runner.done():
            self._set_status(sess, {"type": "busy"})
            sess.runner = asyncio.get_running_loop().create_task(self._run(sess), name=f"sim-{sess.id}")
        return prompt

    async def abort(self, sess: SimSession) -> None:
        """Abort the running turn (MessageAbortedError) and drop queued prompts; returns once the
        session is idle. Aborting an idle session does nothing, like the real server."""
        runner = sess.runner
        if runner is None or runner.done():
            return
        sess.aborting = True
        runner.cancel()
        await asyncio.wait([runner], timeout=5.0)
        if sess.aborting:
            # Cancelled before its first step: the runner's own cleanup never ran.
            self._settle(sess)

    async def dispose(self, directory: str) -> None:
        """Free a directory's instance: its running turns are aborted, its sessions stay stored."""
        for sess in [s for s in self.busy.values() if s.directory == directory]:
            await self.abort(sess)
        self.bus.publish(directory, "server.instance.disposed", {"directory": directory})

    async def shutdown(self) -> None:
        runners = [s.runner for s in self.sessions.values() if s.runner is not None and not s.runner.done()]
        for runner in runners:
            runner.cancel()
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)

    def answer(self, request_id: str, kind: str, directory: str, reply: tuple[str, Any]) -> bool:
        """Deliver a reply to a pending ask of ``kind`` in ``directory``; False if there is none."""
        ask = self.pending.get(request_id)
        if ask is None or ask.kind != kind or ask.directory != directory or ask.future.done():
            return False
        ask.future.set_result(reply)
        return True

    # ----------------------------------------------------------------- turns
    def _emit(self, sess: SimSession, type_: str, properties: JSON) -> None:
        self.bus.publish(sess.directory, type_, properties)

    def _set_status(self, sess: SimSession, status: JSON | None) -> None:
        sess.status = status
        if status is None:
            self.busy.pop(sess.id, None)
            self.busy_log.end(sess)
        else:
            self.busy[sess.id] = sess
            self.busy_log.begin(sess)
        shown = status if status is not None else {"type": "idle"}
        self._emit(sess, "session.status", {"sessionID": sess.id, "status": shown})

    async def _run(self, sess: SimSession) -> None:
        """Play queued prompts until none is left, then go idle. An abort ends the current turn and
        drops the queue; a plain cancel (delete, shutdown) just stops."""
        try:
            while sess.queue and not sess.aborting:
                prompt = sess.queue[0]
                result = await self._turn(sess, prompt)
                sess.queue.popleft()
                if not prompt.done.done():
                    prompt.done.set_result(result)
        finally:
            self._settle(sess)

    def _settle(self, sess: SimSession) -> None:
        """End of a run: unblock waiters of dropped prompts and go idle (if the session still exists)."""
        sess.aborting = False
        while sess.queue:
            left = sess.queue.popleft()
            if not left.done.done():
                left.done.set_result(None)
        if sess.id in self.sessions and sess.status is not None:
            self._set_status(sess, None)
            self.idled[sess.id] = time.monotonic()
            self._emit(sess, "session.idle", {"sessionID": sess.id})

    async def _turn(self, sess: SimSession, prompt: Prompt) -> JSON:
        script = parse_script(prompt.text)
        msg = sess.assistant_message(prompt.user, prompt.agent, prompt.model)
        self._emit(sess, "message.updated", {"sessionID": sess.id, "info": msg["info"]})
        try:
            self._part(sess, msg, {"type": "step-start"})
            await self._play(sess, msg, script, prompt.text)
            self._part(sess, msg, {"type": "text", "text": script.reply}, delta=script.reply)
            cost, tokens = usage_for(script, prompt.text)
            self._part(sess, msg, {"type": "step-finish", "reason": "stop", "cost": cost, "tokens": tokens})
            msg["info"].update(cost=cost, tokens=tokens)
            self._complete(sess, msg, finish="stop")
        except _TurnFailed as exc:
            self._complete(sess, msg, error=exc.spec)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not sess.aborting or task is None:
                raise
            task.uncancel()
            self._complete(sess, msg, error=ABORTED)
        return msg

    async def _play(self, sess: SimSession, msg: JSON, script: Script, text: str) -> None:
        """The middle of a turn: words, asks, work, signal and scripted failure, in that order."""
        if script.say:  # words before the work, as an agent says what it is about to do
            said = {"type": "text", "text": script.say, "time": {"start": now_ms(), "end": now_ms()}}
            self._part(sess, msg, said, delta=script.say)
        if script.stream:
            await self._stream(sess, msg, *script.stream)
        if script.ask:
            await self._ask_permission(sess, msg, script.ask)
        if script.question:
            await self._ask_question(sess, msg)
        if script.hang:
            await asyncio.Event().wait()
        if script.subagent:
            await self._subagent(sess, msg)
        await self._work(sess, msg, script.work)
        if script.signal:
            problem = perform_signal(text, script.signal)
            if problem is not None:
                self.signal_errors.append(f"{sess.id}: {problem}")
        if script.error is not None:
            if script.error.retryable:
                retry = {"type": "retry", "attempt": 1, "message": script.error.message, "next": now_ms()}
                self._set_status(sess, retry)
                self._set_status(sess, {"type": "busy"})
            raise _TurnFailed(script.error)

    def _part(self, sess: SimSession, msg: JSON, body: JSON, *, delta: str | None = None) -> JSON:
        """Add a part (or update one, when ``body`` carries an existing ``id``) and announce it."""
        part: JSON = {
            "id": body.get("id") or new_id("prt"),
            "sessionID": sess.id,
            "messageID": msg["info"]["id"],
        }
        part.update({k: v for k, v in body.items() if k != "id"})
        parts: list[JSON] = msg["parts"]
        for i, old in enumerate(parts):
            if old["id"] == part["id"]:
                parts[i] = part
                break
        else:
            parts.append(part)
        if delta:
            self._emit(
                sess,
                "message.part.delta",
                {
                    "sessionID": sess.id,
                    "messageID": part["messageID"],
                    "partID": part["id"],
                    "field": "text",
                    "delta": delta,
                },
            )
        self._emit(sess, "message.part.updated", {"sessionID": sess.id, "part": part, "time": now_ms()})
        return part

    async def _stream(self, sess: SimSession, msg: JSON, chunks: int, rate: float) -> None:
        part = self._part(sess, msg, {"type": "text", "text": "", "time": {"start": now_ms()}})
        ids = {"sessionID": sess.id, "messageID": part["messageID"], "partID": part["id"], "field": "text"}

        def update(text: str) -> None:
            self._part(sess, msg, {"id": part["id"], "type": "text", "text": text, "time": part["time"]})

        await stream_text(
            lambda chunk: self._emit(sess, "message.part.delta", {**ids, "delta": chunk}),
            update,
            chunks,
            rate,
            self.time_scale,
        )

    async def _work(self, sess: SimSession, msg: JSON, seconds: float) -> None:
        """Busy for ``seconds`` (scaled), as a bash tool call whose progress shows as part updates."""
        start = now_ms()
        call: JSON = {"type": "tool", "callID": new_id("call"), "tool": "bash"}
        state: JSON = {"status": "running", "input": {"command": "sim work"}, "time": {"start": start}}
        part = self._part(sess, msg, {**call, "state": state})
        remaining = seconds * self.time_scale
        tick = max(self.activity_interval * self.time_scale, 0.001)
        while True:
            step = min(tick, remaining)
            await asyncio.sleep(step)
            remaining -= step
            if remaining <= 0:
                break
            state = {**state, "metadata": {"output": f"{remaining:.3f}s left"}}
            self._part(sess, msg, {**call, "id": part["id"], "state": state})
        done = {
            "status": "completed",
            "input": state["input"],
            "output": "",
            "title": "sim work",
            "metadata": {"exit": 0},
            "time": {"start": start, "end": now_ms()},
        }
        self._part(sess, msg, {**call, "id": part["id"], "state": done})

    async def _subagent(self, sess: SimSession, msg: JSON) -> None:
        """A ``task`` tool call, as the real server runs one: a child session (``parentID``) plays a
        turn of its own, with its own messages and usage, while the parent's tool part runs."""
        info: JSON = msg["info"]
        title = "Simulated sub-task (@general subagent)"
        child = self.create_session(sess.directory, title, [], sess.id)
        call: JSON = {"type": "tool", "callID": new_id("call"), "tool": "task"}
        arguments = {"description": "Simulated sub-task", "subagent_type": "general"}
        start = now_ms()
        state: JSON = {"status": "running", "input": arguments, "title": title, "time": {"start": start}}
        part = self._part(sess, msg, {**call, "state": state, "metadata": {"sessionId": child.id}})
        model = {"providerID": info["providerID"], "modelID": info["modelID"]}
        prompt = self.prompt(
            child, "Do the sub-task. [sim: work 0.05] [sim: reply sub-task done]", "general", model
        )
        try:
            await prompt.done
        except asyncio.CancelledError:
            await self.abort(child)  # an aborted parent stops its sub-agent too
            raise
        done = {
            **state,
            "status": "completed",
            "output": "sub-task done",
            "metadata": {"sessionId": child.id},
        }
        done["time"] = {"start": start, "end": now_ms()}
        self._part(sess, msg, {**call, "id": part["id"], "state": done})

    async def _wait_ask(self, sess: SimSession, kind: str, request: JSON) -> tuple[str, Any]:
        """Register an ask, announce it and wait (forever, still busy) for its answer."""
        future: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request["id"]] = PendingAsk(kind, request, sess.directory, future)
        self._emit(sess, f"{kind}.asked", request)
        try:
            return await future
        finally:
            self.pending.pop(request["id"], None)

    async def _ask_permission(self, sess: SimSession, msg: JSON, permission: str) -> None:
        request = {
            "id": new_id("per"),
            "sessionID": sess.id,
            "permission": permission,
            "patterns": [f"sim {permission}"],
            "metadata": {},
            "always": [f"sim {permission} *"],
            "tool": {"messageID": msg["info"]["id"], "callID": new_id("call")},
        }
        reply, message = await self._wait_ask(sess, "permission", request)
        self._emit(
            sess, "permission.replied", {"sessionID": sess.id, "requestID": request["id"], "reply": reply}
        )
        if reply == "reject":
            text = f"{_PERMISSION_REJECTED} {message}" if message else _PERMISSION_REJECTED
            raise _TurnFailed(ErrorSpec("UnknownError", text))

    async def _ask_question(self, sess: SimSession, msg: JSON) -> None:
        options = [{"label": "yes", "description": "go on"}, {"label": "no", "description": "stop"}]
        request = {
            "id": new_id("que"),
            "sessionID": sess.id,
            "questions": [{"question": "Shall I go on?", "header": "Go on?", "options": options}],
            "tool": {"messageID": msg["info"]["id"], "callID": new_id("call")},
        }
        reply, answers = await self._wait_ask(sess, "question", request)
        ids = {"sessionID": sess.id, "requestID": request["id"]}
        if reply == "reject":
            self._emit(sess, "question.rejected", ids)
            raise _TurnFailed(ErrorSpec("UnknownError", _QUESTION_REJECTED))
        self._emit(sess, "question.replied", {**ids, "answers": answers})

    def _complete(
        self, sess: SimSession, msg: JSON, *, finish: str | None = None, error: ErrorSpec | None = None
    ) -> None:
        info: JSON = msg["info"]
        info["time"]["completed"] = now_ms()
        if finish is not None:
            info["finish"] = finish
        if error is not None:
            info["error"] = error.to_api()
        sess.updated = now_ms()
        self._emit(sess, "message.updated", {"sessionID": sess.id, "info": info})
        if error is not None:
            self._emit(sess, "session.error", {"sessionID": sess.id, "error": info["error"]})
