"""A fake OpenCode server that speaks the real HTTP API, for tests and benchmarks.

It answers the routes a coordinator uses with the real paths, status codes and JSON shapes, emits the
real event sequences on ``/global/event`` and ``/event``, and plays each prompt as scripted by
``[sim: ...]`` directives in its text (see :mod:`occoord.sim.script`). It shares nothing with
the client but the wire format, so a test that passes against it exercises the client's real parsing.

This module is the simulator's face (settings, lifecycle, what tests inspect); the routes live in
:mod:`occoord.sim.routes`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
from typing import TYPE_CHECKING

from occoord.sim.state import JSON, Bus, BusySpan, SimSession
from occoord.sim.turn import Engine

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Simulator", "main"]


class Simulator:
    """The fake server. Run it in the current loop (:meth:`astart`) or in a thread of its own
    (:meth:`start`) when the code under test blocks. ``time_scale`` multiplies every simulated
    duration; ``heartbeat`` is the SSE heartbeat interval in seconds; ``queue_size`` bounds each SSE
    subscriber's backlog (a slower subscriber is dropped)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        password: str | None = None,
        time_scale: float = 1.0,
        version: str = "1.18.33-sim",
        username: str = "opencode",
        heartbeat: float = 10.0,
        queue_size: int = 100_000,
        activity_interval: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.password = password
        self.username = username
        self.version = version
        self.heartbeat = heartbeat
        self.url = ""
        self.engine = Engine(
            version=version, time_scale=time_scale, queue_size=queue_size, activity_interval=activity_interval
        )
        self.default_directory = os.getcwd()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread = 0

    # ----------------------------------------------------------------- introspection for tests
    @property
    def sessions(self) -> dict[str, SimSession]:
        return self.engine.sessions

    @property
    def bus(self) -> Bus:
        return self.engine.bus

    @property
    def signal_errors(self) -> list[str]:
        return list(self.engine.signal_errors)

    @property
    def received(self) -> list[tuple[float, str]]:
        """``(time.monotonic(), session id)`` of every prompt accepted so far, oldest first (live list)."""
        return self.engine.received

    @property
    def created(self) -> list[tuple[float, str]]:
        """``(time.monotonic(), session id)`` of every session created so far, oldest first (live list)."""
        return self.engine.created

    @property
    def busy_spans(self) -> list[BusySpan]:
        """Every span in which a session was busy, oldest first (also ``GET /sim/busy?prefix=``)."""
        return list(self.engine.busy_log.spans)

    def session_count(self) -> int:
        return len(self.engine.sessions)

    def prompts(self, session_id: str) -> list[str]:
        sess = self.engine.sessions.get(session_id)
        return list(sess.prompts) if sess is not None else []

    def publish(self, directory: str, type_: str, properties: JSON) -> None:
        """Inject an event, from any thread (tests use it to flood or to fake rare events)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("simulator not started")
        if threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.engine.bus.publish, directory, type_, properties)
        else:
            self.engine.bus.publish(directory, type_, properties)

    # ----------------------------------------------------------------- lifecycle
    async def astart(self) -> str:
        """Serve in the running loop; returns the base URL (``http://127.0.0.1:PORT``)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # Imported here, not at the top: a coordinator that can simulate but does not (``occoord
        # watch`` without --simulate) never loads aiohttp.
        from aiohttp import web

        from occoord.sim.routes import Routes

        routes = Routes(
            self.engine,
            version=self.version,
            password=self.password,
            username=self.username,
            heartbeat=self.heartbeat,
            default_directory=self.default_directory,
        )
        self._runner = web.AppRunner(routes.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, backlog=4096).start()
        address = self._runner.addresses[0]
        self.url = f"http://{self.host}:{address[1]}"
        return self.url

    async def astop(self) -> None:
        """End streams and turns, then close the listener. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.engine.bus.close_all()
        await self.engine.shutdown()
        await runner.cleanup()

    def start(self) -> str:
        """Serve from a background thread with its own event loop; returns the base URL."""
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                ready.set_result(loop.run_until_complete(self.astart()))
            except BaseException as exc:
                ready.set_exception(exc)
                loop.close()
                return
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="occoord-simulator", daemon=True)
        self._thread.start()
        try:
            return ready.result(timeout=30)
        except BaseException:
            self._thread.join(5)
            self._thread = None
            raise

    def stop(self) -> None:
        """Stop a server started with :meth:`start` and join its thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.astop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._thread = None


async def _serve(sim: Simulator) -> None:
    url = await sim.astart()
    print(f"opencode server listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.astop()


def main(port: int, host: str = "127.0.0.1", password: str | None = None, *, time_scale: float = 1.0) -> None:
    """Run a simulator in the foreground until SIGINT/SIGTERM, announcing itself with the real server's
    stdout line so process-spawning code treats both alike. Like the real server, the password and
    user name default to ``OPENCODE_SERVER_PASSWORD`` / ``OPENCODE_SERVER_USERNAME``."""
    if password is None:
        password = os.environ.get("OPENCODE_SERVER_PASSWORD") or None
    username = os.environ.get("OPENCODE_SERVER_USERNAME") or "opencode"
    asyncio.run(
        _serve(Simulator(host=host, port=port, password=password, username=username, time_scale=time_scale))
    )
