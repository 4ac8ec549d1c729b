"""Operations: health, live status with speed and ETA, Prometheus metrics, admission control.

Each test runs a real gateway on loopback (in process; health over both state backends) and
talks to it over HTTP; the only thing a test changes inside is the memory budget, the way an
operator would restart it with another ``--memory-budget``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.keys import RUNTIME
from gateway.progress import SpeedMeter
from gateway.resources import LoadLevel, ResourceMonitor, Thresholds, admission
from tests.conftest import ClientFactory
from tests.helpers import TUS, metadata, patch_headers, path_of
from tests.redis_server import RedisServer

KiB = 1024
MiB = 1024 * KiB


async def create(client: TestClient[Any, Any], length: int, name: str = "f.bin") -> str:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(length),
                                              "Upload-Metadata": metadata(filename=name)})
    assert r.status == 201, await r.text()
    return path_of(r.headers["Location"])


async def paced(data: bytes, chunk: int, every_s: float,
                gate: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """A slow client: ``chunk`` bytes every ``every_s`` seconds, optionally held at a gate
    after the first chunk."""
    for start in range(0, len(data), chunk):
        yield data[start:start + chunk]
        if gate is not None and start == 0:
            await gate.wait()
        await asyncio.sleep(every_s)


def patch_body(client: TestClient[Any, Any], path: str, body: AsyncIterator[bytes],
               offset: int, length: int) -> asyncio.Future[Any]:
    return asyncio.ensure_future(client.patch(path, data=body, headers={
        **patch_headers(offset), "Content-Length": str(length)}))


def monitor_of(client: TestClient[Any, Any]) -> ResourceMonitor:
    server = client.server
    assert isinstance(server, TestServer)
    monitor = server.app[RUNTIME].monitor
    assert monitor is not None
    return monitor


async def status_of(client: TestClient[Any, Any], path: str) -> dict[str, Any]:
    r = await client.get("/api/upload/status/" + path.rsplit("/", 1)[1])
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


# --- pure rules -------------------------------------------------------------------------------
def test_load_levels_follow_the_budget() -> None:
    t = Thresholds(budget=1000, high_percent=80, critical_percent=95)
    assert [t.level(rss) for rss in (0, 499, 500, 799, 800, 949, 950, 5000)] == [
        LoadLevel.LOW, LoadLevel.LOW, LoadLevel.MEDIUM, LoadLevel.MEDIUM, LoadLevel.HIGH,
        LoadLevel.HIGH, LoadLevel.CRITICAL, LoadLevel.CRITICAL]


def test_admission_refuses_creations_first_then_patches() -> None:
    assert admission("create", LoadLevel.MEDIUM, 3, 0) is None
    assert admission("append", LoadLevel.HIGH, 3, 0) is None  # uploads in flight go on
    high = admission("create", LoadLevel.HIGH, 3, 0)
    assert high is not None and high.reason == "memory_high" and high.retry_after_s > 0
    critical = admission("append", LoadLevel.CRITICAL, 3, 0)
    assert critical is not None and critical.reason == "memory_critical"
    full = admission("append", LoadLevel.LOW, 4, 4)
    assert full is not None and full.reason == "too_many_uploads"
    assert admission("create", LoadLevel.LOW, 3, 4) is None


def test_speed_is_the_recent_pace_and_falls_when_the_client_stalls() -> None:
    meter = SpeedMeter(window_s=10.0, every_s=0.25)
    assert meter.speed(0.0) is None
    for i in range(41):  # 100 KiB every 0.25 s for 10 s: 400 KiB/s
        meter.feed(100 * KiB, i * 0.25)
    speed = meter.speed(10.0)
    assert speed is not None and 380 * KiB < speed < 420 * KiB
    assert meter.eta(4000 * KiB, 10.0) == pytest.approx(4000 * KiB / speed)
    for i in range(41):  # then twice as fast: the old pace leaves the window
        meter.feed(200 * KiB, 10.25 + i * 0.25)
    speed = meter.speed(20.25)
    assert speed is not None and 760 * KiB < speed < 840 * KiB
    assert len(meter.samples) <= 43  # bounded however long the upload runs
    stalled = meter.speed(25.0)
    assert stalled is not None and stalled < speed
    assert meter.speed(60.0) == 0.0 and meter.eta(100, 60.0) is None


# --- health -----------------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_health_reports_every_component_while_uploads_run(
        make_client: ClientFactory) -> None:
    client = await make_client(max_concurrent_uploads=10)
    data = os.urandom(256 * KiB)
    path = await create(client, len(data))
    gate = asyncio.Event()
    patch = patch_body(client, path, paced(data, 32 * KiB, 0.01, gate), 0, len(data))
    seen_active = 0
    for _ in range(100):
        r = await client.get("/api/system/health")
        assert r.status == 200
        health: dict[str, Any] = await r.json()
        seen_active = max(seen_active, health["components"]["resources"]["active_uploads"])
        if seen_active:
            break
        await asyncio.sleep(0.02)
    gate.set()
    assert (await patch).status == 204
    assert seen_active == 1, "the upload in flight shows as active"
    assert health["status"] == "healthy"
    resources = health["components"]["resources"]
    assert resources["resource_state"] == "LOW_LOAD" and resources["status"] == "healthy"
    assert 10 < resources["memory_mib"] < resources["memory_budget_mib"]
    assert resources["cpu_percent"] >= 0 and resources["max_concurrent_uploads"] == 10
    store = health["components"]["state_store"]
    assert store["reachable"] is True and store["latency_ms"] >= 0
    assert store["kind"] in ("disk", "redis")
    assert health["components"]["sink"] == {"status": "healthy", "kind": "directory"}
    expiry = health["components"]["expiry"]
    assert expiry["status"] == "healthy" and expiry["interval_s"] == 60.0
    r = await client.get("/api/system/health")
    assert (await r.json())["active_uploads"] == 0


async def test_health_says_unhealthy_with_503_at_critical_memory(
        make_client: ClientFactory) -> None:
    client = await make_client()
    monitor = monitor_of(client)
    monitor.set_budget(monitor.rss // 2)  # already over the budget
    r = await client.get("/api/system/health")
    assert r.status == 503
    health = await r.json()
    assert health["status"] == "unhealthy"
    assert health["components"]["resources"]["resource_state"] == "CRITICAL"
    monitor.set_budget(int(monitor.rss / 0.85))  # between high (80%) and critical (95%)
    r = await client.get("/api/system/health")
    assert r.status == 200 and (await r.json())["status"] == "degraded"


# --- status -----------------------------------------------------------------------------------
async def test_status_shows_progress_speed_and_eta_of_a_throttled_client(
        make_client: ClientFactory) -> None:
    client = await make_client()
    data = os.urandom(2 * MiB)
    path = await create(client, len(data), "holiday.mp4")
    # 64 KiB every 0.1 s: about 640 KiB/s, so 2 MiB take about 3 s.
    patch = patch_body(client, path, paced(data, 64 * KiB, 0.1), 0, len(data))
    await asyncio.sleep(1.5)
    status = await status_of(client, path)
    assert not patch.done()
    assert status["filename"] == "holiday.mp4" and status["size"] == len(data)
    assert status["complete"] is False and status["status"] in ("created", "receiving")
    received = status["bytes_received"]
    assert 256 * KiB < received < len(data), "bytes of the PATCH still streaming count"
    assert status["percent"] == pytest.approx(100 * received / len(data), abs=0.1)
    speed = status["speed_bytes_per_s"]
    assert 250 * KiB < speed < 1300 * KiB, speed
    remaining = (len(data) - received) / speed
    assert status["eta_s"] == pytest.approx(remaining, rel=0.05, abs=0.2)
    now = time.time()
    assert status["created_at"] <= status["last_activity"] <= now
    assert status["expires_at"] > now
    assert (await patch).status == 204
    done = await status_of(client, path)
    assert done["complete"] is True and done["percent"] == 100.0 and done["eta_s"] == 0.0
    assert done["bytes_received"] == len(data) and done["expires_at"] is None


async def test_status_of_an_unknown_upload_is_a_json_404(client: TestClient[Any, Any]) -> None:
    r = await client.get("/api/upload/status/" + "f" * 32)
    assert r.status == 404 and r.content_type == "application/json"
    assert (await r.json())["error"] == "ERR_UPLOAD_NOT_FOUND"
    r = await client.get("/api/upload/status/not-an-id")
    assert r.status == 404 and (await r.json())["error"] == "ERR_UPLOAD_NOT_FOUND"


# --- metrics ----------------------------------------------------------------------------------
def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_a_scrape_after_known_traffic_shows_the_counts(
        make_client: ClientFactory) -> None:
    client = await make_client()
    sizes = [1000, 2000, 3000]
    paths = [await create(client, n) for n in sizes]
    for path, n in zip(paths[:2], sizes[:2], strict=True):
        r = await client.patch(path, data=os.urandom(n), headers=patch_headers(0))
        assert r.status == 204
    r = await client.patch(paths[2], data=os.urandom(10), headers=patch_headers(5))
    assert r.status == 409
    assert (await client.delete(paths[2], headers=TUS)).status == 204
    assert (await client.head("/files/" + "e" * 32, headers=TUS)).status == 404
    r = await client.get("/metrics")
    assert r.status == 200 and r.content_type == "text/plain"
    m = samples(await r.text())

    def value(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("tus_requests_total", method="POST", status="201") == 3
    assert value("tus_requests_total", method="PATCH", status="204") == 2
    assert value("tus_requests_total", method="PATCH", status="409") == 1
    assert value("tus_requests_total", method="DELETE", status="204") == 1
    assert value("tus_requests_total", method="HEAD", status="404") == 1
    assert value("tus_bytes_received_total") == 3000
    assert value("tus_uploads_total", event="created") == 3
    assert value("tus_uploads_total", event="finished") == 2
    assert value("tus_uploads_total", event="terminated") == 1
    assert value("tus_uploads_total", event="expired") == 0
    assert value("tus_active_uploads") == 0
    assert value("tus_patch_duration_seconds_count") == 3
    assert value("tus_lock_wait_seconds_count") >= 5
    assert value("tus_store_latency_seconds_count", op="create") == 3
    assert value("tus_sink_parts_total", outcome="sent") == 0


# --- admission control ------------------------------------------------------------------------
async def test_a_concurrency_limit_turns_newcomers_away_and_lets_the_others_finish(
        make_client: ClientFactory) -> None:
    client = await make_client(max_concurrent_uploads=3)
    files = [os.urandom(300 * KiB + i) for i in range(3)]
    paths = [await create(client, len(d)) for d in files]
    late = os.urandom(1000)
    late_path = await create(client, len(late))
    gate = asyncio.Event()
    patches = [patch_body(client, p, paced(d, 64 * KiB, 0.01, gate), 0, len(d))
               for p, d in zip(paths, files, strict=True)]
    deadline = time.monotonic() + 10
    while (await (await client.get("/api/system/health")).json())["active_uploads"] < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    refused = [await client.post("/files/", headers={**TUS, "Upload-Length": "10"}),
               await client.patch(late_path, data=late, headers=patch_headers(0))]
    for r in refused:
        assert r.status == 503 and int(r.headers["Retry-After"]) > 0
        body = await r.json()
        assert body["error"] == "ERR_OVERLOADED" and body["reason"] == "too_many_uploads"
        assert body["active_uploads"] == 3 and body["max_concurrent_uploads"] == 3
    gate.set()
    assert [(await p).status for p in patches] == [204, 204, 204]
    for path, data in zip(paths, files, strict=True):
        r = await client.get(path)
        assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(data).digest()
    # The refused PATCH changed nothing, and now there is room for it.
    r = await client.patch(late_path, data=late, headers=patch_headers(0))
    assert r.status == 204


async def test_memory_pressure_stops_new_uploads_then_new_patches_never_bytes_in_flight(
        make_client: ClientFactory) -> None:
    client = await make_client()
    monitor = monitor_of(client)
    data = [os.urandom(200 * KiB + i) for i in range(6)]
    paths = [await create(client, len(d)) for d in data]
    gate = asyncio.Event()
    # Three uploads stream their first PATCH; three more have only been created.
    streaming = [patch_body(client, p, paced(d[:100 * KiB], 25 * KiB, 0.01, gate), 0,
                            100 * KiB) for p, d in zip(paths[:3], data[:3], strict=True)]
    await asyncio.sleep(0.2)
    monitor.set_budget(int(monitor.rss / 0.85))  # high (80%), not critical (95%)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert r.status == 503 and (await r.json())["reason"] == "memory_high"
    # Uploads already under way go on, PATCH by PATCH.
    for path, d in zip(paths[3:], data[3:], strict=True):
        r = await client.patch(path, data=d, headers=patch_headers(0))
        assert r.status == 204
    monitor.set_budget(monitor.rss // 2)  # critical
    r = await client.patch(paths[0], data=b"x", headers=patch_headers(100 * KiB))
    assert r.status == 503 and (await r.json())["reason"] == "memory_critical"
    assert r.headers["Retry-After"] == "30"
    gate.set()
    # The requests that were streaming when the pressure came finish with every byte.
    assert [(await p).status for p in streaming] == [204, 204, 204]
    monitor.set_budget(monitor.rss * 4)  # pressure gone
    for path, d in zip(paths[:3], data[:3], strict=True):
        head = await client.head(path, headers=TUS)
        assert head.headers["Upload-Offset"] == str(100 * KiB)
        r = await client.patch(path, data=d[100 * KiB:], headers=patch_headers(100 * KiB))
        assert r.status == 204
        r = await client.get(path)
        assert await r.read() == d
    r = await client.get("/metrics")
    m = samples(await r.text())
    assert m[("tus_admission_refused_total", (("reason", "memory_high"),))] == 1
    assert m[("tus_admission_refused_total", (("reason", "memory_critical"),))] == 1


@pytest.mark.allow_blocking  # starts and kills a redis-server of its own
async def test_health_is_unhealthy_while_the_state_store_is_unreachable(
        tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    config = GatewayConfig.from_settings(data_dir=tmp_path / "data", redis_url=redis.url,
                                         redis_prefix="health").validate()
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config),
                                                         host="127.0.0.1"))
    await client.start_server()
    try:
        r = await client.get("/api/system/health")
        assert r.status == 200
        assert (await r.json())["components"]["state_store"]["kind"] == "redis"
        redis.kill()
        r = await client.get("/api/system/health")
        assert r.status == 503
        health = await r.json()
        assert health["status"] == "unhealthy"
        store = health["components"]["state_store"]
        assert store["reachable"] is False and store["status"] == "unhealthy"
        redis.start()
        deadline = time.monotonic() + 10
        while (await client.get("/api/system/health")).status != 200:
            assert time.monotonic() < deadline, "healthy again once Redis is back"
            await asyncio.sleep(0.1)
    finally:
        await client.close()
        redis.stop()
