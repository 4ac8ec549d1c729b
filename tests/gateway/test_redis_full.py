"""A Redis that refuses writes (out of memory under ``maxmemory``) is an outage, not a bug.

Uploads created without bound until Redis ran out of memory got 500s with tracebacks: the
out-of-memory refusal was not one of the errors the store maps to 503. Now every write
answers 503 ``ERR_STATE_UNAVAILABLE`` with Retry-After while Redis refuses, reads go on, and
an upload resumes exactly once Redis has room again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.config import GatewayConfig
from tests.helpers import TUS, patch_headers, path_of
from tests.redis_server import RedisServer

KiB = 1024


@pytest.mark.allow_blocking  # starts a redis-server of its own and talks to it directly
async def test_a_redis_out_of_memory_answers_503_and_the_upload_resumes_after(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    admin = redis.Redis.from_url(server.url)
    config = GatewayConfig.from_settings(data_dir=tmp_path / "data", redis_url=server.url,
                                         redis_prefix="full").validate()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    data = os.urandom(300 * KiB)
    try:
        r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data))})
        assert r.status == 201
        path = path_of(r.headers["Location"])
        r = await client.patch(path, data=data[:100 * KiB], headers=patch_headers(0))
        assert r.status == 204

        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # below what it holds: every write is refused
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
            assert r.status == 503, await r.text()
            assert "ERR_STATE_UNAVAILABLE" in await r.text()
            assert r.headers["Retry-After"]
            r = await client.patch(path, data=data[100 * KiB:200 * KiB],
                                   headers=patch_headers(100 * KiB))
            assert r.status == 503, await r.text()
            assert r.headers["Retry-After"]
            r = await client.head(path, headers=TUS)  # reads go on
            assert r.status == 200
            offset = int(r.headers["Upload-Offset"])
            assert offset == 100 * KiB
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR], \
            [rec.getMessage() for rec in caplog.records]

        admin.config_set("maxmemory", 0)
        r = await client.patch(path, data=data[offset:], headers=patch_headers(offset))
        assert r.status == 204
        r = await client.get(path)
        assert await r.read() == data
    finally:
        await client.close()
        admin.close()
        server.stop()
