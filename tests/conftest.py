"""Shared fixtures: an in-process gateway for functional tests, real gateway processes for
client and crash tests, and a guard that fails any test that blocks the event loop.

State stores. A gateway (``client``, ``make_client``, ``gateway_process``) keeps its upload
state where the ``backend`` fixture says: on disk, or in the session's real redis-server.
A test runs on the disk store only, unless the store is part of what it checks; then it is
marked ``@pytest.mark.both_stores`` (or its module sets ``pytestmark``) and runs once per
store: ``[disk]`` and ``[redis]``. That is for the stores' own mechanics seen through the
gateway: records, offsets and bytes kept across a cut connection, a kill or a restart;
locks and leases between requests and processes; tombstones (410), finals waiting for
their partials, open-upload slots, expiry and retention indexes, owed hook and sink work
taken over. Protocol answers, header parsing, auth, CORS, logs and the page do not depend
on the store: they run on disk only. ``--all-stores`` runs every gateway test on both
stores (before a release, or to check a test's marking). A test about one store's own
mechanics names it: ``@pytest.mark.parametrize("backend", ["redis"], indirect=True)``.

Tests that take 5 s or more in a full run on two cores (the crash and kill tests, the
browser, the CLI through its relay, the fuzz run, the Notion fault and drain runs, the
cluster's SIGKILL and paused writer) are marked ``slow``: ``make test-quick``
(``pytest -m "not slow"``) leaves them out, ``make test`` runs everything.
"""

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

from gateway.aio import new_loop
from gateway.app import create_app
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig
from tests.redis_server import RedisServer


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Every test's loop is the one the gateway serves on: ``gateway.aio.new_loop``
    (uvloop where it installs)."""
    return {"loop": new_loop}

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


STORES = ("disk", "redis")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--all-stores", action="store_true",
                     help="run every gateway test on both state stores (disk and Redis), "
                          "not only those marked both_stores")


def _names_backend_itself(metafunc: pytest.Metafunc) -> bool:
    for marker in metafunc.definition.iter_markers("parametrize"):
        argnames = marker.args[0] if marker.args else marker.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [name.strip() for name in argnames.split(",")]
        if "backend" in argnames:
            return True
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Gives ``backend`` its stores: both for ``both_stores`` tests, disk for the others."""
    if "backend" not in metafunc.fixturenames or _names_backend_itself(metafunc):
        return
    both = (metafunc.definition.get_closest_marker("both_stores") is not None
            or bool(metafunc.config.getoption("all_stores")))
    metafunc.parametrize("backend", STORES if both else STORES[:1], indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> StateBackend:
    """Where gateways keep upload state (see the module docstring for which tests get which).

    Returns the config overrides for a data directory; one data directory maps to one Redis
    key prefix, so a restarted gateway finds its uploads and tests never see each other's.
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
    """Start an in-process gateway (a real HTTP server on loopback) with config overrides,
    and the clock it reads (``clock=``, a ``gateway.clock.ManualClock`` where a test moves
    time on instead of waiting for it)."""
    clients: list[TestClient[Any, Any]] = []

    async def factory(*, clock: Clock = SYSTEM_CLOCK, **overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("data_dir", tmp_path / f"data{len(clients)}")
        overrides = {**backend(overrides["data_dir"]), **overrides}
        config = GatewayConfig.from_settings(**overrides).validate()
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, clock=clock),
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
