"""The gateway on a Sentinel-watched Redis: a primary, its replica and three Sentinels.

Real processes: the primary is killed with SIGKILL while uploads stream, the Sentinels
promote the replica, the gateway answers 503 with Retry-After during the switch (and until
the old primary is back as the new one's replica, as ``--redis-min-replicas 1`` needs one)
and then goes on. Every acknowledged offset was on the replica before its 204, so none ever
goes back and every upload finishes exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import GatewayConfig
from gateway.state.redis import RedisBackend
from gateway.state.redis_url import parse_redis_url
from protocol import errors
from tests.cluster import test_events_across_instances
from tests.conftest import ROOT, GatewayProcess
from tests.gateway.test_faults import KiB, payload, session_for
from tests.helpers import TUS, patch_headers, path_of
from tests.redis_server import SentinelSet

pytestmark = pytest.mark.allow_blocking  # the fixture waits on processes on purpose
MiB = 1024 * KiB


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """Shared by this module's tests (it takes some seconds to start); the failover test
    runs last, as it leaves another server primary."""
    setup = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


@dataclass
class _SentinelAddress:
    url: str


@pytest.fixture
def redis_server(sentinels: SentinelSet) -> _SentinelAddress:
    """The single Redis of the test below, replaced by the Sentinel-watched primary."""
    return _SentinelAddress(sentinels.url)


# Live events between two instances, through the primary the Sentinels name.
test_events_follow_bytes_sent_to_another_instance = (
    test_events_across_instances.test_a_stream_on_one_instance_follows_bytes_sent_to_another)


@pytest.mark.slow
async def test_writes_wait_for_replicas_or_answer_503(sentinels: SentinelSet) -> None:
    """The URL finds the primary through the Sentinels; a commit that fewer replicas than
    asked acknowledge in time is a 503, not a success."""
    prefix = f"w{uuid.uuid4().hex[:12]}"
    enough = RedisBackend(sentinels.url, prefix=prefix, min_replicas=1)
    too_many = RedisBackend(sentinels.url, prefix=prefix, min_replicas=2,
                            replica_timeout_s=0.2)
    try:
        await enough.open()
        await too_many.open()
        info = await enough.client.info("replication")
        assert info["role"] == "master"
        keys = [enough.keys.lease("probe")]
        assert await enough.acked_script("hold_lease", keys, ["a", 10_000]) == 1
        with pytest.raises(errors.StateUnavailable):
            await too_many.acked_script("hold_lease", keys, ["a", 10_000])
        # A replica that stops acknowledging: this very write is not on it in time.
        primary = sentinels.primary()
        replicas = [s for s in sentinels.servers if s is not primary and s.ping()]
        for server in replicas:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
        try:
            enough.replica_timeout_ms = 200
            with pytest.raises(errors.StateUnavailable):
                await enough.acked_script("hold_lease", keys, ["a", 10_000])
        finally:
            for server in replicas:
                assert server.proc is not None
                server.proc.send_signal(signal.SIGCONT)
    finally:
        await enough.close()
        await too_many.close()


class Uploader:
    """One upload sent in pieces, resumed after every refusal, that checks what the gateway
    acknowledges: an offset once acknowledged (204 or HEAD) is never reported lower."""

    def __init__(self, http: aiohttp.ClientSession, data: bytes) -> None:
        self.http = http
        self.data = data
        self.path = ""
        self.acked = 0
        self.unavailable = 0  # 503s seen, each with a Retry-After
        self.trace: list[str] = []  # what happened, for a failure's message

    def saw(self, offset: int) -> None:
        assert offset >= self.acked, (f"acknowledged {self.acked}, later told {offset}: "
                                      + " ".join(self.trace[-30:]))
        self.acked = offset

    async def refused(self, response: aiohttp.ClientResponse) -> None:
        body = await response.text()
        self.trace.append(f"{response.method}:{response.status}")
        if response.status == 503:
            assert response.headers.get("Retry-After"), body
            self.unavailable += 1
        else:
            # The lock of a request cut off by the failover, until it expires.
            assert response.status in (409, 423), (response.status, body)
        await asyncio.sleep(0.1)

    async def run(self, piece: int) -> None:
        while not self.path:
            async with self.http.post("/files/", headers={
                    **TUS, "Upload-Length": str(len(self.data))}) as r:
                if r.status == 201:
                    self.path = path_of(r.headers["Location"])
                else:
                    await self.refused(r)
        known = True
        while self.acked < len(self.data):
            if not known:
                async with self.http.head(self.path, headers=TUS) as r:
                    if r.status != 200:
                        await self.refused(r)
                        continue
                    self.trace.append(f"HEAD:{r.headers['Upload-Offset']}")
                    self.saw(int(r.headers["Upload-Offset"]))
                    known = True
            start = self.acked
            async with self.http.patch(self.path, data=self.data[start:start + piece],
                                       headers=patch_headers(start)) as r:
                if r.status == 204:
                    self.trace.append(f"PATCH@{start}:{r.headers['Upload-Offset']}")
                    self.saw(int(r.headers["Upload-Offset"]))
                else:
                    known = False
                    await self.refused(r)
            await asyncio.sleep(0.01)


async def until_mid_upload(uploads: list[Uploader], tasks: list[asyncio.Task[None]]) -> None:
    """Wait until every upload has bytes acknowledged and more to send."""
    while not all(u.acked for u in uploads):
        await asyncio.sleep(0.02)
        for task in tasks:
            if task.done():
                task.result()
    assert all(u.acked < len(u.data) for u in uploads)


async def assert_exact(http: aiohttp.ClientSession, uploads: list[Uploader]) -> None:
    """After the failover: there were 503s, no offset went back (``Uploader.saw``) and every
    file downloads byte for byte."""
    assert sum(u.unavailable for u in uploads), "no 503 during the switch"
    for upload in uploads:
        async with http.head(upload.path, headers=TUS) as r:
            assert r.status == 200
            upload.saw(int(r.headers["Upload-Offset"]))
        async with http.get(upload.path) as r:
            assert r.status == 200
            body = await r.read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(upload.data).digest()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_failover_mid_upload_costs_503s_and_loses_nothing(
        sentinels: SentinelSet, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path / "spool", [
        "--redis-url", sentinels.url, "--redis-prefix", f"f{uuid.uuid4().hex[:12]}",
        "--redis-min-replicas", "1", "--redis-replica-timeout", "0.5", "--lock-ttl", "2",
        "--lock-wait", "1"])
    gw.start()
    old = sentinels.primary()
    try:
        async with session_for(gw.port) as http:
            uploads = [Uploader(http, payload(3 * MiB + 1000 * i, seed=i)) for i in range(3)]
            tasks = [asyncio.create_task(u.run(128 * KiB)) for u in uploads]
            await until_mid_upload(uploads, tasks)
            old.kill()
            new = await asyncio.to_thread(sentinels.wait_for_primary, old)
            assert not all(task.done() for task in tasks)
            # Back on its port as the new primary's replica (as an operator brings a failed
            # primary back), and writes find the replica they wait for again.
            old.extra_args = ["--replicaof", "127.0.0.1", str(new.port)]
            await asyncio.to_thread(old.start)
            async with asyncio.timeout(90):
                await asyncio.gather(*tasks)
            await assert_exact(http, uploads)
    finally:
        gw.kill()
        log = gw.log()
    assert "Traceback" not in log, log


def test_the_compose_sentinel_variant_names_its_own_services() -> None:
    """deploy/compose.sentinel.yaml: the gateways' settings are valid, name the Sentinels it
    runs and the service they monitor, and wait for no more replicas than it runs."""
    text = (ROOT / "deploy" / "compose.sentinel.yaml").read_text()
    services = set(re.findall(r"^  ([a-z][a-z0-9-]*):", text, re.MULTILINE))
    environ = dict(re.findall(r"^    ((?:REDIS|TUS)_[A-Z_]+): \"?([^\"\n]+)\"?$", text,
                              re.MULTILINE))
    config = GatewayConfig.from_env(environ).validate()
    target = parse_redis_url(config.redis.url)
    assert target.kind == "sentinel"
    assert {host for host, _ in target.nodes} <= services
    monitor = re.search(r"'sentinel monitor (\S+) (\S+) (\d+) (\d+)'", text)
    assert monitor is not None
    assert monitor[1] == target.service and monitor[2] in services
    replicas = len(re.findall(r'"--replicaof", "redis"', text))
    assert 1 <= config.redis.min_replicas <= replicas
    if importlib.util.find_spec("yaml") is not None:  # the whole file, where PyYAML is
        yaml: Any = importlib.import_module("yaml")
        parsed = yaml.safe_load(text)
        assert set(parsed["services"]) == services
        for name in ("gateway1", "gateway2", "gateway3"):
            assert parsed["services"][name]["environment"]["REDIS_URL"] == config.redis.url
