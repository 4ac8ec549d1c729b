"""Metric labels come from closed sets, whatever the requests say.

A label value the client chooses makes a new series for good: memory that grows with every
request and a ``/metrics`` page that grows with it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp.test_utils import TestClient

from protocol.decisions import KNOWN_METHODS

Client = TestClient[Any, Any]
SERIES = re.compile(r'^tus_requests_total\{method="([^"]*)",status="([^"]*)"\} ', re.M)
# Methods aiohttp's parser lets through (it refuses tokens it does not know with a 400).
WIRE_METHODS = ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH",
                "REPORT", "PURGE", "LINK", "UNLINK", "M-SEARCH", "NOTIFY", "TRACE", "PUT")


async def wire(client: Client, method: str, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


async def test_request_metric_labels_stay_in_a_closed_set(client: Client) -> None:
    for i in range(150):
        made_up = {"X-HTTP-Method-Override": f"made-up-{i}"}
        await (await client.get("/", headers=made_up)).read()
        await (await client.post("/files/", headers=made_up)).read()
        await (await client.get("/metrics", headers=made_up)).read()
    for method in WIRE_METHODS:
        for path in ("/", "/files/", "/files/" + "0" * 32, "/metrics", "/nowhere"):
            await wire(client, method, path)
    text = await (await client.get("/metrics")).text()
    series = SERIES.findall(text)
    assert series
    methods = {method for method, _ in series}
    assert methods <= KNOWN_METHODS | {"other"}, methods
    assert "other" in methods  # the made-up ones are counted, under one name
    assert all(re.fullmatch(r"[1-5]\d\d", status) for _, status in series), series
    assert len(series) <= 40, series
