"""What a spawned ``opencode serve`` prints: written by the server itself straight into a private
log file, read back for its ``listening on`` announcement and for the last lines quoted in errors.

Why a file and not pipes: a server must outlive the coordinator that started it (a crash, and a
clean stop too, so that ``systemctl restart`` loses no turn). With pipes its output would depend on
a reader that is gone once the coordinator exits: every later write would fail with EPIPE (or kill
it with SIGPIPE), and a full pipe would stall it while the reader lags. A file needs no reader, so
the server's output keeps flowing into the same log whoever (if anyone) watches it, before and
after the coordinator changes.

Both streams share one file description opened with ``O_APPEND``, so their lines interleave as
written; no ``[stderr]`` tag tells them apart.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from pathlib import Path

__all__ = ["ServerOutput"]

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"opencode server listening on (https?://\S+)")
# Colour codes would break the match if the server ever decides its output is a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TAIL_LINES = 30
_TAIL_BYTES = 64 * 1024  # the tail is read from at most this much of the end
_SCAN_BYTES = 1024 * 1024  # a chatty start is scanned in steps of this; a line longer is cut


def _open_private(path: Path) -> int:
    # Private whatever the umask: the server's log may show prompts and file contents. Read-write
    # so that the same descriptor both is the child's output and is read back by pread().
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _open_anonymous() -> int:
    """A file with no name, for a server started without a log path: it still needs somewhere to
    write that no reader has to drain. Its space is freed once the server and we have closed it."""
    fd, name = tempfile.mkstemp(prefix="occoord-opencode-", suffix=".log")
    os.unlink(name)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_APPEND)
    return fd


def _clean(raw: bytes) -> str:
    return _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r")


class ServerOutput:
    """The log of one :class:`~occoord.opencode.server.OpenCodeServer`, a section per started process."""

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self._fd: int | None = None  # ours; the child's stdout and stderr are copies of it
        self._start = 0  # offset where the current process's section begins
        self._scanned = 0  # how far scan() has read
        self._partial = b""  # an unfinished last line seen by scan()

    def open(self, what: str) -> int:
        """Start a new process's section (appended: earlier runs stay readable) and return the
        descriptor to give the process as its stdout and stderr."""
        self.close()
        if self.log_path is None:
            fd = _open_anonymous()
        else:
            fd = _open_private(self.log_path)
            os.write(fd, f"=== occoord: {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n".encode())
        self._fd = fd
        self._start = self._scanned = os.fstat(fd).st_size
        self._partial = b""
        return fd

    def note(self, text: str) -> None:
        """One line of occoord's own in the log, whether or not a process is running."""
        if self.log_path is None:
            return
        line = f"=== occoord: {time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n".encode()
        try:
            fd = _open_private(self.log_path)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot write opencode log %s: %s", self.log_path, exc)

    def close(self) -> None:
        """Close our descriptor; a process still running keeps its own copies and writes on."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def scan(self) -> str | None:
        """Read what the process printed since the last call; the URL once it has announced it."""
        if self._fd is None:
            return None
        while True:
            try:
                chunk = os.pread(self._fd, _SCAN_BYTES, self._scanned)
            except OSError as exc:
                log.warning("cannot read opencode log %s: %s", self.log_path, exc)
                return None
            if not chunk:
                return None
            self._scanned += len(chunk)
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            if len(self._partial) > _SCAN_BYTES:
                lines.append(self._partial)
                self._partial = b""
            for raw in lines:
                match = _LISTENING.search(_clean(raw))
                if match:
                    return match.group(1).rstrip("/")

    def tail(self) -> str:
        """The last lines the current process printed (read from the end of its section)."""
        if self._fd is None:
            return ""
        try:
            end = os.fstat(self._fd).st_size
            begin = max(self._start, end - _TAIL_BYTES)
            data = os.pread(self._fd, end - begin, begin)
        except OSError:
            return ""
        lines = data.split(b"\n")
        if begin > self._start:
            lines = lines[1:]  # cut in the middle of a line
        text = [_clean(raw) for raw in lines]
        while text and not text[-1]:
            text.pop()
        return "\n".join(collections.deque(text, maxlen=_TAIL_LINES))

    def quoted_tail(self) -> str:
        """The last lines, ready to end an error message."""
        tail = self.tail()
        where = f" (log: {self.log_path})" if self.log_path else ""
        if not tail:
            return f"; it printed nothing{where}"
        return f"; last output{where}:\n{tail}"
