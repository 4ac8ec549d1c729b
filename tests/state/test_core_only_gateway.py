"""A third backend needs only the core: a real gateway on a store that provides nothing but
records and bytes (``tests.state.memory``).

The gateway keeps the owed-work indexes, the leases, the open-upload counts and the expiry
index in its own process (``gateway.state.parts``); what it cannot supply, it does not offer:
OPTIONS announces no concatenation, a concatenation request is refused as when the
configuration disables the extension, and the Notion sink does not start.

The gateway is the one ``create_app`` makes, with its store context swapped for one that
opens the in-memory store; everything else (routes, locks, sink, sweeper) is the real one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import app as gateway_app
from gateway.app import StartupError, create_app
from gateway.config import GatewayConfig
from gateway.keys import CONFIG, LOCKER, RUNTIME, STORE
from gateway.state.memlock import MemoryLocker
from gateway.state.parts import StoreParts
from gateway.uploads import indexing
from protocol.decisions import ALL_EXTENSIONS
from tests.conftest import ClientFactory
from tests.helpers import TUS, metadata, patch_headers, path_of
from tests.state.memory import MemoryBacking, MemoryStore

Client = TestClient[Any, Any]
MemoryGateway = Callable[..., Awaitable[Client]]
WITHOUT_CONCATENATION = tuple(e for e in ALL_EXTENSIONS if not e.startswith("concatenation"))


def on_memory(app: web.Application, backing: MemoryBacking) -> web.Application:
    """``app`` with its store context replaced by one that opens ``MemoryStore``."""

    async def memory_store(app: web.Application) -> AsyncIterator[None]:
        parts = StoreParts.of(MemoryStore(backing), indexing(app[CONFIG]))
        await parts.store.open()
        try:
            app[STORE] = parts
            app[LOCKER] = MemoryLocker()  # one process: the store's parts are kept here
            yield
        finally:
            await parts.store.close()

    [at] = [i for i, ctx in enumerate(app.cleanup_ctx) if ctx is gateway_app._store]
    app.cleanup_ctx[at] = memory_store
    return app


@pytest.fixture
def backing(tmp_path: Path) -> MemoryBacking:
    return MemoryBacking(tmp_path / "spool")


@pytest.fixture
async def memory_gateway(tmp_path: Path,
                         backing: MemoryBacking) -> AsyncIterator[MemoryGateway]:
    clients: list[Client] = []

    async def start(**overrides: Any) -> Client:
        config = GatewayConfig.from_env({}, **{"data_dir": tmp_path / "data", **overrides})
        client: Client = TestClient(TestServer(on_memory(create_app(config), backing),
                                               host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_create_patch_head_get_delete_on_a_core_only_store(
        memory_gateway: MemoryGateway, backing: MemoryBacking) -> None:
    client = await memory_gateway()
    r = await client.options("/files/")
    assert r.status == 204
    assert r.headers["Tus-Extension"] == ",".join(WITHOUT_CONCATENATION)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "11",
                                              "Upload-Metadata": metadata(filename="a.txt")})
    assert r.status == 201
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=b"hello", headers=patch_headers(0))
    assert (r.status, r.headers["Upload-Offset"]) == (204, "5")
    r = await client.head(url, headers=TUS)
    assert r.status == 200
    assert (r.headers["Upload-Offset"], r.headers["Upload-Length"]) == ("5", "11")
    r = await client.patch(url, data=b" world", headers=patch_headers(5))
    assert (r.status, r.headers["Upload-Offset"]) == (204, "11")
    r = await client.get(url)
    assert r.status == 200 and await r.read() == b"hello world"
    upload_id = url.rsplit("/", 1)[1]
    assert upload_id in backing.records  # the store's own state, not a copy of it
    r = await client.delete(url, headers=TUS)
    assert r.status == 204
    r = await client.head(url, headers=TUS)
    assert r.status == 410
    assert upload_id not in backing.records and upload_id in backing.tombstones


@pytest.mark.parametrize("concat", ["partial", "final;/files/{a} /files/{b}"])
async def test_concatenation_is_refused_as_when_the_configuration_disables_it(
        memory_gateway: MemoryGateway, make_client: ClientFactory, concat: str) -> None:
    answers = []
    for client in (await memory_gateway(),
                   await make_client(extensions=WITHOUT_CONCATENATION)):
        ids = []
        for _ in range(2):
            r = await client.post("/files/", headers={**TUS, "Upload-Length": "1"})
            ids.append(r.headers["Location"].rsplit("/", 1)[1])
        r = await client.post("/files/", headers={
            **TUS, "Upload-Concat": concat.format(a=ids[0], b=ids[1]),
            **({"Upload-Length": "1"} if concat == "partial" else {})})
        answers.append((r.status, await r.text()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400 and answers[0][1].startswith("ERR_INVALID_CONCAT")


async def test_the_parts_kept_in_process_serve_the_gateway_and_survive_a_restart(
        memory_gateway: MemoryGateway, backing: MemoryBacking) -> None:
    """Open-upload limits, expiry and recovery work on a core-only store: the gateway keeps
    them, and rebuilds them from the records when it starts again."""
    first = await memory_gateway(max_open_uploads=2, max_open_uploads_per_client=2)
    urls = []
    for _ in range(2):
        r = await first.post("/files/", headers={**TUS, "Upload-Length": "3"})
        assert r.status == 201
        urls.append(path_of(r.headers["Location"]))
    r = await first.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 429  # counted here, in this process
    r = await first.patch(urls[0], data=b"abc", headers=patch_headers(0))
    assert r.status == 204  # finished: no longer open
    await first.close()

    again = await memory_gateway(max_open_uploads=2, max_open_uploads_per_client=2)
    r = await again.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 201  # one open upload found in the records, one slot free
    r = await again.post("/files/", headers={**TUS, "Upload-Length": "3"})
    assert r.status == 429
    uploads = again.app[RUNTIME].uploads
    later = time.time() + again.app[CONFIG].expire_after_s + 60
    assert await uploads.sweep(later) == 2  # the unfinished ones, from before the restart too
    r = await again.head(urls[1], headers=TUS)
    assert r.status == 410
    r = await again.head(urls[0], headers=TUS)
    assert r.status == 200  # finished: kept until --finished-ttl


async def test_the_notion_sink_does_not_start_on_a_store_without_checkpoints(
        tmp_path: Path, backing: MemoryBacking) -> None:
    config = GatewayConfig.from_env(
        {}, data_dir=tmp_path / "data", sink="notion", notion_token="secret_x" * 4,
        notion_user_database="a" * 32, notion_index_database="b" * 32)
    client: Client = TestClient(TestServer(on_memory(create_app(config), backing),
                                           host="127.0.0.1"))
    with pytest.raises(StartupError, match="sink checkpoints"):
        await client.start_server()
    await client.close()
