"""The whole engine in one process: a real spool on disk, the fake OpenCode client, a fake clock.

``settle()`` runs the loop until nothing is left to do (queued hints and events handled, background
jobs finished); ``advance(s)`` moves the clock and settles, so timeouts, backoff and grace periods
are tested without sleeping. Hints are fed by the test (there is no watchdog here).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fakes import FakeClock, FakeOpenCode

from occoord.engine.loop import Coordinator, CoordinatorConfig
from occoord.engine.pool import Member, ServerPool
from occoord.engine.ports import JobScheduler
from occoord.engine.watcher import Hint
from occoord.spool.layout import Run, Spool
from occoord.spool.records import TaskRecord
from occoord.spool.states import TaskState


def task(task_id: str, prompt: str = "do it", **fields: Any) -> dict[str, Any]:
    return {"id": task_id, "prompt": prompt, **fields}


def manifest(*tasks: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"version": 1, "name": fields.pop("name", "plan"), "tasks": list(tasks), **fields}


class Engine:
    def __init__(
        self, root: Path, servers: dict[str, tuple[int | None, set[str]]] | None = None, **config: Any
    ) -> None:
        """``servers``: name -> (capacity, labels), one fake server each (default: one, unlimited)."""
        self.clock = FakeClock()
        self.client = FakeOpenCode()
        self.servers = servers
        self.clients = {name: FakeOpenCode(prefix=name) for name in (servers or {})}
        if self.clients:
            self.client = next(iter(self.clients.values()))
        self.spool = Spool(root / "spool", durable=False, clock=self.clock.wall).init()
        self.workdir = root / "work"
        self.workdir.mkdir(exist_ok=True)
        defaults: dict[str, Any] = {"workdir": self.workdir, "retry_base": 5.0, "signal_grace": 30.0}
        self.config = CoordinatorConfig(**{**defaults, **config})
        self.scheduler = JobScheduler()
        self.co = Coordinator(
            self.spool, self.backend(), self.config, clock=self.clock, scheduler=self.scheduler
        )

    def backend(self) -> FakeOpenCode | ServerPool:
        if not self.servers:
            return self.client
        members = [
            Member(name, self.clients[name], capacity=capacity, labels=frozenset(labels))
            for name, (capacity, labels) in self.servers.items()
        ]
        return ServerPool(members)

    def restart(self, **config: Any) -> None:
        """A new coordinator on the same spool, server and clock (the old one crashed or stopped)."""
        self.scheduler.cancel_all()
        self.config = CoordinatorConfig(**{**self.config.__dict__, **config})
        self.scheduler = JobScheduler()
        self.co = Coordinator(
            self.spool, self.backend(), self.config, clock=self.clock, scheduler=self.scheduler
        )

    def play(self, scenario: Callable[[Engine], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                await scenario(self)
            finally:
                self.scheduler.cancel_all()

        asyncio.run(main())

    async def start(self) -> None:
        await self.co.startup()
        await self.settle()

    async def settle(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            await self.scheduler.idle()
            self.co.step()
            await asyncio.sleep(0)  # let jobs the step spawned begin
            if self.co.queue.empty() and not self.scheduler.busy:
                return
        raise AssertionError("the engine did not settle")

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.settle()

    def post(self, items: Iterable[object]) -> None:
        for item in items:
            self.co.post(item)

    async def events(self, items: Iterable[object]) -> None:
        self.post(items)
        await self.settle()

    async def submit(self, doc: dict[str, Any], name: str = "plan.json") -> str:
        """Publish a manifest the way `occoord submit` does (tmp/, rename) and hint it; the run id."""
        before = set(self.spool.run_ids())
        staging = self.spool.tmp / f".{name}.tmp"
        staging.write_text(json.dumps(doc))
        target = self.spool.incoming / name
        os.rename(staging, target)
        self.co.post(Hint("incoming", path=target, settled=True))
        await self.settle()
        new = set(self.spool.run_ids()) - before
        assert len(new) == 1, f"expected one new run, got {sorted(new)}"
        return new.pop()

    def run(self, run_id: str) -> Run:
        return self.spool.run(run_id)

    def state(self, run_id: str, task_id: str) -> TaskState | None:
        tasks = self.run(run_id).tasks
        tasks.reconcile([task_id])
        return tasks.current(task_id)

    def record(self, run_id: str, task_id: str) -> TaskRecord:
        record = self.run(run_id).tasks.read(task_id)
        assert record is not None
        return record

    async def signal(self, run_id: str, task_id: str, state: TaskState, message: str = "") -> None:
        """An outside writer (the agent, a script) moves the task, and the watcher hints it."""
        self.run(run_id).signal(task_id, state, message)
        self.co.post(Hint("task", run_id=run_id, task=task_id))
        await self.settle()

    def session(self, run_id: str, task_id: str, attempt: int = 1) -> str:
        return self.client.session_of(f"occoord {run_id}/{task_id}#{attempt}").id

    def summary(self, run_id: str) -> dict[str, Any] | None:
        path = self.spool.runs / run_id / "summary.json"
        return json.loads(path.read_text()) if path.exists() else None
