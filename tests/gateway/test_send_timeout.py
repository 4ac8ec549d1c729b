"""A download whose reader takes no bytes is cut off after ``send_timeout_s``.

Without it, a client that asks for a large finished upload and never reads holds its
connection (and the file open) for ever. The client here shrinks its receive buffer, but the
gateway's kernel send buffer still absorbs a few MiB, so the file is larger than that.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory
from tests.helpers import TUS, patch_headers, path_of

Client = TestClient[Any, Any]
MiB = 1024 * 1024
SIZE = 24 * MiB
SEND_TIMEOUT_S = 0.5


async def finished_upload(client: Client, size: int) -> str:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": str(size)})
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=io.BytesIO(b"\x5a" * size), headers=patch_headers(0))
    assert r.status == 204, await r.text()
    return url


# The store plays no part in sending a file: one backend is enough.
@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_download_to_a_reader_that_never_reads_is_cut_off(
        make_client: ClientFactory, caplog: pytest.LogCaptureFixture) -> None:
    client: Client = await make_client(send_timeout_s=SEND_TIMEOUT_S)
    url = await finished_upload(client, SIZE)
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", client.server.port))
        await loop.sock_sendall(sock, f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        started = time.monotonic()
        await asyncio.sleep(SEND_TIMEOUT_S + 1.5)  # read nothing meanwhile
        received = 0
        ended = False
        while time.monotonic() - started < 10:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, MiB), timeout=1)
            except ConnectionResetError:
                ended = True
                break
            except TimeoutError:
                break
            if not data:
                ended = True
                break
            received += len(data)
    finally:
        sock.close()
    assert received < SIZE, "the whole file went out: nothing was cut off"
    assert ended, "the connection is still open"
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]
    # The gateway still serves: a reader that reads gets the whole file.
    r = await client.get(url)
    assert len(await r.read()) == SIZE
