"""Facts about processes and the opencode binary that the server wing needs: where the binary is,
whether a pid is still the process we started (pids are reused), and the record a coordinator
leaves so that the next one can find its server again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from occoord.errors import ServerUnavailable

__all__ = ["MISSING_BINARY", "ServerRecord", "find_binary", "pid_exists", "process_token", "running"]

MISSING_BINARY = (
    "the opencode binary was not found; "
    "install it with `npm install -g opencode-ai` or set OCCOORD_OPENCODE_BIN"
)
_PROC = Path("/proc")


def _resolve(candidate: str) -> str | None:
    """A path (anything with a slash) must be an executable file; a bare name is looked up on PATH."""
    if os.sep in candidate or (os.altsep and os.altsep in candidate):
        path = Path(candidate).expanduser()
        return str(path.resolve()) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(candidate)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state is [0]); None if unreadable."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a dead orphan waiting for init to reap it)."""
    if not (_PROC / "self" / "stat").exists():
        return pid_exists(pid)  # no /proc: the best we can tell
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def process_token(pid: int) -> str | None:
    """What tells this process from a later one that reuses its pid: the boot id and the process's
    start time (Linux /proc). None where that cannot be read."""
    fields = _proc_stat(pid)
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None
    if fields is None or len(fields) < 20:
        return None
    return f"{boot}:{fields[19]}"  # field 22 of stat: starttime, in clock ticks after boot


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
