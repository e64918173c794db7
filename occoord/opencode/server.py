"""Run a real ``opencode serve`` process: start it, learn its URL, watch it, restart it, stop it,
or let it go.

Why this is more than ``subprocess.Popen``: the server picks its own port and announces it on stdout,
requests sent before that announcement can hang for minutes, and it may leave helpers behind, so it
runs in its own session and process group and is stopped group-wide. It writes its output straight
into a log file (serverlog.py: no pipe ties it to us), whose last lines are quoted in errors so a
failed start explains itself. ``/global/health`` is polled with plain httpx: the client module's
retry policy would only blur the deadlines here.

The server outlives the coordinator that started it unless told to stop: after a SIGKILL (its group
is not signalled, and it needs nothing of ours to carry on, sessions and turns included) and after
:meth:`OpenCodeServer.release`. It is spawned with ``subprocess.Popen``, not asyncio's subprocess
API, whose transport kills a still-running child when it is closed or collected.
:meth:`OpenCodeServer.record` describes a started server (pid, URL, password, how it was started) so
that the next coordinator can :meth:`~OpenCodeServer.adopt` it instead of starting a second server on
the same data directory: nothing is lost, no turn runs twice, no two servers share one database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from occoord.errors import ServerUnavailable
from occoord.opencode.procinfo import (
    MISSING_BINARY,
    Child,
    ServerRecord,
    find_binary,
    pid_exists,
    process_token,
    running,
    wait_exited,
)
from occoord.opencode.serverlog import ServerOutput

__all__ = ["MISSING_BINARY", "OpenCodeServer", "ServerRecord", "find_binary", "process_token"]

log = logging.getLogger(__name__)

_STOP_GRACE = 5.0
_HEALTH_POLL = 0.2
_LISTEN_POLL = 0.05  # how often the log is read for the announcement while a server starts
_HEALTH_REQUEST_TIMEOUT = 5.0
_ADOPT_HEALTH_DEADLINE = 10.0
# What shapes a server beyond its binary: where it keeps its data and its configuration. A server
# started with other values of these is not re-used (its password is compared separately).
_FINGERPRINT_VARS = re.compile(r"^(HOME|XDG_[A-Z_]+|OPENCODE_[A-Z_]+)$")


class OpenCodeServer:
    """One ``opencode serve`` process on 127.0.0.1, owned by this object.

    ``url`` may change on restart (the server picks a free port); ``password`` stays the same so a
    client built from it keeps working once it learns the new URL. ``on_spawn`` is given a record
    with no URL yet the moment a process exists: kept where the next owner looks, it lets that owner
    stop a server whose starter died before it was listening, instead of leaving it orphaned.
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
        on_spawn: Callable[[ServerRecord], None] | None = None,
    ) -> None:
        self._binary_arg = binary
        self.on_spawn = on_spawn
        self.cwd = Path(cwd)
        self.log_path = log_path
        self._extra_env = dict(env or {})
        self.password = password or secrets.token_urlsafe(24)
        self.start_deadline = start_deadline
        self.health_deadline = health_deadline
        self.url = ""
        self.version = ""
        self.pid: int | None = None
        self.binary = ""  # the resolved binary of the running server
        self.restarts = 0
        self.adopted = False  # the running server was started by a previous coordinator
        self._token: str | None = None  # process_token(pid) of the running server
        self._proc: Child | None = None
        self._out = ServerOutput(log_path)
        self._lock = asyncio.Lock()

    # ---------------------------------------------------------------- public

    @property
    def username(self) -> str:
        """The Basic-auth user the server expects (it honours OPENCODE_SERVER_USERNAME like we do)."""
        return self._extra_env.get("OPENCODE_SERVER_USERNAME") or os.environ.get(
            "OPENCODE_SERVER_USERNAME", "opencode"
        )

    def alive(self) -> bool:
        """True while the process runs (and, for an adopted server, is still the one recorded)."""
        if self.adopted:
            return self.pid is not None and running(self.pid) and process_token(self.pid) == self._token
        return self._proc is not None and self._proc.poll() is None  # poll() also reaps a dead child

    async def wait_exit(self, poll: float = 1.0) -> None:
        """Return when the server process has exited: noticed at once through a pidfd (for our
        child and for an adopted server alike), else polled every ``poll`` seconds."""
        pid = self.pid
        if pid is not None and self.alive():
            await wait_exited(pid, self.alive)
        while self.alive():
            await asyncio.sleep(poll)

    def record(self, *, listening: bool = True) -> ServerRecord:
        """How to find this (started) server again: see :meth:`adopt`. With ``listening=False``
        also while it starts, with no URL yet."""
        if self.pid is None or (listening and not self.url) or not self.alive():
            raise RuntimeError("the opencode server is not running")
        return ServerRecord(
            pid=self.pid,
            url=self.url,
            password=self.password,
            binary=self.binary,
            version=self.version,
            started=self._token,
            fingerprint=self._fingerprint(),
        )

    async def adopt(self, record: ServerRecord) -> bool:
        """Take over the still-running server ``record`` describes, instead of starting one.

        Re-used only if it is the very process recorded (pid and start time), runs the binary this
        object would start, with the same environment, and answers healthy with the recorded
        password; then True, and :meth:`stop` stops it like a server started here. A recorded server
        that runs but does not qualify is stopped (it would share our data directory), and False is
        returned: call :meth:`start`. A process that merely reuses the pid is never touched (nor, where
        no start time can be read, one that does not answer as the recorded server).
        """
        async with self._lock:
            if self.alive():
                return False
            if not running(record.pid) or process_token(record.pid) != record.started:
                return False  # gone, or the pid now belongs to someone else
            await self._cleanup()
            try:
                binary = find_binary(self._binary_arg)
            except ServerUnavailable:
                binary = ""
            self.pid, self.url, self.password = record.pid, record.url, record.password
            self.binary, self.version, self._token = record.binary, record.version, record.started
            self.adopted = True
            reason = None
            if not record.url:
                reason = "its starter died before it was listening"
            elif record.binary != binary:
                reason = f"it runs {record.binary}, not {binary or 'the binary asked for'}"
            elif record.fingerprint != self._fingerprint():
                reason = "it was started with another environment (HOME, XDG_*, OPENCODE_*)"
            else:
                try:
                    within = min(self.health_deadline, _ADOPT_HEALTH_DEADLINE)
                    self.version = await self._await_healthy(within)
                except ServerUnavailable as exc:
                    reason = str(exc)
            if reason is not None:
                log.warning(
                    "not re-using opencode pid %s left by a previous coordinator (%s); stopping it",
                    record.pid,
                    reason,
                )
                if record.started is None:
                    self.adopted = False  # its identity is unproven (no start time): never signal it
                else:
                    await self._cleanup()
                self.url = self.version = ""
                return False
            self._out.note(f"re-using pid {self.pid} at {self.url}, started by a previous coordinator")
            log.warning("re-using opencode %s at %s (pid %s)", self.version, self.url, self.pid)
            return True

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

    async def release(self) -> ServerRecord | None:
        """Let go of the server and leave it running, with its sessions and turns, for the next
        coordinator to :meth:`adopt`; returns its record (None if no server was running, and then
        whatever is left of it is cleaned up as by :meth:`stop`). This object owns nothing after."""
        async with self._lock:
            if not self.alive() or not self.url:
                await self._cleanup()
                return None
            record = self.record()
            if self._proc is not None:
                self._proc.released = True
            self._proc, self.adopted, self.pid, self._token = None, False, None, None
            self._out.close()
            log.info("left opencode pid %s running at %s", record.pid, record.url)
            return record

    async def ensure_running(self) -> bool:
        """Restart the server if its process died; True if a (re)start happened.

        A server that was never started (or was stopped) is started too, but only the recovery of a
        dead process counts in ``restarts``.
        """
        async with self._lock:
            if self.alive():
                return False
            died = self._proc is not None or self.adopted
            if died:
                log.warning(
                    "opencode server %s (pid %s) exited with code %s; restarting",
                    self.url,
                    self.pid,
                    self._proc.returncode if self._proc else "unknown",
                )
            await self._cleanup()
            await self._start_locked()
            if died:
                self.restarts += 1
            return True

    def log_tail(self) -> str:
        """The last lines the server we started printed, for error messages and diagnostics."""
        return self._out.tail()

    # --------------------------------------------------------------- startup

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._extra_env)
        env["OPENCODE_SERVER_PASSWORD"] = self.password
        return env

    def _fingerprint(self) -> str:
        env = self._child_env()
        env.pop("OPENCODE_SERVER_PASSWORD")
        items = sorted((k, v) for k, v in env.items() if _FINGERPRINT_VARS.match(k))
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()

    async def _start_locked(self) -> str:
        binary = find_binary(self._binary_arg)
        self.url, self.version, self.pid, self.binary, self._token = "", "", None, binary, None
        output = self._out.open(f"starting {binary} serve in {self.cwd}")
        started = time.monotonic()
        try:
            # A new session: its own process group (stopped group-wide, never hit by signals meant
            # for ours) and no controlling terminal. The output goes to the log, not to a pipe.
            proc = Child(
                [binary, "serve", "--hostname", "127.0.0.1", "--port", "0"],
                cwd=str(self.cwd),
                env=self._child_env(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,
            )
        except OSError as exc:
            self._out.close()
            raise ServerUnavailable("opencode", f"cannot run {binary}: {exc}") from exc
        self._proc, self.pid, self._token = proc, proc.pid, process_token(proc.pid)
        try:
            if self.on_spawn is not None:
                self.on_spawn(self.record(listening=False))
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
        deadline = time.monotonic() + self.start_deadline
        while True:
            exited = not self.alive()  # before reading: an exit cannot hide its last lines
            url = self._out.scan()
            if url is not None:
                return url
            if exited:
                code = self._proc.returncode if self._proc else None
                raise ServerUnavailable(
                    "opencode",
                    f"`{binary} serve` exited with code {code} before listening{self._out.quoted_tail()}",
                )
            if time.monotonic() >= deadline:
                raise ServerUnavailable(
                    "opencode",
                    f"`{binary} serve` printed no 'opencode server listening on' line within "
                    f"{self.start_deadline:g} s; killed it{self._out.quoted_tail()}",
                )
            await asyncio.sleep(_LISTEN_POLL)

    async def _await_healthy(self, within: float | None = None) -> str:
        """Poll /global/health until it says healthy; returns the version it reports."""
        within = self.health_deadline if within is None else within
        deadline = time.monotonic() + within
        last = "no answer yet"
        auth = httpx.BasicAuth(self.username, self.password)
        async with httpx.AsyncClient(auth=auth, timeout=_HEALTH_REQUEST_TIMEOUT, trust_env=False) as http:
            while True:
                if not self.alive():
                    code = self._proc.returncode if self._proc else None
                    raise ServerUnavailable(
                        self.url, f"exited with code {code} before it was healthy{self._out.quoted_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerUnavailable(
                        self.url,
                        f"not healthy within {within:g} s (last: {last}){self._out.quoted_tail()}",
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

    # -------------------------------------------------------------- shutdown

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _wait_gone(self, timeout: float) -> bool:
        """Poll until the server has exited (our child is reaped by alive()); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _cleanup(self) -> None:
        """Kill what is left of the process group and close the log. Idempotent."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            if not await self._wait_gone(_STOP_GRACE):
                log.warning("opencode pid %s ignored SIGTERM for %g s; killing", self.pid, _STOP_GRACE)
                self._signal_group(signal.SIGKILL)
                await self._wait_gone(_STOP_GRACE)
        # The leader is gone; anything it spawned in its group goes too. Its pid (= the group id) is
        # only reusable once the group is empty, so a live process with that pid means reuse. (An
        # adopted server of unproven identity, no start time, is never signalled: adopt() saw to it.)
        if (self.adopted or self._proc is not None) and self.pid is not None and not pid_exists(self.pid):
            self._signal_group(signal.SIGKILL)
        self.adopted = False
        self._proc = None
        self._out.close()
