"""The baseline of figure 1: what the bash coordinator does, polling incoming/ once per second.

``while true; do for f in incoming/*.json; do dispatch "$f"; done; sleep 1; done``, with the
dispatch done the cheapest way there is (one reused HTTP connection, no files written, no fsync):
create a session titled ``baseline STEM/TASK`` for each task and send its prompt.

Usage: python benchmarks/baseline_poll.py INCOMING_DIR SERVER_URL WORKDIR
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx


def main() -> None:
    incoming, server, workdir = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    done = incoming.parent / "baseline-done"
    done.mkdir(exist_ok=True)
    with httpx.Client(base_url=server, timeout=30) as http:
        print("baseline: polling", incoming, flush=True)
        while True:
            for name in sorted(os.listdir(incoming)):
                if not name.endswith(".json"):
                    continue
                path = incoming / name
                plan = json.loads(path.read_bytes())
                for task in plan["tasks"]:
                    params = {"directory": workdir}
                    title = f"baseline {path.stem}/{task['id']}"
                    session = http.post("/session", params=params, json={"title": title}).json()
                    body = {"parts": [{"type": "text", "text": task["prompt"]}]}
                    http.post(f"/session/{session['id']}/prompt_async", params=params, json=body)
                os.rename(path, done / name)
            time.sleep(1.0)


if __name__ == "__main__":
    main()
