"""The simulator over real loopback HTTP, with plain httpx: shapes, scoping, auth, directives, streams.

These tests do not use occoord's client on purpose: they pin the wire format the client is written
against, so a simulator drift shows here and not as a puzzling client failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from httpx_sse import aconnect_sse

from occoord.sim.simulator import Simulator

A = "/sim/project-a"
B = "/sim/project-b"
JSON = dict[str, Any]
Body = Callable[[Simulator, httpx.AsyncClient], Awaitable[None]]


def run(body: Body, **options: Any) -> None:
    """Start a simulator in this test's loop, run ``body`` against it, always stop it."""

    async def main() -> None:
        sim = Simulator(**{"time_scale": 0.1, **options})
        await sim.astart()
        try:
            async with httpx.AsyncClient(base_url=sim.url, timeout=10.0) as client:
                await body(sim, client)
        finally:
            await sim.astop()

    asyncio.run(main())


class Events:
    """A ``/global/event`` (or ``/event``) subscriber that records every frame it reads."""

    def __init__(self, client: httpx.AsyncClient, path: str = "/global/event", **params: str) -> None:
        self.items: list[JSON] = []
        self.idled: set[str] = set()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(client, path, params))

    async def _read(self, client: httpx.AsyncClient, path: str, params: dict[str, str]) -> None:
        timeout = httpx.Timeout(10.0, read=None)
        async with aconnect_sse(client, "GET", path, params=params, timeout=timeout) as source:
            async for sse in source.aiter_sse():
                item = json.loads(sse.data)
                self.items.append(item)
                if payload(item)["type"] == "session.idle":
                    self.idled.add(payload(item)["properties"]["sessionID"])
                self._changed.set()

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    async def wait(self, pred: Callable[[JSON], bool], timeout: float = 10.0) -> JSON:
        """The first recorded event (a payload) matching ``pred``; waits for it if needed."""
        found: list[JSON] = []

        def check() -> bool:
            found[:] = [payload(i) for i in self.items if pred(payload(i))][:1]
            return bool(found)

        await self.until(check, timeout)
        return found[0]

    async def connected(self) -> None:
        await self.wait(lambda p: p["type"] == "server.connected")

    async def idle(self, sid: str) -> None:
        await self.until(lambda: sid in self.idled)

    def of(self, sid: str) -> list[JSON]:
        return [payload(i) for i in self.items if payload(i)["properties"].get("sessionID") == sid]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def payload(item: JSON) -> JSON:
    inner: JSON = item.get("payload", item)
    return inner


async def new_session(client: httpx.AsyncClient, directory: str = A, title: str = "t") -> JSON:
    response = await client.post("/session", params={"directory": directory}, json={"title": title})
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def prompt(client: httpx.AsyncClient, sid: str, text: str, directory: str = A) -> None:
    body = {"parts": [{"type": "text", "text": text}]}
    response = await client.post(f"/session/{sid}/prompt_async", params={"directory": directory}, json=body)
    assert response.status_code == 204 and response.content == b""


async def messages(client: httpx.AsyncClient, sid: str) -> list[JSON]:
    return (await client.get(f"/session/{sid}/message", params={"directory": A})).json()  # type: ignore[no-any-return]


async def status(client: httpx.AsyncClient, directory: str = A) -> JSON:
    return (await client.get("/session/status", params={"directory": directory})).json()  # type: ignore[no-any-return]


async def turn(client: httpx.AsyncClient, events: Events, text: str) -> tuple[str, list[JSON]]:
    """Create a session, prompt it, wait for idle; returns (session id, its messages)."""
    sid = (await new_session(client))["id"]
    await prompt(client, sid, text)
    await events.idle(sid)
    return sid, await messages(client, sid)


def test_session_routes_shapes() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        assert (await c.get("/global/health")).json() == {"healthy": True, "version": "1.18.33-sim"}
        rules = [{"permission": "bash", "pattern": "*", "action": "allow"}]
        created = await c.post(
            "/session", params={"directory": A}, json={"title": "alpha", "permission": rules}
        )
        info = created.json()
        assert info["id"].startswith("ses_") and info["directory"] == A and info["title"] == "alpha"
        assert {"slug", "projectID", "version"} <= set(info) and set(info["time"]) == {"created", "updated"}
        await new_session(c, title="beta")
        await new_session(c, B, title="alpha")
        assert (await c.get(f"/session/{info['id']}", params={"directory": A})).json() == info
        listed = (await c.get("/session", params={"directory": A, "search": "alp", "limit": 10})).json()
        assert [s["id"] for s in listed] == [info["id"]]
        assert len((await c.get("/session", params={"directory": A, "limit": 1})).json()) == 1
        assert await status(c) == {}
        assert (await c.delete(f"/session/{info['id']}", params={"directory": A})).json() is True
        gone = await c.get(f"/session/{info['id']}", params={"directory": A})
        assert gone.status_code == 404 and gone.json()["name"] == "NotFoundError"
        assert gone.json()["data"]["message"]
        assert (await c.delete(f"/session/{info['id']}")).status_code == 404
        bad = await c.post(f"/session/{info['id']}/prompt_async", json={"parts": []})
        assert bad.status_code == 404
        missing = await c.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["name"] == "NotFoundError"
        sid = (await new_session(c))["id"]
        invalid = await c.post(f"/session/{sid}/prompt_async", json={"text": "no parts"})
        assert invalid.status_code == 400 and invalid.json()["name"] == "BadRequest"
        assert sim.session_count() == 3

    run(body)


def test_directory_header_is_percent_decoded() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        odd = "/sim/dir with spaces/ü"
        headers = {"x-opencode-directory": quote(odd, safe="")}  # as encodeURIComponent does
        info = (await c.post("/session", headers=headers, json={})).json()
        assert info["directory"] == odd and info["title"].startswith("New session")
        listed = (await c.get("/session", params={"directory": odd})).json()
        assert [s["id"] for s in listed] == [info["id"]]

    run(body)


def test_default_turn_event_order_and_messages() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        assert payload(events.items[0])["type"] == "server.connected"
        sid, msgs = await turn(c, events, "hello")
        kinds = [p["type"] for p in events.of(sid) if not p["type"].startswith("message.part")]
        assert kinds == [
            "session.created",
            "message.updated",
            "session.status",
            "message.updated",
            "message.updated",
            "session.status",
            "session.idle",
        ]
        own = [p for p in events.of(sid) if p["type"] in ("message.updated", "session.status")]
        assert own[0]["properties"]["info"]["role"] == "user"
        assert own[1]["properties"]["status"] == {"type": "busy"}
        assert own[2]["properties"]["info"]["role"] == "assistant"
        assert (
            own[3]["properties"]["info"]["finish"] == "stop"
            and "completed" in own[3]["properties"]["info"]["time"]
        )
        assert own[4]["properties"]["status"] == {"type": "idle"}
        assert any(p["type"] == "message.part.updated" for p in events.of(sid))
        user, assistant = msgs
        assert user["info"]["role"] == "user" and user["parts"][0]["text"] == "hello"
        assert assistant["info"]["parentID"] == user["info"]["id"] and assistant["info"]["finish"] == "stop"
        texts = [p["text"] for p in assistant["parts"] if p["type"] == "text"]
        assert texts == ["ok"] and all(p["messageID"] == assistant["info"]["id"] for p in assistant["parts"])
        _, msgs = await turn(c, events, "x [sim: reply all done here]")
        assert [p["text"] for p in msgs[-1]["parts"] if p["type"] == "text"] == ["all done here"]
        await events.close()

    run(body)


def test_work_directive_stays_busy_and_shows_activity() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        await prompt(c, sid, "[sim: work 0.4]")
        await asyncio.sleep(0.1)
        assert await status(c) == {sid: {"type": "busy"}}
        assert await status(c, B) == {}
        await events.idle(sid)
        tool_updates = [p for p in events.of(sid) if p["type"] == "message.part.updated"]
        assert sum(p["properties"]["part"]["type"] == "tool" for p in tool_updates) >= 4
        assert await status(c) == {}
        await events.close()

    run(body, time_scale=1.0, activity_interval=0.05)


@pytest.mark.parametrize(
    ("directive", "name", "retryable", "code"),
    [
        ("APIError retryable", "APIError", True, 503),
        ("APIError fatal", "APIError", False, 400),
        ("ContextOverflowError", "ContextOverflowError", None, None),
    ],
)
def test_error_directive(directive: str, name: str, retryable: bool | None, code: int | None) -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid, msgs = await turn(c, events, f"[sim: error {directive}]")
        error = msgs[-1]["info"]["error"]
        assert error["name"] == name and error["data"]["message"]
        assert error["data"].get("isRetryable") == retryable and error["data"].get("statusCode") == code
        assert "finish" not in msgs[-1]["info"] and "completed" in msgs[-1]["info"]["time"]
        tail = [p["type"] for p in events.of(sid)][-4:]
        assert tail == ["message.updated", "session.error", "session.status", "session.idle"]
        reported = next(p for p in events.of(sid) if p["type"] == "session.error")
        assert reported["properties"]["error"] == error
        retries = [
            p
            for p in events.of(sid)
            if p["type"] == "session.status" and p["properties"]["status"]["type"] == "retry"
        ]
        assert bool(retries) == bool(retryable)
        await events.close()

    run(body)


def test_hang_abort_is_directory_scoped() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        await prompt(c, sid, "[sim: hang]")
        await asyncio.sleep(0.2)
        assert (await c.post(f"/session/{sid}/abort", params={"directory": B})).json() is False
        assert await status(c, B) == {}
        await asyncio.sleep(0.1)
        assert await status(c) == {sid: {"type": "busy"}}
        assert (await c.post(f"/session/{sid}/abort", params={"directory": A})).json() is True
        assert await status(c) == {}
        await events.idle(sid)
        last = (await messages(c, sid))[-1]["info"]
        assert last["error"]["name"] == "MessageAbortedError" and "completed" in last["time"]
        tail = [p["type"] for p in events.of(sid)][-3:]
        assert tail == ["session.error", "session.status", "session.idle"]
        assert (await c.post(f"/session/{sid}/abort", params={"directory": A})).json() is True
        await events.close()

    run(body)


def test_nostart_accepts_but_never_starts() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        await prompt(c, sid, "[sim: nostart]")
        await asyncio.sleep(0.3)
        assert await status(c) == {}
        assert [m["info"]["role"] for m in await messages(c, sid)] == ["user"]
        assert not [p for p in events.of(sid) if p["type"] in ("session.status", "session.idle")]
        assert sim.prompts(sid) == ["[sim: nostart]"]
        await events.close()

    run(body)


@pytest.mark.parametrize("reply", ["once", "always", "reject"])
def test_ask_bash_waits_for_a_reply(reply: str) -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        await prompt(c, sid, "[sim: ask bash]")
        asked = await events.wait(lambda p: p["type"] == "permission.asked")
        request = asked["properties"]
        assert (
            request["id"].startswith("per_")
            and request["sessionID"] == sid
            and request["permission"] == "bash"
        )
        assert (await c.get("/permission", params={"directory": A})).json() == [request]
        assert (await c.get("/permission", params={"directory": B})).json() == []
        await asyncio.sleep(0.1)
        assert await status(c) == {sid: {"type": "busy"}}
        wrong = await c.post(
            f"/permission/{request['id']}/reply", params={"directory": B}, json={"reply": "once"}
        )
        assert wrong.status_code == 404
        url = f"/permission/{request['id']}/reply"
        answer = await c.post(url, params={"directory": A}, json={"reply": reply, "message": "no"})
        assert answer.json() is True
        await events.idle(sid)
        info = (await messages(c, sid))[-1]["info"]
        if reply == "reject":
            assert info["error"]["name"] == "UnknownError"
        else:
            assert info["finish"] == "stop" and "error" not in info
        assert (await c.get("/permission", params={"directory": A})).json() == []
        assert (await c.post(url, params={"directory": A}, json={"reply": "once"})).status_code == 404
        await events.close()

    run(body)


@pytest.mark.parametrize("answer", ["reply", "reject"])
def test_question_waits_for_an_answer(answer: str) -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        await prompt(c, sid, "[sim: question]")
        request = (await events.wait(lambda p: p["type"] == "question.asked"))["properties"]
        assert request["id"].startswith("que_") and request["questions"][0]["options"]
        assert (await c.get("/question", params={"directory": A})).json() == [request]
        url = f"/question/{request['id']}/{answer}"
        sent = await c.post(
            url, params={"directory": A}, json={"answers": [["yes"]]} if answer == "reply" else None
        )
        assert sent.json() is True
        await events.idle(sid)
        info = (await messages(c, sid))[-1]["info"]
        assert ("error" in info) == (answer == "reject")
        assert (await c.post(f"/question/{request['id']}/reject", params={"directory": A})).status_code == 404
        await events.close()

    run(body)


@pytest.mark.parametrize("outcome", ["done", "failed"])
def test_signal_directive_renames_the_state_file(tmp_path: Path, outcome: str) -> None:
    tasks = tmp_path / "spool dir" / "tasks"
    tasks.mkdir(parents=True)
    pending = tasks / "T.pending"
    pending.write_text("")
    q = shlex.quote
    text = (
        f"do it [sim: signal {outcome}]\n"
        f"success: {q(sys.executable)} -m occoord signal T done\n"
        f"success: mv {q(str(pending))} {q(str(tasks / 'T.done'))}\n"
        f"failure: mv {q(str(pending))} {q(str(tasks / 'T.failed'))}\n"
    )

    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        _, msgs = await turn(c, events, text)
        assert msgs[-1]["info"]["finish"] == "stop"
        assert sorted(p.name for p in tasks.iterdir()) == [f"T.{outcome}"]
        assert sim.signal_errors == []
        _, msgs = await turn(c, events, text)  # the file is gone now: recorded, the turn still ends
        assert msgs[-1]["info"]["finish"] == "stop" and len(sim.signal_errors) == 1
        await events.close()

    run(body)


def test_prompt_sync_and_dispose() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        sid = (await new_session(c))["id"]
        answer = await c.post(
            f"/session/{sid}/message", json={"parts": [{"type": "text", "text": "[sim: reply hi]"}]}
        )
        assert answer.json()["info"]["role"] == "assistant" and answer.json()["info"]["finish"] == "stop"
        hung = (await new_session(c))["id"]
        await prompt(c, hung, "[sim: hang]")
        await asyncio.sleep(0.1)
        assert (await c.post("/instance/dispose", params={"directory": A})).json() is True
        assert await status(c) == {}
        assert (await messages(c, hung))[-1]["info"]["error"]["name"] == "MessageAbortedError"
        disposed = await events.wait(lambda p: p["type"] == "server.instance.disposed")
        assert disposed["properties"] == {"directory": A}
        await events.close()

    run(body)


def test_event_route_is_one_directory_and_heartbeats() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        local = Events(c, "/event", directory=A)
        await local.connected()
        sid_a, sid_b = (await new_session(c, A))["id"], (await new_session(c, B))["id"]
        await prompt(c, sid_b, "x", B)
        await prompt(c, sid_a, "x", A)
        await local.idle(sid_a)
        assert all(set(item) == {"id", "type", "properties"} for item in local.items)
        assert local.of(sid_a) and not local.of(sid_b)
        await local.wait(lambda p: p["type"] == "server.heartbeat", timeout=2.0)
        await local.close()

    run(body, heartbeat=0.1)


def test_basic_auth_on_every_route() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        for method, path in [("GET", "/global/health"), ("GET", "/global/event"), ("POST", "/session")]:
            assert (await c.request(method, path)).status_code == 401
            assert (await c.request(method, path, auth=("opencode", "wrong"))).status_code == 401
        assert (await c.get("/global/health", auth=("someone", "s3cret"))).status_code == 401
        ok = await c.get("/global/health", auth=("opencode", "s3cret"))
        assert ok.status_code == 200 and ok.json()["healthy"] is True

    run(body, password="s3cret")


def test_a_subscriber_that_stops_reading_is_dropped() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        reader = Events(c)
        await reader.connected()
        async with c.stream("GET", "/global/event", timeout=httpx.Timeout(10.0, read=None)) as stalled:
            assert stalled.status_code == 200  # headers read, body never read again
            await asyncio.sleep(0.05)
            assert len(sim.bus.subscribers) == 2
            blob = "x" * 65536
            for _ in range(400):  # far more than socket buffers plus the bounded queue hold
                sim.publish(A, "test.flood", {"blob": blob})
                await asyncio.sleep(0)
                if sim.bus.dropped:
                    break
            assert sim.bus.dropped == 1
            await asyncio.sleep(0.05)
            assert len(sim.bus.subscribers) == 1
        sim.publish(A, "test.after", {})
        await reader.wait(lambda p: p["type"] == "test.after")
        await reader.close()

    run(body, queue_size=20)


def test_a_thousand_sessions() -> None:
    async def body(sim: Simulator, c: httpx.AsyncClient) -> None:
        events = Events(c)
        await events.connected()
        gate = asyncio.Semaphore(40)  # httpx's pool slows down badly with thousands of queued requests

        async def one(i: int) -> str:
            async with gate:
                sid: str = (await new_session(c, title=f"s{i}"))["id"]
                await prompt(c, sid, "[sim: work 0.5]")
            return sid

        started = time.perf_counter()
        sids = await asyncio.gather(*(one(i) for i in range(1000)))
        prompted = time.perf_counter() - started
        await events.until(lambda: events.idled >= set(sids), timeout=120)
        elapsed = time.perf_counter() - started
        print(f"\n1000 sessions: created and prompted in {prompted:.2f}s, all idle after {elapsed:.2f}s")
        assert await status(c) == {}
        assert sim.session_count() == 1000 and sim.bus.dropped == 0
        await events.close()

    run(body, time_scale=0.01)


def test_start_stop_in_a_thread_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    sim = Simulator()
    url = sim.start()
    assert httpx.get(f"{url}/global/health", timeout=5).json()["healthy"] is True
    sim.publish(A, "test.ping", {})  # from another thread: must not raise
    sim.stop()
    sim.stop()
    assert set(threading.enumerate()) <= before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/global/health", timeout=2)


def test_main_announces_itself_like_the_real_server() -> None:
    code = "from occoord.sim.simulator import main; main(0)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCODE_SERVER_")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("opencode server listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert httpx.get(f"{url}/global/health", timeout=5).json()["healthy"] is True
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_aiohttp_is_loaded_only_when_a_simulator_starts() -> None:
    """The coordinator imports the simulator (for --simulate) and the whole client side; none of that
    may drag in the server library before a simulator is really started."""
    code = (
        "import sys\n"
        "import occoord.opencode.events, occoord.opencode.server, occoord.sim.simulator\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
