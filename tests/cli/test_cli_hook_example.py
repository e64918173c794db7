"""contrib/hooks/notify.sh, the README's notification recipe: a desktop notification (a fake
notify-send here) and a plain HTTP POST (to a server on 127.0.0.1), from the OCCOORD_* facts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "contrib" / "hooks" / "notify.sh"
FAKE_NOTIFY = """#!{python}
import json, sys
with open({out!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
"""


class _Record(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def push_server() -> Iterator[tuple[str, list[bytes]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Record)
    _Record.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/topic", _Record.bodies
    server.shutdown()
    server.server_close()


def run_hook(tmp_path: Path, facts: dict[str, str], *argv: str) -> tuple[list[str], int]:
    bindir, out = tmp_path / "bin", tmp_path / "notified.jsonl"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "notify-send"
    fake.write_text(FAKE_NOTIFY.format(python=sys.executable, out=str(out)))
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCCOORD_")}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env.update({f"OCCOORD_{k.upper()}": v for k, v in facts.items()})
    done = subprocess.run([str(HOOK), *argv], env=env, capture_output=True, text=True, timeout=30)
    return (out.read_text().splitlines() if out.exists() else []), done.returncode


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_failed_task_notifies_and_pushes(tmp_path: Path, push_server: tuple[str, list[bytes]]) -> None:
    url, bodies = push_server
    facts = {
        "spool": "/s",
        "run": "20260101T000000Z-demo",
        "run_dir": "/s/runs/20260101T000000Z-demo",
        "task": "flaky",
        "state": "failed",
        "reason": 'APIError: "quoted" $(not run) `nor this`',
        "attempt": "2",
        "session_id": "ses_1",
    }
    notified, code = run_hook(tmp_path, facts, url)
    assert code == 0
    assert len(notified) == 1 and '"--urgency=critical"' in notified[0]
    assert "occoord: 20260101T000000Z-demo/flaky failed" in notified[0]
    (body,) = bodies
    assert body.decode() == (
        'occoord: 20260101T000000Z-demo/flaky failed\nattempt 2: APIError: "quoted" $(not run) `nor this`\n'
    )


def test_a_run_without_a_url_only_notifies(tmp_path: Path) -> None:
    facts = {
        "spool": "/s",
        "run": "R",
        "run_dir": "/s/runs/R",
        "state": "done",
        "summary": "/s/runs/R/summary.json",
    }
    notified, code = run_hook(tmp_path, facts)
    assert code == 0
    assert (
        len(notified) == 1 and "occoord: run R done" in notified[0] and "/s/runs/R/summary.md" in notified[0]
    )
