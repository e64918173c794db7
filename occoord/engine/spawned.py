"""The local OpenCode servers a coordinator spawns (issue 13): ``--spawn N``, their records, their
supervision and their recycling.

One spawned server and no recycling is the path from before pools (service.py: member ``default``,
recorded in ``SPOOL/server.json``, the user's own database). Otherwise each spawned server is a
member ``spawn-K`` with files of its own in ``SPOOL/servers/``, named so that neither the Fleet nor
the spool watcher ever takes them for a server file (``NAME.json``):

- ``spawn-K.state``: its record (pid, URL, password; mode 0600), for the next coordinator to adopt;
- ``spawn-K.db``: its SQLite database (``OPENCODE_DB``): servers sharing one database hit
  ``database is locked``; configuration and credentials stay the user's, shared by all;
- ``spawn-K.log``: its output.

Recycling: a member that has had ``--recycle-after`` sessions placed on it, or whose process tree
uses more than ``--recycle-rss`` MB, is drained (no new sessions). The Fleet lets a drained member
go once no attempt runs on it; then its server is stopped and started anew (same database, same
password) and it joins the pool again as a fresh member.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from occoord.engine.pool import DEFAULT, Member
from occoord.engine.servers import SERVERS_DIR, Fleet
from occoord.errors import ConfigError, OccoordError
from occoord.fsutil import atomic_write
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.server import OpenCodeServer, ServerRecord

__all__ = [
    "DB_ENV",
    "Recycling",
    "Slot",
    "SpawnedSet",
    "end_server",
    "lone_default",
    "spawn_count",
    "spawned_servers",
    "start_or_adopt",
    "supervise",
]

log = logging.getLogger(__name__)

DB_ENV = "OPENCODE_DB"  # moves only the database: config, credentials and auth stay shared
RECYCLE_POLL = 1.0  # seconds between looks at each spawned server's sessions and RSS
RESTART_RETRY = 5.0  # seconds between tries to start a recycled server that would not start


class Choice(Protocol):
    """What of service.ServerChoice this module reads (service.py imports this module)."""

    @property
    def url(self) -> str | None: ...
    @property
    def servers(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def simulate(self) -> bool: ...
    @property
    def binary(self) -> str | None: ...
    @property
    def log_path(self) -> Path | None: ...
    @property
    def spawn(self) -> int | None: ...
    @property
    def recycle_after(self) -> int | None: ...
    @property
    def recycle_rss(self) -> int | None: ...


@dataclass(frozen=True)
class Recycling:
    after: int | None = None  # sessions placed on the server
    rss_mb: int | None = None  # resident memory of its process tree

    def due(self, member: Member, pid: int | None) -> str | None:
        """Why the server should be recycled now, or None."""
        if self.after is not None and member.sessions >= self.after:
            return f"{member.sessions} sessions placed on it (--recycle-after {self.after})"
        if self.rss_mb is not None and pid is not None:
            rss = tree_rss_mb(pid)
            if rss > self.rss_mb:
                return f"{rss:.0f} MB resident (--recycle-rss {self.rss_mb})"
        return None


def tree_rss_mb(pid: int) -> float:
    """The resident memory of ``pid`` and its descendants (MCP and LSP children grow too)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for each in procs:
        try:
            total += each.memory_info().rss
        except psutil.Error:
            continue  # it ended while we looked
    return total / (1024 * 1024)


def spawn_count(choice: Choice) -> int:
    """How many servers to spawn: ``--spawn``, else 1 when nothing else gives a server."""
    if choice.spawn and choice.simulate:
        raise ConfigError("--spawn", "the simulator replaces spawned servers: drop --spawn or --simulate")
    if choice.spawn is not None:
        return choice.spawn
    return 0 if choice.url or choice.servers or choice.simulate else 1


def lone_default(choice: Choice) -> bool:
    """The single spawned server of before pools (service.opencode_backend handles it as then)."""
    attached = bool(choice.url or choice.servers or choice.simulate)
    recycling = choice.recycle_after is not None or choice.recycle_rss is not None
    return spawn_count(choice) == 1 and not attached and not recycling


@dataclass(frozen=True)
class Slot:
    """Where one spawned server's name, record, output and (optionally) database are."""

    name: str
    state_file: Path
    log_path: Path | None
    env: dict[str, str] = field(default_factory=dict)


def plan_slots(choice: Choice, root: Path, server_file: str) -> list[Slot]:
    count = spawn_count(choice)
    if count < 0:
        raise ConfigError("--spawn", "must be 0 or more")
    if count == 1 and not (choice.url or choice.servers or choice.simulate):
        # One server recycled: still the member and the record of before pools, the same database.
        return [Slot(DEFAULT, root / server_file, choice.log_path)]
    folder = root / SERVERS_DIR
    return [
        Slot(
            f"spawn-{k}",
            folder / f"spawn-{k}.state",
            folder / f"spawn-{k}.log",
            {DB_ENV: str(folder / f"spawn-{k}.db")},
        )
        for k in range(1, count + 1)
    ]


@dataclass
class _Spawned:
    slot: Slot
    server: OpenCodeServer
    client: OpenCodeClient | None = None
    version: str = ""
    supervisor: asyncio.Task[None] | None = None


class SpawnedSet:
    """The servers of ``--spawn N``: started or adopted together, each a pool member."""

    def __init__(self, slots: list[Slot], binary: str | None, cwd: Path, recycling: Recycling) -> None:
        self.recycling = recycling
        self._one_at_a_time = asyncio.Lock()
        self.members: list[_Spawned] = []
        for slot in slots:
            state_file = slot.state_file

            def on_spawn(rec: ServerRecord, state_file: Path = state_file) -> None:
                atomic_write(state_file, rec.to_bytes())

            server = OpenCodeServer(
                binary=binary, cwd=cwd, log_path=slot.log_path, env=slot.env, on_spawn=on_spawn
            )
            self.members.append(_Spawned(slot, server))

    async def start(self) -> None:
        """Adopt each one's recorded server or start it (all at once: each takes seconds)."""
        for each in self.members:
            each.slot.state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            database = each.slot.env.get(DB_ENV)
            if database:  # the sessions' transcripts: 0600, and SQLite gives its -wal/-shm the same
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        # Every start ends before any failure is raised: aclose() must not race one still going.
        results = await asyncio.gather(*(self._start(each) for each in self.members), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _start(self, each: _Spawned) -> None:
        await start_or_adopt(each.server, each.slot.state_file)
        each.client = OpenCodeClient(each.server.url, password=each.server.password)
        each.version = (await each.client.health()).version

    def join(self, fleet: Fleet) -> None:
        for each in self.members:
            assert each.client is not None
            fleet.adopt(each.slot.name, each.client, each.version)

    async def keep(self, fleet: Fleet, stop: asyncio.Event) -> None:
        """Supervise every server (a dead one is restarted) and recycle those that are due."""
        for each in self.members:
            each.supervisor = self._supervise(each)
        if self.recycling.after is None and self.recycling.rss_mb is None:
            await stop.wait()
            return
        await asyncio.gather(*(self._recycle_loop(each, fleet, stop) for each in self.members))

    async def _restart(self, each: _Spawned) -> bool:
        try:
            await each.server.start()
        except OccoordError as exc:
            log.error("server %s: cannot start it again (%s); retrying", each.slot.name, exc)
            return False
        return True

    def _supervise(self, each: _Spawned) -> asyncio.Task[None]:
        return asyncio.create_task(supervise(each.server, each.client, each.slot.state_file))

    async def _recycle_loop(self, each: _Spawned, fleet: Fleet, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(RECYCLE_POLL)
            member = fleet.pool.get(each.slot.name)
            if member is None or member.draining or self._one_at_a_time.locked():
                continue  # one recycles at a time: the others keep taking the sessions meanwhile
            why = self.recycling.due(member, each.server.pid)
            if why is None:
                continue
            try:
                async with self._one_at_a_time:
                    await self.recycle(each, member, fleet, stop, why)
            except Exception:  # a bug here must not end the supervision of every server
                log.exception("server %s: recycling failed", each.slot.name)

    async def recycle(
        self, each: _Spawned, member: Member, fleet: Fleet, stop: asyncio.Event, why: str
    ) -> None:
        name = each.slot.name
        log.warning("server %s: recycling (%s); draining: no new sessions", name, why)
        member.draining = True
        # The Fleet lets a drained member go once no attempt runs on it: only then is it safe to
        # stop (no turn of ours on it) and to join again (no second event stream for one name).
        while fleet.pool.get(name) is member:
            if stop.is_set():
                member.draining = False  # the next coordinator decides anew
                return
            await asyncio.sleep(RECYCLE_POLL / 4)
        if each.supervisor is not None:  # it would take the stop for a death and race our start
            each.supervisor.cancel()
            await asyncio.wait({each.supervisor})
        old = each.server.pid
        await each.server.stop()
        # Out of the pool until it runs again: keep trying (as the supervisor would).
        while not await self._restart(each):
            if stop.is_set():
                return  # not running: the exit forgets its record
            await asyncio.sleep(RESTART_RETRY)
        each.supervisor = self._supervise(each)
        assert each.client is not None
        each.client.retarget(each.server.url)
        fleet.adopt(name, each.client, each.server.version)
        fleet.wake()
        atomic_write(each.slot.state_file, each.server.record().to_bytes())
        log.warning("server %s recycled: pid %s -> %s at %s", name, old, each.server.pid, each.server.url)

    async def aclose(self, stop_at_exit: Callable[[], bool] | None) -> None:
        for each in self.members:
            if each.supervisor is not None:
                each.supervisor.cancel()
                await asyncio.wait({each.supervisor})
            if each.client is not None:
                await each.client.aclose()
        await asyncio.gather(
            *(end_server(each.server, each.slot.state_file, stop_at_exit) for each in self.members)
        )


@asynccontextmanager
async def spawned_servers(
    choice: Choice,
    root: Path,
    workdir: Path,
    server_file: str,
    stop_at_exit: Callable[[], bool] | None,
) -> AsyncIterator[SpawnedSet | None]:
    """The spawned servers beyond the lone default one (None if there are none), started here and
    released (or stopped, as ``stop_at_exit`` says) at the end."""
    if lone_default(choice) or spawn_count(choice) == 0:
        yield None
        return
    group = SpawnedSet(
        plan_slots(choice, root, server_file),
        choice.binary,
        workdir,
        Recycling(choice.recycle_after, choice.recycle_rss),
    )
    try:
        await group.start()
        yield group
    finally:
        await group.aclose(stop_at_exit)


async def end_server(
    server: OpenCodeServer, state_file: Path | None, stop_at_exit: Callable[[], bool] | None
) -> None:
    """Release the spawned server (its record stays for the next coordinator) or stop it."""
    stopping = state_file is None
    if not stopping and stop_at_exit is not None:
        try:
            stopping = stop_at_exit()
        except OSError as exc:  # when in doubt keep it: a needless server costs less than lost turns
            log.error("cannot tell whether the OpenCode server is still needed (%s); leaving it running", exc)
    if stopping:
        await server.stop()
        if state_file is not None:
            state_file.unlink(missing_ok=True)
        return
    kept = await server.release()
    if kept is None:
        assert state_file is not None
        state_file.unlink(missing_ok=True)  # it had died: nothing to find again
        return
    log.warning(
        "leaving the OpenCode server running (pid %s at %s) for the next coordinator; it is recorded "
        "in %s (`occoord watch --stop-server` stops it at exit)",
        kept.pid,
        kept.url,
        state_file,
    )


async def supervise(server: Any, client: Any, state_file: Path | None, retry_delay: float = 5.0) -> None:
    """Restart the spawned server whenever it dies and point the client at it. The event stream
    then reconnects and the coordinator resyncs: turns lost with the old process are retried."""
    while True:
        await server.wait_exit()
        log.error("the OpenCode server (pid %s) died; restarting it", server.pid)
        try:
            await server.ensure_running()
        except OccoordError as exc:
            log.error("could not restart the OpenCode server: %s; trying again in %.0f s", exc, retry_delay)
            await asyncio.sleep(retry_delay)
            continue
        client.retarget(server.url)
        if state_file is not None:
            atomic_write(state_file, server.record().to_bytes())
        log.warning("the OpenCode server runs again at %s (restart %d)", server.url, server.restarts)


async def start_or_adopt(server: Any, state_file: Path | None) -> None:
    """Re-use the server recorded in ``state_file`` if it still runs and fits, else start ``server``;
    then record it there (before any session exists on it)."""
    if state_file is None:
        await server.start()
        return
    try:
        previous = ServerRecord.from_bytes(state_file.read_bytes())
    except FileNotFoundError:
        previous = None
    if previous is None or not await server.adopt(previous):
        state_file.unlink(missing_ok=True)  # stale: that server is gone (or was just stopped)
        await server.start()
    atomic_write(state_file, server.record().to_bytes())
