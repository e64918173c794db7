"""The servers of a pool as the service runs them (issue 13): where they are declared (``--server``
several times, ``SPOOL/servers/NAME.json``), and each one's client, event stream and replies.

A server file is ``{"url": ..., "password_file": "/path", "capacity": N, "labels": [...]}``; only
``url`` is required. The password is read from its file when the client is made, never copied into
the spool or a log, and a world-readable password file is refused: anyone on the host could use it.
Adding a file adds a server; removing it drains the server (no new sessions), which leaves the pool
once no attempt runs on it. A bad file is logged and skipped: it never stops the watcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occoord.engine.pool import DEFAULT, Member, ServerPool
from occoord.engine.replies import Replies, pump_events
from occoord.engine.stream import FromServer
from occoord.engine.watcher import Hint
from occoord.errors import ConfigError, OccoordError
from occoord.opencode.client import OpenCodeClient
from occoord.opencode.events import EventStream, ServerConnected
from occoord.opencode.permissions import PolicyResponder

__all__ = [
    "SERVERS_DIR",
    "Fleet",
    "Replies",
    "ServerSpec",
    "attached_servers",
    "parse_server_options",
    "pump_events",
    "read_server_file",
    "scan_server_files",
]

log = logging.getLogger(__name__)

SERVERS_DIR = "servers"  # SPOOL/servers/NAME.json
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEYS = {"url", "password_file", "capacity", "labels"}
MAINTAIN_EVERY = 0.5  # seconds between looks at the streams' health and the drained servers


@dataclass(frozen=True)
class ServerSpec:
    """One server to attach to; ``password`` from --server-password, or ``password_file`` read at use."""

    name: str
    url: str
    password: str | None = None
    password_file: Path | None = None
    capacity: int | None = None
    labels: frozenset[str] = frozenset()

    def secret(self) -> str | None:
        """The password, read now from its file if it has one (ConfigError if that file is
        unreadable or readable by anyone)."""
        if self.password_file is None:
            return self.password
        return read_password_file(self.password_file)

    def __repr__(self) -> str:  # never a password in a log line or a traceback
        return f"ServerSpec({self.name!r}, {self.url!r})"


def read_password_file(path: Path) -> str:
    try:
        info = path.stat()
        if info.st_mode & stat.S_IROTH:
            raise ConfigError(str(path), "the password file is world-readable; chmod o-r it (e.g. 0600)")
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the password file: {exc.strerror or exc}") from None


def parse_server_options(values: Iterable[str]) -> list[tuple[str, str]]:
    """``--server URL`` (several times, or comma-separated in OCCOORD_SERVERS) as (name, url):
    ``NAME=URL`` names one, the others are ``server-1``, ``server-2``, ... by position."""
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    out: list[tuple[str, str]] = []
    for index, item in enumerate(items, start=1):
        name, eq, url = item.partition("=")
        if not eq or "://" in name:  # an URL may hold "=" (a query); a name never holds "://"
            name, url = f"server-{index}", item
        if not _NAME.fullmatch(name) or not url:
            raise ConfigError("--server", f"{item!r}: use URL or NAME=URL (NAME: letters, digits, - _ .)")
        if any(name == seen for seen, _ in out):
            raise ConfigError("--server", f"{name!r} is named twice")
        out.append((name, url))
    return out


def attached_servers(values: list[str]) -> list[tuple[str, str]]:
    """As :func:`parse_server_options`, but one server alone keeps the name ``default`` (as before
    pools: the same records) unless NAME=URL names it."""
    found = parse_server_options(values)
    if len(found) == 1 and "=" not in values[0].split("://", 1)[0]:
        return [(DEFAULT, found[0][1])]
    return found


def read_server_file(path: Path) -> ServerSpec:
    """The server ``SPOOL/servers/NAME.json`` declares; ConfigError (naming the file) if it is bad."""
    name = path.name.removesuffix(".json")
    where = str(path)
    if not _NAME.fullmatch(name):
        raise ConfigError(where, "the file name must be NAME.json (NAME: letters, digits, - _ .)")
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(where, f"unreadable: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(where, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(where, "must be a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ConfigError(where, f"unknown keys {unknown} (known: {sorted(_KEYS)})")
    url = doc.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(where, "'url' must be an http:// or https:// URL")
    capacity = doc.get("capacity")
    if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1):
        raise ConfigError(where, "'capacity' must be a whole number of at least 1")
    labels = doc.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ConfigError(where, "'labels' must be a list of non-empty strings")
    secret = doc.get("password_file")
    if secret is not None and (not isinstance(secret, str) or not os.path.isabs(secret)):
        raise ConfigError(where, "'password_file' must be an absolute path")
    spec = ServerSpec(
        name,
        url.rstrip("/"),
        password_file=Path(secret) if secret else None,
        capacity=capacity,
        labels=frozenset(labels),
    )
    try:
        spec.secret()  # refused now, with the server file named, rather than at the first session
    except ConfigError as exc:
        raise ConfigError(where, str(exc)) from None
    return spec


def scan_server_files(folder: Path) -> dict[str, ServerSpec]:
    """Every good server file in ``folder``; each bad one is logged with its path and skipped."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.error("cannot list %s: %s", folder, exc)
        return {}
    found: dict[str, ServerSpec] = {}
    for entry in names:
        if entry.startswith(".") or not entry.endswith(".json"):
            continue  # an editor's or an atomic writer's temporary file
        try:
            spec = read_server_file(folder / entry)
        except ConfigError as exc:
            log.error("server file skipped: %s", exc)
            continue
        found[spec.name] = spec
    return found


@dataclass
class _Backend:
    member: Member
    client: OpenCodeClient
    stream: EventStream
    replies: Replies
    owned: bool  # the client is ours to close (not the spawned or lone server's context's)
    from_file: bool
    pump: asyncio.Task[None] | None = None
    connected_once: bool = False  # until then its health check's verdict stands


class Fleet:
    """The pool's servers while the service runs: one client, event stream and responder each.

    ``post`` (the coordinator's) gets every event as FromServer(name, event) and, after a change of
    the pool, a wake-up; ``running_on`` (the attempt table's) says when a drained server is free.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pool = ServerPool([])
        self.backends: dict[str, _Backend] = {}
        self.wake: Callable[[], None] = lambda: None  # no coordinator to wake before start()
        self.post: Callable[[object], None] | None = None
        self.activity: Callable[[str], None] | None = None  # liveness, beside the queue
        self.running_on: Callable[[str], int] = lambda _: 0
        self._rescan = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()  # version look-ups in flight

    def adopt(self, name: str, client: Any, version: str) -> None:
        """The server of the single-server path (attached, simulated or spawned): its client is
        closed by whoever made it (and a spawned one is restarted there)."""
        self._join(
            Member(name, client, url=str(client.url), version=version), client, owned=False, from_file=False
        )

    async def add(self, spec: ServerSpec, *, from_file: bool) -> Member:
        """Attach to ``spec``: one that answers its health check joins healthy with its version;
        one that does not joins unhealthy (logged) and is used once its event stream connects."""
        client = OpenCodeClient(spec.url, password=spec.secret())
        member = Member(spec.name, client, capacity=spec.capacity, labels=spec.labels, url=spec.url)
        try:
            member.version = (await client.health()).version
        except OccoordError as exc:
            log.error("server %s (%s) cannot be reached (%s); added as unhealthy", spec.name, spec.url, exc)
            member.healthy = False
        self._join(member, client, owned=True, from_file=from_file)
        log.info("server %s joined the pool: %s", spec.name, spec.url)
        return member

    def _join(self, member: Member, client: Any, *, owned: bool, from_file: bool) -> None:
        replies = Replies(PolicyResponder(client))
        backend = self.backends[member.name] = _Backend(
            member, client, EventStream(client, on_activity=self.activity), replies, owned, from_file
        )
        self.pool.add(member)
        if self.post is not None:
            backend.pump = asyncio.ensure_future(self._pump(backend))

    def start(
        self,
        post: Callable[[object], None],
        running_on: Callable[[str], int],
        activity: Callable[[str], None] | None = None,
    ) -> None:
        """Start every stream; events go to ``post`` from now on, and with ``activity`` given, the
        session ids of Activity events go to it instead (see EventStream's ``on_activity``)."""
        self.post, self.running_on, self.activity = post, running_on, activity
        for backend in self.backends.values():
            backend.stream.on_activity = activity
        # A hint the coordinator has no branch for still ends in a tick: dispatch looks again.
        self.wake = lambda: post(Hint("servers"))
        for backend in self.backends.values():
            if backend.pump is None:
                backend.pump = asyncio.ensure_future(self._pump(backend))

    async def _pump(self, backend: _Backend) -> None:
        name = backend.member.name

        def post(event: object) -> None:
            if isinstance(event, ServerConnected):
                backend.connected_once = True
                if not backend.member.healthy:
                    self._follow_health()  # at once: its queued tasks need not wait a round
            if self.post is not None:
                self.post(FromServer(name, event))

        await pump_events(backend.stream, post, backend.replies)

    def hint(self, _: object = None) -> None:
        self._rescan.set()  # SPOOL/servers/ changed: maintain() reads it again at once

    async def sync_files(self) -> None:
        """Make the file servers match the folder: add new ones, drain removed ones (and take a
        drained one back if its file returns); a changed capacity or label set applies at once."""
        wanted = scan_server_files(self.folder)
        for name, spec in wanted.items():
            backend = self.backends.get(name)
            if backend is None:
                await self.add(spec, from_file=True)
                continue
            if not backend.from_file:
                log.error(
                    "server file %s skipped: %r is a --server already", self.folder / f"{name}.json", name
                )
                continue
            member = backend.member
            if member.url != spec.url:
                log.warning(
                    "server %s: a new URL takes effect once its file is removed and added again", name
                )
            member.capacity, member.labels = spec.capacity, spec.labels
            if member.draining:
                log.warning("server %s: its file is back; no longer draining", name)
                member.draining = False
        for name, backend in list(self.backends.items()):
            if backend.from_file and name not in wanted and not backend.member.draining:
                log.warning("server %s: its file was removed; draining (no new sessions)", name)
                backend.member.draining = True
        self.wake()

    def _follow_health(self) -> bool:
        """``Member.healthy`` follows its event stream (no new attempts while it is down). A lone
        server stays "healthy" whatever its stream says: with nowhere else to go, an attempt is
        tried and retried with backoff, as with one server before pools. True if any changed."""
        changed = False
        lone = len(self.backends) == 1
        for backend in self.backends.values():
            up = lone or backend.stream.connected.is_set()
            if not backend.connected_once:
                up = up or backend.member.healthy
            if backend.member.healthy != up:
                backend.member.healthy = up
                changed = True
                log.warning("server %s is %s", backend.member.name, "up" if up else "down: no new sessions")
                if up and not backend.member.version:
                    job = asyncio.ensure_future(self._learn_version(backend))
                    self._jobs.add(job)
                    job.add_done_callback(self._jobs.discard)
        if changed:
            self.wake()
        return changed

    async def _learn_version(self, backend: _Backend) -> None:
        try:
            backend.member.version = (await backend.client.health()).version
        except OccoordError as exc:
            log.info("server %s: no version yet (%s)", backend.member.name, exc)

    async def _reap(self) -> None:
        """A drained server leaves once no attempt runs on it."""
        for name, backend in list(self.backends.items()):
            if backend.member.draining and self.running_on(name) == 0:
                log.warning("server %s left the pool (drained)", name)
                self.pool.remove(name)
                del self.backends[name]
                await self._close(backend)
                self.wake()

    async def maintain(self, stop: asyncio.Event, rescan_interval: float) -> None:
        """Follow health, reap drained servers, and re-read SPOOL/servers/ on a hint (and every
        ``rescan_interval`` anyway: a watcher event can be lost)."""
        loop = asyncio.get_running_loop()
        next_scan = loop.time() + rescan_interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._rescan.wait(), timeout=MAINTAIN_EVERY)
            except TimeoutError:
                pass
            try:
                if self._rescan.is_set() or loop.time() >= next_scan:
                    self._rescan.clear()
                    next_scan = loop.time() + rescan_interval
                    await self.sync_files()
                self._follow_health()
                await self._reap()
            except Exception:  # a bug here must not stop the watcher: the next round tries again
                log.exception("keeping the server pool")

    async def _close(self, backend: _Backend) -> None:
        await backend.stream.aclose()
        if backend.pump is not None:
            backend.pump.cancel()
            await asyncio.wait({backend.pump})
        await backend.replies.aclose()
        if backend.owned:
            await backend.client.aclose()

    async def aclose(self) -> None:
        for job in list(self._jobs):
            job.cancel()
        for name in list(self.backends):
            await self._close(self.backends.pop(name))
