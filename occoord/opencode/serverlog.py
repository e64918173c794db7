"""What a spawned ``opencode serve`` prints: kept in a private log file, its last lines remembered
for error messages, and its ``listening on`` announcement spotted.

The pipes are read (by two pump tasks this module owns) for the server's whole life: a full pipe
would stall it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import IO

__all__ = ["ServerOutput"]

log = logging.getLogger(__name__)

_LISTENING = re.compile(r"opencode server listening on (https?://\S+)")
# Colour codes would break the match if the server ever decides our pipe is a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TAIL_LINES = 30
_CHUNK = 65536


def _open_private(path: Path) -> int:
    # Private whatever the umask: the server's log may show prompts and file contents.
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


class ServerOutput:
    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self._log: IO[bytes] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self._listening: asyncio.Future[str] | None = None  # resolves to the announced URL
        self._pumps: list[asyncio.Task[None]] = []

    def open(self, what: str) -> None:
        """Start a new process's section of the log (appended: earlier runs stay readable)."""
        self._tail.clear()
        if self.log_path is None:
            return
        self._log = os.fdopen(_open_private(self.log_path), "ab")
        self._log.write(f"=== occoord: {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n".encode())
        self._log.flush()

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
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def attach(self, proc: asyncio.subprocess.Process) -> asyncio.Future[str]:
        """Pump the process's stdout and stderr into the log; returns the future of the URL that
        it announces."""
        assert proc.stdout is not None and proc.stderr is not None
        self._listening = asyncio.get_running_loop().create_future()
        self._pumps = [
            asyncio.create_task(self._pump(proc.stdout, b""), name=f"opencode-{proc.pid}-stdout"),
            asyncio.create_task(self._pump(proc.stderr, b"[stderr] "), name=f"opencode-{proc.pid}-stderr"),
        ]
        return self._listening

    async def drain(self, timeout: float) -> None:
        """Give the pumps a moment to reach EOF; a grandchild holding the pipe open must not block us."""
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=timeout)

    async def detach(self) -> None:
        """Stop the pumps after a last short drain, give up on the announcement, close the log."""
        await self.drain(1.0)
        for task in self._pumps:
            task.cancel()
        if self._pumps:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps = []
        if self._listening is not None and not self._listening.done():
            self._listening.cancel()
        self._listening = None
        self.close()

    def line(self, raw: bytes, prefix: bytes) -> None:
        """Log one output line, remember it for error messages, and spot the listening announcement."""
        if self._log is not None:
            try:
                self._log.write(prefix + raw + b"\n")
                self._log.flush()
            except OSError as exc:  # a full disk must not kill the pump (the pipe would fill up)
                log.warning("cannot write opencode log %s: %s", self.log_path, exc)
                self.close()
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
            chunk = await stream.read(_CHUNK)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self.line(line, prefix)
            if len(pending) > _CHUNK:
                self.line(pending, prefix)
                pending = b""
        if pending:
            self.line(pending, prefix)

    def tail(self) -> str:
        return "\n".join(self._tail)

    def quoted_tail(self) -> str:
        """The last lines, ready to end an error message."""
        tail = self.tail()
        where = f" (log: {self.log_path})" if self.log_path else ""
        if not tail:
            return f"; it printed nothing{where}"
        return f"; last output{where}:\n{tail}"
