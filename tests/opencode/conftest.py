"""Fixtures for the OpenCode wing: the scripted model, the real server, the simulator, and a ``backend``
fixture that runs a test against both, so the simulator is held to what the real server does."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fakemodel import FakeModel
from support.opencode_env import Backend, LoopThread, RealServer, opencode_env, require_binary

from occoord.opencode.server import OpenCodeServer


def _start_real(binary: str, root: Path, model: FakeModel) -> RealServer:
    workdir = root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    loop = LoopThread()
    server = OpenCodeServer(
        binary=binary,
        cwd=workdir,
        log_path=root / "opencode.log",
        env=opencode_env(root / "env", model.url),
    )
    try:
        loop.run(server.start())
    except BaseException:
        loop.run(server.stop())
        loop.close()
        raise
    return RealServer(server=server, loop=loop, model=model, workdir=workdir, root=root)


def _stop_real(real: RealServer) -> None:
    try:
        real.loop.run(real.server.stop(), timeout=30)
    finally:
        real.loop.close()


@pytest.fixture
def fake_model() -> Iterator[FakeModel]:
    model = FakeModel()
    model.start()
    yield model
    model.stop()


@pytest.fixture(scope="session")
def opencode_bin() -> str:
    """The real binary; its absence skips the test, or fails it under OCCOORD_REQUIRE_OPENCODE=1 (CI)."""
    return require_binary()


@pytest.fixture
def real_server(opencode_bin: str, fake_model: FakeModel, tmp_path: Path) -> Iterator[RealServer]:
    """A fresh real server per test (tests that kill or stop it use this one)."""
    real = _start_real(opencode_bin, tmp_path / "real", fake_model)
    yield real
    _stop_real(real)


@pytest.fixture(scope="session")
def shared_real_server(opencode_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """One real server for all ``backend`` tests: it serves many directories, and starting one costs
    seconds. Tests get their own workdir, so they do not see each other's sessions."""
    model = FakeModel()
    model.start()
    try:
        real = _start_real(opencode_bin, tmp_path_factory.mktemp("shared-real"), model)
    except BaseException:
        model.stop()
        raise
    yield real
    _stop_real(real)
    model.stop()


@pytest.fixture
def sim_password() -> str:
    """The Basic-auth password of the ``simulator`` fixture (auth on, like the real server)."""
    return secrets.token_urlsafe(16)


@pytest.fixture
def simulator(sim_password: str) -> Iterator[Any]:
    from occoord.sim.simulator import Simulator  # written in parallel; import only when used

    sim = Simulator(password=sim_password)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture(params=["sim", pytest.param("real", marks=pytest.mark.real_opencode)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    if request.param == "sim":
        sim = request.getfixturevalue("simulator")
        password: str = request.getfixturevalue("sim_password")
        return Backend(kind="sim", url=sim.url, password=password, workdir=workdir, simulator=sim)
    real: RealServer = request.getfixturevalue("shared_real_server")
    return Backend(kind="real", url=real.url, password=real.password, workdir=workdir, model=real.model)
