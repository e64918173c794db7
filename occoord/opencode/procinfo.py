"""Facts about processes and the opencode binary that the server wing needs: where the binary is,
whether a pid is still the process we started (pids are reused), when a process exits, a child
process that can be let go, and the record a coordinator leaves so that the next one can find its
server again.

The process facts come from psutil; its exceptions end here, as answers (gone, unknown), never raised.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from occoord.errors import ServerUnavailable

__all__ = [
    "MISSING_BINARY",
    "Child",
    "ServerRecord",
    "find_binary",
    "pid_exists",
    "process_token",
    "running",
    "wait_exited",
]

MISSING_BINARY = (
    "the opencode binary was not found; "
    "install it with `npm install -g opencode-ai` or set OCCOORD_OPENCODE_BIN"
)
# psutil has no boot identity: a pid and start time repeat across boots, this does not.
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _resolve(candidate: str) -> str | None:
    """A path (anything with a slash) must be an executable file; a bare name is looked up on PATH."""
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        path = Path(candidate).expanduser()
        return str(path.resolve()) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(candidate)


def pid_exists(pid: int) -> bool:
    """Some process has this pid, a zombie too (a thread id does not count)."""
    return psutil.pid_exists(pid)


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a dead orphan waiting for init to reap it)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:  # ZombieProcess too, where status() raises it instead
        return False
    except psutil.AccessDenied:
        return True  # it exists; only its state is hidden from us


def process_token(pid: int) -> str | None:
    """What tells this process from a later one that reuses its pid: the boot id and the process's
    start time in clock ticks after boot. None where either cannot be read (gone, not Linux)."""
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        return None
    try:
        started = psutil.Process(pid).create_time()
        booted = psutil.boot_time()
    except psutil.Error:
        return None
    # create_time() is boot_time() plus the start after boot, and both move when the wall clock is
    # set; their difference is the kernel's own count, fixed for the process's life. In ticks, as
    # /proc/PID/stat has it, so records written by earlier versions still match.
    return f"{boot}:{round((started - booted) * os.sysconf('SC_CLK_TCK'))}"


class Child(subprocess.Popen[bytes]):
    """The spawned server's process, which can be let go.

    A Popen collected while its child runs warns ("still running") and queues itself to be reaped by
    later Popen calls. A released server is meant to outlive us: once we exit it is re-parented to
    init (or to a subreaper such as systemd) and reaped there, so collecting it does neither.
    """

    released = False

    def __del__(self) -> None:
        if not self.released:
            super().__del__()


async def wait_exited(pid: int, still_ours: Callable[[], bool]) -> None:
    """Wait until ``pid`` exits, woken by the kernel through a pidfd (Linux 5.3+). Returns at once
    where there is none (the caller polls), and if ``pid`` is no longer the process we mean: checked
    after opening, as a pid reused before that would be watched instead."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    try:
        loop.add_reader(fd, readable)
        try:
            if still_ours():
                await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ServerRecord:
    """A started server as the next coordinator needs to find it again (see the module docstring).

    It holds the server's password: keep it where only the server's owner can read it.
    """

    pid: int
    url: str
    password: str
    binary: str
    version: str
    started: str | None  # process_token(pid) at start: guards against a reused pid
    fingerprint: str  # of the environment it was started with

    def to_bytes(self) -> bytes:
        return (json.dumps({"protocol": 1, **asdict(self)}, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerRecord | None:
        """Parse a record; None for anything that is not one (a torn or foreign file)."""
        try:
            obj = json.loads(data)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        strings = ("url", "password", "binary", "version", "fingerprint")
        if not isinstance(obj.get("pid"), int) or obj["pid"] <= 0:
            return None
        if not all(isinstance(obj.get(name), str) for name in strings):
            return None
        started = obj.get("started")
        if started is not None and not isinstance(started, str):
            return None
        return cls(
            pid=obj["pid"],
            url=obj["url"],
            password=obj["password"],
            binary=obj["binary"],
            version=obj["version"],
            started=started,
            fingerprint=obj["fingerprint"],
        )


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
