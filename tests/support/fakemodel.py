"""A scripted OpenAI-compatible chat endpoint on 127.0.0.1 for running the real OpenCode offline.

Why: end-to-end tests need a model whose behaviour the test decides. The test writes directives into
the prompt and this server acts on them, so a real ``opencode serve`` can be driven through success,
failure, tool calls and long turns without any network or real model.

Directives (read from the LAST user message's text; one per line):

``[model: reply TEXT]``     answer TEXT (default answer: ``done``)
``[model: slow S]``         wait S seconds after the first chunk, keeping the turn busy
``[model: error 400]``      answer with that HTTP status and an OpenAI-style error body
``[model: bash CMD...]``    call the bash tool with ``{"command": CMD}`` (CMD runs to the line's last ``]``)
``[model: signal done]``    call bash with the prompt's ``success:`` line (``failed`` → ``failure:``)
``[model: mv done]``        call bash with the prompt's ``success: mv ...`` line (the plain rename)

Several tool directives (``bash``, ``signal``, ``mv``) in one prompt are steps, called in order: the
first with the turn's first request, each next one when the previous one's result comes back, so
an agent can edit a file and then signal. A request whose last message is a tool result, with no
step left, is answered with ``finished``. A request without tools is OpenCode's title generator and
gets a short title. Unknown directives give a plain text answer.

A slow streamed answer watches its connection while it waits: a client that hangs up (OpenCode
aborting the turn) ends it at once, and the request is listed in :meth:`FakeModel.cut_requests`.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeModel", "Plan", "RecordedRequest", "plan_for"]

MODEL_ID = "scripted"
TITLE = "Scripted session"
DEFAULT_REPLY = "done"
AFTER_TOOL_REPLY = "finished"

_DIRECTIVE = re.compile(r"\[model:\s*([a-z]+)\s*([^\]\n]*)\]")
_BASH = re.compile(r"\[model:\s*bash\s+(.*)\]")  # greedy: a command may itself contain "]"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake model received (the body parsed as JSON when it was JSON)."""

    method: str
    path: str
    body: Any
    at: float


@dataclass(frozen=True)
class Plan:
    """What to answer to one chat request."""

    text: str = DEFAULT_REPLY
    bash: str | None = None
    error_status: int | None = None
    delay: float = 0.0


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _labelled_line(text: str, label: str, command: str = "") -> str | None:
    """The rest of the first line starting with ``label`` (e.g. ``success:``), stripped; with
    ``command``, the first such line whose rest starts with that word (e.g. ``mv``)."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(label):
            rest = stripped[len(label) :].strip()
            if rest and (not command or rest.split(" ", 1)[0] == command):
                return rest
    return None


def plan_for(body: dict[str, Any]) -> Plan:
    """Decide the answer to one chat-completions request from its messages and directives."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if not body.get("tools"):
        return Plan(text=TITLE)
    asked = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    prompt = _text_of(messages[asked]) if asked >= 0 else ""
    plan, steps = _directives(prompt)
    if messages and messages[-1].get("role") == "tool":
        # The turn goes on after a tool's result: the next step, or the final answer.
        done = sum(1 for m in messages[asked + 1 :] if m.get("role") == "tool")
        return Plan(bash=steps[done]) if done < len(steps) else Plan(text=AFTER_TOOL_REPLY)
    return replace(plan, bash=steps[0]) if steps else plan


def _directives(prompt: str) -> tuple[Plan, list[str]]:
    """The plan of a turn's first request (without its tool call) and the tool calls, in order."""
    plan = Plan()
    steps: list[str] = []
    for line in prompt.splitlines():
        bash = _BASH.search(line)
        if bash:
            steps.append(bash.group(1).strip())
            continue
        for name, arg in _DIRECTIVE.findall(line):
            arg = arg.strip()
            if name == "reply":
                plan = replace(plan, text=arg)
            elif name == "slow":
                plan = replace(plan, delay=float(arg or 1))
            elif name == "error":
                plan = replace(plan, error_status=int(arg) if arg.isdigit() else 500)
            elif name in ("signal", "mv"):
                label = "success:" if arg == "done" else "failure:"
                command = _labelled_line(prompt, label, "mv" if name == "mv" else "")
                if command is None:
                    what = f"'{label}{' mv' if name == 'mv' else ''}'"
                    plan = replace(plan, text=f"cannot {name} {arg}: the prompt has no {what} line")
                else:
                    steps.append(command)
    return plan, steps


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.owner._record("GET", self.path, None)
        if self.path.rstrip("/").endswith("/v1/models"):
            model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "occoord-tests"}
            self._send_json(200, {"object": "list", "data": [model]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        body = self._read_body()
        request = self.server.owner._record("POST", self.path, body)
        if not self.path.rstrip("/").endswith("/chat/completions") or not isinstance(body, dict):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        plan = plan_for(body)
        if plan.error_status is not None:
            kind = "invalid_request_error" if plan.error_status < 500 else "server_error"
            error = {
                "message": f"scripted error {plan.error_status}",
                "type": kind,
                "param": None,
                "code": None,
            }
            self._send_json(plan.error_status, {"error": error})
        elif body.get("stream"):
            self._stream(plan, str(body.get("model") or MODEL_ID), request)
        else:
            self._send_json(200, self.server.owner._completion(plan, str(body.get("model") or MODEL_ID)))

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self, plan: Plan, model: str, request: RecordedRequest) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in self.server.owner._chunks(plan, model, self._wait):
                self._chunk(b"data: " + event.encode() + b"\n\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, _HungUp):
            self.server.owner._cut(request)  # the client gave up (e.g. an abort)
            self.close_connection = True

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (or until the model stops), but end at once if the client hangs up."""
        owner = self.server.owner
        deadline = time.monotonic() + seconds
        while not owner._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if readable:
                try:
                    data = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if not data:
                    raise _HungUp
                self._stopping_wait(min(left, 0.05))  # bytes to read: not a hang-up; do not spin

    def _stopping_wait(self, seconds: float) -> None:
        self.server.owner._stopping.wait(seconds)


class _HungUp(Exception):
    """The client closed the connection while a slow answer was waiting."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeModel


@dataclass
class FakeModel:
    """The scripted endpoint. ``start()`` serves it from a background thread; ``stop()`` ends it."""

    host: str = "127.0.0.1"
    port: int = 0
    _server: _Server | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _requests: list[RecordedRequest] = field(default_factory=list, init=False, repr=False)
    _cut_ids: set[int] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _ids: itertools.count[int] = field(default_factory=itertools.count, init=False, repr=False)

    @property
    def url(self) -> str:
        """Base URL without ``/v1`` (the provider config appends it)."""
        if self._server is None:
            raise RuntimeError("FakeModel is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat-completion requests received so far, oldest first."""
        return [r.body for r in self.requests if r.method == "POST" and isinstance(r.body, dict)]

    def cut_requests(self) -> list[RecordedRequest]:
        """Streamed requests whose client hung up before the answer was complete (an abort)."""
        with self._lock:
            return [r for r in self._requests if id(r) in self._cut_ids]

    def start(self) -> str:
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fakemodel", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stopping.set()  # wakes slow streams so their threads end with us
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeModel:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- internals

    def _record(self, method: str, path: str, body: Any) -> RecordedRequest:
        request = RecordedRequest(method, path, body, time.time())
        with self._lock:
            self._requests.append(request)
        return request

    def _cut(self, request: RecordedRequest) -> None:
        with self._lock:
            self._cut_ids.add(id(request))

    def _tool_call(self, command: str) -> dict[str, Any]:
        args = {"command": command, "description": "Run the scripted command"}
        return {
            "id": f"call_{next(self._ids)}",
            "type": "function",
            "function": {"name": "bash", "arguments": json.dumps(args)},
        }

    @staticmethod
    def _usage() -> dict[str, int]:
        return {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}

    def _completion(self, plan: Plan, model: str) -> dict[str, Any]:
        if plan.delay:
            self._stopping.wait(plan.delay)
        message: dict[str, Any] = {"role": "assistant", "content": plan.text if plan.bash is None else None}
        if plan.bash is not None:
            message["tool_calls"] = [self._tool_call(plan.bash)]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if plan.bash else "stop"}
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": self._usage(),
        }

    def _chunks(self, plan: Plan, model: str, wait: Any = None) -> Any:
        """Yield the SSE ``data:`` payloads of one streamed answer, ending with ``[DONE]``.

        ``wait(seconds)`` implements a slow answer's delay (default: sleep until the model stops)."""
        base = {"id": f"chatcmpl-{next(self._ids)}", "object": "chat.completion.chunk", "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return json.dumps({**base, "created": int(time.time()), "choices": [choice]})

        yield chunk({"role": "assistant", "content": ""})
        if plan.delay:
            (wait or self._stopping.wait)(plan.delay)
        if plan.bash is not None:
            call = self._tool_call(plan.bash)
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            head = {**call, "function": {"name": "bash", "arguments": arguments[:half]}}
            yield chunk({"tool_calls": [{"index": 0, **head}]})
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})
            yield chunk({}, "tool_calls")
        else:
            words = plan.text.split(" ")
            for i, word in enumerate(words):
                yield chunk({"content": word if i == 0 else " " + word})
            yield chunk({}, "stop")
        yield json.dumps({**base, "created": int(time.time()), "choices": [], "usage": self._usage()})
        yield "[DONE]"
