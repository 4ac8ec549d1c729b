"""Records in Notion: both pages exactly once, with the right properties, even when a page
creation is committed but answered with a 503."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
import pytest

from fake_notion.faults import DB_QUERY, DS_QUERY, PAGE_CREATE, Fault
from gateway.config import GatewayConfig
from notion_sink.breaker import BreakerPolicy, CircuitBreaker
from notion_sink.client import ClientSettings, NotionClient
from notion_sink.drain import Resilient
from notion_sink.ratelimit import RateLimiter
from notion_sink.records import FileKey, Recorder, RecordSettings, new_salt, salted_sha512
from notion_sink.retry import RetryPolicy
from tests.notion.conftest import FakeNotionServer, threaded_read

USER_SCHEMA = {"Name": "title", "Size": "number", "Hash": "rich_text", "Salt": "rich_text",
               "Created": "date", "File": "files"}
INDEX_SCHEMA = {"Hash": "title", "Database": "rich_text", "Page": "rich_text"}




def test_salted_sha512_is_salt_then_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert salted_sha512(path, "ab") == hashlib.sha512(b"ab" + b"x" * 3_000_000).hexdigest()
    assert new_salt() != new_salt()


@pytest.mark.parametrize("fresh", [False, True])
@pytest.mark.parametrize("fault", [None, Fault(status=503, after=True),
                                   Fault(kind="reset", after=True), Fault(status=502)])
async def test_both_pages_exactly_once(fake_notion: FakeNotionServer,
                                       http: aiohttp.ClientSession, tmp_path: Path,
                                       fault: Fault | None, fresh: bool) -> None:
    fake = fake_notion.fake
    settings = RecordSettings(fake.add_database("Uploads", USER_SCHEMA),
                              fake.add_database("Index", INDEX_SCHEMA))
    client = NotionClient(http, ClientSettings(base_url=fake_notion.url,
                                               token=fake_notion.token), threaded_read)
    data = tmp_path / "report.pdf"
    data.write_bytes(b"%PDF-1.4 fake")
    created = await client.create_upload(filename="report.pdf",
                                         content_type="application/pdf", number_of_parts=None)
    await client.send_part(created.id, data, 0, data.stat().st_size, part_number=None,
                           filename="report.pdf", content_type="application/pdf")
    salt = new_salt()
    key = FileKey(salt, await asyncio.to_thread(salted_sha512, data, salt))
    if fault is not None:
        fake.faults.script(fault, endpoint=PAGE_CREATE)
    recorder = Recorder(client, Resilient(CircuitBreaker(BreakerPolicy(5, 0.2)),
                                          RateLimiter(rate=25.0, burst=5),
                                          RetryPolicy(base_delay=0.01, max_delay=0.05)),
                        settings)
    page_id, index_id = await recorder.record(
        filename="Q3 report.pdf", sent_as="report.pdf", size=13, key=key,
        created_at=time.time(), remote_id=created.id, fresh=fresh)
    # A fresh key cannot have pages yet: no lookup until a creation's answer is lost.
    lookups = fake.count(DB_QUERY) + fake.count(DS_QUERY)
    if fresh and fault is None:
        assert lookups == 0
    if not fresh:
        assert lookups >= 2
    pages = fake.pages_in(settings.user_database_id)
    assert [p.id for p in pages] == [page_id]
    assert [p.id for p in fake.pages_in(settings.index_database_id)] == [index_id]
    assert fake.page_text(page_id, "Name") == "Q3 report.pdf"
    assert fake.page_text(page_id, "Hash") == key.sha512
    assert fake.page_text(page_id, "Salt") == salt
    assert fake.page_text(index_id, "Page") == page_id
    assert fake.page_text(index_id, "Database") == settings.user_database_id
    # Attaching the upload to the page made it permanent (no expiry any more).
    assert fake.upload(created.id).attached


async def test_property_names_come_from_configuration(fake_notion: FakeNotionServer,
                                                      http: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    fake = fake_notion.fake
    pairs = ("title=Filename", "size=Bytes", "hash=Digest", "index_title=Key",
             "index_page=Record")
    user_schema = {"Filename": "title", "Bytes": "number", "Digest": "rich_text",
                   "Salt": "rich_text", "Created": "date", "File": "files"}
    index_schema = {"Key": "title", "Database": "rich_text", "Record": "rich_text"}
    settings = RecordSettings(fake.add_database("Uploads", user_schema),
                              fake.add_database("Index", index_schema)).named(pairs)
    assert GatewayConfig.from_settings(notion_properties=pairs).validate().notion.properties == \
        pairs
    client = NotionClient(http, ClientSettings(base_url=fake_notion.url,
                                               token=fake_notion.token), threaded_read)
    created = await client.create_upload(filename="a.pdf", content_type="application/pdf",
                                         number_of_parts=None)
    data = tmp_path / "a.pdf"
    data.write_bytes(b"%PD")
    await client.send_part(created.id, data, 0, 3, part_number=None, filename="a.pdf",
                           content_type="application/pdf")
    recorder = Recorder(client, Resilient(CircuitBreaker(BreakerPolicy(5, 0.2)),
                                          RateLimiter(rate=25.0, burst=5), RetryPolicy()),
                        settings)
    page_id, index_id = await recorder.record(
        filename="a.pdf", sent_as="a.pdf", size=3, key=FileKey("s", "h" * 128),
        created_at=time.time(), remote_id=created.id)
    assert fake.page_text(page_id, "Filename") == "a.pdf"
    assert fake.page_text(index_id, "Record") == page_id
    # A second record of the same key is found under the configured names, not made again.
    assert await recorder.record(filename="a.pdf", sent_as="a.pdf", size=3,
                                 key=FileKey("s", "h" * 128), created_at=time.time(),
                                 remote_id=created.id) == (page_id, index_id)


def test_unknown_property_roles_are_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        GatewayConfig.from_settings(notion_properties=("titel=Name",)).validate()
    with pytest.raises(ValueError, match="role"):
        RecordSettings("u", "i").named(["titel=Name"])
