"""The drain against the fake Notion server, with checkpoints in a real store.

Real HTTP on loopback, the fake enforcing the File Upload API contract, a real disk store
holding the checkpoints: files arrive byte for byte, a resumed drain sends only what is
missing, an expired Notion upload is replaced, and faults cost retries, not files.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fake_notion.faults import CREATE, SEND, Fault
from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import UploadStore
from gateway.state.disk import DiskStore
from gateway.state.parts import StoreParts
from notion_sink.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from notion_sink.client import ClientSettings, FileUpload, NotionClient
from notion_sink.drain import (
    Drain,
    DrainProgress,
    NotionName,
    Resilient,
    finishes_in_time,
    notion_name,
)
from notion_sink.ratelimit import RateLimiter
from notion_sink.retry import RetryPolicy
from protocol.model import UploadInfo
from tests.notion.conftest import FakeNotionServer, threaded_read

MiB = 1024 * 1024
WINDOW = 5 * MiB


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[UploadStore]:
    pool = IoPool(4)
    disk = StoreParts.of(DiskStore(tmp_path / "data", pool, fsync=FsyncPolicy.OFF,
                                   write_buffer_bytes=1 * MiB,
                                   commit_interval_bytes=8 * MiB)).store
    await disk.open()
    yield disk
    await disk.close()
    await asyncio.get_running_loop().run_in_executor(None, pool.close)



async def spooled(store: UploadStore, n: int, size: int) -> tuple[str, Path, str]:
    """A complete upload in the store: its id, its data file and the SHA-256 of its bytes."""
    data = os.urandom(size)
    info = UploadInfo(f"{n:032x}", size, created_at=time.time())
    await store.create(info)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, size, MiB):
            yield data[i:i + MiB]

    await store.append(info.upload_id, 0, body(), max_bytes=size, checksum=None)
    return info.upload_id, store.data_path(info.upload_id), hashlib.sha256(data).hexdigest()



def make_drain(server: FakeNotionServer, store: UploadStore, http: aiohttp.ClientSession, *,
               client: NotionClient | None = None, concurrency: int = 4,
               breaker: CircuitBreaker | None = None) -> Drain:
    client = client or NotionClient(http, ClientSettings(base_url=server.url,
                                                         token=server.token), threaded_read)
    resilient = Resilient(breaker or CircuitBreaker(BreakerPolicy(5, 0.3)),
                          RateLimiter(rate=25.0, burst=5),
                          RetryPolicy(max_attempts=12, base_delay=0.01, max_delay=0.1,
                                      deadline=60.0))
    return Drain(client, store, resilient, window=WINDOW, concurrency=concurrency)


async def test_small_file_goes_in_one_send(fake_notion: FakeNotionServer, store: UploadStore,
                                           http: aiohttp.ClientSession) -> None:
    upload_id, data, digest = await spooled(store, 1, 3 * 1024)
    remote = await make_drain(fake_notion, store, http).run(
        upload_id, data, 3 * 1024, notion_name("notes.txt", upload_id))
    assert fake_notion.fake.upload(remote).status == "uploaded"
    assert await fake_notion.fake.uploaded_sha256(remote) == digest
    assert fake_notion.fake.count(SEND) == 1


async def test_large_file_goes_in_parallel_parts(fake_notion: FakeNotionServer,
                                                 store: UploadStore,
                                                 http: aiohttp.ClientSession) -> None:
    size = 26 * MiB + 777
    upload_id, data, digest = await spooled(store, 2, size)
    progress = DrainProgress()
    remote = await make_drain(fake_notion, store, http).run(
        upload_id, data, size, notion_name("clip.mp4", upload_id), progress)
    assert await fake_notion.fake.uploaded_sha256(remote) == digest
    assert fake_notion.fake.count(SEND) == 6 and progress.parts_sent == 6
    checkpoint = await store.checkpoint(upload_id)
    assert checkpoint.remote_id == remote and checkpoint.parts == frozenset(range(1, 7))


async def test_refused_type_goes_under_an_opaque_name(fake_notion: FakeNotionServer,
                                                     store: UploadStore,
                                                     http: aiohttp.ClientSession) -> None:
    upload_id, data, digest = await spooled(store, 3, 4096)
    name = notion_name("archive.tar.gz", upload_id)
    assert name == NotionName(f"{upload_id}.txt", "text/plain", True)
    remote = await make_drain(fake_notion, store, http).run(upload_id, data, 4096, name)
    assert await fake_notion.fake.uploaded_sha256(remote) == digest


async def test_a_resumed_drain_sends_only_missing_parts(fake_notion: FakeNotionServer,
                                                        store: UploadStore,
                                                        http: aiohttp.ClientSession) -> None:
    size = 26 * MiB  # six parts of 5 MiB (the last one 1 MiB)
    upload_id, data, digest = await spooled(store, 4, size)
    name = notion_name("clip.mp4", upload_id)
    # A first drain that was stopped after two parts: its Notion upload and checkpoint stay.
    client = NotionClient(http, ClientSettings(base_url=fake_notion.url,
                                               token=fake_notion.token), threaded_read)
    created = await client.create_upload(filename=name.filename,
                                         content_type=name.content_type, number_of_parts=6)
    await store.start_remote(upload_id, created.id, time.time())
    for n in (1, 3):
        await client.send_part(created.id, data, (n - 1) * WINDOW, WINDOW, part_number=n,
                               filename=name.filename, content_type=name.content_type)
        assert await store.add_parts(upload_id, created.id, [n])
    sends_before = fake_notion.fake.count(SEND)
    remote = await make_drain(fake_notion, store, http).run(upload_id, data, size, name)
    assert remote == created.id
    assert fake_notion.fake.count(SEND) - sends_before == 4, "parts 1 and 3 were resent"
    assert fake_notion.fake.count(CREATE) == 1
    assert await fake_notion.fake.uploaded_sha256(remote) == digest


class ClockMovingClient(NotionClient):
    """Moves the fake's clock one hour on after a number of sends: the upload expires."""

    def __init__(self, server: FakeNotionServer, http: aiohttp.ClientSession,
                 after_sends: int) -> None:
        super().__init__(http, ClientSettings(base_url=server.url, token=server.token),
                         threaded_read)
        self.server = server
        self.left = after_sends

    async def send_part(self, *args: Any, **kwargs: Any) -> FileUpload:
        answer = await super().send_part(*args, **kwargs)
        self.left -= 1
        if self.left == 0:
            self.server.fake.clock.advance(3601)
        return answer


async def test_an_expired_notion_upload_is_replaced_and_every_part_resent(
        fake_notion: FakeNotionServer, store: UploadStore, http: aiohttp.ClientSession) -> None:
    size = 21 * MiB
    upload_id, data, digest = await spooled(store, 5, size)
    client = ClockMovingClient(fake_notion, http, after_sends=2)
    remote = await make_drain(fake_notion, store, http, client=client, concurrency=1).run(
        upload_id, data, size, notion_name("clip.mp4", upload_id))
    assert fake_notion.fake.count(CREATE) == 2
    assert fake_notion.fake.count(SEND, 200) == 2 + 5, "every part of the new upload was sent"
    assert await fake_notion.fake.uploaded_sha256(remote) == digest
    assert (await store.checkpoint(upload_id)).remote_id == remote


async def test_faults_cost_retries_not_files(fake_notion: FakeNotionServer, store: UploadStore,
                                             http: aiohttp.ClientSession) -> None:
    faults = fake_notion.fake.faults
    for fault in (Fault(status=500), Fault(status=502), Fault(status=503), Fault(status=504),
                  Fault(status=529, retry_after_s=1), Fault(status=409),
                  Fault(kind="reset")):
        faults.chance(fault, 0.03)
    uploads = [await spooled(store, 10 + i, 6 * MiB + i) for i in range(4)]
    drain = make_drain(fake_notion, store, http, breaker=CircuitBreaker(BreakerPolicy(50, 0.2)))
    remotes = await asyncio.gather(*(
        drain.run(upload_id, data, 6 * MiB + i, notion_name(f"f{i}.mp4", upload_id))
        for i, (upload_id, data, _digest) in enumerate(uploads)))
    for remote, (_id, _data, digest) in zip(remotes, uploads, strict=True):
        assert await fake_notion.fake.uploaded_sha256(remote) == digest
    assert sum(n for s, n in fake_notion.fake.counts_by_status().items() if s >= 500) > 0
    assert fake_notion.fake.peak_burst() <= fake_notion.fake.config.burst


async def test_the_breaker_opens_while_notion_fails_and_the_drain_finishes_after(
        fake_notion: FakeNotionServer, store: UploadStore, http: aiohttp.ClientSession) -> None:
    upload_id, data, digest = await spooled(store, 6, 2048)
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, open_for=0.3))
    fake_notion.fake.faults.script(Fault(status=503), endpoint=SEND, times=6)
    seen: set[BreakerState] = set()

    async def watch() -> None:
        while True:
            seen.add(breaker.state)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        remote = await make_drain(fake_notion, store, http, breaker=breaker).run(
            upload_id, data, 2048, notion_name("a.txt", upload_id))
    finally:
        watcher.cancel()
    assert BreakerState.OPEN in seen
    assert breaker.state is BreakerState.CLOSED
    assert fake_notion.fake.faults.pending() == 0
    assert await fake_notion.fake.uploaded_sha256(remote) == digest


def test_the_notion_upload_starts_early_only_if_it_can_finish_within_its_hour() -> None:
    def check(offset: int, elapsed: float, parts: int = 10, rate: float = 3.0) -> bool:
        return finishes_in_time(offset=offset, length=1000, created_at=1000.0,
                                now=1000.0 + elapsed, parts=parts, rate=rate)

    assert check(500, 10.0)  # halfway after 10 s: 10 s more, then 10 parts at 3/s
    assert not check(0, 10.0)  # no pace yet
    assert not check(100, 600.0)  # 10% in ten minutes: 90 more minutes
    assert check(500, 2900.0)  # 2900 s more and 10 sends: within the 50 minutes allowed
    assert not check(500, 2900.0, parts=1000)  # but not with 1000 sends at 3/s
    assert not check(999, 10.0, rate=0.1, parts=1000)  # sends alone take too long
