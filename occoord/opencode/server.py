"""Run a real ``opencode serve`` process: start it, learn its URL, watch it, restart it, stop it.

Why this is more than ``subprocess.Popen``: the server picks its own port and announces it on stdout,
requests sent before that announcement can hang for minutes, its pipes must be read for its whole
life (a full pipe would stall it), and it may leave helpers behind, so it runs in its own process
group and is stopped group-wide. Everything it prints is kept in a log file, and the last lines are
quoted in errors so a failed start explains itself.

This module deliberately talks to ``/global/health`` with plain httpx: the client module has its own
retry policy, which would only blur the deadlines here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import httpx

from occoord.errors import ServerUnavailable

__all__ = ["OpenCodeServer", "find_binary"]

log = logging.getLogger(__name__)

MISSING_BINARY = (
    "the opencode binary was not found; "
    "install it with `npm install -g opencode-ai` or set OCCOORD_OPENCODE_BIN"
)
_LISTENING = re.compile(r"opencode server listening on (https?://\S+)")
# Colour codes would break the match if the server ever decides our pipe is a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TAIL_LINES = 30
_STOP_GRACE = 5.0
_HEALTH_POLL = 0.2
_HEALTH_REQUEST_TIMEOUT = 5.0


def _resolve(candidate: str) -> str | None:
    """A path (anything with a slash) must be an executable file; a bare name is looked up on PATH."""
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        path = Path(candidate).expanduser()
        return str(path.resolve()) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(candidate)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_binary(explicit: str | None = None) -> str:
    """Locate the ``opencode`` executable: ``explicit``, then ``$OCCOORD_OPENCODE_BIN``, then PATH.

    A name given explicitly (argument or environment) that does not resolve is an error rather than a
    silent fallback to PATH, so a typo never runs some other opencode than the one asked for.
    """
    for source, candidate in (
        ("binary", explicit),
        ("OCCOORD_OPENCODE_BIN", os.environ.get("OCCOORD_OPENCODE_BIN")),
    ):
        if candidate:
            found = _resolve(candidate)
            if found is None:
                raise ServerUnavailable(
                    "opencode", f"{source}={candidate!r} is not an executable; {MISSING_BINARY}"
                )
            return found
    found = shutil.which("opencode")
    if found is None:
        raise ServerUnavailable("opencode", MISSING_BINARY)
    return found


class OpenCodeServer:
    """One ``opencode serve`` process on 127.0.0.1, owned by this object.

    ``url`` may change on restart (the server picks a free port); ``password`` stays the same so a
    client built from it keeps working once it learns the new URL.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        cwd: Path,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        password: str | None = None,
        start_deadline: float = 60.0,
        health_deadline: float = 30.0,
    ) -> None:
        self._binary_arg = binary
        self.cwd = Path(cwd)
        self.log_path = log_path
        self._extra_env = dict(env or {})
        self.password = password or secrets.token_urlsafe(24)
        self.start_deadline = start_deadline
        self.health_deadline = health_deadline
        self.url = ""
        self.version = ""
        self.pid: int | None = None
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._log: IO[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._listening: asyncio.Future[str] | None = None  # resolves to the announced URL
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- public

    @property
    def username(self) -> str:
        """The Basic-auth user the server expects (it honours OPENCODE_SERVER_USERNAME like we do)."""
        return self._extra_env.get("OPENCODE_SERVER_USERNAME") or os.environ.get(
            "OPENCODE_SERVER_USERNAME", "opencode"
        )

    def alive(self) -> bool:
        """True while the process runs. Its death is noticed by the event loop, so this lags by a tick."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> str:
        """Start the server (no-op if it already runs) and return its URL once it answers healthy."""
        async with self._lock:
            if self.alive():
                return self.url
            await self._cleanup()
            return await self._start_locked()

    async def stop(self) -> None:
        """Stop the whole process group: SIGTERM, up to 5 s grace, then SIGKILL. Safe to call twice."""
        async with self._lock:
            await self._cleanup()

    async def ensure_running(self) -> bool:
        """Restart the server if its process died; True if a (re)start happened.

        A server that was never started (or was stopped) is started too, but only the recovery of a
        dead process counts in ``restarts``.
        """
        async with self._lock:
            if self.alive():
                return False
            died = self._proc is not None
            if died:
                log.warning(
                    "opencode server %s (pid %s) exited with code %s; restarting",
                    self.url,
                    self.pid,
                    self._proc.returncode if self._proc else None,
                )
            await self._cleanup()
            await self._start_locked()
            if died:
                self.restarts += 1
            return True

    def log_tail(self) -> str:
        """The last lines the server printed (stdout and stderr), for error messages and diagnostics."""
        return "\n".join(self._tail)

    # --------------------------------------------------------------- startup

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._extra_env)
        env["OPENCODE_SERVER_PASSWORD"] = self.password
        return env

    async def _start_locked(self) -> str:
        binary = find_binary(self._binary_arg)
        self.url, self.version, self.pid = "", "", None
        self._tail.clear()
        self._open_log(binary)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                binary,
                "serve",
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                cwd=str(self.cwd),
                env=self._child_env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise ServerUnavailable("opencode", f"cannot run {binary}: {exc}") from exc
        self._proc, self.pid = proc, proc.pid
        self._listening = asyncio.get_running_loop().create_future()
        assert proc.stdout is not None and proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, b""), name=f"opencode-{proc.pid}-stdout"),
            asyncio.create_task(self._pump(proc.stderr, b"[stderr] "), name=f"opencode-{proc.pid}-stderr"),
        ]
        try:
            self.url = await self._await_listening(binary)
            self.version = await self._await_healthy()
        except BaseException:
            await self._cleanup()
            raise
        log.info(
            "opencode %s listening on %s (pid %s, healthy after %.1f s)",
            self.version,
            self.url,
            self.pid,
            time.monotonic() - started,
        )
        return self.url

    async def _await_listening(self, binary: str) -> str:
        """Wait for the announcement line; the process exiting or the deadline passing ends the wait."""
        assert self._proc is not None and self._listening is not None
        exited: asyncio.Future[Any] = asyncio.ensure_future(self._proc.wait())
        waiters: set[asyncio.Future[Any]] = {self._listening, exited}
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=self.start_deadline, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
        if self._listening in done:
            return self._listening.result()
        if exited in done:
            await self._drain_pumps(2.0)  # so the error can quote what it printed last
            raise ServerUnavailable(
                "opencode",
                f"`{binary} serve` exited with code {self._proc.returncode} before listening"
                f"{self._quoted_tail()}",
            )
        raise ServerUnavailable(
            "opencode",
            f"`{binary} serve` printed no 'opencode server listening on' line within "
            f"{self.start_deadline:g} s; killed it{self._quoted_tail()}",
        )

    async def _await_healthy(self) -> str:
        """Poll /global/health until it says healthy; returns the version it reports."""
        deadline = time.monotonic() + self.health_deadline
        last = "no answer yet"
        auth = httpx.BasicAuth(self.username, self.password)
        async with httpx.AsyncClient(auth=auth, timeout=_HEALTH_REQUEST_TIMEOUT, trust_env=False) as http:
            while True:
                if not self.alive():
                    await self._drain_pumps(2.0)
                    code = self._proc.returncode if self._proc else None
                    raise ServerUnavailable(
                        self.url, f"exited with code {code} before it was healthy{self._quoted_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerUnavailable(
                        self.url,
                        f"not healthy within {self.health_deadline:g} s (last: {last}){self._quoted_tail()}",
                    )
                try:
                    resp = await http.get(
                        f"{self.url}/global/health", timeout=min(_HEALTH_REQUEST_TIMEOUT, max(remaining, 0.1))
                    )
                    body = resp.json() if resp.status_code == 200 else None
                    if isinstance(body, dict) and body.get("healthy") is True:
                        return str(body.get("version", ""))
                    last = f"HTTP {resp.status_code} {resp.text[:200]!r}"
                except (httpx.HTTPError, ValueError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(min(_HEALTH_POLL, max(deadline - time.monotonic(), 0)))

    # ------------------------------------------------------------ output pump

    def _open_log(self, binary: str) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"=== occoord: {stamp} starting {binary} serve in {self.cwd}\n".encode())
        self._log.flush()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def _note_line(self, raw: bytes, prefix: bytes) -> None:
        """Log one output line, remember it for error messages, and spot the listening announcement."""
        if self._log is not None:
            try:
                self._log.write(prefix + raw + b"\n")
                self._log.flush()
            except OSError as exc:  # a full disk must not kill the pump (the pipe would fill up)
                log.warning("cannot write opencode log %s: %s", self.log_path, exc)
                self._close_log()
        text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r")
        self._tail.append(prefix.decode() + text)
        if self._listening is not None and not self._listening.done():
            match = _LISTENING.search(text)
            if match:
                self._listening.set_result(match.group(1).rstrip("/"))

    async def _pump(self, stream: asyncio.StreamReader, prefix: bytes) -> None:
        """Copy one pipe into the log until EOF. Reads in chunks: a huge line must not stop the flow."""
        pending = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._note_line(line, prefix)
            if len(pending) > 65536:
                self._note_line(pending, prefix)
                pending = b""
        if pending:
            self._note_line(pending, prefix)

    async def _drain_pumps(self, timeout: float) -> None:
        """Give the pumps a moment to reach EOF; a grandchild holding the pipe open must not block us."""
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=timeout)

    # -------------------------------------------------------------- shutdown

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _cleanup(self) -> None:
        """Kill what is left of the process group, stop the pumps, close the log. Idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.returncode is None:
                self._signal_group(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), _STOP_GRACE)
                except TimeoutError:
                    log.warning("opencode pid %s ignored SIGTERM for %g s; killing", proc.pid, _STOP_GRACE)
                    self._signal_group(signal.SIGKILL)
                    await proc.wait()
            # The leader is gone; anything it spawned in its group goes too. Its pid (= the group id)
            # is only reusable once the group is empty, so a live process with that pid means reuse.
            if not _pid_exists(proc.pid):
                self._signal_group(signal.SIGKILL)
        await self._drain_pumps(1.0)
        for task in self._pumps:
            task.cancel()
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps = []
        if self._listening is not None and not self._listening.done():
            self._listening.cancel()
        self._listening = None
        self._proc = None
        self._close_log()

    def _quoted_tail(self) -> str:
        tail = self.log_tail()
        where = f" (log: {self.log_path})" if self.log_path else ""
        if not tail:
            return f"; it printed nothing{where}"
        return f"; last output{where}:\n{tail}"
