"""Child processes for the tests, scripts/torture.py and the benchmarks: start `occoord` (or any
command) in its own process group with its output in a log file, wait for a line of that log or for
any condition, and stop it by its PID: SIGTERM, then SIGKILL, then reap.

Imported as ``support.processes`` everywhere (pytest puts tests/ on sys.path for tests/conftest.py;
the script and the benchmarks append it), so one module and one registry, ``LIVE``, serve all of
them: tests/conftest.py stops whatever a test module left running. Standard library only, so that
importing it starts nothing and needs nothing of the tests.

An OpenCode server that `occoord watch` spawns outlives the watcher by design (SPOOL/server.json
records it for the next one), so it is not the watcher's to stop: :func:`stop_spool_server` stops
it by the PID recorded there, and ``stop_all`` does so for every spool a Proc was started on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LISTENING",
    "LIVE",
    "READY",
    "Proc",
    "WaitTimeout",
    "free_port",
    "kill_group",
    "occoord_argv",
    "proc_stat",
    "spool_server",
    "start_simulator",
    "stop_all",
    "stop_spool_server",
    "wait_for",
    "watch_argv",
]

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")  # `occoord simulate` is up
READY = "occoord: watching"  # `occoord watch` serves the spool (a standby says "standby")


class WaitTimeout(AssertionError, TimeoutError):
    """A wait that ran out: a failed assertion to pytest, a TimeoutError to a script."""


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; WaitTimeout after
    ``timeout`` seconds (``what`` names the condition in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"not within {timeout:g} s: {what or predicate}")
        time.sleep(interval)


def occoord_argv(*args: str, profile_to: Path | None = None) -> list[str]:
    """``python -m occoord ARGS`` with this interpreter (optionally under cProfile, into ``profile_to``)."""
    profile = ["-m", "cProfile", "-o", str(profile_to)] if profile_to is not None else []
    return [sys.executable, *profile, "-m", "occoord", *args]


def watch_argv(
    spool: Path, workdir: Path, *options: str, verbose: bool = True, profile_to: Path | None = None
) -> list[str]:
    """``occoord [-v] watch --spool SPOOL --workdir WORKDIR OPTIONS``."""
    top = ["-v"] if verbose else []
    return occoord_argv(
        *top, "watch", "--spool", str(spool), "--workdir", str(workdir), *options, profile_to=profile_to
    )


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to ``pid``'s process group, or to ``pid`` alone if it leads none. A process
    that is already gone is no error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat from the third (state) on, or None once the process is gone.
    Split after the last ")": the command name in field 2 may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server restarted on the same port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LIVE: list[Proc] = []  # every Proc not yet stopped or killed; see stop_all()
SPOOLS: set[Path] = set()  # every --spool a Proc was given: their servers are stopped by stop_all()
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _process_token(pid: int) -> str | None:
    """occoord.opencode.procinfo.process_token without psutil: the boot id and the start time in
    clock ticks (field 22 of /proc/PID/stat), which tell a process from a later one with its pid."""
    fields = proc_stat(pid)
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        return None
    return f"{boot}:{fields[19]}" if fields is not None and len(fields) > 19 else None


def _running(pid: int, token: str | None) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z" and _process_token(pid) == token


def spool_server(spool: Path) -> tuple[int, str | None] | None:
    """(pid, start token) of the server recorded in SPOOL/server.json, if that process still runs."""
    try:
        record = json.loads((spool / "server.json").read_text())
        pid, token = int(record["pid"]), record.get("started")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, token) if token is not None and _running(pid, token) else None


def stop_spool_server(spool: Path, grace: float = 10.0) -> int | None:
    """Stop the server recorded in SPOOL/server.json, by its PID and only if it is still the process
    recorded (same start time): SIGTERM to its group, SIGKILL after ``grace``. Its pid, or None
    when nothing recorded was running. The record is left: the next watcher sees it is stale."""
    found = spool_server(spool)
    if found is None:
        return None
    pid, token = found
    kill_group(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not _running(pid, token), grace, 0.05, what=f"server pid {pid} to stop")
    except WaitTimeout:
        if _process_token(pid) == token:
            kill_group(pid, signal.SIGKILL)
        wait_for(lambda: not _running(pid, token), 10, 0.05, what=f"server pid {pid} to die")
    return pid


class Proc:
    """A child process in its own process group (its PID is the group's id), its stdout and stderr
    appended to ``log``, no stdin. Stopped by its PID only, never by name.

    ``env`` is added to this process's environment (``inherit=False``: it is the whole environment).
    ``grace`` is how long stop() waits after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        *,
        inherit: bool = True,
        cwd: Path | None = None,
        grace: float = 10.0,
    ) -> None:
        self.log = log
        self.grace = grace
        self.fh: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed once the child is reaped
        try:
            self.popen = subprocess.Popen(
                list(argv),
                stdout=self.fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})} if inherit else dict(env or {}),
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self.fh.close()
            raise
        LIVE.append(self)
        argv = list(argv)
        if "--spool" in argv[:-1]:
            SPOOLS.add(Path(argv[argv.index("--spool") + 1]))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(
        self, pattern: str | re.Pattern[str], timeout: float = 60.0, interval: float = 0.02
    ) -> re.Match[str] | None:
        """Wait until the log shows ``pattern`` (a str is taken literally) and return the match,
        or None once the process has exited without it; WaitTimeout if neither happens in time."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        seen: list[re.Match[str] | None] = []

        def settled() -> bool:
            exited = not self.alive()  # polled before reading: an exit cannot hide its last lines
            found = regex.search(self.output())
            if found or exited:
                seen.append(found)
            return bool(seen)

        wait_for(settled, timeout, interval, what=f"{regex.pattern!r} in {self.log}")
        return seen[0]

    def ready(self, pattern: str | re.Pattern[str] = READY, timeout: float = 60.0) -> re.Match[str]:
        """wait_output() for a process that must come up and stay up: one that exits first, or
        never says ``pattern``, is stopped (nothing is left behind) and this fails with its log."""
        try:
            found = self.wait_output(pattern, timeout)
        except WaitTimeout as exc:
            self.stop()
            raise WaitTimeout(f"{exc}; its log:\n{self.output()[-4000:]}") from None
        if found is None or not self.alive():
            code = self.stop()
            raise AssertionError(f"{self.popen.args!r} exited ({code}):\n{self.output()[-4000:]}")
        return found

    def kill9(self) -> None:
        """SIGKILL the whole group at once (a crash, as the tests stage it) and reap the child."""
        kill_group(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._reaped()

    def stop(
        self, timeout: float | None = None, *, sig: int = signal.SIGTERM, dump_stacks: bool = False
    ) -> int | None:
        """Ask the group to stop with ``sig``; SIGKILL it after ``timeout`` (default: the grace);
        reap the child and return its exit code. Stopping a stopped Proc only returns the code.

        ``sig=SIGINT`` suits a Python driver without a SIGTERM handler: its ``finally`` blocks run
        and stop its own children. ``dump_stacks``: a process that does not stop in time gets
        SIGABRT first, so that one run with PYTHONFAULTHANDLER=1 logs every thread's stack."""
        if self.popen.poll() is None:
            kill_group(self.pid, sig)
            try:
                self.popen.wait(timeout=self.grace if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                if dump_stacks:
                    try:
                        os.kill(self.pid, signal.SIGABRT)
                        self.popen.wait(timeout=5)
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        pass
                kill_group(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._reaped()
        return self.popen.returncode

    def _reaped(self) -> None:
        self.fh.close()
        if self in LIVE:
            LIVE.remove(self)


def stop_all() -> None:
    """Stop every Proc not yet stopped, newest first, then the servers recorded in their spools:
    the net under each test's own cleanup. One that cannot be stopped does not keep the others
    running: its error comes after they are stopped."""
    errors: list[Exception] = []
    while LIVE:
        try:
            LIVE.pop().stop()
        except Exception as exc:
            errors.append(exc)
    while SPOOLS:
        try:
            stop_spool_server(SPOOLS.pop())
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


def start_simulator(log: Path, port: int = 0, timeout: float = 30.0) -> tuple[Proc, str]:
    """`occoord simulate` on ``port`` (0: any free one), up and listening: the Proc and its URL."""
    proc = Proc(occoord_argv("simulate", "--port", str(port)), log)
    return proc, proc.ready(LISTENING, timeout).group(1)
