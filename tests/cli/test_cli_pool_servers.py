"""logs and attach find a pool task's own server: spawned, declared in a server file, or attached."""

from __future__ import annotations

import json
import os
from pathlib import Path

from occoord.cli.common import find_server
from occoord.spool.layout import Spool


def test_a_declared_server_is_found_with_the_password_from_its_file(spool: Spool, tmp_path: Path) -> None:
    secret = tmp_path / "alpha.password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    (spool.root / "servers").mkdir()
    (spool.root / "servers" / "alpha.json").write_text(
        json.dumps({"url": "http://127.0.0.1:4101", "password_file": str(secret)})
    )
    found = find_server(spool, None, None, "alpha")
    assert found is not None and found.url == "http://127.0.0.1:4101" and found.password == "s3cret"


def test_an_attached_server_is_found_by_its_name_in_the_watchers_report(spool: Spool) -> None:
    report = {"pid": os.getpid(), "servers": [{"name": "server-2", "url": "http://127.0.0.1:4102"}]}
    (spool.root / "watcher.json").write_text(json.dumps(report))
    found = find_server(spool, None, "pw", "server-2")
    assert found is not None and found.url == "http://127.0.0.1:4102" and found.password == "pw"
    assert find_server(spool, None, None, "nobody") is None
    assert find_server(spool, "http://127.0.0.1:9", None, "server-2").url == "http://127.0.0.1:9"  # type: ignore[union-attr]
