"""Wiring for ``occoord watch`` and ``occoord run``: the spool lock, the server, the watcher,
the event stream and the coordinator, started in order and stopped in reverse.

One coordinator is active per spool: it holds ``SPOOL/.watcher.lock`` (flock) for its lifetime.
A second ``occoord watch`` on the same spool waits as a hot standby and takes over when the first
exits or dies, so two watchers never dispatch the same task twice.

A server the coordinator spawns is recorded in ``SPOOL/server.json`` (pid, URL, password; mode 0600)
while it runs, and it outlives the coordinator: after a crash (SIGKILL, OOM) and after a clean stop
(SIGTERM) alike it keeps running, with its sessions and their turns, and the next coordinator of the
spool re-uses it from that record, so pending tasks re-attach to their live sessions instead of
starting over on a second server: a restart loses and fails nothing. It is stopped (and the record
removed) only as ``ServerChoice.at_exit`` says: always for ``watch --stop-server``, and for ``run``
when no run of the spool is left unfinished, since then no session of anyone's is lost.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from occoord.engine.loop import Coordinator, CoordinatorConfig
from occoord.engine.pool import DEFAULT
from occoord.engine.servers import SERVERS_DIR, Fleet, Replies, ServerSpec, pump_events
from occoord.engine.spawned import SpawnedSet, lone_default, spawned_servers, start_or_adopt, supervise
from occoord.engine.spawned import end_server as _end_server
from occoord.engine.watcher import Hint, SpoolWatcher
from occoord.errors import ConfigError, ServerUnavailable
from occoord.fsutil import atomic_write
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.server import OpenCodeServer
from occoord.sim.simulator import Simulator
from occoord.spool.layout import Spool

__all__ = ["SERVER_FILE", "AtExit", "Replies", "ServerChoice", "SpoolLock", "serve"]

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"  # in the spool: the spawned server, for the next coordinator
# The longest start-up waits for the event streams to open before serving (see _streams_open).
STREAMS_WAIT = 5.0

# What becomes of a spawned server when the coordinator exits: left running for the next one
# ("keep"), stopped ("stop"), or stopped only if no run of the spool is unfinished ("stop_if_idle").
AtExit = Literal["keep", "stop", "stop_if_idle"]


@dataclass(frozen=True)
class ServerChoice:
    """Where the OpenCode server comes from: an URL to attach to, the built-in simulator, or spawn;
    and, for a spawned one, what becomes of it when the coordinator exits. ``servers``: several
    attached ones (name, URL), instead of ``url``; ``name``: the pool member of the single one.
    Servers in SPOOL/servers/ join either."""

    url: str | None = None
    name: str = DEFAULT
    servers: tuple[tuple[str, str], ...] = ()
    password: str | None = None
    simulate: bool = False
    binary: str | None = None
    log_path: Path | None = None
    at_exit: AtExit = "keep"
    spawn: int | None = None  # --spawn N (None: 1 when nothing else gives a server); see spawned.py
    recycle_after: int | None = None
    recycle_rss: int | None = None


class SpoolLock:
    """The exclusive ``.watcher.lock`` of a spool, acquired without polling (a blocking flock in a
    daemon thread), so a standby watcher costs nothing while it waits."""

    def __init__(self, spool: Spool) -> None:
        self.path = spool.root / ".watcher.lock"
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    async def acquire(self, *, following: bool = False) -> None:
        """``following``: the caller follows a run another coordinator serves (``occoord run``),
        which is no news worth a warning."""
        if self.try_acquire():
            return
        log.log(
            logging.INFO if following else logging.WARNING,
            "another coordinator holds %s; waiting as a standby",
            self.path,
        )
        loop = asyncio.get_running_loop()
        got: asyncio.Future[int] = loop.create_future()

        def wait() -> None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            loop.call_soon_threadsafe(_settle, got, fd)

        threading.Thread(target=wait, name="occoord-standby", daemon=True).start()
        self.fd = await got
        log.warning("took over the spool %s", self.path.parent)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file itself is never deleted
            self.fd = None


def _settle(fut: asyncio.Future[int], fd: int) -> None:
    if fut.done():
        os.close(fd)
    else:
        fut.set_result(fd)


@asynccontextmanager
async def opencode_backend(
    choice: ServerChoice,
    workdir: Path,
    *,
    state_file: Path | None = None,
    stop_at_exit: Callable[[], bool] | None = None,
) -> AsyncIterator[tuple[Any, str]]:
    """Yield (client, server version) for the chosen server, and end what we started.

    A spawned server is recorded in ``state_file`` while it runs, and a still-running server found
    recorded there (left by an earlier coordinator) is re-used rather than started anew. At the end
    it is left running with its record, unless ``stop_at_exit()`` (asked then) says to stop it; with
    no ``state_file`` nobody could find it again, so it is stopped.
    """
    simulator = server = None
    try:
        if choice.simulate:
            simulator = Simulator()
            url, password = await simulator.astart(), None
        elif choice.url:
            url, password = choice.url, choice.password
        else:
            server = OpenCodeServer(
                binary=choice.binary,
                cwd=workdir,
                log_path=choice.log_path,
                on_spawn=None if state_file is None else lambda rec: atomic_write(state_file, rec.to_bytes()),
            )
            await start_or_adopt(server, state_file)
            url, password = server.url, server.password
        client = OpenCodeClient(url, password=password)
        supervisor = asyncio.ensure_future(supervise(server, client, state_file)) if server else None
        try:
            health = await client.health()
            yield client, health.version
        finally:
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.wait({supervisor})
            await client.aclose()
    finally:
        if server is not None:
            await _end_server(server, state_file, stop_at_exit)
        if simulator is not None:
            await simulator.astop()


async def serve(
    spool: Spool,
    config: CoordinatorConfig,
    choice: ServerChoice,
    stop: asyncio.Event,
    *,
    on_ready: Any = None,
    following: bool = False,
) -> Coordinator | None:
    """Run the coordinator on ``spool`` until ``stop`` is set. Returns the coordinator used."""
    lock = SpoolLock(spool)
    acquiring = asyncio.ensure_future(lock.acquire(following=following))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not acquiring.done():
        acquiring.cancel()
        return None
    stopping.cancel()
    try:
        state_file = spool.root / SERVER_FILE

        def at_exit() -> bool:
            return _stop_server(choice, spool)

        async with (
            _first_backend(choice, config.workdir, state_file, spool) as first,
            spawned_servers(choice, spool.root, config.workdir, SERVER_FILE, at_exit) as group,
        ):
            fleet = Fleet(spool.root / SERVERS_DIR)
            try:
                config = replace(config, server_version=await _gather(fleet, choice, first, group))
                coordinator = Coordinator(spool, fleet.pool, config)
                loop = asyncio.get_running_loop()

                def sink(hint: Hint) -> None:  # the watchdog thread's: SPOOL/servers/ is the fleet's
                    loop.call_soon_threadsafe(
                        fleet.hint if hint.kind == "servers" else coordinator.post, hint
                    )

                def deliver(hints: list[Hint]) -> None:  # inotify is read on the loop itself
                    for hint in hints:
                        (fleet.hint if hint.kind == "servers" else coordinator.post)(hint)

                watcher = SpoolWatcher(spool.root, sink, sink_many=deliver, loop=loop)
                watcher.start()
                fleet.start(coordinator.post, coordinator.table.running_on, coordinator.router.activity)
                keeper = asyncio.ensure_future(fleet.maintain(stop, config.rescan_interval))
                spawned = asyncio.ensure_future(group.keep(fleet, stop)) if group else None
                guard = asyncio.ensure_future(_guard(watcher, coordinator, stop, fleet))
                try:
                    await _streams_open(fleet, stop)
                    if on_ready is not None:
                        on_ready(coordinator)
                    await coordinator.run(stop)
                finally:
                    keeper.cancel()
                    guard.cancel()
                    if spawned is not None:
                        spawned.cancel()
                        await asyncio.wait({spawned})
                    watcher.stop()
                return coordinator
            finally:
                await fleet.aclose()
    finally:
        lock.release()


async def _streams_open(fleet: Fleet, stop: asyncio.Event) -> None:
    """Serve once the servers' event streams are open (at most STREAMS_WAIT s): the stream has no
    replay, so a turn that ended before it opened would only be seen by the silent-stream
    reconnect (~45 s later); a fast first dispatch won that race."""
    waits = [asyncio.ensure_future(b.stream.connected.wait()) for b in fleet.backends.values()]
    if not waits:
        return
    stopping = asyncio.ensure_future(stop.wait())
    try:
        either: set[asyncio.Future[Any]] = {asyncio.gather(*waits), stopping}
        await asyncio.wait(either, timeout=STREAMS_WAIT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for wait in waits:
            wait.cancel()


@asynccontextmanager
async def _first_backend(
    choice: ServerChoice, workdir: Path, state_file: Path, spool: Spool
) -> AsyncIterator[tuple[Any, str] | None]:
    """The single server as before pools (attached, simulated or spawned; it must answer at
    start), or None when several are attached or spawned (each joins the fleet on its own)."""
    if len(choice.servers) > 1 or not (choice.url or choice.simulate or lone_default(choice)):
        yield None
        return
    async with opencode_backend(
        choice, workdir, state_file=state_file, stop_at_exit=lambda: _stop_server(choice, spool)
    ) as found:
        yield found


async def _gather(
    fleet: Fleet, choice: ServerChoice, first: tuple[Any, str] | None, group: SpawnedSet | None
) -> str:
    """Fill the fleet: the single server or the attached ones, the spawned ones, then the server
    files. The version the records keep (server_version): the first server's that answered."""
    if first is not None:
        client, version = first
        fleet.adopt(choice.name, client, version)
    if group is not None:
        group.join(fleet)
    for name, url in choice.servers:
        await fleet.add(ServerSpec(name, url, password=choice.password), from_file=False)
    if choice.servers and group is None and not any(member.healthy for member in fleet.pool):
        urls = ", ".join(url for _, url in choice.servers)
        raise ServerUnavailable(urls, "none of the --server URLs can be reached")
    await fleet.sync_files()
    if not len(fleet.pool):
        raise ConfigError(
            "--spawn",
            "0 servers to spawn and none given: use --server, --simulate or SPOOL/servers/NAME.json",
        )
    return next((m.version for m in fleet.pool if m.healthy and m.version), "")


def _stop_server(choice: ServerChoice, spool: Spool) -> bool:
    if choice.at_exit == "stop_if_idle":
        # Unfinished runs may have live sessions on the server (another run's, or this one's when
        # it was interrupted): they resume on it with the next coordinator.
        return all(spool.looks_finished(run_id) for run_id in spool.run_ids())
    return choice.at_exit == "stop"


async def _pump(stream: Any, coordinator: Coordinator, replies: Replies) -> None:
    await pump_events(stream, coordinator.post, replies)


async def _guard(watcher: SpoolWatcher, coordinator: Coordinator, stop: asyncio.Event, fleet: Fleet) -> None:
    """Supervise the watchdog observer: a dead one is restarted and a rescan catches up."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=coordinator.config.rescan_interval)
        except TimeoutError:
            pass
        if not stop.is_set() and not watcher.alive():
            watcher.restart()
            coordinator.post(Hint("rescan"))
            fleet.hint()


def check_config(config: CoordinatorConfig) -> None:
    if config.max_sessions < 1:
        raise ConfigError("--max-sessions", "must be at least 1")
    for name in ("start_timeout", "idle_timeout", "task_timeout"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')}", "must be positive")
