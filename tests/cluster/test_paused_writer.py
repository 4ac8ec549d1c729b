"""A gateway paused past its lock's TTL writes nothing when it resumes.

Two real gateway processes share a real redis-server and one spool folder, with a 1 s lock
TTL. Instance A receives the start of a PATCH and holds those bytes in its write buffer; A is
stopped with SIGSTOP; its lock expires; instance B resumes the upload from the committed
offset with other bytes and finishes it; A is continued with SIGCONT and its request ends
(the client sends more, or goes away). The spool file must hold exactly what B acknowledged:
not one byte of A's buffer, whatever path A's stale request takes when it wakes up.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import GatewayProcess
from tests.gateway.test_faults import KiB, RawPatch, Reply, payload, send_slices, session_for
from tests.helpers import TUS, patch_headers, path_of
from tests.redis_server import RedisServer

pytestmark = pytest.mark.allow_blocking  # test code waits on processes on purpose

ROUNDS = 20
LENGTH = 512 * KiB  # two write buffers (256 KiB by default)


async def head_offset(http: aiohttp.ClientSession, path: str) -> int:
    async with http.head(path, headers=TUS) as r:
        assert r.status == 200, r.status
        return int(r.headers["Upload-Offset"])


async def wait_received(http: aiohttp.ClientSession, upload_id: str, count: int) -> None:
    """Until A's live status says its request handed ``count`` body bytes to the store."""
    async with asyncio.timeout(5):
        while True:
            async with http.get(f"/api/upload/status/{upload_id}") as r:
                assert r.status == 200, await r.text()
                if (await r.json())["bytes_received"] >= count:
                    return
            await asyncio.sleep(0.01)


@pytest.mark.timeout(150)
@pytest.mark.slow
async def test_a_writer_paused_past_its_lock_ttl_writes_no_stale_byte(
        tmp_path: Path, redis_server: RedisServer) -> None:
    spool = tmp_path / "spool"
    prefix = f"p{uuid.uuid4().hex[:12]}"
    a, b = (GatewayProcess(spool, ["--redis-url", redis_server.url, "--redis-prefix", prefix,
                                   "--lock-ttl", "1", "--stall-timeout", "30"])
            for _ in range(2))
    a.start()
    b.start()
    assert a.proc is not None
    finished: list[tuple[str, bytes]] = []
    try:
        async with session_for(a.port) as on_a, session_for(b.port) as on_b:
            for round_no in range(ROUNDS):
                async with on_b.post("/files/", headers={**TUS,
                                                         "Upload-Length": str(LENGTH)}) as r:
                    assert r.status == 201
                    path = path_of(r.headers["Location"])
                upload_id = path.rsplit("/", 1)[-1]
                stale = payload(LENGTH, seed=1000 + round_no)
                fresh = payload(LENGTH, seed=2000 + round_no)
                # Less than a write buffer (only buffered), or a buffer and a bit (one batch
                # written but not committed, the rest buffered).
                to_a = (100 if round_no % 2 == 0 else 300) * KiB
                conn = await RawPatch.open(a.port, path, 0, LENGTH)
                reply: Reply | None = None
                try:
                    await send_slices(conn, stale[:to_a], 64 * KiB)
                    await conn.flush()
                    await wait_received(on_a, upload_id, to_a)
                    a.proc.send_signal(signal.SIGSTOP)
                    try:
                        # B's HEAD waits for A's lock to expire (A cannot answer "let go").
                        offset = await head_offset(on_b, path)
                        assert offset == 0, f"round {round_no}: A had committed {offset}"
                        async with on_b.patch(path, data=fresh[offset:],
                                              headers=patch_headers(offset)) as r:
                            assert r.status == 204, await r.text()
                            assert int(r.headers["Upload-Offset"]) == LENGTH
                    finally:
                        a.proc.send_signal(signal.SIGCONT)
                    # A's request ends in one of three ways after it wakes up.
                    way = round_no % 3
                    if way == 0:
                        await conn.send_quietly(stale[to_a:])  # the rest of its body
                    elif way == 1:
                        await conn.send_quietly(stale[to_a:to_a + 64 * KiB])  # a bit more
                    if way != 2:  # way 2: the client goes away at once
                        try:
                            reply = await conn.reply(timeout_s=10)
                        except ConnectionError:
                            reply = None
                finally:
                    await conn.close()
                assert reply is None or not 200 <= reply.status < 300, \
                    f"round {round_no}: A acknowledged bytes after losing its lock: {reply}"
                # Offsets never go back, on either instance.
                assert await head_offset(on_b, path) == LENGTH
                assert await head_offset(on_a, path) == LENGTH
                finished.append((upload_id, fresh))
        # A finishes whatever its stale requests still do before it exits.
        assert a.terminate() == 0, a.log()
        corrupted = []
        for round_no, (upload_id, fresh) in enumerate(finished):
            # Delivered: the file in complete/ is the only copy (named after the id).
            data = (spool / "complete" / upload_id).read_bytes()
            if hashlib.sha256(data).digest() != hashlib.sha256(fresh).digest():
                first = next((i for i, (x, y) in enumerate(zip(data, fresh, strict=False))
                              if x != y), min(len(data), len(fresh)))
                corrupted.append(f"round {round_no}: {len(data)} bytes, first difference "
                                 f"at {first}")
        assert not corrupted, "stale bytes from the paused instance:\n" + "\n".join(corrupted)
        # And what clients read back is B's bytes too.
        async with session_for(b.port) as on_b:
            for upload_id, fresh in finished[-3:]:
                async with on_b.get(f"/files/{upload_id}") as r:
                    assert r.status == 200
                    assert await r.read() == fresh
        assert "Traceback" not in a.log() and "Traceback" not in b.log(), a.log() + b.log()
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.send_signal(signal.SIGCONT)
        a.kill()
        b.kill()
