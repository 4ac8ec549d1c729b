"""Shared fixtures: an in-process gateway for functional tests, real gateway processes for
client and crash tests, and a guard that fails any test that blocks the event loop."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from blockbuster import BlockBuster, blockbuster_ctx

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def blockbuster(request: pytest.FixtureRequest) -> Iterator[BlockBuster | None]:
    """A blocking call on the event loop (file I/O, sleep) fails the test.

    Only the gateway's own modules are watched; test code may block on purpose.
    """
    if request.node.get_closest_marker("allow_blocking"):
        yield None
        return
    with blockbuster_ctx(["gateway", "protocol", "notion_sink"]) as bb:
        yield bb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


ClientFactory = Callable[..., Any]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


StateBackend = Callable[[Path], dict[str, Any]]


@pytest.fixture(params=["disk", "redis"])
def backend(request: pytest.FixtureRequest) -> StateBackend:
    """Where gateways keep upload state: the same tests run against each backend.

    Returns the config overrides for a data directory; one data directory maps to one Redis
    key prefix, so a restarted gateway finds its uploads and tests never see each other's.
    A test that is about one backend's own mechanics parametrizes ``backend`` itself.
    """
    if request.param == "disk":
        return lambda data_dir: {}
    server: RedisServer = request.getfixturevalue("redis_server")

    def redis_settings(data_dir: Path) -> dict[str, Any]:
        prefix = "t" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]
        return {"redis_url": server.url, "redis_prefix": prefix}
    return redis_settings


@pytest.fixture
async def make_client(tmp_path: Path, backend: StateBackend) -> AsyncIterator[ClientFactory]:
    """Start an in-process gateway (a real HTTP server on loopback) with config overrides."""
    clients: list[TestClient[Any, Any]] = []

    async def factory(**overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("data_dir", tmp_path / f"data{len(clients)}")
        overrides = {**backend(overrides["data_dir"]), **overrides}
        config = GatewayConfig(**overrides).validate()
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(config),
                                                             host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    c: TestClient[Any, Any] = await make_client()
    return c


@dataclass
class GatewayProcess:
    """A real ``tus-gateway serve`` process on a free loopback port."""

    data_dir: Path
    extra_args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    @property
    def offset_is_file_size(self) -> bool:
        """True for the disk store; Redis keeps the offset apart from the data file."""
        return "--redis-url" not in self.extra_args

    def start(self, timeout_s: float = 15.0) -> None:
        self.log_path = self.data_dir.parent / f"gateway-{self.port}.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log()}")
            with contextlib.suppress(OSError):
                req = urllib.request.Request(self.url, method="OPTIONS")
                with urllib.request.urlopen(req, timeout=1):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a power cut for the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            # Say where it hung: py-spy is not at hand, the log is.
            self.kill()
            raise AssertionError(f"gateway did not stop within {timeout_s} s of SIGTERM; "
                                 f"its log ends:\n{self.log()}") from None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]


def backend_args(settings: dict[str, Any]) -> list[str]:
    args = []
    for name, value in settings.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


@pytest.fixture
def gateway_process(tmp_path: Path,
                    backend: StateBackend) -> Iterator[Callable[..., GatewayProcess]]:
    """Factory for real gateway processes; all are killed at the end of the test."""
    started: list[GatewayProcess] = []

    def factory(*extra_args: str, data_dir: Path | None = None) -> GatewayProcess:
        data_dir = data_dir or tmp_path / "data"
        gw = GatewayProcess(data_dir, [*backend_args(backend(data_dir)), *extra_args])
        gw.start()
        started.append(gw)
        return gw

    yield factory
    for gw in started:
        gw.kill()
