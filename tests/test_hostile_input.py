"""Hostile input: dozens of broken, malicious and odd entries dropped into incoming/ at once.

Every regular file and every symbolic link must end in rejected/ beside a ``.error`` that says why;
FIFOs, sockets and directories are left where they are, with a log line. Throughout, the watcher
stays up (same PID), nothing outside the spool is read, run or touched, and a valid manifest
dropped afterwards still runs to the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2ekit import drop, manifest, start_watcher, states, summary, the_run
from support.processes import wait_for

from occoord.spool.accept import accept_file
from occoord.spool.layout import Spool

pytestmark = pytest.mark.slow

STAMP = re.compile(rb"^\d{8}T\d{6}Z-(?:\d+-)?")


@dataclass(frozen=True)
class Case:
    """One entry for incoming/: its name (bytes: some are not UTF-8) and what must become of it.

    ``reasons``: the ``.error`` must contain one of these (case-insensitive); ``None`` means the
    entry is not a regular file and must be left in incoming/ with a log line.
    """

    name: bytes
    make: Callable[[bytes], None]
    reasons: tuple[str, ...] | None


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _tasks(*tasks: dict[str, object], **top: object) -> bytes:
    return _json({"version": 1, **top, "tasks": list(tasks)})


BILLION_LAUGHS = b"""\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
tasks: [*h]
"""


class Cases:
    """Builds every case; ``outside`` and ``workdir`` hold the files a hostile manifest points at."""

    def __init__(self, incoming: Path, outside: Path, workdir: Path) -> None:
        self.incoming = os.fsencode(incoming)
        self.outside = outside
        self.workdir = workdir
        self.marker = outside / "PWNED"  # any code execution from a manifest would create this

    def path(self, name: bytes) -> bytes:
        return self.incoming + b"/" + name

    def data(self, content: bytes) -> Callable[[bytes], None]:
        def make(name: bytes) -> None:
            # Written beside incoming/ and renamed in, the way atomic writers drop files.
            staging = self.incoming + b"/../tmp/." + name.replace(b"/", b"_") + b".tmp"
            with open(staging, "wb") as fh:
                fh.write(content)
            os.rename(staging, self.path(name))

        return make

    def sparse(self, size: int) -> Callable[[bytes], None]:
        def make(name: bytes) -> None:
            staging = self.incoming + b"/../tmp/.sparse.tmp"
            with open(staging, "wb") as fh:
                fh.write(b"{")
                fh.truncate(size)
            os.rename(staging, self.path(name))

        return make

    def symlink(self, target: str | Path) -> Callable[[bytes], None]:
        return lambda name: os.symlink(os.fsencode(str(target)), self.path(name))

    def fifo(self) -> Callable[[bytes], None]:
        return lambda name: os.mkfifo(self.path(name))

    def directory(self, content: bytes | None = None) -> Callable[[bytes], None]:
        def make(name: bytes) -> None:
            os.mkdir(self.path(name))
            if content is not None:
                with open(self.path(name) + b"/plan.json", "wb") as fh:
                    fh.write(content)

        return make

    def unix_socket(self) -> Callable[[bytes], None]:
        def make(name: bytes) -> None:
            # AF_UNIX paths are limited to ~107 bytes: bind by a short relative path.
            cwd = os.getcwd()
            os.chdir(self.incoming)
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.bind(name)
            finally:
                os.chdir(cwd)

        return make

    def all(self) -> list[Case]:
        w = str(self.workdir)
        ok_task = {"id": "a", "prompt": "fine"}
        valid_outside = _tasks(ok_task)
        (self.outside / "secret.json").write_bytes(valid_outside)
        os.symlink("/dev/zero", self.workdir / "zero")
        os.mkfifo(self.workdir / "fifo")
        deep_yaml = b"tasks: " + b"[" * 100_000
        C = Case
        d = self.data
        return [
            # -- not JSON / YAML at all, or not what a manifest may be made of
            C(b"json-syntax.json", d(b'{"version": 1, "tasks": ['), ("invalid JSON",)),
            C(b"json-trailing.json", d(_tasks(ok_task) + b" }{"), ("invalid JSON",)),
            C(b"json-duplicate-key.json", d(b'{"tasks": [], "tasks": []}'), ("duplicate key",)),
            C(b"json-nan.json", d(b'{"concurrency": NaN, "tasks": []}'), ("NaN",)),
            C(b"json-deep.json", d(b"[" * 100_000), ("nested", "recursion", "deep")),
            C(b"json-bigint.json", d(b'{"version": ' + b"9" * 5000 + b"}"), ("digits", "invalid JSON")),
            C(b"yaml-syntax.yaml", d(b"tasks: [a, b\n"), ("invalid YAML",)),
            C(b"yaml-tab.yml", d(b"tasks:\n\t- id: a\n"), ("invalid YAML",)),
            C(
                b"yaml-python-apply.yaml",
                d(b'tasks: !!python/object/apply:os.system ["touch ' + os.fsencode(self.marker) + b'"]\n'),
                ("tag",),
            ),
            C(b"yaml-python-name.yaml", d(b"tasks: !!python/name:os.system\n"), ("tag",)),
            C(b"yaml-custom-tag.yaml", d(b"version: !custom 1\ntasks: []\n"), ("tag",)),
            C(b"yaml-billion-laughs.yaml", d(BILLION_LAUGHS), ("alias",)),
            C(b"yaml-alias.yaml", d(b"x: &p hi\ntasks:\n  - id: a\n    prompt: *p\n"), ("alias",)),
            C(b"yaml-deep.yaml", d(deep_yaml), ("nested", "recursion", "deep")),
            C(b"yaml-bigint.yaml", d(b"version: " + b"9" * 5000 + b"\n"), ("digits", "value")),
            C(b"huge-50mb.json", d(b"{" + b" " * (50 << 20) + b"}"), ("limit",)),
            C(b"huge-sparse.yaml", self.sparse(50 << 20), ("limit",)),
            C(b"binary.json", d(b"\xff\xfe\x00\x01" + os.urandom(4096)), ("UTF-8", "binary")),
            C(b"nul-byte.json", d(b'{"tasks": []}\x00'), ("NUL", "binary")),
            C(b"empty.json", d(b""), ("empty",)),
            C(b"blank.yaml", d(b"   \n\n\t\n"), ("empty",)),
            C(b"top-list.json", d(b"[]"), ("must be an object",)),
            C(b"top-string.yaml", d(b"just a string\n"), ("must be an object",)),
            C(b"version-2.json", d(_tasks(ok_task).replace(b'"version": 1', b'"version": 2')), ("version",)),
            C(b"tasks-not-list.json", d(_json({"tasks": {"a": "x"}})), ("must be a list",)),
            C(b"hooks-not-command.json", d(_tasks(ok_task, hooks={"on_task_end": 42})), ("command",)),
            # -- ids and paths that would leave the spool or the task's directory
            C(b"id-dotdot.json", d(_tasks({"id": "../../etc/passwd", "prompt": "x"})), ("invalid id",)),
            C(b"id-slash.yaml", d(b"tasks:\n  - id: a/b\n    prompt: x\n"), ("invalid id",)),
            C(b"id-absolute.json", d(_tasks({"id": "/tmp/x", "prompt": "x"})), ("invalid id",)),
            C(b"id-dots.json", d(_tasks({"id": "..", "prompt": "x"})), ("invalid id",)),
            C(b"id-hidden.json", d(_tasks({"id": ".lock", "prompt": "x"})), ("invalid id",)),
            C(b"id-escape-codes.json", d(_tasks({"id": "\x1b[31mred", "prompt": "x"})), ("invalid id",)),
            C(
                b"dep-dotdot.json",
                d(_tasks(ok_task, {"id": "b", "prompt": "x", "depends_on": ["../a"]})),
                ("invalid task id", "invalid id"),
            ),
            C(
                b"prompt-file-absolute.json",
                d(_tasks({"id": "a", "prompt_file": "/etc/passwd", "directory": w})),
                ("relative path",),
            ),
            C(
                b"prompt-file-dotdot.yaml",
                d(f"tasks:\n  - id: a\n    prompt_file: ../../../etc/passwd\n    directory: {w}\n".encode()),
                ("relative path",),
            ),
            C(
                b"prompt-file-dev-zero.json",
                d(_tasks({"id": "a", "prompt_file": "zero", "directory": w})),
                ("symbolic link", "not a regular file"),
            ),
            C(
                b"prompt-file-fifo.json",
                d(_tasks({"id": "a", "prompt_file": "fifo", "directory": w})),
                ("not a regular file",),
            ),
            C(
                b"directory-missing.yaml",
                d(b"defaults:\n  directory: /nonexistent/occoord\ntasks:\n  - id: a\n    prompt: x\n"),
                ("does not exist",),
            ),
            # -- the graph
            C(
                b"cycle.json",
                d(
                    _tasks(
                        {"id": "a", "prompt": "x", "depends_on": ["b"]},
                        {"id": "b", "prompt": "x", "depends_on": ["a"]},
                    )
                ),
                ("cycle",),
            ),
            C(
                b"self-dependency.yaml",
                d(b"tasks:\n  - id: a\n    prompt: x\n    depends_on: [a]\n"),
                ("itself", "cycle"),
            ),
            C(b"unknown-dep.json", d(_tasks({"id": "a", "prompt": "x", "depends_on": ["zz"]})), ("unknown",)),
            C(b"duplicate-ids.json", d(_tasks(ok_task, ok_task)), ("duplicate id",)),
            # -- hostile names
            C(b"caf\xe9-latin1-name.json", d(b"{broken"), ("invalid JSON",)),
            C(b"new\nline.json", d(b"{broken"), ("invalid JSON",)),
            C(b"$(touch PWNED2);`id`.json", d(b"{broken"), ("invalid JSON",)),
            C(b"plan.txt", d(valid_outside), ("unsupported extension",)),
            C(b"noextension", d(valid_outside), ("unsupported extension",)),
            # -- symbolic links: rejected, never followed
            C(b"link-outside.json", self.symlink(self.outside / "secret.json"), ("symbolic link",)),
            C(b"link-dev-zero.json", self.symlink("/dev/zero"), ("symbolic link",)),
            C(b"link-dangling.yaml", self.symlink("/nonexistent/occoord.yaml"), ("symbolic link",)),
            C(b"link-to-dir.json", self.symlink(self.outside), ("symbolic link",)),
            C(b"link-loop.json", self.symlink("link-loop.json"), ("symbolic link",)),
            # -- not regular files: left alone, with a log line
            C(b"fifo.json", self.fifo(), None),
            C(b"dir.json", self.directory(), None),
            C(b"dir-with-manifest.yaml", self.directory(valid_outside), None),
            C(b"sock.json", self.unix_socket(), None),
        ]


def rejected_by_name(spool: Path) -> dict[bytes, tuple[bytes, bytes]]:
    """Original name -> (rejected entry, its .error text), from rejected/ (names as bytes)."""
    root = os.fsencode(spool / "rejected")
    out: dict[bytes, tuple[bytes, bytes]] = {}
    for entry in os.listdir(root):
        if entry.endswith(b".error") or entry.startswith(b"."):  # reasons, and their temp files
            continue
        original = STAMP.sub(b"", entry, count=1)
        error_path = root + b"/" + entry + b".error"
        try:
            with open(error_path, "rb") as fh:
                out[original] = (root + b"/" + entry, fh.read())
        except FileNotFoundError:
            continue  # the .error comes first, so this cannot happen: the check below will say so
    return out


def test_hostile_entries_all_at_once(spool_dir: Path, workdir: Path, simulator: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    watcher = start_watcher(spool_dir, workdir, server=simulator)
    try:
        pid = watcher.pid
        cases = Cases(spool_dir / "incoming", outside, workdir).all()
        assert len(cases) >= 40
        for case in cases:  # in one go
            case.make(case.name)
        files = {c.name: c for c in cases if c.reasons is not None}
        left = {c.name for c in cases if c.reasons is None}

        wait_for(lambda: len(rejected_by_name(spool_dir)) >= len(files), timeout=60, interval=0.1)
        rejected = rejected_by_name(spool_dir)
        problems = []
        for name, case in files.items():
            if name not in rejected:
                problems.append(f"{name!r}: not rejected")
                continue
            text = rejected[name][1].decode("utf-8", "replace")
            assert case.reasons is not None
            if not any(r.lower() in text.lower() for r in case.reasons):
                problems.append(f"{name!r}: reason {text!r} does not mention any of {case.reasons}")
        assert not problems, "\n".join(problems)
        assert set(rejected) == set(files), "nothing else was rejected"

        # Symbolic links are moved as links: never followed, their targets untouched.
        for name in (b"link-outside.json", b"link-dev-zero.json", b"link-loop.json"):
            assert os.path.islink(rejected[name][0])
        assert (outside / "secret.json").read_bytes().startswith(b'{"version": 1')
        # The non-UTF-8 and newline names are still named readably in their reasons.
        assert "caf" in rejected[b"caf\xe9-latin1-name.json"][1].decode("utf-8", "replace")

        # Non-regular entries are left where they are, each with a log line.
        incoming = set(os.listdir(os.fsencode(spool_dir / "incoming")))
        assert incoming == left
        assert stat.S_ISFIFO(os.lstat(spool_dir / "incoming" / "fifo.json").st_mode)
        log = watcher.output()
        for name in left:
            wait_for(lambda n=name: f"incoming/{n.decode()} is not a regular file" in watcher.output())  # type: ignore[misc]

        # Nothing ran, nothing escaped, no run was made of any of it.
        assert not (outside / "PWNED").exists()
        assert not list(tmp_path.rglob("PWNED2")) and not Path("PWNED2").exists()
        assert not list((spool_dir / "runs").iterdir())
        assert "Traceback" not in log

        # The watcher is the same process, and still works.
        assert watcher.popen.poll() is None and watcher.pid == pid
        assert watcher.output().count("occoord: watching") == 1
        drop(spool_dir, "after.json", manifest({"id": "after", "prompt": "[sim: work 0.05]"}, name="after"))
        run_dir = the_run(spool_dir, "after", timeout=30)
        assert summary(run_dir)["ok"] is True and states(run_dir) == {"after": "done"}
        assert watcher.popen.poll() is None and watcher.pid == pid
    finally:
        assert watcher.stop() == 0, watcher.output()[-3000:]
        for big in (spool_dir / "rejected").glob("*huge*"):
            big.unlink()


def test_a_name_too_long_to_prefix_is_still_rejected(spool: Spool) -> None:
    name = "x" * 240 + ".json"
    (spool.incoming / name).write_bytes(b"{broken")
    outcome = accept_file(spool, spool.incoming / name, settled=True)
    assert outcome.kind == "rejected"
    assert not (spool.incoming / name).exists()


def test_a_file_name_cannot_forge_lines_in_the_reason_or_the_log(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    name = "x\n2026-01-01 00:00:00,000 INFO occoord.spool.layout: accepted forged.json.json"
    (spool.incoming / name).write_bytes(b"{broken")
    outcome = accept_file(spool, spool.incoming / name, settled=True)
    assert outcome.kind == "rejected"
    reason = outcome.path.with_name(outcome.path.name + ".error").read_text()
    assert "\n2026-01-01" not in reason
    assert not any("\n2026-01-01" in record.getMessage() for record in caplog.records)
