"""The gateway on a real Redis Cluster of three primaries (``redis+cluster://``).

Every state contract suite that runs on one Redis runs here again, on the cluster: each of
an upload's scripts and transactions must keep to one slot (a cluster refuses the rest with
CROSSSLOT), and what a test creates spreads over the three primaries. So do live events
between two instances. Then uploads through two gateway processes, spread over the slots,
with a request on one instance making the other let go (pub/sub across the cluster), each
file exact at the end. On a cluster with replicas: writes wait for the replica of their
slot's primary, and the Sentinel failover test runs again, the cluster promoting the
replica of a primary killed mid-upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.aio import IoPool
from gateway.config import FsyncPolicy
from gateway.state.base import CoreStore, Locker
from gateway.state.redis import RedisBackend, RedisLocker, RedisStore
from protocol import errors
from tests.cluster import test_events_across_instances
from tests.cluster.test_sentinel import Uploader, assert_exact, until_mid_upload
from tests.conftest import GatewayProcess
from tests.gateway.test_faults import KiB, id_of, payload, session_for
from tests.helpers import TUS, patch_headers, path_of
from tests.redis_server import ClusterSet, RedisServer
from tests.state import (
    test_checkpoints,
    test_concatenation,
    test_contract,
    test_expiry_index,
    test_leases,
    test_locks,
    test_open_slots,
    test_owed_work,
    test_owners,
)
from tests.state.stores import StoreFactory, chunks, new_info

pytestmark = pytest.mark.allow_blocking  # fixtures wait on processes on purpose
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    cluster = ClusterSet(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class _ClusterAddress:
    """What the suites below read of their ``redis_server``: where to connect."""

    url: str


@pytest.fixture
def redis_server(redis_cluster: ClusterSet) -> _ClusterAddress:
    """The suites' single Redis, replaced by the cluster for this module."""
    return _ClusterAddress(redis_cluster.url)


@pytest.fixture(params=["redis"])  # the suites ask which store they run on
async def open_store(redis_server: _ClusterAddress,
                     tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """``tests.state.stores.store_fixture``'s Redis store, on the cluster."""
    pool = IoPool(4)
    opened: list[tuple[CoreStore, RedisBackend]] = []
    prefix = f"k{uuid.uuid4().hex[:12]}"

    async def factory() -> CoreStore:
        for old, old_backend in opened:
            await old.close()
            await old_backend.close()
        backend = RedisBackend(redis_server.url, prefix=prefix)
        await backend.open()
        store = RedisStore(backend, tmp_path / "data", pool, fsync=FsyncPolicy.ACK,
                           write_buffer_bytes=64 * 1024, commit_interval_bytes=256 * 1024,
                           sync_interval_bytes=256 * 1024, tombstone_ttl_s=3600)
        await store.open()
        opened.append((store, backend))
        return store

    yield factory
    for store, backend in opened:
        await store.close()
        await backend.close()
    await asyncio.get_running_loop().run_in_executor(None, pool.close)


@pytest.fixture(params=["redis"])
async def lockers(redis_server: _ClusterAddress) -> AsyncIterator[test_locks.LockerFactory]:
    """``tests.state.test_locks.lockers``: one locker per instance, on the cluster."""
    backends: list[RedisBackend] = []
    prefix = f"l{uuid.uuid4().hex[:12]}"

    async def factory() -> Locker:
        backend = RedisBackend(redis_server.url, prefix=prefix, lock_ttl_s=1.0)
        await backend.open()
        backends.append(backend)
        return RedisLocker(backend)

    yield factory
    for backend in backends:
        await backend.close()


@pytest.fixture
async def locker(lockers: test_locks.LockerFactory) -> Locker:
    return await lockers()


# The suites' tests, collected here once more under their module's name.
for _suite in (test_contract, test_checkpoints, test_concatenation, test_expiry_index,
               test_leases, test_locks, test_open_slots, test_owed_work, test_owners,
               test_events_across_instances):
    _short = _suite.__name__.rsplit(".", 1)[1].removeprefix("test_")
    for _name, _test in list(vars(_suite).items()):
        if _name.startswith("test_") and callable(_test):
            globals()[f"test_{_short}__{_name.removeprefix('test_')}"] = _test


def _role(server: RedisServer) -> str:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return str(client.info("replication")["role"])
    finally:
        client.close()


def _keys_per_node(cluster: ClusterSet, prefix: str) -> list[int]:
    counts = []
    for server in cluster.servers:
        client = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            counts.append(sum(1 for _ in client.scan_iter(f"{prefix}:{{*", count=1000)))
        finally:
            client.close()
    return counts


@pytest.mark.timeout(120)
async def test_uploads_spread_over_the_slots_and_instances_let_go_of_each_other(
        redis_cluster: ClusterSet, tmp_path: Path) -> None:
    prefix = f"u{uuid.uuid4().hex[:12]}"
    spool = tmp_path / "spool"
    gateways = [GatewayProcess(spool, ["--redis-url", redis_cluster.url, "--redis-prefix",
                                       prefix, "--lock-ttl", "30"]) for _ in range(2)]
    for gw in gateways:
        gw.start()
    sessions = [session_for(gw.port) for gw in gateways]
    try:
        # Random ids over three primaries: with 24 uploads, one primary left without any is
        # a chance of 3 * (2/3)^24, about 1 in 20,000 (with 9 it was 1 in 13).
        uploads = [payload(256 * KiB + 777 * i, seed=i) for i in range(24)]

        async def send(i: int, data: bytes) -> str:
            # Creation on one instance, the bytes through both in turn.
            first = sessions[i % 2]
            async with first.post("/files/", headers={
                    **TUS, "Upload-Length": str(len(data))}) as r:
                assert r.status == 201, await r.text()
                path = path_of(r.headers["Location"])
            offset, turn = 0, i
            while offset < len(data):
                http = sessions[turn % 2]
                async with http.patch(path, data=io.BytesIO(data[offset:offset + 64 * KiB]),
                                      headers=patch_headers(offset)) as r:
                    assert r.status == 204, await r.text()
                    new = int(r.headers["Upload-Offset"])
                assert new > offset
                offset, turn = new, turn + 1
            return path

        paths = await asyncio.gather(*(send(i, d) for i, d in enumerate(uploads)))
        # Every primary holds some uploads' keys: the uploads spread over the slots.
        assert all(_keys_per_node(redis_cluster, prefix)), _keys_per_node(redis_cluster, prefix)

        # A PATCH that stalls on one instance is made to let go by a PATCH on the other.
        data = payload(2 * MiB, seed=99)
        async with sessions[0].post("/files/", headers={
                **TUS, "Upload-Length": str(len(data))}) as r:
            stalled_path = path_of(r.headers["Location"])

        async def trickle() -> Any:
            yield data[:64 * KiB]
            await asyncio.sleep(30)  # stalls with the lock held
            yield data[64 * KiB:128 * KiB]

        stalled = asyncio.create_task(sessions[0].patch(
            stalled_path, data=trickle(), headers=patch_headers(0)))
        try:
            offset = 0
            async with asyncio.timeout(10):
                while offset == 0:
                    await asyncio.sleep(0.1)
                    async with sessions[1].head(stalled_path, headers=TUS) as r:
                        offset = int(r.headers["Upload-Offset"])
            # The holder extends its 30 s lock every 10 s, when it would see the release
            # flag: only the request heard over pub/sub lets this PATCH in sooner.
            started = time.monotonic()
            async with sessions[1].patch(stalled_path, data=io.BytesIO(data[offset:]),
                                         headers=patch_headers(offset)) as r:
                assert r.status == 204, await r.text()
            assert time.monotonic() - started < 5
        finally:
            stalled.cancel()
            # Answered already (the holder let go, its body cut short) or cancelled here.
            with contextlib.suppress(BaseException):
                (await stalled).release()
        for path, data_sent in [*zip(paths, uploads, strict=True), (stalled_path, data)]:
            async with sessions[1].get(path) as r:
                assert r.status == 200
                body = await r.read()
            assert hashlib.sha256(body).digest() == hashlib.sha256(data_sent).digest()
    finally:
        for http in sessions:  # also after a failed assertion: no session left to the GC
            await http.close()
        logs = []
        for gw in gateways:
            gw.kill()
            logs.append(gw.log())
    assert not any("Traceback" in log for log in logs), logs


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_on_a_cluster_with_replicas_writes_wait_for_them_or_answer_503(
        tmp_path: Path) -> None:
    """Each upload's commit waits for the replica of the primary that holds its slot; a
    wait for more replicas than there are is a 503, not a success."""
    cluster = ClusterSet(tmp_path / "replicated", replicas=1)
    pool = IoPool(2)
    backends: list[RedisBackend] = []
    try:
        await asyncio.to_thread(cluster.start)
        prefix = f"r{uuid.uuid4().hex[:12]}"
        stores = []
        for wanted in (1, 2):
            backend = RedisBackend(cluster.url, prefix=prefix, min_replicas=wanted,
                                   replica_timeout_s=0.2)
            backends.append(backend)
            await backend.open()
            stores.append(RedisStore(backend, tmp_path / "data", pool,
                                     fsync=FsyncPolicy.OFF, write_buffer_bytes=64 * 1024,
                                     commit_interval_bytes=64 * 1024,
                                     sync_interval_bytes=64 * 1024, tombstone_ttl_s=3600))
        enough, too_many = stores
        await enough.open()
        infos = [new_info(1000 + n, length=20) for n in range(12)]
        for info in infos:  # over every primary's slots
            await enough.create(info)
            assert await enough.append(info.upload_id, 0, chunks(b"x" * 10),
                                       max_bytes=None, checksum=None) == 10
        # Every node holds some: each primary's slots (and their replicas).
        assert all(_keys_per_node(cluster, prefix)), _keys_per_node(cluster, prefix)
        with pytest.raises(errors.StateUnavailable):
            await too_many.save_info(infos[0].replace(metadata={"k": b"v"}))
        # Replicas that stop acknowledging: the WAIT is for this very write (on its own
        # connection), so it is refused even though the replicas have all older ones.
        replicas = [s for s in cluster.servers if _role(s) == "slave"]
        for server in replicas:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
        try:
            for info in infos[:3]:
                with pytest.raises(errors.StateUnavailable):
                    await enough.append(info.upload_id, 10, chunks(b"y" * 10),
                                        max_bytes=None, checksum=None)
        finally:
            for server in replicas:
                assert server.proc is not None
                server.proc.send_signal(signal.SIGCONT)
    finally:
        for backend in backends:
            await backend.close()
        await asyncio.to_thread(cluster.stop)
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_primary_killed_mid_upload_costs_503s_and_loses_nothing(
        tmp_path: Path) -> None:
    """The Sentinel failover test on a cluster of three primaries with a replica each:
    uploads spread over the slots, one primary is killed with SIGKILL, the cluster
    promotes its replica; 503s with Retry-After meanwhile, then every upload finishes
    exact and no offset ever goes back."""
    cluster = ClusterSet(tmp_path / "replicated", replicas=1)
    await asyncio.to_thread(cluster.start)
    gw = GatewayProcess(tmp_path / "spool", [
        "--redis-url", cluster.url, "--redis-prefix", f"f{uuid.uuid4().hex[:12]}",
        "--redis-min-replicas", "1", "--redis-replica-timeout", "0.5", "--lock-ttl", "2",
        "--lock-wait", "1"])
    try:
        gw.start()
        async with session_for(gw.port) as http:
            uploads = [Uploader(http, payload(2 * MiB + 1000 * i, seed=i)) for i in range(6)]
            tasks = [asyncio.create_task(u.run(128 * KiB)) for u in uploads]
            await until_mid_upload(uploads, tasks)
            # The primary of the first upload's slot.
            key = f"{{{id_of(uploads[0].path)}}}"
            victim = _primary_of(cluster, key)
            victim.kill()
            promoted = await asyncio.to_thread(_wait_promoted, cluster, victim, key)
            # Back as the new primary's replica (a returning primary of a cluster is made
            # one), so writes there find the replica they wait for again.
            await asyncio.to_thread(victim.start)
            async with asyncio.timeout(120):
                await asyncio.gather(*tasks)
            assert promoted is not victim
            await assert_exact(http, uploads)
    finally:
        gw.kill()
        log = gw.log()
        await asyncio.to_thread(cluster.stop)
    assert "Traceback" not in log, log


def _primary_of(cluster: ClusterSet, key: str,
                avoid: RedisServer | None = None) -> RedisServer:
    """The primary that serves the key's slot, as a node other than ``avoid`` sees it."""
    asked = next(s for s in cluster.servers if s is not avoid)
    client = redis.Redis(host="127.0.0.1", port=asked.port)
    try:
        slot = int(client.cluster("KEYSLOT", key))
        for start, end, primary, *_ in client.cluster("SLOTS"):
            if start <= slot <= end:
                return next(s for s in cluster.servers if s.port == int(primary[1]))
    finally:
        client.close()
    raise AssertionError(f"no primary serves slot {slot}")


def _wait_promoted(cluster: ClusterSet, victim: RedisServer, key: str) -> RedisServer:
    """The node that serves the key's slot once the cluster has failed over."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, AssertionError):
            primary = _primary_of(cluster, key, avoid=victim)
            if primary is not victim:
                return primary
        time.sleep(0.1)
    raise AssertionError(f"the cluster promoted no replica: {cluster.logs()}")
