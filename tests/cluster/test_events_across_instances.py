"""Live events from whichever instance holds the upload: two gateway processes share one
real redis-server; the bytes go to instance A while the browser's event stream is on B."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cluster.test_scale_out import start_gateways
from tests.helpers import TUS, patch_headers, path_of
from tests.redis_server import RedisServer

KiB = 1024
LENGTH = 256 * KiB
PIECE = 16 * KiB


async def read_events(response: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """Every server-sent event of a stream until the server ends it."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = "message", list[str]()
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = "message", list[str]()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    return events


@pytest.mark.timeout(90)
async def test_a_stream_on_one_instance_follows_bytes_sent_to_another(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a, b = start_gateways(2, tmp_path / "spool", redis_server.url,
                          f"e{uuid.uuid4().hex[:12]}")
    origin_a, origin_b = (f"http://127.0.0.1:{gw.port}" for gw in (a, b))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{origin_a}/files/", headers={
                    **TUS, "Upload-Length": str(LENGTH)}) as r:
                assert r.status == 201, await r.text()
                upload = path_of(r.headers["Location"])
            upload_id = upload.rsplit("/", 1)[1]
            async with http.get(f"{origin_b}/api/upload/events/{upload_id}") as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"].startswith("text/event-stream")
                reading = asyncio.create_task(read_events(stream))
                await asyncio.sleep(0.3)  # B has subscribed before the first byte
                for offset in range(0, LENGTH, PIECE):
                    async with http.patch(f"{origin_a}{upload}", data=b"x" * PIECE,
                                          headers=patch_headers(offset)) as r:
                        assert r.status == 204, await r.text()
                    await asyncio.sleep(0.3)  # each piece is its own progress event
                events = await asyncio.wait_for(reading, 30)
    finally:
        a.kill()
        b.kill()
    names = [name for name, _ in events]
    assert names[0] == "status" and events[0][1]["status"] == "created", events[:2]
    progress = [data for name, data in events if name == "progress"]
    # Bytes that only instance A received were seen by B's stream as they arrived.
    assert len(progress) >= 4, names
    received = [p["bytes_received"] for p in progress]
    assert received == sorted(received) and received[-1] <= LENGTH
    assert any(0 < n < LENGTH for n in received), received
    assert {p["id"] for p in progress} == {upload_id}
    # The stream ended by itself on the final status, which B read from the shared state.
    last_name, last = events[-1]
    assert last_name == "status" and last["status"] == "drained", events[-1]
    assert last["offset"] == LENGTH
