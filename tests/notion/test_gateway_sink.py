"""Through the gateway: tus uploads finish, drain to the fake Notion and are recorded once.

The gateway runs in process with ``--sink notion`` pointed at the fake (the drain and its
windows once per state backend, disk and Redis: the store keeps the checkpoints); files are
uploaded over HTTP with tus, and the status endpoint is polled until the sink says
``drained``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fake_notion import FakeConfig
from fake_notion.faults import SEND, Fault
from gateway.keys import RUNTIME
from notion_sink.breaker import BreakerPolicy, CircuitBreaker
from notion_sink.sink import NotionSink, delivery_phase
from protocol.model import SinkState, UploadInfo, UploadState
from protocol.state import UploadStatus
from tests.conftest import ROOT, ClientFactory
from tests.helpers import TUS, metadata, patch_headers, path_of
from tests.notion.conftest import FakeNotionFactory, FakeNotionServer
from tests.notion.test_records import INDEX_SCHEMA, USER_SCHEMA

MiB = 1024 * 1024


async def gateway(make_client: ClientFactory, fake: FakeNotionServer) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=fake.token, notion_base_url=fake.url,
        notion_user_database=fake.fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fake.fake.add_database("Index", INDEX_SCHEMA),
        notion_rate=20.0, notion_breaker_open_s=0.5)
    return client


async def tus_upload(client: TestClient[Any, Any], data: bytes, filename: str) -> str:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                              "Upload-Metadata": metadata(filename=filename)})
    assert r.status == 201, await r.text()
    path = path_of(r.headers["Location"])
    for start in range(0, len(data), 8 * MiB):
        r = await client.patch(path, data=io.BytesIO(data[start:start + 8 * MiB]),
                               headers=patch_headers(start))
        assert r.status == 204, await r.text()
    return path.rsplit("/", 1)[1]


async def drained(client: TestClient[Any, Any], upload_id: str,
                  timeout_s: float = 60.0, failed_ok: bool = False) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await client.get(f"/api/upload/status/{upload_id}")
        assert r.status == 200
        status: dict[str, Any] = await r.json()
        sink = status["sink"]
        if sink is not None and sink["status"] == "drained":
            return status
        assert failed_ok or sink is None or sink["status"] != "failed", status
        assert time.monotonic() < deadline, f"not drained in {timeout_s}s: {status}"
        await asyncio.sleep(0.05)


async def failed(client: TestClient[Any, Any], upload_id: str,
                 timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = await (
            await client.get(f"/api/upload/status/{upload_id}")).json()
        if status["sink"]["status"] == "failed":
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.02)


@pytest.mark.both_stores
async def test_files_drain_to_notion_and_are_recorded_once(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    client = await gateway(make_client, fake_notion)
    fake = fake_notion.fake
    files = {"notes.txt": os.urandom(3 * 1024), "clip.mp4": os.urandom(26 * MiB + 5),
             "backup.tar.gz": os.urandom(10_000)}
    ids = {name: await tus_upload(client, data, name) for name, data in files.items()}
    for name, data in files.items():
        status = await drained(client, ids[name])
        detail = status["sink"]["detail"]
        assert await fake.uploaded_sha256(detail["file_upload"]) == \
            hashlib.sha256(data).hexdigest(), name
        page = status["sink"]["ref"]
        assert fake.page_text(page, "Name") == name
        assert fake.page_text(page, "Hash") == hashlib.sha512(
            detail["salt"].encode() + data).hexdigest()
        sent_as = detail["sent_as"]
        # Refused types go under an opaque name; the record keeps the real one.
        assert (sent_as == name) is (name != "backup.tar.gz"), sent_as
    user_db = next(iter(fake.databases))
    assert len(fake.pages_in(user_db)) == 3
    assert fake.peak_burst() <= fake.config.burst


async def test_a_failed_delivery_shows_and_is_retried_from_the_cli(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    client = await gateway(make_client, fake_notion)
    fake_notion.fake.block_token(fake_notion.token)  # 429 "blocked": never to be retried
    data = os.urandom(4096)
    upload_id = await tus_upload(client, data, "a.txt")
    status = await failed(client, upload_id)
    assert status["status"] == "failed" and status["sink"]["will_retry"] is False
    assert "429" in status["sink"]["error"]
    r = await client.post(f"/api/sink/retry/{'f' * 32}")
    assert r.status == 404
    fake_notion.fake.blocked.clear()  # the integration is allowed again
    url = str(client.make_url("/")).rstrip("/")
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "sink", "retry", upload_id, "--url", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    assert b"draining" in out
    status = await drained(client, upload_id)
    assert await fake_notion.fake.uploaded_sha256(status["sink"]["detail"]["file_upload"]) == \
        hashlib.sha256(data).hexdigest()
    again = await client.post(f"/api/sink/retry/{upload_id}")
    assert again.status == 409 and "ERR_SINK_NOT_FAILED" in await again.text()


async def test_a_failure_that_may_pass_is_retried_by_itself(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    # Requests give up after a second of retries; the delivery starts again 0.5 s later.
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=fake_notion.token, notion_base_url=fake_notion.url,
        notion_user_database=fake_notion.fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fake_notion.fake.add_database("Index", INDEX_SCHEMA),
        notion_rate=20.0, notion_retry_deadline_s=1.0, notion_retry_failed_s=0.5,
        notion_scan_s=0.2)
    # A breaker that never opens: otherwise it would hold the drain until Notion is back,
    # and the retry policy would never give up.
    server = client.server
    assert isinstance(server, TestServer)
    sink = server.app[RUNTIME].require().sink
    assert isinstance(sink, NotionSink)
    sink.resilient.breaker = CircuitBreaker(BreakerPolicy(failure_threshold=10_000))
    fake_notion.fake.faults.script(Fault(status=409), endpoint=SEND, times=200)
    data = os.urandom(4096)
    upload_id = await tus_upload(client, data, "b.txt")
    status = await failed(client, upload_id)
    assert status["sink"]["will_retry"] is True and "409" in status["sink"]["error"]
    fake_notion.fake.faults.clear()  # the storage outage is over
    status = await drained(client, upload_id, failed_ok=True)  # no one asked: by itself
    assert await fake_notion.fake.uploaded_sha256(status["sink"]["detail"]["file_upload"]) == \
        hashlib.sha256(data).hexdigest()


@pytest.mark.slow
async def test_twenty_uploads_through_faults_and_rate_limits(
        make_client: ClientFactory, make_fake_notion: FakeNotionFactory) -> None:
    server = await make_fake_notion(config=FakeConfig(rate_per_s=15.0, burst=5), seed=7)
    fake = server.fake
    # The gateway asks for more than the fake allows: it gets 429s with Retry-After.
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=server.token, notion_base_url=server.url,
        notion_user_database=fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fake.add_database("Index", INDEX_SCHEMA),
        notion_rate=30.0, notion_concurrency=6, notion_breaker_open_s=0.5)
    for kind in (Fault(status=500), Fault(status=502), Fault(status=503), Fault(status=504),
                 Fault(status=529, retry_after_s=1), Fault(kind="reset"),
                 Fault(status=503, after=True), Fault(kind="reset", after=True)):
        fake.faults.chance(kind, 0.025)  # 20% of requests in all
    files = {f"f{i:02d}.pdf": os.urandom(100_000 + i) for i in range(18)}
    files.update({"big1.mp4": os.urandom(21 * MiB), "big2.mp4": os.urandom(22 * MiB + 3)})
    ids = dict(zip(files, await asyncio.gather(
        *(tus_upload(client, data, name) for name, data in files.items())), strict=True))
    statuses = await asyncio.gather(*(drained(client, ids[n], timeout_s=120) for n in files))
    for (name, data), status in zip(files.items(), statuses, strict=True):
        remote = status["sink"]["detail"]["file_upload"]
        assert await fake.uploaded_sha256(remote) == hashlib.sha256(data).hexdigest(), name
    users = next(iter(fake.databases))
    titles = sorted(fake.page_text(p.id, "Name") for p in fake.pages_in(users))
    assert titles == sorted(files), "each file recorded exactly once"
    assert fake.count(status=429) > 0 and fake.count(status=503) > 0
    assert fake.peak_burst() <= fake.config.burst


@pytest.mark.slow
async def test_notion_down_opens_the_breaker_and_uploads_go_on(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    client = await gateway(make_client, fake_notion)
    fake = fake_notion.fake
    fake.faults.chance(Fault(status=503), 1.0)  # Notion is down
    first = os.urandom(5000)
    first_id = await tus_upload(client, first, "first.txt")
    deadline = time.monotonic() + 30
    while True:
        status = await (await client.get(f"/api/upload/status/{first_id}")).json()
        if status["progress"]["breaker"] == "open":
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
    assert status["sink"]["status"] == "draining" and status["progress"]["phase"] == "waiting"
    r = await client.get("/api/system/health")
    health = await r.json()
    assert r.status == 200 and health["status"] == "degraded"  # uploads still go on
    sink = health["components"]["sink"]
    assert sink["kind"] == "notion" and sink["circuit_breaker"] == "open"
    assert sink["status"] == "degraded" and sink["success_rate"] == 0.0
    # Uploads are still accepted and finish into the spool meanwhile.
    second = os.urandom(7000)
    second_id = await tus_upload(client, second, "second.txt")
    assert (await client.head(f"/files/{second_id}", headers=TUS)).headers[
        "Upload-Offset"] == "7000"
    fake.faults.clear()  # Notion is back
    for upload_id, data in ((first_id, first), (second_id, second)):
        status = await drained(client, upload_id)
        assert await fake.uploaded_sha256(status["sink"]["detail"]["file_upload"]) == \
            hashlib.sha256(data).hexdigest()


@pytest.mark.both_stores
async def test_windows_go_to_notion_while_the_upload_still_receives_bytes(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    client = await gateway(make_client, fake_notion)
    fake = fake_notion.fake
    data = os.urandom(31 * MiB + 7)  # 7 parts of 5 MiB: six whole windows and a tail
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                              "Upload-Metadata": metadata(filename="a.mp4")})
    path = path_of(r.headers["Location"])
    upload_id = path.rsplit("/", 1)[1]
    r = await client.patch(path, data=io.BytesIO(data[:12 * MiB]), headers=patch_headers(0))
    assert r.status == 204
    # Windows 1 and 2 lie below the committed offset; window 3 does not, yet.
    deadline = time.monotonic() + 30
    while sum(fake.parts_stored.values()) < 2:
        assert time.monotonic() < deadline, fake.parts_stored
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert sorted(n for _, n in fake.parts_stored) == [1, 2]
    status = await (await client.get(f"/api/upload/status/{upload_id}")).json()
    assert status["status"] == "receiving" and status["sink"] is None
    assert (status["progress"]["parts_sent"], status["progress"]["parts_total"]) == (2, 7)
    assert status["progress"]["phase"] == "draining"
    r = await client.patch(path, data=io.BytesIO(data[12 * MiB:]),
                           headers=patch_headers(12 * MiB))
    assert r.status == 204
    status = await drained(client, upload_id)
    assert status["progress"]["phase"] == "recorded"
    remote = status["sink"]["detail"]["file_upload"]
    assert await fake.uploaded_sha256(remote) == hashlib.sha256(data).hexdigest()
    assert fake.count("file_uploads.create", 200) == 1
    assert set(fake.parts_stored.values()) == {1}, "a part was sent twice"
    # Notion holds the file and the records exist: the spool copy is gone, the upload is
    # still known, and a download says plainly where the bytes went.
    server = client.server
    assert isinstance(server, TestServer)
    store = server.app[RUNTIME].require().store
    assert not store.data_path(upload_id).exists()
    head = await client.head(path, headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(len(data))
    get = await client.get(path)
    assert get.status == 410 and "ERR_DATA_DELIVERED" in await get.text()
    scrape = await (await client.get("/metrics")).text()
    assert 'tus_sink_parts_total{outcome="sent"} 7.0' in scrape
    assert 'tus_sink_parts_total{outcome="failed"} 0.0' in scrape
    assert "tus_sink_breaker_state 0.0" in scrape
    assert 'tus_sink_requests_total{outcome="ok"}' in scrape


def test_the_delivery_phase_in_one_word() -> None:
    def phase(status: UploadStatus, sent: int, total: int = 7) -> str:
        offset = 10 if status is UploadStatus.RECEIVING else 100
        sink = None if status is UploadStatus.RECEIVING else SinkState(status)
        state = UploadState(UploadInfo("a" * 32, 100, sink=sink), offset, 0.0)
        return delivery_phase(state, {"parts_sent": sent, "parts_total": total})

    assert phase(UploadStatus.RECEIVING, 0) == "waiting"
    assert phase(UploadStatus.RECEIVING, 2) == "draining"
    assert phase(UploadStatus.DRAINING, 0) == "waiting"
    assert phase(UploadStatus.DRAINING, 6) == "draining"
    assert phase(UploadStatus.DRAINING, 7) == "completing"
    assert phase(UploadStatus.DRAINED, 7) == "recorded"
    assert phase(UploadStatus.FAILED, 3) == "failed"


@pytest.mark.both_stores
async def test_windows_leave_in_the_middle_of_one_long_patch(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    """tus-js-client and Uppy send a whole file in one PATCH by default: windows go to
    Notion as that request's bytes become durable, not when it ends."""
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=fake_notion.token, notion_base_url=fake_notion.url,
        notion_user_database=fake_notion.fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fake_notion.fake.add_database("Index", INDEX_SCHEMA),
        notion_rate=20.0, sync_interval_bytes=4 * MiB, commit_interval_bytes=2 * MiB)
    fake = fake_notion.fake
    data = os.urandom(26 * MiB)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                              "Upload-Metadata": metadata(filename="a.mp4")})
    path = path_of(r.headers["Location"])
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), MiB):
            if start == 20 * MiB:
                # The client pauses mid-request. (A window whose sync ends during the pause
                # counts from the next batch on, so the test waits for earlier windows.)
                await go_on.wait()
            yield data[start:start + MiB]

    patch = asyncio.ensure_future(client.patch(path, data=body(), headers={
        **patch_headers(0), "Content-Length": str(len(data))}))
    deadline = time.monotonic() + 30
    while sum(fake.parts_stored.values()) < 2:
        assert time.monotonic() < deadline, fake.parts_stored
        assert not patch.done()
        await asyncio.sleep(0.05)
    assert not patch.done(), "the parts must leave while the request is still open"
    assert {n for _, n in fake.parts_stored} <= {1, 2, 3}  # nothing past 16 MiB durable
    go_on.set()
    assert (await patch).status == 204
    status = await drained(client, path.rsplit("/", 1)[1])
    assert await fake.uploaded_sha256(status["sink"]["detail"]["file_upload"]) == \
        hashlib.sha256(data).hexdigest()
    assert set(fake.parts_stored.values()) == {1}


@pytest.mark.both_stores
async def test_a_delivery_in_the_background_frees_the_quota_and_is_announced(
        make_client: ClientFactory, fake_notion: FakeNotionServer) -> None:
    """The Notion drain records ``drained`` long after the last PATCH: the sink announces it
    (``sink_api.Announces``), so the owner's bytes are released at once, not only when a
    later refusal looks again, and the upload's event stream hears of it."""
    client: TestClient[Any, Any] = await make_client(
        sink="notion", notion_token=fake_notion.token, notion_base_url=fake_notion.url,
        notion_user_database=fake_notion.fake.add_database("Uploads", USER_SCHEMA),
        notion_index_database=fake_notion.fake.add_database("Index", INDEX_SCHEMA),
        notion_rate=20.0, quota_bytes=10 * MiB)
    uploads = client.app[RUNTIME].require()
    data = os.urandom(6 * MiB)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                              "Upload-Metadata": metadata(filename="a.bin")})
    assert r.status == 201
    path = path_of(r.headers["Location"])
    upload_id = path.rsplit("/", 1)[1]
    owner = (await uploads.store.get(upload_id)).info.client
    assert await uploads.store.bytes_held(owner) == len(data)
    async with client.get(f"/api/upload/events/{upload_id}") as stream:
        r = await client.patch(path, data=io.BytesIO(data), headers=patch_headers(0))
        assert r.status == 204
        statuses = []
        async for raw in stream.content:
            line = raw.decode().strip()
            if line.startswith("data:") and '"sink"' in line:
                statuses.append(line)
    # The stream ended by itself on the delivery's final state.
    assert '"status":"drained"' in statuses[-1].replace(" ", ""), statuses[-1][:200]
    deadline = time.monotonic() + 5
    while await uploads.store.bytes_held(owner) != 0:
        assert time.monotonic() < deadline, "the delivered upload still holds its bytes"
        await asyncio.sleep(0.02)
