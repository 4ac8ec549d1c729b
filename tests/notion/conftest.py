"""Fixtures for tests that talk to Notion: a fake Notion server on loopback.

``fake_notion`` runs :func:`fake_notion.create_fake_app` on 127.0.0.1 (a free port)
in the test's own event loop, so tests can move its clock, script faults and read its
request log between requests. The rate limit is 30 requests/s with a burst of 10 by
default, ten times Notion's, so suites stay fast while a client that ignores 429 still
meets it; a module can override ``fake_notion_config`` to change that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from fake_notion import FakeConfig, FakeNotion, create_fake_app
from fake_notion.state import DEFAULT_VERSION
from notion_sink.client import read_range


@dataclass
class FakeNotionServer:
    """A running fake: its state (``fake``), its base URL and its default token."""

    fake: FakeNotion
    url: str  # http://127.0.0.1:PORT, no trailing slash
    token: str
    server: TestServer

    def headers(self, token: str | None = None,
                version: str | None = DEFAULT_VERSION) -> dict[str, str]:
        """Authorization and Notion-Version headers (``version=None`` leaves it out)."""
        out = {"Authorization": f"Bearer {token or self.token}"}
        if version is not None:
            out["Notion-Version"] = version
        return out


FakeNotionFactory = Callable[..., Awaitable[FakeNotionServer]]


@pytest.fixture
def fake_notion_config() -> FakeConfig:
    return FakeConfig(rate_per_s=30.0, burst=10)


@pytest.fixture
async def make_fake_notion(tmp_path: Path, fake_notion_config: FakeConfig
                           ) -> AsyncIterator[FakeNotionFactory]:
    """Start fake Notion servers: ``await make_fake_notion(config=..., seed=...)``."""
    servers: list[TestServer] = []

    async def factory(*, config: FakeConfig | None = None, seed: int = 0,
                      token: str | None = None) -> FakeNotionServer:
        fake = FakeNotion(tmp_path / f"fake-notion-{len(servers)}",
                          config=config or fake_notion_config, seed=seed, token=token)
        server = TestServer(create_fake_app(fake), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return FakeNotionServer(fake, str(server.make_url("")).rstrip("/"),
                                fake.default_token, server)

    yield factory
    for server in servers:
        await server.close()


@pytest.fixture
async def fake_notion(make_fake_notion: FakeNotionFactory) -> FakeNotionServer:
    return await make_fake_notion()


async def threaded_read(path: Path, start: int, length: int) -> bytes:
    """How the sink reads part bytes: in a worker thread, never on the event loop."""
    return await asyncio.to_thread(read_range, path, start, length)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
