"""The baseline of the stream benchmark: the least a correct consumer of ``/global/event`` does.

Standard library only (http.client: its chunked decoding; no httpx): read the stream, split it
into lines, ``json.loads`` every ``data:`` payload, count. Prints ``connected`` once the first event
arrived, and on SIGTERM one JSON line ``{"events": N}`` (the ``server.connected`` event included).

Usage: python benchmarks/sse_reader.py SERVER_URL
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
from types import FrameType
from urllib.parse import urlsplit


def main() -> None:
    url = urlsplit(sys.argv[1])
    count = 0

    def stop(_signum: int, _frame: FrameType | None) -> None:
        print(json.dumps({"events": count}), flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80)
    conn.request("GET", "/global/event", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    rest = b""
    while True:
        chunk = response.read1(65536)
        if not chunk:
            break
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                json.loads(line[5:])
                count += 1
                if count == 1:
                    print("connected", flush=True)
    print(json.dumps({"events": count}), flush=True)


if __name__ == "__main__":
    main()
