"""What the gateway keeps of a finished upload, and for how long.

- A directory delivery leaves one copy of the bytes: the delivered file. The spool's link goes
  once the delivery is on record, also when a crash came in between; GET serves the delivered
  file until the operator takes it away, then answers 410.
- Finished uploads are forgotten ``finished_ttl_s`` after they finished (a tombstone answers
  410); the delivered file stays. The sweep reads only the uploads that are due.
- A restart does not finish (log, count) again what was finished before it.
- Unreadable records are moved aside, logged and counted (health, metrics).
- Data files are created with ``file_mode`` (0600 unless widened).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.aio import IoPool
from gateway.clock import ManualClock
from gateway.config import GatewayConfig
from gateway.keys import CONFIG, RUNTIME
from gateway.metrics import METRICS
from gateway.state.base import UploadStore
from gateway.state.disk import DiskStore
from gateway.state.parts import StoreParts
from gateway.uploads import Uploads
from tests.conftest import ClientFactory
from tests.helpers import OCTETS, TUS, metadata, patch_headers, path_of

Client = TestClient[Any, Any]
DAY = 86400.0


def config_of(client: Client) -> GatewayConfig:
    config: GatewayConfig = client.app[CONFIG]
    return config


def uploads_of(client: Client) -> Uploads:
    uploads: Uploads = client.app[RUNTIME].require()
    return uploads


def sample(client: Client, name: str, labels: dict[str, str]) -> float:
    value = client.app[METRICS].registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


async def upload(client: Client, data: bytes, name: str | None = None, **headers: str) -> str:
    """Creation with upload: one request, finished when it answers."""
    h = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS, **headers}
    if name is not None:
        h["Upload-Metadata"] = metadata(filename=name)
    r = await client.post("/files/", data=data, headers=h)
    assert r.status == 201, await r.text()
    return path_of(r.headers["Location"])


def id_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def error_code(r: Any) -> str:
    text: str = await r.text()
    return text.split(":", 1)[0]


@asynccontextmanager
async def store_of(config: GatewayConfig) -> AsyncIterator[UploadStore]:
    """The gateway's store on its state, while no gateway runs (to set up what a crash
    leaves behind)."""
    pool = IoPool(2)
    backend = None
    store: UploadStore
    if config.redis.url:
        from gateway.state.redis import RedisBackend, RedisStore
        backend = RedisBackend(config.redis.url, prefix=config.redis.prefix)
        await backend.open()
        store = RedisStore(backend, config.data_dir, pool, fsync=config.fsync,
                           write_buffer_bytes=config.write_buffer_bytes,
                           commit_interval_bytes=config.commit_interval_bytes,
                           sync_interval_bytes=config.sync_interval_bytes,
                           tombstone_ttl_s=config.tombstone_ttl_s)
    else:
        store = StoreParts.of(DiskStore(config.data_dir, pool, fsync=config.fsync,
                                        write_buffer_bytes=config.write_buffer_bytes,
                                        commit_interval_bytes=config.commit_interval_bytes)
                              ).store
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        if backend is not None:
            await backend.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


# --- 1. the delivered file is the only copy ---------------------------------------------------
@pytest.mark.both_stores
async def test_a_delivered_file_is_the_only_copy_and_is_served_until_removed(
        client: Client) -> None:
    url = await upload(client, b"delivered bytes", "d.txt")
    root = config_of(client).data_dir
    delivered = root / "complete" / "d.txt"
    assert delivered.read_bytes() == b"delivered bytes"
    assert not (root / "uploads" / f"{id_of(url)}.bin").exists(), "the spool kept a link"
    assert delivered.stat().st_nlink == 1
    r = await client.get(url)
    assert r.status == 200 and await r.read() == b"delivered bytes"
    assert 'filename="d.txt"' in r.headers["Content-Disposition"]
    r = await client.head(url, headers=TUS)
    assert r.status == 200 and r.headers["Upload-Offset"] == str(len(b"delivered bytes"))

    delivered.unlink()  # the operator takes it away: nothing is left to serve
    r = await client.get(url)
    assert r.status == 410 and await error_code(r) == "ERR_DELIVERED_FILE_REMOVED"
    assert (await client.head(url, headers=TUS)).status == 200


@pytest.mark.both_stores
async def test_a_retried_final_patch_of_a_delivered_upload_stores_nothing(
        client: Client) -> None:
    """The spool's copy is gone: a chunked empty body is still taken (204), bytes are not."""
    url = await upload(client, b"done", "r.txt")

    async def body(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    r = await client.patch(url, data=body(b""), headers=patch_headers(4))
    assert r.status == 204 and r.headers["Upload-Offset"] == "4"
    r = await client.patch(url, data=body(b"more"), headers=patch_headers(4))
    assert r.status == 413
    assert await (await client.get(url)).read() == b"done"


@pytest.mark.both_stores
async def test_a_file_that_took_the_delivered_name_is_not_served(client: Client) -> None:
    first = await upload(client, b"first upload", "same.txt")
    root = config_of(client).data_dir
    (root / "complete" / "same.txt").unlink()
    # The name is free again, and the next upload of that name gets it.
    second = await upload(client, b"second upload", "same.txt")
    assert (root / "complete" / "same.txt").read_bytes() == b"second upload"
    r = await client.get(first)
    assert r.status == 410 and await error_code(r) == "ERR_DELIVERED_FILE_REMOVED"
    assert await (await client.get(second)).read() == b"second upload"


@pytest.mark.both_stores
async def test_partials_keep_their_bytes_until_the_final_is_assembled(client: Client) -> None:
    a = await upload(client, b"hello ", **{"Upload-Concat": "partial"})
    b = await upload(client, b"world", **{"Upload-Concat": "partial"})
    root = config_of(client).data_dir
    assert (root / "uploads" / f"{id_of(a)}.bin").exists()
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}",
                                              "Upload-Metadata": metadata(filename="w.txt")})
    assert r.status == 201
    final = path_of(r.headers["Location"])
    assert (root / "complete" / "w.txt").read_bytes() == b"hello world"
    assert (root / "complete" / "w.txt").stat().st_nlink == 1
    assert not (root / "uploads" / f"{id_of(final)}.bin").exists()
    assert await (await client.get(final)).read() == b"hello world"
    # The partials are not delivered: their bytes are still here, and still downloadable.
    assert await (await client.get(a)).read() == b"hello "


@pytest.mark.parametrize("crash", ["after_link", "after_record"])
@pytest.mark.both_stores
async def test_a_crash_between_delivery_and_release_leaves_one_copy(
        make_client: ClientFactory, tmp_path: Path, crash: str) -> None:
    """SIGKILL after the link (before the record says delivered) or after the record (before
    the spool's link is removed): the restarted gateway ends with exactly one copy."""
    root = tmp_path / "crash"
    first = await make_client(data_dir=root)
    url = await upload(first, b"one copy only", "c.txt")
    config = config_of(first)
    await first.close()
    upload_id = id_of(url)
    delivered = root / "complete" / "c.txt"
    spool = root / "uploads" / f"{upload_id}.bin"
    # What the killed process left: the upload still owed its finish, (killed after the
    # link) a record that does not say it was delivered, and the spool's link still there.
    async with store_of(config) as store:
        if crash == "after_link":
            info = (await store.get(upload_id)).info
            await store.save_info(info.replace(sink=None, data_removed=False,
                                               finished_at=None))
        await store.owe_finish(upload_id, True)
    os.link(delivered, spool)
    second = await make_client(data_dir=root)
    assert not spool.exists()
    assert sorted(p.name for p in (root / "complete").iterdir()) == ["c.txt"]
    assert delivered.stat().st_nlink == 1
    r = await second.get(url)
    assert r.status == 200 and await r.read() == b"one copy only"


# --- 2. finished uploads expire; a sweep reads only what is due --------------------------------
@pytest.mark.both_stores
async def test_finished_uploads_are_forgotten_after_the_ttl(make_client: ClientFactory) -> None:
    clock = ManualClock()
    # The gateway's own sweep sleeps on this clock too: left at its interval, it wakes when
    # the clock moves on and takes some of what this test expects its own call to remove.
    client = await make_client(finished_ttl_s=2 * DAY, sweep_interval_s=100 * DAY, clock=clock)
    done = await upload(client, b"done", "keep.txt")
    partial = await upload(client, b"part", **{"Upload-Concat": "partial"})
    uploads = uploads_of(client)
    clock.advance(DAY)
    assert await uploads.expire_due(clock.now()) == 0
    assert (await client.head(done, headers=TUS)).status == 200
    clock.advance(DAY + 60)
    assert await uploads.expire_due(clock.now()) == 2
    for url in (done, partial):
        assert (await client.head(url, headers=TUS)).status == 410
        assert (await client.get(url)).status == 410
    root = config_of(client).data_dir
    assert (root / "complete" / "keep.txt").read_bytes() == b"done", "the operator's file"
    assert not list((root / "uploads").iterdir()), "spool bytes of the partial left behind"


@pytest.mark.both_stores
@pytest.mark.slow
async def test_a_sweep_reads_only_the_uploads_that_are_due(make_client: ClientFactory) -> None:
    client = await make_client(fsync="off", expire_after_s=60.0, finished_ttl_s=DAY)
    finished: list[str] = []
    for _ in range(40):  # 1,000 finished uploads, 25 at a time
        finished += await asyncio.gather(*(upload(client, b"x") for _ in range(25)))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    stale = path_of(r.headers["Location"])
    assert (await client.patch(stale, data=b"abc", headers=patch_headers(0))).status == 204
    uploads = uploads_of(client)

    def gets() -> float:
        return sample(client, "tus_store_latency_seconds_count", {"op": "get"})

    before = gets()
    assert await uploads.expire_due(time.time() + 120) == 1  # the unfinished one
    assert gets() - before <= 4, "the sweep read uploads that were not due"
    assert (await client.head(stale, headers=TUS)).status == 410
    before = gets()
    assert await uploads.expire_due(time.time() + 600) == 0
    assert gets() - before == 0
    # A day later every finished one is due (test_finished_uploads_are_forgotten_after_the_ttl
    # removes some that way).
    due = await uploads.store.due_for_expiry(time.time() + DAY + 60, 10_000)
    assert sorted(due) == sorted(id_of(url) for url in finished)


# --- 3. a restart does not finish again what was finished -----------------------------------
@pytest.mark.both_stores
async def test_a_restart_logs_and_counts_no_finished_events_again(
        make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "restart"
    first = await make_client(data_dir=root)
    for i in range(3):
        await upload(first, f"file {i}".encode(), f"f{i}.txt")
    await upload(first, b"part", **{"Upload-Concat": "partial"})
    assert sample(first, "tus_uploads_total", {"event": "finished"}) == 4
    await first.close()
    caplog.set_level(logging.INFO)
    caplog.clear()
    second = await make_client(data_dir=root)
    assert sample(second, "tus_uploads_total", {"event": "finished"}) == 0
    assert not [r for r in caplog.records if getattr(r, "event", None) == "finished"]
    assert sorted(p.name for p in (root / "complete").iterdir()) == [
        "f0.txt", "f1.txt", "f2.txt"]


# --- 4. unreadable records --------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_an_unreadable_record_is_moved_aside_logged_and_counted(
        make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "unreadable"
    first = await make_client(data_dir=root)
    good = await upload(first, b"fine", "fine.txt")
    r = await first.post("/files/", headers={**TUS, "Upload-Length": "10"})
    bad = path_of(r.headers["Location"])
    assert (await first.patch(bad, data=b"abc", headers=patch_headers(0))).status == 204
    await first.close()
    record = root / "uploads" / f"{id_of(bad)}.info"
    written = json.loads(record.read_text())
    written["sink"] = {"status": "a-status-from-a-newer-version"}
    record.write_text(json.dumps(written))
    caplog.set_level(logging.INFO)
    second = await make_client(data_dir=root)
    moved = sorted(p.name for p in (root / "quarantine").iterdir())
    assert moved == [f"{id_of(bad)}.bin", f"{id_of(bad)}.info"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and id_of(bad) in errors[0], errors
    assert (await second.head(bad, headers=TUS)).status == 404
    assert (await second.head(good, headers=TUS)).status == 200
    health = await (await second.get("/api/system/health")).json()
    assert health["components"]["state_store"]["unreadable_records"] == 1
    assert health["components"]["state_store"]["status"] == "degraded"
    assert sample(second, "tus_unreadable_records", {}) == 1


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_an_unreadable_record_in_redis_is_not_found_logged_once_and_counted(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    url = path_of(r.headers["Location"])
    store = uploads_of(client).store
    backend = store.backend  # type: ignore[attr-defined]
    await backend.client.hset(backend.keys.upload(id_of(url)), "info", b'{"id": 7, "sink": [')
    caplog.set_level(logging.INFO)
    for _ in range(3):
        r = await client.head(url, headers=TUS)
        assert r.status == 404
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and id_of(url) in errors[0], errors
    health = await (await client.get("/api/system/health")).json()
    assert health["components"]["state_store"]["unreadable_records"] == 1
    assert sample(client, "tus_unreadable_records", {}) == 1


# --- 6. file modes ----------------------------------------------------------------------------
def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("wanted", [None, 0o640])
@pytest.mark.both_stores
async def test_data_files_are_private_unless_widened(make_client: ClientFactory,
                                                     wanted: int | None) -> None:
    overrides = {} if wanted is None else {"file_mode": wanted}
    client = await make_client(**overrides)
    expected = 0o600 if wanted is None else wanted
    root = config_of(client).data_dir
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "6",
                                              "Upload-Metadata": metadata(filename="m.txt")})
    url = path_of(r.headers["Location"])
    assert (await client.patch(url, data=b"abc", headers=patch_headers(0))).status == 204
    spool = root / "uploads" / f"{id_of(url)}.bin"
    assert mode(spool) == expected
    if not config_of(client).redis.url:
        assert mode(root / "uploads" / f"{id_of(url)}.info") == expected
    assert (await client.patch(url, data=b"def", headers=patch_headers(3))).status == 204
    assert mode(root / "complete" / "m.txt") == expected
    if not config_of(client).redis.url:
        assert mode(root / "delivered.log") == expected
        assert mode(root / "uploads" / f"{id_of(url)}.info") == expected
    assert (await client.delete(url, headers=TUS)).status == 204
    if not config_of(client).redis.url:
        assert mode(root / "tombstones" / id_of(url)) == expected


def test_file_mode_is_octal_and_refuses_execute_bits() -> None:
    assert GatewayConfig.from_env({"TUS_FILE_MODE": "0640"}).file_mode == 0o640
    assert GatewayConfig.from_env({}).file_mode == 0o600
    for bad in ("0755", "0400", "0o1600", "9"):
        with pytest.raises(ValueError):
            GatewayConfig.from_env({"TUS_FILE_MODE": bad})
