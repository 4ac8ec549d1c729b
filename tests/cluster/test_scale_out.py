"""Several gateway processes sharing one Redis and one spool directory.

Real processes, a real redis-server and a real HAProxy running ``deploy/haproxy.cfg`` itself:
any instance serves any request of any upload, a request on one instance makes another let
go of the upload, an instance killed with SIGKILL loses nothing that was acknowledged, and a
Redis that goes away costs 503s while it is gone and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients.support import MiB, random_file, sha256_file
from tests.clients.test_tus_js import JS_DIR, SCRIPT, node_binary
from tests.conftest import ROOT, GatewayProcess, free_port
from tests.gateway.test_faults import KiB, RawPatch, payload, send_slices, session_for
from tests.helpers import TUS, metadata, patch_headers, path_of
from tests.redis_server import RedisServer

pytestmark = pytest.mark.allow_blocking  # test code waits on processes on purpose


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy"
                                        if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        raise RuntimeError("haproxy is not installed; `make test` installs it (Debian)")
    return found


@dataclass
class Cluster:
    gateways: list[GatewayProcess]
    proxy_port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/files/"

    def patches_served(self) -> list[int]:
        """PATCH requests in each instance's access log."""
        counts = []
        for gw in self.gateways:
            assert gw.log_path is not None
            text = gw.log_path.read_text(errors="replace")
            counts.append(len(re.findall(r'"PATCH /files/[0-9a-f]{32} ', text)))
        return counts


def start_gateways(count: int, data_dir: Path, redis_url: str, prefix: str,
                   *extra: str) -> list[GatewayProcess]:
    gateways = []
    for _ in range(count):
        gw = GatewayProcess(data_dir, ["--redis-url", redis_url, "--redis-prefix", prefix,
                                       "--access-log", "--lock-ttl", "2", *extra])
        gw.start()
        gateways.append(gw)
    return gateways


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisServer) -> Iterator[Cluster]:
    """Three gateways on one data dir and one Redis, behind HAProxy with deploy/haproxy.cfg."""
    data_dir = tmp_path / "shared-spool"
    gateways = start_gateways(3, data_dir, redis_server.url, f"s{uuid.uuid4().hex[:12]}",
                              "--behind-proxy")
    proxy_port = free_port()
    env = {**os.environ, "HAPROXY_BIND": f"127.0.0.1:{proxy_port}",
           **{f"GATEWAY_{i + 1}": f"127.0.0.1:{gw.port}" for i, gw in enumerate(gateways)}}
    log = (tmp_path / "haproxy.log").open("ab")
    proxy = subprocess.Popen([haproxy_binary(), "-f", str(ROOT / "deploy" / "haproxy.cfg"),
                              "-db"], env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    cluster = Cluster(gateways, proxy_port, data_dir)
    try:
        wait_for_proxy(cluster, proxy, tmp_path / "haproxy.log")
        yield cluster
    finally:
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(10)
        for gw in gateways:
            gw.kill()


def wait_for_proxy(cluster: Cluster, proxy: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise RuntimeError(f"haproxy exited: {log.read_text(errors='replace')}")
        probe = subprocess.run(
            [sys.executable, "-c", "import urllib.request as u, sys; r = u.Request(sys.argv[1],"
             " method='OPTIONS'); u.urlopen(r, timeout=1)", cluster.url],
            capture_output=True, timeout=10)
        if probe.returncode == 0:
            time.sleep(1.2)  # two health checks: every instance is up in HAProxy's view
            return
        time.sleep(0.1)
    raise RuntimeError(f"haproxy did not start: {log.read_text(errors='replace')}")


def run_upload(config: dict[str, object], workdir: Path, timeout_s: float) -> dict[str, Any]:
    """One tus-js-client upload (tests/js/upload.mjs); returns its JSON report."""
    config_path = workdir / "js-config.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.run([node_binary(), str(SCRIPT), str(config_path)], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"upload.mjs printed no report: {proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --- several instances behind HAProxy ---------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.slow
async def test_upload_spreads_over_instances_and_survives_a_sigkill(
        cluster: Cluster, tmp_path: Path) -> None:
    """tus-js-client in 1 MiB chunks through HAProxy: consecutive PATCHes land on different
    instances; one instance is killed with SIGKILL midway and the upload finishes through
    the others, byte for byte."""
    source = random_file(tmp_path / "spread.bin", 40 * MiB + 12345)
    config = {"endpoint": cluster.url, "file": str(source), "chunkSize": MiB,
              "metadata": {"filename": "spread.bin"},
              # About 5 s in all, so that the kill lands in the middle.
              "throttleBytesPerSecond": 8 * MiB,
              "retryDelays": [0, 250, 500, 1000, 2000, 3000, 5000], "timeoutMs": 120_000}
    upload = asyncio.create_task(asyncio.to_thread(run_upload, config, tmp_path, 150))
    victim = cluster.gateways[1]
    deadline = time.monotonic() + 60
    while sum(cluster.patches_served()) < 9:
        assert time.monotonic() < deadline and not upload.done(), cluster.patches_served()
        await asyncio.sleep(0.05)
    before_kill = cluster.patches_served()
    victim.kill()
    result = await upload
    assert result["status"] == "success", result
    after = cluster.patches_served()
    assert all(n > 0 for n in before_kill), f"round-robin missed an instance: {before_kill}"
    assert after[1] == before_kill[1], "the killed instance cannot have served more"
    assert after[0] > before_kill[0] and after[2] > before_kill[2], (before_kill, after)
    delivered = cluster.data_dir / "complete" / "spread.bin"
    assert sha256_file(delivered) == sha256_file(source)
    async with aiohttp.ClientSession() as http:
        async with http.get(result["url"]) as r:
            assert r.status == 200
            assert hashlib.sha256(await r.read()).hexdigest() == sha256_file(source)
        # The Location was built from the proxy's address (X-Forwarded-Host), not an
        # instance's.
        assert result["url"].startswith(cluster.url)


# --- a request on instance B makes instance A let go -----------------------------------------
@pytest.mark.timeout(60)
async def test_head_on_another_instance_preempts_a_stalled_patch(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a, b = start_gateways(2, tmp_path / "spool", redis_server.url,
                          f"x{uuid.uuid4().hex[:12]}", "--stall-timeout", "60")
    try:
        data = payload(3 * MiB + 7, seed=11)
        async with session_for(a.port) as on_a, session_for(b.port) as on_b:
            async with on_a.post("/files/", headers={**TUS, "Upload-Length": str(len(data)),
                                                     "Upload-Metadata": metadata(
                                                         filename="x.bin")}) as r:
                assert r.status == 201
                path = path_of(r.headers["Location"])
            sent = MiB + 4321
            conn = await RawPatch.open(a.port, path, 0, len(data))
            try:
                await send_slices(conn, data[:sent], 64 * KiB)
                await conn.flush()
                await asyncio.sleep(0.3)  # A has read it all; the client now says nothing
                started = time.monotonic()
                async with on_b.head(path, headers=TUS) as r:
                    elapsed = time.monotonic() - started
                    assert r.status == 200
                    offset = int(r.headers["Upload-Offset"])
                reply = await conn.reply(timeout_s=5)
            finally:
                await conn.close()
            assert elapsed < 1.5, f"HEAD on B waited {elapsed:.2f}s for A to let go"
            assert offset == sent, f"{sent - offset} bytes that A received were lost"
            assert reply.status == 423, reply
            async with on_b.patch(path, data=io.BytesIO(data[sent:]),
                                  headers=patch_headers(sent)) as r:
                assert r.status == 204, await r.text()
            async with on_b.get(path) as r:
                assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(data).digest()
    finally:
        a.kill()
        b.kill()


# --- Redis goes away and comes back -----------------------------------------------------------
@pytest.mark.timeout(90)
async def test_redis_killed_and_restarted_mid_upload(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    gw = start_gateways(1, tmp_path / "spool", redis.url, "r")[0]
    try:
        data = payload(6 * MiB + 99, seed=12)
        async with session_for(gw.port) as http:
            async with http.post("/files/", headers={**TUS, "Upload-Length": str(len(data))}) \
                    as r:
                assert r.status == 201
                path = path_of(r.headers["Location"])
            acked = 0
            for _ in range(2):
                async with http.patch(path, data=data[acked:acked + MiB],
                                      headers=patch_headers(acked)) as r:
                    assert r.status == 204
                    acked = int(r.headers["Upload-Offset"])
            # Redis dies while a PATCH is streaming: its bytes cannot be committed.
            conn = await RawPatch.open(gw.port, path, acked, MiB)
            try:
                await send_slices(conn, data[acked:acked + MiB // 2], 64 * KiB)
                await conn.flush()
                redis.kill()
                await conn.send_quietly(data[acked + MiB // 2:acked + MiB])
                reply = await conn.reply(timeout_s=15)
            finally:
                await conn.close()
            assert reply.status == 503 and b"ERR_STATE_UNAVAILABLE" in reply.body, reply
            assert reply.headers.get("retry-after"), reply
            # While Redis is down every request that needs it is a clear 503.
            for method in ("HEAD", "PATCH", "POST"):
                headers = patch_headers(acked) if method == "PATCH" else \
                    {**TUS, "Upload-Length": "10"}
                target = "/files/" if method == "POST" else path
                async with http.request(method, target, headers=headers,
                                        data=b"x" if method == "PATCH" else None) as r:
                    body = await r.text()
                    assert r.status == 503, (method, r.status, body)
                    assert r.headers["Retry-After"], method
                    assert method == "HEAD" or "ERR_STATE_UNAVAILABLE" in body, body
            redis.start()  # same port, same append-only file
            async with http.head(path, headers=TUS) as r:
                assert r.status == 200
                offset = int(r.headers["Upload-Offset"])
            assert offset == acked, f"acknowledged {acked}, Redis remembers {offset}"
            async with http.patch(path, data=io.BytesIO(data[offset:]),
                                  headers=patch_headers(offset)) as r:
                assert r.status == 204, await r.text()
            async with http.get(path) as r:
                assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(data).digest()
    finally:
        gw.kill()
        redis.stop()


def test_serve_says_plainly_when_redis_does_not_answer(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "d"), "--redis-url", f"redis://127.0.0.1:{port}/0"],
        capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
