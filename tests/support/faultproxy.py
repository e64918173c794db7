"""A fault-injecting HTTP proxy for tests: it sits on 127.0.0.1 between occoord and an OpenCode server
(or the simulator) and, on command, answers errors, hangs, drops connections or cuts event streams.

It runs its own event loop in a daemon thread, so a test can drive it from plain synchronous code
while ``occoord watch --server PROXY_URL`` talks to it from another process::

    proxy = FaultProxy(simulator_url)
    url = proxy.start()
    rule = proxy.fail(r"^/session$", method="POST", status=500)   # every session creation fails
    proxy.clear(rule)                                               # ... until now
    proxy.hang(r"/message$")        # requests wait (a frozen server) until the rule is cleared
    proxy.cut_streams()             # every open /global/event stream is closed now
    proxy.stall_streams()           # streams stay open but carry nothing (a half-open connection)
    proxy.stop()

Rules are matched against the request path (no query string) in the order they were added; the
first match decides. Cleared hang rules let their waiting requests through to the server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

__all__ = ["FaultProxy", "Rule"]

_T = TypeVar("_T")
_HOP = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "accept-encoding",
    "content-encoding",
    "upgrade",
}
_STREAM_PATHS = ("/global/event", "/event")

logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL)


@dataclass
class Rule:
    """One fault: requests whose path matches ``pattern`` (and ``method``, if given) get ``action``:
    ``status`` (answer ``status`` with an OpenCode-shaped error body), ``hang`` (wait until the rule
    is cleared, then pass) or ``drop`` (close the connection without an answer)."""

    pattern: re.Pattern[str]
    action: str
    method: str | None = None
    status: int = 500
    hits: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


@dataclass(frozen=True)
class Seen:
    """One request the proxy handled: when, what, and what became of it."""

    at: float
    method: str
    path: str
    outcome: str  # an HTTP status as text, "dropped", "hung", or "upstream down"


class FaultProxy:
    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port
        self.url = ""
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self._seen_lock = threading.Lock()
        self._stalled = False
        # open event streams by id() (requests are unhashable): the client's request and the upstream answer
        self._streams: dict[int, tuple[web.Request, aiohttp.ClientResponse]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                ready.set_result(loop.run_until_complete(self._astart()))
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="faultproxy", daemon=True)
        self._thread.start()
        self.url = ready.result(timeout=30)
        return self.url

    async def _astart(self) -> str:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
        )
        app = web.Application(client_max_size=128 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, backlog=1024).start()
        port = self._runner.addresses[0][1]
        return f"http://{self.host}:{port}"

    def stop(self) -> None:
        """Release every hung request, close everything, join the thread. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = None

    async def _astop(self) -> None:
        for rule in self.rules:
            rule.released.set()
        self.rules = []
        self._cut()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ faults (call from any thread)

    def _call(self, fn: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("proxy not started")

        async def run() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=30)

    def _add(self, pattern: str, action: str, method: str | None, status: int = 500) -> Rule:
        def add() -> Rule:
            rule = Rule(re.compile(pattern), action, method, status)
            self.rules.append(rule)
            return rule

        return self._call(add)

    def fail(self, pattern: str, *, method: str | None = None, status: int = 500) -> Rule:
        """Matching requests are answered ``status`` (a 5xx: the server is broken) without reaching it."""
        return self._add(pattern, "status", method, status)

    def hang(self, pattern: str, *, method: str | None = None) -> Rule:
        """Matching requests get no answer until the rule is cleared (then they go through)."""
        return self._add(pattern, "hang", method)

    def drop(self, pattern: str, *, method: str | None = None) -> Rule:
        """Matching requests have their connection closed without an answer."""
        return self._add(pattern, "drop", method)

    def clear(self, rule: Rule | None = None) -> None:
        """Remove one rule (or all); requests hung by it continue to the server."""

        def clear() -> None:
            for r in list(self.rules):
                if rule is None or r is rule:
                    r.released.set()
                    self.rules.remove(r)

        self._call(clear)

    def cut_streams(self) -> int:
        """Close every open event stream now (the client sees its connection end). Returns how many."""
        return self._call(self._cut)

    def _cut(self) -> int:
        streams = list(self._streams.values())
        for request, upstream in streams:
            if request.transport is not None:
                request.transport.close()
            upstream.close()
        self._streams.clear()
        return len(streams)

    def stall_streams(self, stalled: bool = True) -> None:
        """While stalled, open streams stay connected but every event is swallowed (a dead link the
        kernel has not noticed yet); new streams connect and then hear nothing either."""

        def set_stalled() -> None:
            self._stalled = stalled

        self._call(set_stalled)

    def open_streams(self) -> int:
        return self._call(lambda: len(self._streams))

    def count(self, pattern: str, *, method: str | None = None, outcome: str | None = None) -> int:
        """How many requests matching ``pattern`` (and method, outcome) were seen so far."""
        regex = re.compile(pattern)
        with self._seen_lock:
            return sum(
                1
                for s in self.seen
                if regex.search(s.path)
                and (method is None or s.method == method)
                and (outcome is None or s.outcome == outcome)
            )

    # ------------------------------------------------------------------ the proxy itself

    def _note(self, request: web.Request, outcome: str) -> None:
        with self._seen_lock:
            self.seen.append(Seen(time.monotonic(), request.method, request.path, outcome))

    def _match(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if rule.matches(request.method, request.path):
                rule.hits += 1
                return rule
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rule = self._match(request)
        if rule is not None and rule.action == "hang":
            self._note(request, "hung")
            await rule.released.wait()
            rule = self._match(request)  # another rule may apply by now
        if rule is not None and rule.action == "status":
            self._note(request, str(rule.status))
            body = {"name": "UnknownError", "data": {"message": f"injected fault {rule.status}"}}
            return web.json_response(body, status=rule.status)
        if rule is not None and rule.action == "drop":
            self._note(request, "dropped")
            return self._close(request)
        return await self._forward(request)

    def _close(self, request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=503)  # never reaches the client: the connection is gone

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError):
            self._note(request, "upstream down")
            return self._close(request)
        async with upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.path in _STREAM_PATHS and upstream.status == 200:
                self._note(request, "stream")
                return await self._relay_stream(request, upstream, out_headers)
            try:
                data = await upstream.read()
            except (aiohttp.ClientError, OSError):
                self._note(request, "upstream down")
                return self._close(request)
            self._note(request, str(upstream.status))
            return web.Response(status=upstream.status, body=data, headers=out_headers)

    async def _relay_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, headers: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        self._streams[id(request)] = (request, upstream)
        try:
            async for chunk in upstream.content.iter_any():
                if self._stalled:
                    continue
                if request.transport is None or request.transport.is_closing():
                    break
                await response.write(chunk)
        except (aiohttp.ClientError, ConnectionError, OSError):
            pass
        finally:
            self._streams.pop(id(request), None)
            if request.transport is not None:
                request.transport.close()  # the upstream ended or failed: so does the client's stream
        return response
