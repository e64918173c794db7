"""Options and helpers shared by the command modules (``main``, ``running``, ``top``, ``logs``...)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import termios
import tty
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from occoord.opencode.procinfo import ServerRecord, running
from occoord.spool.layout import Run, Spool
from occoord.spool.status import watcher_report

__all__ = [
    "SERVER_FILE",
    "ServerAddress",
    "find_server",
    "format_elapsed",
    "open_spool",
    "quit_keys",
    "server_options",
    "spool_option",
    "task_directory",
    "workdir_option",
]

# Written by the engine (engine.service.SERVER_FILE) for the server it spawned; read here without
# importing the engine, which would load the whole coordinator for a read-only command.
SERVER_FILE = "server.json"

F = TypeVar("F", bound=Callable[..., Any])


def spool_option(func: F) -> F:
    """Every subcommand takes ``--spool`` (env OCCOORD_SPOOL, default ./spool)."""
    return click.option(
        "--spool",
        "spool_dir",
        envvar="OCCOORD_SPOOL",
        default="spool",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Spool directory (env OCCOORD_SPOOL).",
    )(func)


def open_spool(spool_dir: Path, *, create: bool = True) -> Spool:
    spool = Spool(spool_dir)
    if not create:
        spool.check()
    return spool.init()


@dataclass(frozen=True)
class ServerAddress:
    """Where the commands that read a live session (``top``, ``logs``, ``attach``) find its server."""

    url: str
    password: str | None
    source: str  # "--server" or the record it came from, for messages


def server_options(func: F) -> F:
    """``--server``/``--server-password`` with the same environment mirrors as ``occoord watch``."""
    func = click.option(
        "--server-password",
        envvar="OCCOORD_SERVER_PASSWORD",
        default=None,
        help="Basic-auth password of --server (env OCCOORD_SERVER_PASSWORD; default: "
        "$OPENCODE_SERVER_PASSWORD).",
    )(func)
    return click.option(
        "--server",
        envvar="OCCOORD_SERVER",
        default=None,
        help="The OpenCode server's URL, for a watcher attached with --server (env OCCOORD_SERVER; "
        "default: the server the watcher spawned, from SPOOL/server.json).",
    )(func)


def find_server(
    spool: Spool, url: str | None, password: str | None, name: str | None = None
) -> ServerAddress | None:
    """The server of the spool's sessions: the one given (``--server``); else, for a task's
    recorded server ``name`` in a pool, that one (docs/SCALING.md); else the one the watcher
    spawned and recorded in SPOOL/server.json while it still runs, else the one a running watcher
    names in SPOOL/watcher.json (an attached server or the simulator); None when none is known."""
    if url:
        return ServerAddress(url, password or os.environ.get("OPENCODE_SERVER_PASSWORD") or None, "--server")
    if name and name != "default":
        member = _pool_member(spool, name, password)
        if member is not None:
            return member
    path = spool.root / SERVER_FILE
    try:
        record = ServerRecord.from_bytes(path.read_bytes())
    except OSError:
        record = None
    if record is not None and running(record.pid):
        return ServerAddress(record.url, record.password or None, str(path))
    # An attached server (or the simulator): the running watcher says where, never with a password.
    report = watcher_report(spool)
    if (
        report
        and report.get("running")
        and isinstance(report.get("server_url"), str)
        and report["server_url"]
    ):
        secret = password or os.environ.get("OPENCODE_SERVER_PASSWORD") or None
        return ServerAddress(report["server_url"], secret, str(spool.root / "watcher.json"))
    return None


def task_directory(run: Run, task: str, details: Mapping[str, Any], fallback: Path | None = None) -> str:
    """The directory a task's session lives in (its ``?directory=`` scope on the server): as the
    engine recorded it, else the manifest's, else ``fallback`` (the watcher's --workdir, which
    defaults to its current directory)."""
    recorded = details.get("directory")
    if isinstance(recorded, str) and recorded:
        return recorded
    spec = next((t for t in run.manifest.tasks if t.id == task), None)
    if spec is not None and spec.directory:
        return spec.directory
    return str((fallback or Path.cwd()).resolve())


def workdir_option(func: F) -> F:
    """``--workdir``: where the sessions of tasks whose manifest names no directory live."""
    return click.option(
        "--workdir",
        envvar="OCCOORD_WORKDIR",
        default=None,
        type=click.Path(file_okay=False, path_type=Path),
        help="The watcher's --workdir, for tasks whose manifest names no directory (env "
        "OCCOORD_WORKDIR; default: the current directory).",
    )(func)


def format_elapsed(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``; "" for None."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@contextlib.contextmanager
def quit_keys(loop: asyncio.AbstractEventLoop, quit_: asyncio.Event) -> Iterator[None]:
    """Sets ``quit_`` when ``q`` is pressed: stdin, if it is a terminal, reads single keys
    meanwhile (cbreak mode, in which Ctrl-C still signals); its settings are restored after."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    if fd < 0:
        yield
        return
    saved = termios.tcgetattr(fd)

    def readable() -> None:
        try:
            key = os.read(fd, 32)
        except OSError:
            return
        if not key or b"q" in key.lower():
            quit_.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pool_member(spool: Spool, name: str, password: str | None) -> ServerAddress | None:
    """Server ``name`` of a pool: spawned (SPOOL/servers/NAME.state, with its password), declared
    (SPOOL/servers/NAME.json, its password_file), or attached (--server; the watcher names its URL)."""
    folder = spool.root / "servers"
    state = folder / f"{name}.state"
    try:
        record = ServerRecord.from_bytes(state.read_bytes())
    except OSError:
        record = None
    if record is not None and running(record.pid):
        return ServerAddress(record.url, record.password or None, str(state))
    secret = password or os.environ.get("OPENCODE_SERVER_PASSWORD") or None
    try:
        declared = json.loads((folder / f"{name}.json").read_bytes())
    except (OSError, ValueError):
        declared = None
    if isinstance(declared, dict) and isinstance(declared.get("url"), str):
        password_file = declared.get("password_file")
        if isinstance(password_file, str):
            try:
                secret = Path(password_file).read_text().strip() or secret
            except OSError:
                pass
        return ServerAddress(declared["url"], secret, str(folder / f"{name}.json"))
    report = watcher_report(spool) or {}
    for server in report.get("servers") or []:
        if isinstance(server, dict) and server.get("name") == name and isinstance(server.get("url"), str):
            return ServerAddress(server["url"], secret, str(spool.root / "watcher.json"))
    return None
