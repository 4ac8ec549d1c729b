"""Notion-Version and data sources (docs/notion-contract.md §7.3): the fake answers as the
version asked for, and the sink builds each request for the version it sends."""

from __future__ import annotations

import aiohttp
import pytest

from fake_notion import FakeConfig
from fake_notion.faults import DB_QUERY, DB_RETRIEVE, DS_QUERY
from notion_sink.client import ClientSettings, NotionClient
from notion_sink.retry import Permanent
from notion_sink.settings import NotionSettings
from tests.notion.conftest import FakeNotionFactory, FakeNotionServer, threaded_read
from tests.notion.test_fake import assert_error, call

SCHEMA = {"Name": "title", "Hash": "rich_text"}
PROPS = {"Name": {"title": [{"text": {"content": "a.txt"}}]},
         "Hash": {"rich_text": [{"text": {"content": "k1"}}]}}


async def test_the_fake_answers_as_the_version_asked_for(
        make_fake_notion: FakeNotionFactory) -> None:
    fx = await make_fake_notion(config=FakeConfig(rate_per_s=0))
    fake = fx.fake
    db = fake.add_database("Files", SCHEMA)
    source = fake.primary_source(fake.databases[db])
    old, new = fx.headers(version="2022-06-28"), fx.headers(version="2026-03-11")
    async with aiohttp.ClientSession() as s:
        _, answer, _ = await call(s, fx, "GET", f"/v1/databases/{db}", headers=old)
        assert set(answer["properties"]) == set(SCHEMA) and "data_sources" not in answer
        _, answer, _ = await call(s, fx, "GET", f"/v1/databases/{db}", headers=new)
        assert answer["data_sources"] == [{"id": source, "name": "Files"}]
        assert "properties" not in answer and "archived" not in answer
        # The data source endpoints do not exist before 2025-09-03, the database query
        # path does not exist after.
        _, answer, headers = await call(s, fx, "POST", f"/v1/data_sources/{source}/query",
                                        body={}, headers=old)
        assert_error(answer, headers, 400, "invalid_request_url")
        _, answer, headers = await call(s, fx, "POST", f"/v1/databases/{db}/query", body={},
                                        headers=new)
        assert_error(answer, headers, 400, "invalid_request_url")
        # A database id is no data source id.
        _, answer, headers = await call(s, fx, "POST", f"/v1/data_sources/{db}/query",
                                        body={}, headers=new)
        assert_error(answer, headers, 404, "object_not_found")
        # A data source parent works in every version; a database parent while it has one.
        for headers_ in (old, new):
            status, _, _ = await call(s, fx, "POST", "/v1/pages", headers=headers_, body={
                "parent": {"data_source_id": source}, "properties": PROPS})
            assert status == 200
        status, page, _ = await call(s, fx, "POST", "/v1/pages", headers=new, body={
            "parent": {"database_id": db}, "properties": PROPS})
        assert status == 200 and page["parent"]["data_source_id"] == source
        second = fake.add_data_source(db)
        for headers_ in (old, new):
            _, answer, headers = await call(s, fx, "POST", "/v1/pages", headers=headers_,
                                            body={"parent": {"database_id": db},
                                                  "properties": PROPS})
            assert_error(answer, headers, 400, "validation_error")
            assert answer["additional_data"]["error_type"] == \
                "multiple_data_sources_for_database"
        _, answer, headers = await call(s, fx, "POST", f"/v1/databases/{db}/query", body={},
                                        headers=old)
        assert answer["additional_data"]["error_type"] == "multiple_data_sources_for_database"
        _, answer, _ = await call(s, fx, "POST", f"/v1/data_sources/{second}/query",
                                  body={}, headers=new)
        assert answer["results"] == [] and answer["type"] == "page_or_data_source"
        _, answer, _ = await call(s, fx, "POST", f"/v1/data_sources/{source}/query",
                                  body={}, headers=new)
        assert len(answer["results"]) == 3


def _client(http: aiohttp.ClientSession, fx: FakeNotionServer, version: str | None = None,
            chosen: dict[str, str] | None = None) -> NotionClient:
    settings = ClientSettings(base_url=fx.url, token=fx.token)
    if version is not None:
        settings = ClientSettings(base_url=fx.url, token=fx.token, version=version)
    return NotionClient(http, settings, threaded_read, data_sources=chosen)


@pytest.mark.parametrize("version", [None, "2025-09-03", "2022-06-28"])
async def test_the_client_builds_requests_for_its_version(
        fake_notion: FakeNotionServer, http: aiohttp.ClientSession, version: str | None
) -> None:
    fake = fake_notion.fake
    db = fake.add_database("Files", SCHEMA)
    client = _client(http, fake_notion, version)
    assert client.version == (version or NotionSettings().version) and \
        NotionSettings().version == "2026-03-11"
    for _ in range(2):
        await client.create_page(db, PROPS)
        assert len(await client.query_equals(db, "Hash", "k1")) >= 1
    legacy = version == "2022-06-28"
    assert fake.count(DB_QUERY) == (2 if legacy else 0)
    assert fake.count(DS_QUERY) == (0 if legacy else 2)
    # Resolved once per process, not once per request.
    assert fake.count(DB_RETRIEVE) == (0 if legacy else 1)
    source = fake.primary_source(fake.databases[db])
    assert {p.data_source_id for p in fake.pages_in(db)} == {source}


async def test_several_data_sources_need_a_choice(
        fake_notion: FakeNotionServer, http: aiohttp.ClientSession) -> None:
    fake = fake_notion.fake
    db = fake.add_database("Files", SCHEMA)
    second = fake.add_data_source(db, "Archive")
    with pytest.raises(Permanent) as caught:
        await _client(http, fake_notion).query_equals(db, "Hash", "k1")
    message = str(caught.value)
    assert "2 data sources" in message and second in message
    assert "notion_data_sources" in message and caught.value.status == 400
    with pytest.raises(Permanent, match="not one of its data sources"):
        await _client(http, fake_notion, chosen={db: db}).create_page(db, PROPS)
    client = _client(http, fake_notion, chosen={db: second})
    await client.create_page(db, PROPS)
    assert [p.data_source_id for p in fake.pages_in(db)] == [second]
    assert len(await client.query_equals(db, "Hash", "k1")) == 1
    # Under 2022-06-28 no choice helps: Notion refuses the database as parent.
    with pytest.raises(Permanent, match="multiple data sources"):
        await _client(http, fake_notion, "2022-06-28").create_page(db, PROPS)


def test_settings_check_version_and_choices() -> None:
    db, source = "1" * 32, "2" * 32
    assert NotionSettings(data_sources=(f"{db}={source}",)).problems(in_use=False) == []
    problems = NotionSettings(version="latest", data_sources=("x=y", f"{db}={source}",
                                                              f"{db}={source}")
                              ).problems(in_use=False)
    assert len(problems) == 2 and "notion_version" in problems[0]
    assert "notion_data_sources" in problems[1]
