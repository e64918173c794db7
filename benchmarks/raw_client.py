"""The raw baseline of figure 3: the same sessions as an occoord run, driven straight over HTTP.

No spool, no files, no fsync: for each of N tasks (at most CONCURRENCY at once) create a session,
send its prompt, wait for its ``session.idle`` event on ``/global/event`` and read its messages
(occoord classifies the turn from them), exactly the calls occoord makes per task.

Usage: python benchmarks/raw_client.py SERVER_URL WORKDIR N CONCURRENCY PROMPT_CHARS
Prints one JSON line: {"tasks": N, "elapsed_s": ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def main() -> None:
    server, workdir = sys.argv[1], sys.argv[2]
    count, concurrency, prompt_chars = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's defaults
    async with httpx.AsyncClient(base_url=server, timeout=60, limits=limits) as http:
        idle: dict[str, asyncio.Future[None]] = {}
        early: set[str] = set()
        connected = asyncio.get_running_loop().create_future()

        async def events() -> None:
            headers = {"Accept": "text/event-stream"}
            async with http.stream("GET", "/global/event", headers=headers, timeout=None) as response:
                async for line in response.aiter_lines():
                    if not connected.done():
                        connected.set_result(None)
                    if not line.startswith("data: "):
                        continue
                    payload = json.loads(line[6:]).get("payload", {})
                    if payload.get("type") == "session.idle":
                        sid = payload["properties"]["sessionID"]
                        fut = idle.get(sid)
                        if fut is None:
                            early.add(sid)
                        elif not fut.done():
                            fut.set_result(None)

        reader = asyncio.ensure_future(events())
        await connected
        gate = asyncio.Semaphore(concurrency)
        params = {"directory": workdir}
        padding = "x" * max(0, prompt_chars)

        async def one(i: int) -> None:
            async with gate:
                response = await http.post("/session", params=params, json={"title": f"raw task-{i}"})
                sid = response.json()["id"]
                fut = idle[sid] = asyncio.get_running_loop().create_future()
                if sid in early:
                    fut.set_result(None)
                body = {"parts": [{"type": "text", "text": f"[sim: work 0] task {i}\n{padding}"}]}
                await http.post(f"/session/{sid}/prompt_async", params=params, json=body)
                await fut
                (await http.get(f"/session/{sid}/message", params=params)).raise_for_status()
                del idle[sid]

        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        elapsed = time.monotonic() - start
        reader.cancel()
    print(json.dumps({"tasks": count, "elapsed_s": elapsed}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
