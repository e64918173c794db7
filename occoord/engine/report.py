"""``SPOOL/watcher.json``: what the running watcher wants people to know, for ``occoord status``.

Written (atomically, best effort) at start and whenever its problems change: a write that keeps
failing, a manifest that cannot be accepted yet. A full disk may keep even this file from being
written; the log always has it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from occoord.engine.ports import Clock
from occoord.fsutil import atomic_write
from occoord.spool.journal import iso

__all__ = ["REPORT_FILE", "WatcherReport"]

log = logging.getLogger(__name__)

REPORT_FILE = "watcher.json"


class WatcherReport:
    def __init__(self, root: Path, clock: Clock, *, server_version: str = "", server_url: str = "") -> None:
        self.path = root / REPORT_FILE
        self.clock = clock
        self.server_version = server_version
        self.server_url = server_url  # never a password: the file is for anyone who reads the spool
        self.started_at = iso(clock.wall())
        self._shown: dict[str, str] | None = None
        self._since: dict[str, str] = {}
        self._waiting: dict[str, str] = {}
        self._servers: list[dict[str, object]] = []

    def update(
        self,
        problems: Mapping[str, str],
        waiting: Mapping[str, str] | None = None,
        servers: list[dict[str, object]] | None = None,
    ) -> None:
        """``waiting``: queued tasks held by a limit (RUN/TASK -> "waiting: anthropic/* 4/4");
        ``servers``: the pool (engine.pool.ServerPool.describe)."""
        current = dict(problems)
        held = dict(waiting or {})
        pool = list(servers or [])
        if current == self._shown and held == self._waiting and pool == self._servers:
            return
        now = iso(self.clock.wall())
        self._since = {key: self._since.get(key, now) for key in current}
        doc = {
            "protocol": 1,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "server_version": self.server_version,
            "server_url": self.server_url,
            "updated_at": now,
            "problems": [{"what": current[k], "since": self._since[k]} for k in sorted(current)],
            "waiting": held,
            "servers": pool,
        }
        try:
            atomic_write(self.path, (json.dumps(doc, indent=1) + "\n").encode(), durable=False)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
            return
        self._shown = current
        self._waiting = held
        self._servers = pool
