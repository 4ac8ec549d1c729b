"""The workspace's upload limit reaches the tus layer: a creation above it answers 413 and
Tus-Max-Size says it, before a byte is sent (docs/notion-contract.md §3.6, §4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient

from fake_notion import PLANS, FakeConfig
from fake_notion.faults import USERS_ME
from tests.conftest import ClientFactory
from tests.helpers import TUS, metadata
from tests.notion.conftest import FakeNotionFactory
from tests.notion.test_records import INDEX_SCHEMA, USER_SCHEMA

MiB = 1024 * 1024


async def test_a_free_workspace_limit_is_announced_and_enforced(
        make_client: ClientFactory, make_fake_notion: FakeNotionFactory) -> None:
    fx = await make_fake_notion(config=FakeConfig(rate_per_s=30.0, burst=10,
                                                  workspace_limit_bytes=PLANS["free"]))
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=fx.token, notion_base_url=fx.url,
        notion_user_database=fx.fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fx.fake.add_database("Index", INDEX_SCHEMA),
        notion_rate=20.0, notion_limit_refresh_s=0.2, max_size_bytes=50 * MiB)
    deadline = time.monotonic() + 10
    while (await client.options("/files/")).headers["Tus-Max-Size"] != str(5 * MiB):
        assert time.monotonic() < deadline, "the workspace limit was never read"
        await asyncio.sleep(0.05)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(5 * MiB + 1),
                                              "Upload-Metadata": metadata(filename="a.bin")})
    assert r.status == 413, await r.text()
    assert str(5 * MiB) in await r.text()
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(5 * MiB),
                                              "Upload-Metadata": metadata(filename="a.bin")})
    assert r.status == 201
    # Read again now and then: after an upgrade, the configured maximum is the limit again.
    fx.fake.config = FakeConfig(workspace_limit_bytes=PLANS["paid"])
    while (await client.options("/files/")).headers["Tus-Max-Size"] != str(50 * MiB):
        assert time.monotonic() < deadline + 10, "the workspace limit was never read again"
        await asyncio.sleep(0.05)
    assert fx.fake.count(USERS_ME) >= 2
