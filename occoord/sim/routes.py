"""The simulator's HTTP routes: the real server's paths, status codes and JSON shapes, each answered
by the :class:`~occoord.sim.turn.Engine` that plays the sessions.

With :mod:`occoord.sim.http` the only modules built on aiohttp; :class:`~occoord.sim.simulator.Simulator`
imports this one only when it starts, so code that can simulate but does not never loads aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from occoord.sim.http import authorized, error, not_found, read_body, request_directory, sse_stream
from occoord.sim.state import JSON, SimSession
from occoord.sim.turn import Engine

__all__ = ["Routes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DEFAULT_MODEL: JSON = {"providerID": "sim", "modelID": "sim-model"}


class Routes:
    """The request handlers of one running simulator, with the settings it was started with."""

    def __init__(
        self,
        engine: Engine,
        *,
        version: str,
        password: str | None,
        username: str,
        heartbeat: float,
        default_directory: str,
    ) -> None:
        self.engine = engine
        self.version = version
        self.password = password
        self.username = username
        self.heartbeat = heartbeat
        self.default_directory = default_directory

    def app(self) -> web.Application:
        """A new application serving every route (one per server start)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get("/global/health", self._health)
        r.add_get("/global/event", self._global_event)
        r.add_get("/event", self._event)
        r.add_get("/session", self._list_sessions)
        r.add_post("/session", self._create_session)
        r.add_get("/session/status", self._status)
        r.add_get("/session/{sid}", self._get_session)
        r.add_patch("/session/{sid}", self._update_session)
        r.add_delete("/session/{sid}", self._delete_session)
        r.add_post("/session/{sid}/prompt_async", self._prompt_async)
        r.add_get("/session/{sid}/message", self._messages)
        r.add_get("/session/{sid}/children", self._children)
        r.add_post("/session/{sid}/message", self._prompt_sync)
        r.add_post("/session/{sid}/abort", self._abort)
        r.add_get("/permission", self._permissions)
        r.add_post("/permission/{rid}/reply", self._permission_reply)
        r.add_get("/question", self._questions)
        r.add_post("/question/{rid}/reply", self._question_reply)
        r.add_post("/question/{rid}/reject", self._question_reject)
        r.add_post("/instance/dispose", self._dispose)
        r.add_get("/sim/busy", self._busy_spans)  # the simulator's own: no OpenCode route
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Basic auth on every route when a password is set, and JSON bodies for routing errors."""
        if self.password is not None and not authorized(
            request.headers.get("Authorization", ""), self.username, self.password
        ):
            response = error(401, "UnauthorizedError", "Unauthorized")
            response.headers["WWW-Authenticate"] = 'Basic realm="opencode"'
            return response
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error(exc.status, "NotFoundError" if exc.status == 404 else "BadRequest", exc.reason)

    def _directory(self, request: web.Request) -> str:
        return request_directory(request, self.default_directory)

    def _session(self, request: web.Request) -> SimSession | None:
        return self.engine.sessions.get(request.match_info["sid"])

    # ----------------------------------------------------------------- routes: sessions
    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"healthy": True, "version": self.version})

    async def _create_session(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        if body is None:
            return error(400, "BadRequest", "body must be a JSON object")
        title, permission, parent = body.get("title"), body.get("permission") or [], body.get("parentID")
        if not isinstance(title, str | None) or not isinstance(permission, list):
            return error(400, "BadRequest", "title must be a string and permission a list")
        sess = self.engine.create_session(
            self._directory(request), title, permission, parent if isinstance(parent, str) else None
        )
        return web.json_response(sess.to_api())

    async def _list_sessions(self, request: web.Request) -> web.Response:
        directory = self._directory(request)
        search = request.query.get("search", "").lower()
        try:
            limit = int(float(request.query.get("limit", "1000000")))
        except ValueError:
            return error(400, "BadRequest", "limit must be a number")
        found = [
            s
            for s in self.engine.sessions.values()
            if s.directory == directory and (not search or search in s.title.lower())
        ]
        found.sort(key=lambda s: s.updated, reverse=True)
        return web.json_response([s.to_api() for s in found[: max(limit, 0)]])

    async def _get_session(self, request: web.Request) -> web.Response:
        sess = self._session(request)
        return web.json_response(sess.to_api()) if sess else not_found(request.match_info["sid"])

    async def _update_session(self, request: web.Request) -> web.Response:
        sess, body = self._session(request), await read_body(request)
        if sess is None:
            return not_found(request.match_info["sid"])
        if body is None or not isinstance(body.get("title", ""), str):
            return error(400, "BadRequest", "title must be a string")
        if body.get("title"):
            sess.title = body["title"]
        self.engine.bus.publish(
            sess.directory, "session.updated", {"sessionID": sess.id, "info": sess.to_api()}
        )
        return web.json_response(sess.to_api())

    async def _delete_session(self, request: web.Request) -> web.Response:
        sess = self._session(request)
        if sess is None:
            return not_found(request.match_info["sid"])
        self.engine.delete_session(sess)
        return web.json_response(True)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.engine.status_map(self._directory(request)))

    async def _messages(self, request: web.Request) -> web.Response:
        sess = self._session(request)
        if sess is None:
            return not_found(request.match_info["sid"])
        messages = sess.messages
        if "limit" in request.query and request.query["limit"].isdigit():
            messages = messages[-int(request.query["limit"]) :] if int(request.query["limit"]) else []
        response = web.json_response(messages)
        self.engine.messages_read(sess)
        return response

    async def _children(self, request: web.Request) -> web.Response:
        """The sessions whose parent is this one (sub-agents), like the real route."""
        sid = request.match_info["sid"]
        if sid not in self.engine.sessions:
            return not_found(sid)
        children = [s.to_api() for s in self.engine.sessions.values() if s.parent_id == sid]
        return web.json_response(children)

    async def _accept(self, request: web.Request) -> web.Response | asyncio.Future[JSON | None]:
        """Validate a prompt body and hand it to the engine; an error response if it is invalid."""
        sess, body = self._session(request), await read_body(request)
        if sess is None:
            return not_found(request.match_info["sid"])
        parts = body.get("parts") if body is not None else None
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            return error(400, "BadRequest", "parts must be a list of objects")
        assert body is not None
        text = "\n".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")
        agent, model = body.get("agent") or "build", body.get("model") or _DEFAULT_MODEL
        if not isinstance(agent, str) or not isinstance(model, dict):
            return error(400, "BadRequest", "agent must be a string and model an object")
        return self.engine.prompt(sess, text, agent, model).done

    async def _prompt_async(self, request: web.Request) -> web.Response:
        accepted = await self._accept(request)
        return accepted if isinstance(accepted, web.Response) else web.Response(status=204)

    async def _prompt_sync(self, request: web.Request) -> web.Response:
        accepted = await self._accept(request)
        if isinstance(accepted, web.Response):
            return accepted
        message = await accepted
        if message is None:
            return error(500, "UnknownError", "the prompt started no turn")
        return web.json_response(message)

    async def _abort(self, request: web.Request) -> web.Response:
        sess = self._session(request)
        if sess is None or sess.directory != self._directory(request):
            return web.json_response(False)
        await self.engine.abort(sess)
        return web.json_response(True)

    async def _busy_spans(self, request: web.Request) -> web.Response:
        """Every span in which a session was busy, of sessions whose title starts with ``prefix``."""
        return web.json_response(self.engine.busy_log.to_api(request.query.get("prefix", "")))

    async def _dispose(self, request: web.Request) -> web.Response:
        await self.engine.dispose(self._directory(request))
        return web.json_response(True)

    # ----------------------------------------------------------------- routes: asks
    def _asks(self, request: web.Request, kind: str) -> web.Response:
        directory = self._directory(request)
        asks = self.engine.pending.values()
        return web.json_response([a.request for a in asks if a.kind == kind and a.directory == directory])

    async def _permissions(self, request: web.Request) -> web.Response:
        return self._asks(request, "permission")

    async def _questions(self, request: web.Request) -> web.Response:
        return self._asks(request, "question")

    def _answer(self, request: web.Request, kind: str, reply: tuple[str, Any]) -> web.Response:
        rid = request.match_info["rid"]
        if self.engine.answer(rid, kind, self._directory(request), reply):
            return web.json_response(True)
        tag = "PermissionNotFoundError" if kind == "permission" else "QuestionNotFoundError"
        text = f"{kind} request not found: {rid}"
        # Both error shapes: the usual {name, data} and the spec's tagged one for this route.
        body = {"name": tag, "data": {"message": text}, "_tag": tag, "requestID": rid, "message": text}
        return web.json_response(body, status=404)

    async def _permission_reply(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        reply = body.get("reply") if body is not None else None
        message = body.get("message") if body is not None else None
        if reply not in ("once", "always", "reject") or not isinstance(message, str | None):
            return error(400, "BadRequest", "reply must be once, always or reject")
        return self._answer(request, "permission", (str(reply), message))

    async def _question_reply(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        answers = body.get("answers") if body is not None else None
        if not isinstance(answers, list) or not all(isinstance(a, list) for a in answers):
            return error(400, "BadRequest", "answers must be a list of lists of labels")
        return self._answer(request, "question", ("reply", answers))

    async def _question_reject(self, request: web.Request) -> web.Response:
        return self._answer(request, "question", ("reject", None))

    # ----------------------------------------------------------------- routes: events
    async def _global_event(self, request: web.Request) -> web.StreamResponse:
        return await sse_stream(request, self.engine.bus, None, self.heartbeat)

    async def _event(self, request: web.Request) -> web.StreamResponse:
        return await sse_stream(request, self.engine.bus, self._directory(request), self.heartbeat)
