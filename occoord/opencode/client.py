"""An async client for the few OpenCode server routes a coordinator needs.

Every httpx exception and every non-2xx answer is mapped here, once, into occoord's error tree:
transport failures and server-side 5xx become :class:`ServerUnavailable`, any other error status an
:class:`ApiError` carrying the server's ``{name, data: {message}}``. Callers never see httpx errors.

Retries are deliberately asymmetric. Reads and idempotent writes (abort, delete, dispose, replies) are
retried on transport errors and 5xx. Creating a session and sending a prompt are retried only when the
request provably never left (connect failure): after a read timeout the server may have acted, and a
blind retry would create a second session or run the prompt twice. The caller reconciles instead
(``find_sessions`` by title, ``messages``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json as jsonlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx

from occoord.backoff import Backoff
from occoord.errors import ApiError, RequestRejected, ServerUnavailable

from .models import Health, Message, ModelRef, Session, SessionStatus
from .wire import Wire, WireError

__all__ = ["RETRY_BACKOFF", "OpenCodeClient"]

log = logging.getLogger(__name__)
_HTTP_LOG = logging.getLogger("httpx")

_T = TypeVar("_T")

# Exceptions raised before a single byte of the request reached the server: always safe to retry.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Between the retries of one request: short, as the server is local and a failure is mostly a restart.
RETRY_BACKOFF = Backoff(base=0.2, cap=5.0)


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    """Pull ``(name, message)`` out of an error body; tolerate the other shapes the server uses."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return "", (text[:300] if text else response.reason_phrase)
    if isinstance(body, Mapping):
        name = body.get("name") or body.get("_tag") or ""
        data = body.get("data")
        message: Any = data.get("message") if isinstance(data, Mapping) else None
        if message is None:
            message = body.get("message")
        return str(name), str(message) if message is not None else response.reason_phrase
    return "", str(body)[:300]


class OpenCodeClient:
    """Talks to one OpenCode server. Cheap to keep for the whole run; close it with :meth:`aclose`.

    ``retries`` is how often one request is tried again, ``backoff`` the wait before each retry.
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        username: str | None = None,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: Backoff = RETRY_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        if password is None:
            password = os.environ.get("OPENCODE_SERVER_PASSWORD") or None
        if username is None:
            username = os.environ.get("OPENCODE_SERVER_USERNAME") or "opencode"
        self._timeout = timeout
        self._retries = max(0, retries)
        self.backoff = backoff
        self._http = httpx.AsyncClient(
            base_url=self.url,
            auth=httpx.BasicAuth(username, password) if password else None,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            # OpenCode never redirects on these routes; a redirect means we talk to something else.
            follow_redirects=False,
            # httpx's default pool, measured: 128 kept-alive connections cost more CPU (the pool checks
            # each one per request) than the reconnects they save (docs/PERFORMANCE.md).
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )
        # The short JSON requests take the lean path when they can (see wire.py); a test's
        # transport, TLS and the event stream stay on httpx.
        self._wire: Wire | None = None
        if transport is None and Wire.supports(self.url):
            token = base64.b64encode(f"{username}:{password}".encode()).decode() if password else None
            self._wire = Wire(self.url, timeout=timeout, authorization=f"Basic {token}" if token else None)

    def lean_endpoint(self) -> tuple[str, int, str | None] | None:
        """Host, port and Authorization header of the lean HTTP/1.1 path (wire.py, and the event
        stream's own connection: rawsse.py), or None where httpx carries every request."""
        wire = self._wire
        return None if wire is None else (wire.host, wire.port, wire.authorization)

    def retarget(self, url: str) -> None:
        """Point the client (and any event stream on it) at a restarted server's new address."""
        self.url = url.rstrip("/")
        self._http.base_url = httpx.URL(self.url)
        if self._wire is not None:
            self._wire.retarget(self.url)

    # --- plumbing -----------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        directory: str | None = None,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        idempotent: bool = True,
        ok_404: bool = False,
    ) -> httpx.Response | None:
        """Send one request with the retry policy; return the 2xx response (``None`` for an allowed 404)."""
        query: dict[str, str | int] = dict(params or {})
        if directory is not None:
            query["directory"] = directory
        attempt = 0
        while True:
            try:
                if self._wire is not None:
                    response = await self._send_wire(method, path, query, json)
                else:
                    response = await self._http.request(method, path, params=query or None, json=json)
            except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
                # A value that no URL or JSON body can carry (NUL, a lone surrogate): not the server's
                # fault and not retryable; mapped here so no foreign exception leaves the client.
                raise RequestRejected(f"{method} {path}", f"{type(exc).__name__}: {exc}") from exc
            except WireError as exc:
                if (idempotent or not exc.sent) and attempt < self._retries:
                    attempt += 1
                    await self._sleep(attempt, f"{method} {path}: {exc}")
                    continue
                raise ServerUnavailable(self.url, str(exc), sent=exc.sent) from exc
            except httpx.HTTPError as exc:
                retry_ok = idempotent or isinstance(exc, _NOT_SENT)
                if retry_ok and isinstance(exc, httpx.TransportError) and attempt < self._retries:
                    attempt += 1
                    await self._sleep(attempt, f"{method} {path}: {exc!r}")
                    continue
                reason = f"{method} {path}: {type(exc).__name__}: {exc}".rstrip(": ")
                raise ServerUnavailable(self.url, reason, sent=not isinstance(exc, _NOT_SENT)) from exc
            if response.status_code >= 500:
                name, message = _error_fields(response)
                if idempotent and attempt < self._retries:
                    attempt += 1
                    await self._sleep(attempt, f"{method} {path} -> {response.status_code}")
                    continue
                what = f"{name}: {message}" if name else message
                raise ServerUnavailable(
                    self.url, f"{method} {path} -> {response.status_code} {what}", response.status_code
                )
            if response.status_code == 404 and ok_404:
                return None
            if not response.is_success:
                name, message = _error_fields(response)
                raise ApiError(method, path, response.status_code, name, message)
            return response

    async def _send_wire(
        self, method: str, path: str, query: Mapping[str, str | int], json: Any
    ) -> httpx.Response:
        assert self._wire is not None
        # Encoded as httpx would: compact UTF-8 JSON (a lone surrogate or NaN raises ValueError),
        # every reserved character of a query value escaped; NUL cannot be in a request line.
        body = None
        if json is not None:
            body = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        target = quote(path, safe="/:@!$&'()*+,;=~%")
        if query:
            target += "?" + urlencode(query, quote_via=quote, safe="")
        answer = await self._wire.request(method, target, body)
        response = httpx.Response(answer.status, headers=answer.headers, content=answer.body)
        if _HTTP_LOG.isEnabledFor(logging.INFO):  # the line httpx itself logs (occoord -vv)
            _HTTP_LOG.info(
                'HTTP Request: %s %s%s "HTTP/1.1 %d %s"',
                method,
                self.url,
                target,
                answer.status,
                response.reason_phrase,
            )
        return response

    async def _sleep(self, attempt: int, why: str) -> None:
        delay = self.backoff.delay(attempt)
        log.debug("retrying in %.2fs (attempt %d/%d): %s", delay, attempt, self._retries, why)
        await asyncio.sleep(delay)

    @staticmethod
    def _json(method: str, path: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(method, path, response.status_code, "BadResponse", f"invalid JSON: {exc}") from exc

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Request and decode the JSON body; ``None`` only for an allowed 404."""
        response = await self._request(method, path, **kwargs)
        if response is None:
            return None
        return self._json(method, path, response)

    @staticmethod
    def _parse(method: str, path: str, status: int, fn: Callable[[Any], _T], raw: Any) -> _T:
        try:
            return fn(raw)
        except ValueError as exc:
            raise ApiError(method, path, status, "BadResponse", str(exc)) from exc

    # --- routes -------------------------------------------------------------------------------------

    async def health(self) -> Health:
        raw = await self._call("GET", "/global/health")
        return self._parse("GET", "/global/health", 200, Health.from_api, raw)

    async def create_session(
        self, directory: str, title: str, *, permission: list[dict[str, str]] | None = None
    ) -> Session:
        body: dict[str, Any] = {"title": title}
        if permission is not None:
            body["permission"] = permission
        raw = await self._call("POST", "/session", directory=directory, json=body, idempotent=False)
        return self._parse("POST", "/session", 200, Session.from_api, raw)

    async def prompt_async(
        self,
        session_id: str,
        directory: str,
        text: str,
        *,
        agent: str | None = None,
        model: ModelRef | None = None,
    ) -> None:
        """Queue a prompt. The 204 only means *accepted*: whether a turn starts shows in events."""
        body: dict[str, Any] = {"parts": [{"type": "text", "text": text}]}
        if agent is not None:
            body["agent"] = agent
        if model is not None:
            body["model"] = model.to_api()
        path = f"/session/{session_id}/prompt_async"
        await self._request("POST", path, directory=directory, json=body, idempotent=False)

    async def abort(self, session_id: str, directory: str) -> bool:
        """Abort the running turn; returns the server's boolean answer, ``False`` for an unknown session.

        Not proof that a turn stopped (the server also answers ``true`` for an idle session): the
        ``MessageAbortedError`` on the last assistant message is.
        """
        raw = await self._call("POST", f"/session/{session_id}/abort", directory=directory, ok_404=True)
        return raw is True

    async def delete_session(self, session_id: str, directory: str) -> bool:
        """Delete a session. ``False`` if it was already gone: a retried delete must not fail."""
        raw = await self._call("DELETE", f"/session/{session_id}", directory=directory, ok_404=True)
        return raw is True

    async def get_session(self, session_id: str, directory: str) -> Session | None:
        path = f"/session/{session_id}"
        raw = await self._call("GET", path, directory=directory, ok_404=True)
        if raw is None:
            return None
        return self._parse("GET", path, 200, Session.from_api, raw)

    async def list_sessions(
        self, directory: str, *, search: str | None = None, limit: int = 1000
    ) -> list[Session]:
        params: dict[str, str | int] = {"limit": limit}
        if search is not None:
            params["search"] = search
        raw = await self._call("GET", "/session", directory=directory, params=params)
        if not isinstance(raw, list):
            raise ApiError("GET", "/session", 200, "BadResponse", "expected a list of sessions")
        return [self._parse("GET", "/session", 200, Session.from_api, item) for item in raw]

    async def find_sessions(self, directory: str, title: str) -> list[Session]:
        """Sessions whose title is exactly ``title``, newest first.

        The server's ``search`` is a fuzzy substring filter, so it only narrows the list; the exact
        comparison happens here. This is how a caller finds the session a timed-out create made.
        """
        found = [s for s in await self.list_sessions(directory, search=title) if s.title == title]
        found.sort(key=lambda s: s.created_ms if s.created_ms is not None else -1, reverse=True)
        return found

    async def messages(self, session_id: str, directory: str) -> list[Message]:
        path = f"/session/{session_id}/message"
        raw = await self._call("GET", path, directory=directory)
        if not isinstance(raw, list):
            raise ApiError("GET", path, 200, "BadResponse", "expected a list of messages")
        return [self._parse("GET", path, 200, Message.from_api, item) for item in raw]

    async def get_json(
        self, path: str, directory: str | None = None, params: Mapping[str, str | int] | None = None
    ) -> Any:
        """Any read-only route, decoded but not parsed (retried like every read): for the modules
        that read more of an answer than models.py keeps (``transcript``, ``usage``)."""
        return await self._call("GET", path, directory=directory, params=params)

    async def session_status(self, directory: str) -> dict[str, SessionStatus]:
        """Busy and retrying sessions of one directory. Idle ones are absent (dropped if a server
        lists them anyway), so ``sid not in result`` means idle or unknown."""
        raw = await self._call("GET", "/session/status", directory=directory)
        if not isinstance(raw, Mapping):
            raise ApiError("GET", "/session/status", 200, "BadResponse", "expected an object")
        result: dict[str, SessionStatus] = {}
        for sid, item in raw.items():
            status = self._parse("GET", "/session/status", 200, SessionStatus.from_api, item)
            if status.type != "idle":
                result[str(sid)] = status
        return result

    async def permissions(self, directory: str) -> list[dict[str, Any]]:
        raw = await self._call("GET", "/permission", directory=directory)
        if not isinstance(raw, list):
            raise ApiError("GET", "/permission", 200, "BadResponse", "expected a list")
        return [dict(item) for item in raw if isinstance(item, Mapping)]

    async def reply_permission(
        self, request_id: str, directory: str, reply: str, message: str | None = None
    ) -> None:
        body: dict[str, str] = {"reply": reply}
        if message is not None:
            body["message"] = message
        await self._request("POST", f"/permission/{request_id}/reply", directory=directory, json=body)

    async def reply_question(self, request_id: str, directory: str, answers: list[list[str]]) -> None:
        body = {"answers": answers}
        await self._request("POST", f"/question/{request_id}/reply", directory=directory, json=body)

    async def reject_question(self, request_id: str, directory: str) -> None:
        await self._request("POST", f"/question/{request_id}/reject", directory=directory)

    async def dispose(self, directory: str) -> None:
        """Free the server's instance for ``directory`` (the server never frees them by itself)."""
        await self._request("POST", "/instance/dispose", directory=directory)

    def stream(self, path: str = "/global/event") -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        """Open a streaming GET (for SSE) with no read timeout: events may be seconds apart.

        Connection failures raise :class:`ServerUnavailable`, an error status :class:`ApiError`;
        errors while reading the body are left to the reader (it reconnects anyway).
        """
        return self._stream(path)

    @contextlib.asynccontextmanager
    async def _stream(self, path: str) -> AsyncIterator[httpx.Response]:
        timeout = httpx.Timeout(self._timeout, read=None)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                if not response.is_success:
                    await response.aread()
                    name, message = _error_fields(response)
                    raise ApiError("GET", path, response.status_code, name, message)
                yield response
        except httpx.HTTPError as exc:
            # Also covers errors raised while the caller reads the body inside the ``async with``.
            raise ServerUnavailable(self.url, f"GET {path}: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
        await self._http.aclose()
