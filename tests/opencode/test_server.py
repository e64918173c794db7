"""OpenCodeServer: the process lifecycle against the real binary, and its failure modes against small
fake ``opencode`` scripts (so those run everywhere, without the 185 MB binary)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from support.opencode_env import Backend, RealServer, pinned_version

from occoord.errors import ServerUnavailable
from occoord.opencode.procinfo import pid_exists, process_token, running
from occoord.opencode.server import MISSING_BINARY, OpenCodeServer, ServerRecord, find_binary


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid``, zombies excluded."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (OSError, psutil.Error):
            continue  # gone meanwhile
    return found


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def health(url: str, password: str) -> dict[str, object]:
    resp = httpx.get(f"{url}/global/health", auth=("opencode", password), timeout=10)
    resp.raise_for_status()
    body: dict[str, object] = resp.json()
    return body


# --------------------------------------------------------------- real binary


@pytest.mark.real_opencode
def test_real_start_reports_healthy_pinned_version(real_server: RealServer) -> None:
    server = real_server.server
    assert server.alive()
    assert server.url.startswith("http://127.0.0.1:")
    assert server.version == pinned_version()
    assert health(server.url, server.password) == {"healthy": True, "version": pinned_version()}
    # The generated password is really enforced: without it, even health is refused.
    assert httpx.get(f"{server.url}/global/health", timeout=10).status_code == 401
    log = (real_server.root / "opencode.log").read_text()
    assert "opencode server listening on" in log


def run_turn(real: RealServer, text: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Prompt a new session through the raw HTTP API, wait for the turn to end, return its messages."""
    directory = {"directory": str(real.workdir)}
    with httpx.Client(base_url=real.url, auth=("opencode", real.password), timeout=30) as http:
        sid = http.post("/session", params=directory, json={"title": "server test"}).json()["id"]
        parts = [{"type": "text", "text": text}]
        resp = http.post(f"/session/{sid}/prompt_async", params=directory, json={"parts": parts})
        assert resp.status_code == 204

        def finished() -> bool:
            if sid in http.get("/session/status", params=directory).json():
                return False  # still busy (idle sessions are absent)
            messages = http.get(f"/session/{sid}/message", params=directory).json()
            return any(
                m["info"]["role"] == "assistant" and m["info"].get("finish") == "stop" for m in messages
            )

        wait_until(finished, timeout, "the turn to end")
        messages: list[dict[str, Any]] = http.get(f"/session/{sid}/message", params=directory).json()
    return messages


def final_text(messages: list[dict[str, Any]]) -> str:
    assistant = [m for m in messages if m["info"]["role"] == "assistant"][-1]
    assert "error" not in assistant["info"]
    return "".join(p.get("text", "") for p in assistant["parts"] if p.get("type") == "text").strip()


@pytest.mark.real_opencode
def test_real_prompt_is_answered_by_the_scripted_model(real_server: RealServer) -> None:
    """A whole turn through the raw HTTP API, proving the offline config reaches the fake model."""
    messages = run_turn(real_server, "Say hi.\n[model: reply hi]")
    assert final_text(messages) == "hi"
    chats = [body for body in real_server.model.chat_requests() if body.get("tools")]
    assert chats, "the scripted model never received the turn"
    assert chats[0]["model"] == "scripted"


@pytest.mark.real_opencode
def test_real_scripted_signal_runs_the_success_line_with_bash(real_server: RealServer) -> None:
    """The fake model's tool calls really execute: ``signal done`` runs the prompt's ``success:`` line."""
    prompt = (
        "Do the task.\n[model: signal done]\n"
        "success: mv task.pending task.done\nfailure: mv task.pending task.failed\n"
    )
    (real_server.workdir / "task.pending").write_text("")
    messages = run_turn(real_server, prompt)
    assert (real_server.workdir / "task.done").exists()
    assert not (real_server.workdir / "task.pending").exists()
    assert final_text(messages) == "finished"
    tool_results = [m for m in real_server.model.chat_requests() if m["messages"][-1].get("role") == "tool"]
    assert tool_results, "the model was never called back with the tool result"


@pytest.mark.real_opencode
def test_real_kill9_is_noticed_and_restarted(real_server: RealServer) -> None:
    server = real_server.server
    old_pid = server.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not server.alive(), 10, "the server to be seen dead")

    assert real_server.run(server.ensure_running()) is True
    assert server.restarts == 1
    assert server.alive() and server.pid != old_pid
    assert health(server.url, server.password)["healthy"] is True
    assert real_server.run(server.ensure_running()) is False  # alive: nothing to do
    assert server.restarts == 1


@pytest.mark.real_opencode
def test_real_stop_leaves_no_process_in_its_group(real_server: RealServer) -> None:
    server = real_server.server
    pgid = server.pid
    assert pgid is not None and group_members(pgid)
    real_server.run(server.stop())
    assert not server.alive()
    assert group_members(pgid) == []
    real_server.run(server.stop())  # idempotent


# ------------------------------------------------------------ process facts

needs_boot_id = pytest.mark.skipif(
    not Path("/proc/sys/kernel/random/boot_id").exists(), reason="needs Linux's boot id"
)


@needs_boot_id
def test_process_token_is_the_boot_and_the_start_tick() -> None:
    """Stable for one process and in the format earlier versions recorded (boot id : field 22 of
    /proc/PID/stat), so a server recorded before an upgrade is still recognised."""
    me = os.getpid()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    start_ticks = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19]
    assert process_token(me) == f"{boot}:{start_ticks}" == process_token(me)


@needs_boot_id
def test_process_facts_of_a_zombie_and_of_a_reaped_child() -> None:
    child = subprocess.Popen(["true"])
    wait_until(lambda: not running(child.pid), 10, "the child to exit")
    # Exited but not reaped: the pid is taken (and is still that process), yet nothing runs.
    assert pid_exists(child.pid) and process_token(child.pid) is not None
    child.wait()
    assert not pid_exists(child.pid) and not running(child.pid) and process_token(child.pid) is None
    assert running(os.getpid())


# ---------------------------------------------------------- fake "opencode"


def fake_opencode(tmp_path: Path, body: str) -> Path:
    """Write an executable fake ``opencode`` (a Python script) and return its path."""
    path = tmp_path / "bin" / "opencode"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


# A fake server: checks its arguments, serves /global/health with Basic auth on 127.0.0.1, announces
# itself, then floods stdout/stderr (into the log file: nothing of ours has to keep up with it).
HEALTHY = """
    import base64, json, os, sys, threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    assert sys.argv[1:] == ["serve", "--hostname", "127.0.0.1", "--port", "0"], sys.argv
    HEALTHY = {healthy}
    secret = os.environ["OPENCODE_SERVER_PASSWORD"].encode()
    expected = "Basic " + base64.b64encode(b"opencode:" + secret).decode()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def do_GET(self):
            ok = self.headers.get("Authorization") == expected
            status = (200 if HEALTHY else 503) if ok else 401
            data = json.dumps({{"healthy": HEALTHY, "version": "9.9.9-fake"}}).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("opencode server listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
    for i in range(20000):
        print("noise line %d " % i + "x" * 80)
        print("err line %d" % i, file=sys.stderr)
    sys.stdout.flush()
    threading.Event().wait()
"""


def test_find_binary_missing_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OCCOORD_OPENCODE_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerUnavailable) as err:
        find_binary()
    assert "npm install -g opencode-ai" in str(err.value)
    assert err.value.reason == MISSING_BINARY


def test_find_binary_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_path = fake_opencode(tmp_path / "path", "")
    from_env = fake_opencode(tmp_path / "env", "")
    explicit = fake_opencode(tmp_path / "explicit", "")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.delenv("OCCOORD_OPENCODE_BIN", raising=False)
    assert find_binary() == str(on_path)
    monkeypatch.setenv("OCCOORD_OPENCODE_BIN", str(from_env))
    assert find_binary() == str(from_env)
    assert find_binary(str(explicit)) == str(explicit)
    # A named binary that is not there is an error, not a silent fallback to PATH.
    monkeypatch.setenv("OCCOORD_OPENCODE_BIN", str(tmp_path / "nope"))
    with pytest.raises(ServerUnavailable, match="OCCOORD_OPENCODE_BIN"):
        find_binary()


def test_start_with_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    server = OpenCodeServer(binary=str(tmp_path / "no-such-opencode"), cwd=tmp_path)
    with pytest.raises(ServerUnavailable) as err:
        asyncio.run(server.start())
    assert "npm install -g opencode-ai" in str(err.value)
    assert not server.alive()


def test_exit_before_listening_quotes_the_log_tail(tmp_path: Path) -> None:
    binary = fake_opencode(
        tmp_path,
        """
        import sys
        print("booting the fake")
        print("Error: the config is broken", file=sys.stderr)
        sys.exit(3)
        """,
    )
    log_path = tmp_path / "logs" / "opencode.log"
    server = OpenCodeServer(binary=str(binary), cwd=tmp_path, log_path=log_path, start_deadline=20)
    with pytest.raises(ServerUnavailable) as err:
        asyncio.run(server.start())
    message = str(err.value)
    assert "exited with code 3 before listening" in message
    assert "Error: the config is broken" in message and "booting the fake" in message
    assert "the config is broken" in log_path.read_text()
    assert not server.alive()


def test_no_listening_line_hits_start_deadline_and_kills_the_group(tmp_path: Path) -> None:
    binary = fake_opencode(
        tmp_path,
        """
        import subprocess, time
        subprocess.Popen(["sleep", "300"])  # a helper in the same process group
        print("starting, but never listening", flush=True)
        time.sleep(300)
        """,
    )
    server = OpenCodeServer(binary=str(binary), cwd=tmp_path, start_deadline=1.5)
    began = time.monotonic()
    with pytest.raises(ServerUnavailable) as err:
        asyncio.run(server.start())
    assert time.monotonic() - began < 10
    assert "within 1.5 s" in str(err.value)
    assert "starting, but never listening" in str(err.value)
    assert server.pid is not None
    assert group_members(server.pid) == []


def test_listening_but_never_healthy_hits_health_deadline(tmp_path: Path) -> None:
    binary = fake_opencode(tmp_path, HEALTHY.format(healthy=False))
    server = OpenCodeServer(binary=str(binary), cwd=tmp_path, start_deadline=20, health_deadline=1.5)
    with pytest.raises(ServerUnavailable) as err:
        asyncio.run(server.start())
    assert "not healthy within 1.5 s" in str(err.value)
    assert "HTTP 503" in str(err.value)
    assert server.pid is not None
    assert group_members(server.pid) == []


def test_fake_server_lifecycle_with_chatty_output(tmp_path: Path) -> None:
    """Start (auth, args, URL from stdout), survive a flood of output, restart after a kill, stop."""
    binary = fake_opencode(tmp_path, HEALTHY.format(healthy=True))
    log_path = tmp_path / "opencode.log"
    server = OpenCodeServer(binary=str(binary), cwd=tmp_path, log_path=log_path, health_deadline=20)

    async def scenario() -> None:
        url = await server.start()
        assert url == server.url and url.startswith("http://127.0.0.1:")
        assert server.version == "9.9.9-fake"
        assert await server.ensure_running() is False
        # The flood reaches the log while we wait: the server writes it there itself.
        deadline = time.monotonic() + 20
        while "noise line 19999" not in log_path.read_text() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "err line 19999" in log_path.read_text()

        first_pid = server.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        while server.alive():
            await asyncio.sleep(0.01)
        assert await server.ensure_running() is True
        assert server.restarts == 1 and server.pid != first_pid
        async with httpx.AsyncClient(auth=("opencode", server.password)) as http:
            assert (await http.get(f"{server.url}/global/health")).json()["healthy"] is True
        pgid = server.pid
        assert pgid is not None
        await server.stop()
        assert not server.alive() and group_members(pgid) == []
        await server.stop()

    asyncio.run(scenario())
    assert log_path.read_text().count("=== occoord:") == 2  # one header per start


def test_backend_answers_health_only_with_auth(backend: Backend) -> None:
    """Both backends (simulator and real) behave alike at the door: Basic auth, then healthy."""
    assert backend.workdir.is_dir()
    assert backend.url.startswith("http://127.0.0.1:")
    assert health(backend.url, backend.password)["healthy"] is True
    assert httpx.get(f"{backend.url}/global/health", timeout=10).status_code == 401


# A fake server that keeps printing (a tick on stdout and on stderr every 50 ms) for as long as it
# runs: its log shows whether it is still alive and able to write after its starter is gone.
TICKING = """
    import base64, json, os, sys, threading, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    secret = os.environ["OPENCODE_SERVER_PASSWORD"].encode()
    expected = "Basic " + base64.b64encode(b"opencode:" + secret).decode()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass
        def do_GET(self):
            ok = self.headers.get("Authorization") == expected
            data = json.dumps({"healthy": True, "version": "9.9.9-ticking"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("opencode server listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
    n = 0
    while True:
        n += 1
        print("tick %d" % n, flush=True)
        print("err tick %d" % n, file=sys.stderr, flush=True)
        time.sleep(0.05)
"""

# Starts a server, releases it, writes its record and exits: a coordinator's clean exit that
# leaves its server running. Run under -X dev, so any warning about the released child shows.
STARTER = """
import asyncio, sys
from pathlib import Path
from occoord.opencode.server import OpenCodeServer

async def main() -> None:
    server = OpenCodeServer(binary=sys.argv[1], cwd=Path(sys.argv[2]), log_path=Path(sys.argv[3]))
    await server.start()
    record = await server.release()
    assert record is not None and not server.alive()
    Path(sys.argv[4]).write_bytes(record.to_bytes())

asyncio.run(main())
"""


def last_tick(log_path: Path) -> int:
    ticks = [line for line in log_path.read_text().splitlines() if line.startswith("tick ")]
    return int(ticks[-1].split()[1]) if ticks else 0


def stop_group(pid: int) -> None:
    """SIGKILL the group of a server a test left running by design, and wait until it is gone."""
    if running(pid):
        os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not running(pid), 10, f"pid {pid} to go")


def test_released_server_outlives_the_process_that_started_it(tmp_path: Path) -> None:
    """A clean exit that releases the server: it keeps serving, and keeps writing its output into
    the log (nothing of the starter's is needed for that), and the next owner adopts it."""
    binary = fake_opencode(tmp_path, TICKING)
    log_path, record_path = tmp_path / "opencode.log", tmp_path / "server.json"
    done = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-c",
            STARTER,
            str(binary),
            str(tmp_path),
            str(log_path),
            str(record_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    record = ServerRecord.from_bytes(record_path.read_bytes()) if record_path.exists() else None
    try:
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr, done.stderr
        assert record is not None and running(record.pid) and process_token(record.pid) == record.started
        assert health(record.url, record.password)["version"] == "9.9.9-ticking"
        seen = last_tick(log_path)
        wait_until(lambda: last_tick(log_path) > seen + 5, 10, "the released server to keep printing")
        assert "err tick" in log_path.read_text()

        async def adopt_and_stop() -> None:
            server = OpenCodeServer(binary=str(binary), cwd=tmp_path, log_path=log_path)
            assert await server.adopt(record) is True
            assert server.pid == record.pid and server.url == record.url
            await server.stop()
            assert not server.alive()

        asyncio.run(adopt_and_stop())
        assert not running(record.pid) and group_members(record.pid) == []
    finally:
        if record is not None:
            stop_group(record.pid)


def test_release_in_process_then_stop_is_a_no_op(tmp_path: Path) -> None:
    """After release() the object owns nothing: stop() leaves the server alone, record() refuses,
    and a second release() returns None."""
    binary = fake_opencode(tmp_path, TICKING)
    server = OpenCodeServer(binary=str(binary), cwd=tmp_path)  # no log path: an anonymous file
    pid = None
    try:

        async def scenario() -> ServerRecord:
            await server.start()
            assert "tick" in server.log_tail()
            record = await server.release()
            assert record is not None
            await server.stop()
            assert await server.release() is None
            with pytest.raises(RuntimeError):
                server.record()
            return record

        record = asyncio.run(scenario())
        pid = record.pid
        assert running(pid) and not server.alive()
        assert health(record.url, record.password)["healthy"] is True
    finally:
        if pid is not None:
            stop_group(pid)


def test_wait_exit_notices_a_dead_server_at_once(tmp_path: Path) -> None:
    binary = fake_opencode(tmp_path, TICKING)
    server = OpenCodeServer(binary=str(binary), cwd=tmp_path)

    async def scenario() -> float:
        await server.start()
        assert server.pid is not None
        waiter = asyncio.ensure_future(server.wait_exit(poll=30.0))  # a poll would take 30 s
        await asyncio.sleep(0.2)
        assert not waiter.done()
        os.kill(server.pid, signal.SIGKILL)
        began = time.monotonic()
        await asyncio.wait_for(waiter, 5)
        took = time.monotonic() - began
        await server.stop()
        return took

    assert asyncio.run(scenario()) < 1.0
