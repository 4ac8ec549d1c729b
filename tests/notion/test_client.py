"""The sink's Notion client against the fake: real HTTP on loopback, errors mapped at the edge."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from fake_notion import FakeConfig
from fake_notion.faults import SEND, Fault
from notion_sink.client import ClientSettings, NotionClient
from notion_sink.retry import Permanent, RateLimited, Retryable
from tests.notion.conftest import FakeNotionFactory, FakeNotionServer, threaded_read

MiB = 1024 * 1024




def client_for(session: aiohttp.ClientSession, server: FakeNotionServer,
               token: str | None = None) -> NotionClient:
    return NotionClient(session, ClientSettings(base_url=server.url,
                                                token=token or server.token), threaded_read)


def spool_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


async def test_multi_part_upload_streams_parts_from_the_spool_in_any_order(
        fake_notion: FakeNotionServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = spool_file(tmp_path / "spool.bin", 10 * MiB + 12345)
    client = client_for(http, fake_notion)
    upload = await client.create_upload(filename="movie.mp4", content_type="video/mp4",
                                        number_of_parts=3)
    assert upload.status == "pending"
    ranges = {1: (0, 5 * MiB), 2: (5 * MiB, 5 * MiB), 3: (10 * MiB, 12345)}
    # Concurrently and last part first: Notion accepts parts in any order.
    await asyncio.gather(*(client.send_part(upload.id, data, start, length, part_number=n,
                                            filename="movie.mp4", content_type="video/mp4")
                           for n, (start, length) in reversed(ranges.items())))
    done = await client.complete(upload.id)
    assert done.status == "uploaded" and done.parts_sent == 3
    expected = hashlib.sha256(data.read_bytes()).hexdigest()
    assert await fake_notion.fake.uploaded_sha256(upload.id) == expected
    assert (await client.retrieve(upload.id)).status == "uploaded"


async def test_single_part_then_a_page_found_by_its_key(
        fake_notion: FakeNotionServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = spool_file(tmp_path / "note.bin", 3 * 1024)
    db = fake_notion.fake.add_database("files", {"Name": "title", "Hash": "rich_text",
                                                 "File": "files"})
    client = client_for(http, fake_notion)
    upload = await client.create_upload(filename="note.txt", content_type="text/plain",
                                        number_of_parts=None)
    sent = await client.send_part(upload.id, data, 0, 3 * 1024, part_number=None,
                                  filename="note.txt", content_type="text/plain")
    assert sent.status == "uploaded"
    page = await client.create_page(db, {
        "Name": {"title": [{"text": {"content": "note.txt"}}]},
        "Hash": {"rich_text": [{"text": {"content": "abc123"}}]},
        "File": {"files": [{"type": "file_upload", "file_upload": {"id": upload.id},
                            "name": "note.txt"}]},
    })
    found = await client.query_equals(db, "Hash", "abc123")
    assert [p["id"] for p in found] == [page["id"]]
    assert await client.query_equals(db, "Hash", "ABC123") == []


async def test_errors_are_mapped_at_the_boundary(
        fake_notion: FakeNotionServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    data = spool_file(tmp_path / "x.bin", 1024)
    with pytest.raises(Permanent) as refused:
        await client_for(http, fake_notion, token="ntn_wrong").retrieve("0" * 32)
    assert refused.value.status == 401
    client = client_for(http, fake_notion)
    with pytest.raises(Permanent) as bad_type:
        await client.create_upload(filename="notes.md", content_type="text/markdown",
                                   number_of_parts=None)
    assert bad_type.value.status == 400 and bad_type.value.code == "validation_error"
    upload = await client.create_upload(filename="x.txt", content_type="text/plain",
                                        number_of_parts=None)
    for fault in (Fault(status=409), Fault(kind="html", status=502), Fault(kind="reset")):
        fake_notion.fake.faults.script(fault, endpoint=SEND)
        with pytest.raises(Retryable):
            await client.send_part(upload.id, data, 0, 1024, part_number=None,
                                   filename="x.txt", content_type="text/plain")
    fake_notion.fake.faults.script(Fault(status=529, retry_after_s=7), endpoint=SEND)
    with pytest.raises(RateLimited) as overloaded:
        await client.send_part(upload.id, data, 0, 1024, part_number=None,
                               filename="x.txt", content_type="text/plain")
    assert overloaded.value.retry_after == 7


async def test_rate_limit_answers_carry_their_wait(
        make_fake_notion: FakeNotionFactory, http: aiohttp.ClientSession) -> None:
    server = await make_fake_notion(config=FakeConfig(rate_per_s=1.0, burst=1))
    server.fake.clock.freeze()  # no refill while the test runs, however slow the machine
    client = client_for(http, server)
    with pytest.raises(Permanent) as missing:  # a 404 spends the one request there is
        await client.retrieve("0" * 32)
    assert missing.value.status == 404
    with pytest.raises(RateLimited) as limited:
        await client.retrieve("0" * 32)
    assert limited.value.retry_after is not None and limited.value.retry_after >= 1


async def test_an_unreachable_notion_is_retryable(http: aiohttp.ClientSession) -> None:
    with socket_closed() as port:
        client = NotionClient(http, ClientSettings(base_url=f"http://127.0.0.1:{port}",
                                                      token="t", timeout_s=2), threaded_read)
        with pytest.raises(Retryable):
            await client.retrieve("0" * 32)


@contextlib.contextmanager
def socket_closed() -> Iterator[int]:
    """A loopback port that is bound but not listening, so connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port
