"""Crash tests: a real gateway process is killed with SIGKILL at random moments while PATCH
bodies stream in, restarted on the same data directory, and asked where each upload stands.

After every restart, for every upload, HEAD's offset must be
- at least the last offset a 204 acknowledged (an acknowledged byte is never lost),
- at most the bytes the client had handed to a socket (nothing is invented),
- exactly the data file's size, and those bytes a prefix of the file (nothing is reported
  that is not stored, and nothing stored is wrong).
Every upload then resumes from HEAD's offset. After the kills, every file must be complete and
exact, both as downloaded and as delivered to ``<data-dir>/complete/``.

The random choices (sizes, request sizes, kill delays) come from one seeded generator; set
TUS_CRASH_SEED to replay another sequence. Timing on a busy machine still varies, so a seed
pins the choices, not the exact moment each kill lands.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from tests.conftest import GatewayProcess
from tests.gateway.test_faults import (
    Gateway,
    KiB,
    MiB,
    RawPatch,
    create,
    data_file,
    head_offset,
    session_for,
    sha,
)
from tests.helpers import OCTETS, TUS, metadata, path_of

SEED = int(os.environ.get("TUS_CRASH_SEED", "1371"))
UPLOADS = 4
KILLS = 20
CREATION_KILLS = 10
MAX_ROUNDS = 40  # KILLS is reached long before this; it only bounds the loop
KILL_PHASE_BUDGET_S = 100.0
PIECE = 32 * KiB
# Bytes per second while the gateway is being killed: the slow ones are still mid-way at the
# last kill, the fast one finishes early, so both unfinished and finished uploads are crashed.
RATES = (384 * KiB, 512 * KiB, 768 * KiB, 2 * MiB)


@dataclass
class Upload:
    name: str
    data: bytes
    rate: float
    path: str = ""
    offset: int = 0  # where the client resumes: HEAD's answer or the last 204
    acked: int = 0  # the highest offset a 204 acknowledged
    sent_hi: int = 0  # the highest offset the client handed to a socket
    patches: int = 0  # PATCH requests acknowledged

    @property
    def done(self) -> bool:
        return self.offset == len(self.data)


async def stream(port: int, up: Upload, rng: random.Random, rate: float | None) -> None:
    """PATCH the rest of ``up`` in requests of random size, at most ``rate`` bytes a second,
    until it is complete or the connection fails (the gateway was killed)."""
    while not up.done:
        size = min(rng.randint(256 * KiB, 3 * MiB), len(up.data) - up.offset)
        conn = await RawPatch.open(port, up.path, up.offset, size)
        try:
            while conn.sent < size:
                start = up.offset + conn.sent
                piece = up.data[start:start + min(PIECE, size - conn.sent)]
                # Counted before the write: once handed over, the bytes may reach the server.
                up.sent_hi = max(up.sent_hi, start + len(piece))
                await conn.send(piece)
                if rate is not None:
                    await asyncio.sleep(len(piece) / rate)
            reply = await conn.reply(timeout_s=30)
        finally:
            await conn.close()
        assert reply.status == 204, reply
        assert reply.offset == up.offset + size, (reply, up.offset, size)
        up.offset = up.acked = up.offset + size
        up.patches += 1


async def check_after_restart(g: Gateway, up: Upload, kill: int) -> None:
    offset = await head_offset(g, up.path)
    where = f"{up.name} after kill {kill} (seed {SEED})"
    assert offset >= up.acked, f"{where}: offset {offset} < acknowledged {up.acked}"
    assert offset <= up.sent_hi, f"{where}: offset {offset} > bytes sent {up.sent_hi}"
    stored = data_file(g.data_dir, up.path, up.name).read_bytes()
    # On disk the offset is the file's size. With Redis the file may hold bytes past the
    # committed offset (written, never committed); the next PATCH cuts them off.
    if g.offset_is_file_size:
        assert len(stored) == offset, f"{where}: offset {offset}, file {len(stored)} bytes"
    assert len(stored) >= offset, f"{where}: offset {offset}, file {len(stored)} bytes"
    assert stored[:offset] == up.data[:offset], f"{where}: the stored bytes are not a prefix"
    up.offset = offset


async def run_streams(port: int, uploads: list[Upload], rng: random.Random,
                      full_speed: bool = False) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(stream(port, up, random.Random(rng.random()),
                                       None if full_speed else up.rate))
            for up in uploads if not up.done]


async def settle(tasks: list[asyncio.Task[None]]) -> None:
    """Collect the clients after a kill: connection errors are expected, anything else not."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if result is None or isinstance(result, (OSError, TimeoutError, aiohttp.ClientError,
                                                 asyncio.CancelledError)):
            continue  # ConnectionError is an OSError
        raise result


async def verify_complete(g: Gateway, up: Upload) -> None:
    assert up.done, up.name
    async with g.http.get(up.path) as r:
        assert r.status == 200
        assert sha(await r.read()) == sha(up.data), up.name
    async with g.http.head(up.path, headers=TUS) as r:
        assert r.headers["Upload-Offset"] == str(len(up.data))
    delivered = g.data_dir / "complete" / up.name
    assert sha(delivered.read_bytes()) == sha(up.data), up.name


def assert_clean_log(gw: GatewayProcess) -> None:
    assert gw.log_path is not None
    log = gw.log_path.read_text(errors="replace")
    assert "Traceback" not in log, gw.log()
    # JSON log lines (and the plain line a fatal start-up error prints).
    levels = {json.loads(line).get("level") for line in log.splitlines()
              if line.startswith("{")}
    bad = [line for line in log.splitlines()
           if '"level": "error"' in line or '"level": "critical"' in line or " ERROR " in line]
    assert not levels & {"error", "critical"} and " ERROR " not in log, "\n".join(bad[:5])


@pytest.mark.timeout(170)
@pytest.mark.both_stores
@pytest.mark.slow
async def test_sigkill_during_patches(gateway_process: Callable[..., GatewayProcess]) -> None:
    rng = random.Random(SEED)
    # A short lock TTL: with Redis, the locks of a killed gateway expire by themselves.
    gw = gateway_process("--lock-ttl", "1")  # the default fsync policy: ack
    uploads = [Upload(f"crash-{i}.bin", rng.randbytes(rng.randint(8 * MiB, 16 * MiB)), rate)
               for i, rate in enumerate(RATES[:UPLOADS])]
    started = time.monotonic()
    async with session_for(gw.port) as session:
        g = Gateway(session, gw.port, gw.data_dir, None, gw.offset_is_file_size)
        for up in uploads:
            up.path = await create(g, len(up.data), filename=up.name)

        kills = 0
        for _ in range(MAX_ROUNDS):
            if kills >= KILLS or time.monotonic() - started > KILL_PHASE_BUDGET_S:
                break
            tasks = await run_streams(gw.port, uploads, rng)
            # Mostly mid-stream, sometimes right after the restart (first bytes, first PATCH).
            delay = rng.uniform(0.0, 0.15) if rng.random() < 0.25 else rng.uniform(0.2, 1.2)
            await asyncio.sleep(delay)
            # Blocking on purpose: the clients freeze too, so sent_hi is exact at the kill.
            gw.kill()
            kills += 1
            await settle(tasks)
            await asyncio.to_thread(gw.start)
            for up in uploads:
                await check_after_restart(g, up, kills)
        assert kills >= KILLS, f"only {kills} kills in {KILL_PHASE_BUDGET_S}s"
        assert any(not up.done for up in uploads), "every upload finished before the last kill"
        assert any(up.acked for up in uploads), "no PATCH was ever acknowledged"

        # The rest at full speed, then one more crash and restart on finished uploads.
        tasks = await run_streams(gw.port, uploads, rng, full_speed=True)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        gw.kill()
        await asyncio.to_thread(gw.start)
        for up in uploads:
            await check_after_restart(g, up, kills + 1)
            await verify_complete(g, up)
    assert sorted(p.name for p in (gw.data_dir / "complete").iterdir()) == sorted(
        up.name for up in uploads)
    assert_clean_log(gw)
    assert time.monotonic() - started < 150


async def create_many(g: Gateway, rng: random.Random, created: list[Upload],
                      attempts: list[int]) -> None:
    """POST uploads that carry their first bytes (creation-with-upload), one after another,
    until the gateway dies (or a bounded number). Some are complete on creation."""
    for _ in range(100):
        await asyncio.sleep(rng.uniform(0, 0.005))
        attempts[0] += 1
        first = rng.randint(16 * KiB, 1 * MiB)
        data = rng.randbytes(first + rng.choice((0, rng.randint(1, 512 * KiB))))
        up = Upload(f"new-{attempts[0]}.bin", data, rate=0, sent_hi=first)
        headers = {**TUS, "Upload-Length": str(len(data)), "Content-Type": OCTETS,
                   "Upload-Metadata": metadata(filename=up.name)}
        async with g.http.post("/files/", data=io.BytesIO(data[:first]), headers=headers) as r:
            assert r.status == 201, await r.text()
            up.path = path_of(r.headers["Location"])
            up.offset = up.acked = int(r.headers["Upload-Offset"])
        assert up.acked == first, (up.acked, first)
        created.append(up)


@pytest.mark.timeout(120)
@pytest.mark.both_stores
@pytest.mark.slow
async def test_sigkill_during_creation(gateway_process: Callable[..., GatewayProcess]) -> None:
    """Kills while uploads are being created with their first bytes: every upload whose 201
    arrived is there after the restart with at least those bytes, and the gateway always
    starts again (a record torn by the kill must not stop it)."""
    rng = random.Random(SEED + 1)
    # Hundreds of uploads from one address are left unfinished by the kills: not a limit
    # this test is about.
    gw = gateway_process("--lock-ttl", "1", "--max-open-uploads-per-client", "0")
    created: list[Upload] = []
    attempts = [0]
    started = time.monotonic()
    async with session_for(gw.port) as session:
        g = Gateway(session, gw.port, gw.data_dir, None, gw.offset_is_file_size)
        for kill in range(1, CREATION_KILLS + 1):
            tasks = [asyncio.create_task(create_many(g, random.Random(rng.random()), created,
                                                     attempts)) for _ in range(2)]
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            gw.kill()
            await settle(tasks)
            await asyncio.to_thread(gw.start)
            for up in created:
                await check_after_restart(g, up, kill)
            assert time.monotonic() - started < 80, f"{kill} kills took too long"
        assert len(created) >= CREATION_KILLS, f"only {len(created)} uploads were created"
        tasks = await run_streams(gw.port, created, rng, full_speed=True)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        for up in created:
            await verify_complete(g, up)
    assert_clean_log(gw)
