"""Servers declared as files (SPOOL/servers/NAME.json) and as --server options, read in process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from occoord.engine.servers import (
    attached_servers,
    parse_server_options,
    read_server_file,
    scan_server_files,
)
from occoord.engine.watcher import _hint_for
from occoord.errors import ConfigError


def write(folder: Path, name: str, doc: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def secret(tmp_path: Path, mode: int, text: str = "s3cret\n") -> Path:
    path = tmp_path / "pw"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_full_server_file_is_read(tmp_path: Path) -> None:
    pw = secret(tmp_path, 0o600)
    path = write(
        tmp_path / "servers",
        "gpu-1.json",
        {"url": "http://10.0.0.5:4096/", "password_file": str(pw), "capacity": 3, "labels": ["gpu"]},
    )
    spec = read_server_file(path)
    assert (spec.name, spec.url, spec.capacity, spec.labels) == ("gpu-1", "http://10.0.0.5:4096", 3, {"gpu"})
    assert spec.secret() == "s3cret"
    assert "s3cret" not in repr(spec)


def test_the_password_is_read_at_use(tmp_path: Path) -> None:
    pw = secret(tmp_path, 0o600)
    spec = read_server_file(
        write(tmp_path / "servers", "a.json", {"url": "http://h:1", "password_file": str(pw)})
    )
    pw.write_text("rotated")
    assert spec.secret() == "rotated"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("{not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({}, "'url'"),
        ({"url": "ftp://x"}, "'url'"),
        ({"url": "http://h:1", "capacity": 0}, "'capacity'"),
        ({"url": "http://h:1", "capacity": True}, "'capacity'"),
        ({"url": "http://h:1", "labels": "gpu"}, "'labels'"),
        ({"url": "http://h:1", "labels": [""]}, "'labels'"),
        ({"url": "http://h:1", "password": "inline"}, "unknown keys"),
        ({"url": "http://h:1", "password_file": "relative/pw"}, "absolute"),
        ({"url": "http://h:1", "password_file": "/nonexistent/pw"}, "cannot read"),
    ],
)
def test_a_bad_server_file_says_why_and_names_the_file(tmp_path: Path, doc: object, reason: str) -> None:
    path = write(tmp_path / "servers", "bad.json", doc)
    with pytest.raises(ConfigError) as caught:
        read_server_file(path)
    assert reason in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    pw = secret(tmp_path, 0o644)
    path = write(tmp_path / "servers", "a.json", {"url": "http://h:1", "password_file": str(pw)})
    with pytest.raises(ConfigError, match="world-readable"):
        read_server_file(path)
    pw.chmod(0o640)  # readable by its group is the owner's choice
    assert read_server_file(path).secret() == "s3cret"


def test_a_scan_skips_and_logs_bad_files_and_temporaries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "servers"
    write(folder, "good.json", {"url": "http://h:1"})
    bad = write(folder, "bad.json", {"url": 5})
    write(folder, ".good.json.tmp", "{")
    write(folder, "notes.txt", "hello")
    write(folder, "bad name.json", {"url": "http://h:2"})
    with caplog.at_level(logging.ERROR):
        found = scan_server_files(folder)
    assert list(found) == ["good"]
    assert str(bad) in caplog.text and "'url'" in caplog.text
    assert "bad name.json" in caplog.text
    assert scan_server_files(tmp_path / "missing") == {}


def test_server_options_are_named_by_position_or_by_name() -> None:
    assert parse_server_options(["http://a:1", "fast=http://b:2,http://c:3"]) == [
        ("server-1", "http://a:1"),
        ("fast", "http://b:2"),
        ("server-3", "http://c:3"),
    ]
    assert parse_server_options(["http://a:1/?x=1"]) == [("server-1", "http://a:1/?x=1")]
    with pytest.raises(ConfigError, match="twice"):
        parse_server_options(["a=http://a:1", "a=http://b:1"])
    with pytest.raises(ConfigError, match="NAME=URL"):
        parse_server_options(["bad name=http://a:1"])


def test_one_server_alone_is_the_default_member_as_before_pools() -> None:
    assert attached_servers(["http://a:1"]) == [("default", "http://a:1")]
    assert attached_servers(["main=http://a:1"]) == [("main", "http://a:1")]
    assert attached_servers([]) == []
    assert [n for n, _ in attached_servers(["http://a:1", "http://b:1"])] == ["server-1", "server-2"]


def test_the_watcher_hints_server_file_changes(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    hint = _hint_for(root, str(root / "servers" / "gpu.json"), settled=True)
    assert hint is not None and hint.kind == "servers"
    assert _hint_for(root, str(root / "servers"), settled=False) is not None
    assert _hint_for(root, str(root / "servers" / ".gpu.json.tmp"), settled=True) is None
    assert _hint_for(root, str(root / "servers" / "notes.txt"), settled=True) is None
