"""A fake OpenCode server that speaks the real HTTP API, for tests and benchmarks.

It answers the routes a coordinator uses with the real paths, status codes and JSON shapes, emits the
real event sequences on ``/global/event`` and ``/event``, and plays each prompt as scripted by
``[sim: ...]`` directives in its text (see :mod:`occoord.sim.script`). It shares nothing with
the client but the wire format, so a test that passes against it exercises the client's real parsing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from occoord.sim.http import authorized, error, not_found, read_body, request_directory, sse_stream
from occoord.sim.state import JSON, Bus, SimSession
from occoord.sim.turn import Engine

__all__ = ["Simulator", "main"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_DEFAULT_MODEL: JSON = {"providerID": "sim", "modelID": "sim-model"}


class Simulator:
    """The fake server. Run it in the current loop (:meth:`astart`) or in a thread of its own
    (:meth:`start`) when the code under test blocks. ``time_scale`` multiplies every simulated
    duration; ``heartbeat`` is the SSE heartbeat interval in seconds; ``queue_size`` bounds each SSE
    subscriber's backlog (a slower subscriber is dropped)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str | None = None,
        time_scale: float = 1.0,
        version: str = "1.18.33-sim",
        username: str = "opencode",
        heartbeat: float = 10.0,
        queue_size: int = 100_000,
        activity_interval: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.username = username
        self.version = version
        self.heartbeat = heartbeat
        self.url = ""
        self.engine = Engine(
            version=version, time_scale=time_scale, queue_size=queue_size, activity_interval=activity_interval
        )
        self.default_directory = os.getcwd()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread = 0

    # ----------------------------------------------------------------- introspection for tests
    @property
    def sessions(self) -> dict[str, SimSession]:
        return self.engine.sessions

    @property
    def bus(self) -> Bus:
        return self.engine.bus

    @property
    def signal_errors(self) -> list[str]:
        return list(self.engine.signal_errors)

    @property
    def received(self) -> list[tuple[float, str]]:
        """``(time.monotonic(), session id)`` of every prompt accepted so far, oldest first (live list)."""
        return self.engine.received

    def session_count(self) -> int:
        return len(self.engine.sessions)

    def prompts(self, session_id: str) -> list[str]:
        sess = self.engine.sessions.get(session_id)
        return list(sess.prompts) if sess is not None else []

    def publish(self, directory: str, type_: str, properties: JSON) -> None:
        """Inject an event, from any thread (tests use it to flood or to fake rare events)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("simulator not started")
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.engine.bus.publish, directory, type_, properties)
        else:
            self.engine.bus.publish(directory, type_, properties)

    # ----------------------------------------------------------------- lifecycle
    async def astart(self) -> str:
        """Serve in the running loop; returns the base URL (``http://127.0.0.1:PORT``)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, backlog=4096).start()
        address = self._runner.addresses[0]
        self.url = f"http://{self.host}:{address[1]}"
        return self.url

    async def astop(self) -> None:
        """End streams and turns, then close the listener. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.engine.bus.close_all()
        await self.engine.shutdown()
        await runner.cleanup()

    def start(self) -> str:
        """Serve from a background thread with its own event loop; returns the base URL."""
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                ready.set_result(loop.run_until_complete(self.astart()))
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="occoord-simulator", daemon=True)
        self._thread.start()
        try:
            return ready.result(timeout=30)
        except BaseException:
            self._thread.join(5)
            self._thread = None
            raise

    def stop(self) -> None:
        """Stop a server started with :meth:`start` and join its thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.astop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = None

    # ----------------------------------------------------------------- plumbing
    def _routes(self, app: web.Application) -> None:
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
        r.add_post("/session/{sid}/message", self._prompt_sync)
        r.add_post("/session/{sid}/abort", self._abort)
        r.add_get("/permission", self._permissions)
        r.add_post("/permission/{rid}/reply", self._permission_reply)
        r.add_get("/question", self._questions)
        r.add_post("/question/{rid}/reply", self._question_reply)
        r.add_post("/question/{rid}/reject", self._question_reject)
        r.add_post("/instance/dispose", self._dispose)

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
        return web.json_response(messages)

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


async def _serve(sim: Simulator) -> None:
    url = await sim.astart()
    print(f"opencode server listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.astop()


def main(port: int, host: str = "127.0.0.1", password: str | None = None, *, time_scale: float = 1.0) -> None:
    """Run a simulator in the foreground until SIGINT/SIGTERM, announcing itself with the real server's
    stdout line so process-spawning code treats both alike. Like the real server, the password and
    user name default to ``OPENCODE_SERVER_PASSWORD`` / ``OPENCODE_SERVER_USERNAME``."""
    if password is None:
        password = os.environ.get("OPENCODE_SERVER_PASSWORD") or None
    username = os.environ.get("OPENCODE_SERVER_USERNAME") or "opencode"
    asyncio.run(
        _serve(Simulator(host=host, port=port, password=password, username=username, time_scale=time_scale))
    )
