"""A streamed answer (``[sim: stream CHUNKS RATE]``): what a real model's reply looks like on the wire.

A real server sends every token chunk of an answer as one ``message.part.delta`` event, with a
``message.part.updated`` (the part's whole text so far) now and then. The pacing follows the clock,
not the number of wake-ups: a loop that falls behind catches up with a burst, so the rate asked for
is the rate emitted on average.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["UPDATE_EVERY", "stream_text"]

UPDATE_EVERY = 25  # deltas between two part updates
_WORDS = ("the ", "model ", "streams ", "its ", "answer ", "one ", "token ", "chunk ", "at ", "a ", "time. ")


async def stream_text(
    delta: Callable[[str], None], update: Callable[[str], None], chunks: int, rate: float, time_scale: float
) -> None:
    """Emit ``chunks`` deltas (``delta(chunk)``) at ``rate`` per (scaled) second, calling
    ``update(text so far)`` every UPDATE_EVERY deltas and once at the end."""
    loop = asyncio.get_running_loop()
    interval = time_scale / rate
    start = loop.time()
    text: list[str] = []
    sent = 0
    while sent < chunks:
        due = min(chunks, int((loop.time() - start) / interval) + 1)
        while sent < due:
            chunk = _WORDS[sent % len(_WORDS)]
            text.append(chunk)
            delta(chunk)
            sent += 1
            if sent % UPDATE_EVERY == 0:
                update("".join(text))
        if sent < chunks:
            await asyncio.sleep(max(0.0, start + sent * interval - loop.time()))
    update("".join(text))
