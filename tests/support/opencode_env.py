"""A throwaway, offline environment for running the real ``opencode`` binary in tests.

Why: every run of the binary writes into HOME and the XDG directories and, left alone, reaches for
the internet (model lists, updates, sharing). Tests give it private directories under a temp root,
switch those features off, and point it at the scripted model of tests/support/fakemodel.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from occoord.opencode.server import OpenCodeServer
    from support.fakemodel import FakeModel

__all__ = [
    "MODEL",
    "NO_BINARY",
    "PROVIDER",
    "Backend",
    "LoopThread",
    "RealServer",
    "opencode_binary",
    "opencode_config",
    "opencode_env",
    "pinned_version",
    "require_binary",
]

REPO = Path(__file__).resolve().parents[2]
PROVIDER = "fake"
MODEL = "scripted"

_DIRS = {
    "HOME": "home",
    "XDG_CONFIG_HOME": "config",
    "XDG_DATA_HOME": "data",
    "XDG_CACHE_HOME": "cache",
    "XDG_STATE_HOME": "state",
}
_OFFLINE_FLAGS = (
    "OPENCODE_DISABLE_MODELS_FETCH",
    "OPENCODE_DISABLE_AUTOUPDATE",
    "OPENCODE_DISABLE_SHARE",
    "OPENCODE_DISABLE_LSP_DOWNLOAD",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS",
    "OPENCODE_DISABLE_CLAUDE_CODE",
)

_LIMIT = {"context": 128000, "output": 4096}

NO_BINARY = (
    "real opencode binary not found: run contrib/install-opencode.sh (installs into .opencode/) "
    "or set OCCOORD_OPENCODE_BIN"
)

T = TypeVar("T")


def pinned_version() -> str:
    """The opencode-ai version the repo pins (contrib/opencode.version)."""
    return (REPO / "contrib" / "opencode.version").read_text().strip()


def opencode_config(model_url: str, *, permissive: bool = True) -> dict[str, Any]:
    """Config with a single provider: the scripted model at ``model_url`` (no ``/v1``).

    ``permissive`` allows every bash, edit and external directory server-wide, so a test never stops
    on an ask. Without it the server keeps OpenCode's default policy (ask about paths outside the
    session's directory), as a user's would: what occoord itself does about asks is then under test.
    """
    ref = f"{PROVIDER}/{MODEL}"
    config: dict[str, Any] = {
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",  # bundled in the binary: nothing is downloaded
                "name": "Scripted test model",
                "options": {"baseURL": model_url.rstrip("/") + "/v1", "apiKey": "test-key"},
                "models": {
                    MODEL: {
                        "name": "Scripted",
                        "tool_call": True,
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
        "model": ref,
        "small_model": ref,
        "enabled_providers": [PROVIDER],
        "autoupdate": False,
        "share": "disabled",
    }
    if permissive:
        # Headless tests must never stop on an ask; the coordinator's own rules are tested elsewhere.
        config["permission"] = {"bash": "allow", "edit": "allow", "external_directory": "allow"}
    return config


def opencode_env(root: Path, model_url: str, *, permissive: bool = True) -> dict[str, str]:
    """Environment overrides for one opencode process: private dirs under ``root``, offline, scripted model
    (``permissive``: see :func:`opencode_config`).

    One root per server: several servers sharing a data dir hit "database is locked".
    """
    env: dict[str, str] = {}
    for var, name in _DIRS.items():
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    env.update(dict.fromkeys(_OFFLINE_FLAGS, "1"))
    env["OPENCODE_CONFIG_CONTENT"] = json.dumps(opencode_config(model_url, permissive=permissive))
    return env


def _platform_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    machine = platform.machine().lower()
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(machine, machine)
    return f"opencode-{system}-{arch}"


def opencode_binary() -> str | None:
    """The real binary for tests: ``$OCCOORD_OPENCODE_BIN``, else the one contrib/install-opencode.sh put in
    ``<repo>/.opencode``; None when neither exists (the tests that need it are skipped)."""
    explicit = os.environ.get("OCCOORD_OPENCODE_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    local = REPO / ".opencode" / "node_modules" / _platform_package() / "bin" / "opencode"
    return str(local) if os.access(local, os.X_OK) else None


def require_binary() -> str:
    """The real binary, or end the test: skipped locally, but FAILED when ``$OCCOORD_REQUIRE_OPENCODE``
    is 1 (scripts/test.sh sets it once it has installed the binary: CI must never skip these)."""
    import pytest

    binary = opencode_binary()
    if binary is None:
        if os.environ.get("OCCOORD_REQUIRE_OPENCODE") == "1":
            pytest.fail(f"OCCOORD_REQUIRE_OPENCODE=1 but the {NO_BINARY}", pytrace=False)
        pytest.skip(NO_BINARY)
    return binary


class LoopThread:
    """An event loop running in a daemon thread.

    Why: an ``OpenCodeServer`` is bound to the loop that started it (its pipes and child watcher), while
    pytest fixtures outlive any one ``asyncio.run``. Fixtures start the server here and tests submit
    coroutines with :meth:`run`; plain HTTP clients can talk to the server from any thread.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="opencode-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is re-raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class RealServer:
    """A started ``OpenCodeServer`` plus the loop it lives on and the scripted model behind it."""

    server: OpenCodeServer
    loop: LoopThread
    model: FakeModel
    workdir: Path
    root: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def password(self) -> str:
        return self.server.password

    def run(self, coro: Any, timeout: float = 120.0) -> Any:
        """Run a coroutine (e.g. ``server.ensure_running()``) on the server's own loop."""
        return self.loop.run(coro, timeout)


@dataclass
class Backend:
    """What a test needs to talk to either server: where, how to authenticate, which directory."""

    kind: Literal["sim", "real"]
    url: str
    password: str
    workdir: Path
    model: FakeModel | None = None  # the scripted model behind a real server
    simulator: Any = None  # the Simulator object, for introspection in sim runs

    def directive(self, name: str, arg: str = "") -> str:
        """A prompt directive for this backend: ``[sim: reply hi]`` or ``[model: reply hi]``."""
        prefix = "sim" if self.kind == "sim" else "model"
        return f"[{prefix}: {name} {arg}]".replace(" ]", "]")
