"""service._streams_open: serving starts once every event stream is open, or after STREAMS_WAIT,
or at stop; the e2e side is tests/test_startup_stream.py."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from occoord.engine import service


def fleet(*events: asyncio.Event) -> Any:
    backends = {f"s{i}": SimpleNamespace(stream=SimpleNamespace(connected=e)) for i, e in enumerate(events)}
    return SimpleNamespace(backends=backends)


def test_waits_until_every_stream_is_open() -> None:
    async def main() -> float:
        a, b = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, a.set)
        loop.call_later(0.2, b.set)
        start = time.monotonic()
        await service._streams_open(fleet(a, b), asyncio.Event())
        assert a.is_set() and b.is_set()
        return time.monotonic() - start

    assert 0.15 < asyncio.run(main()) < 2.0


def test_gives_up_after_the_wait_or_at_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "STREAMS_WAIT", 0.1)

    async def main() -> None:
        start = time.monotonic()
        await service._streams_open(fleet(asyncio.Event()), asyncio.Event())
        assert 0.05 < time.monotonic() - start < 2.0
        stop = asyncio.Event()
        stop.set()
        monkeypatch.setattr(service, "STREAMS_WAIT", 30.0)
        start = time.monotonic()
        await service._streams_open(fleet(asyncio.Event()), stop)
        assert time.monotonic() - start < 2.0
        await service._streams_open(fleet(), asyncio.Event())  # no server yet: nothing to wait for

    asyncio.run(main())
