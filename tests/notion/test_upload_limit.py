"""The workspace's upload limit reaches the tus layer: a creation above it answers 413 and
Tus-Max-Size says it, before a byte is sent (docs/notion-contract.md §3.6, §4)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp.test_utils import TestClient

from fake_notion import PLANS, FakeConfig
from fake_notion.faults import USERS_ME, Fault
from notion_sink.client import _http_error
from notion_sink.retry import RateLimited
from tests.conftest import ClientFactory
from tests.helpers import TUS, metadata
from tests.notion.conftest import FakeNotionFactory, FakeNotionServer
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
    text = await r.text()
    # The refusal names the limit and whose it is, so the client knows why.
    assert str(5 * MiB) in text and "Notion workspace's file upload limit" in text, text
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(5 * MiB),
                                              "Upload-Metadata": metadata(filename="a.bin")})
    assert r.status == 201
    # Read again now and then: after an upgrade, the configured maximum is the limit again.
    fx.fake.config = FakeConfig(workspace_limit_bytes=PLANS["paid"])
    while (await client.options("/files/")).headers["Tus-Max-Size"] != str(50 * MiB):
        assert time.monotonic() < deadline + 10, "the workspace limit was never read again"
        await asyncio.sleep(0.05)
    assert fx.fake.count(USERS_ME) >= 2


async def test_health_shows_why_notion_slows_deliveries_down(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    """§9: a 429 is retried after its Retry-After, and health says which limit was hit."""
    fake_notion.fake.faults.script(
        Fault(status=429, retry_after_s=1, reason="public_api_space_request_rate_limit"),
        endpoint=USERS_ME)
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=fake_notion.token, notion_base_url=fake_notion.url,
        notion_user_database=fake_notion.fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fake_notion.fake.add_database("Index", INDEX_SCHEMA))
    deadline = time.monotonic() + 10
    while fake_notion.fake.count(USERS_ME, 200) == 0:  # retried once the limit passed
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    sink = (await (await client.get("/api/system/health")).json())["components"]["sink"]
    assert sink["rate_limit"]["reason"] == "public_api_space_request_rate_limit"
    assert sink["rate_limit"]["status"] == 429 and sink["rate_limit"]["retry_after_s"] == 1


def test_the_body_repeats_retry_after_when_a_proxy_drops_the_header() -> None:
    body = json.dumps({"object": "error", "status": 529, "code": "service_overload",
                       "message": "overloaded", "additional_data": {"retry_after": "17"}})
    error = _http_error(529, {}, body.encode())
    assert isinstance(error, RateLimited) and error.retry_after == 17
    assert _http_error(529, {"Retry-After": "3"}, body.encode()).retry_after == 3
