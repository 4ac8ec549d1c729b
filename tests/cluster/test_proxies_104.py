"""The draft's 104 (Upload Resumption Supported) through the shipped proxy configurations.

A client learns where its upload lives from the 104 before it sends the body; a proxy that
drops it, forwards only the first 1xx, or takes it for the final answer makes a cut-off
creation unresumable. A real gateway process behind a real HAProxy running
``deploy/haproxy.cfg`` itself, spoken to on a raw socket: the 104 must come through before
any byte of the body is sent, and a 100 the client asked for must come after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from yarl import URL

from tests.cluster.test_scale_out import Cluster, haproxy_binary, wait_for_proxy
from tests.conftest import ROOT, GatewayProcess, free_port
from tests.gateway.test_ietf import (
    HOST,
    Exchange,
    _read_head,
    _request_head,
    append_headers,
    check_interim,
    complete,
    interop,
    is_complete,
    read_reply,
    send,
)

pytestmark = pytest.mark.allow_blocking  # the fixture waits on processes on purpose


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One gateway (disk store, --behind-proxy) behind HAProxy with deploy/haproxy.cfg; the
    file's three servers all name it. Yields the proxy's port."""
    tmp = tmp_path_factory.mktemp("haproxy104")
    gateway = GatewayProcess(tmp / "data", ["--behind-proxy"])
    gateway.start()
    port = free_port()
    env = {**os.environ, "HAPROXY_BIND": f"127.0.0.1:{port}",
           **{f"GATEWAY_{i}": f"127.0.0.1:{gateway.port}" for i in (1, 2, 3)}}
    log_path = tmp / "haproxy.log"
    with log_path.open("ab") as log:
        proxy = subprocess.Popen([haproxy_binary(), "-f", str(ROOT / "deploy" / "haproxy.cfg"),
                                  "-db"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_proxy(Cluster([gateway], port, tmp), proxy, log_path)
        yield port
    finally:
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(10)
        gateway.kill()


async def start_creation(port: int, headers: dict[str, str]) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter, Exchange]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(_request_head("POST", "/files/", port, headers))
    await writer.drain()
    return reader, writer, Exchange()


@pytest.mark.parametrize("version", [3, 8, 9])
async def test_104_reaches_the_client_before_the_body(haproxy: int, version: int) -> None:
    """The 104 crosses HAProxy while the body is still unsent (HAProxy neither waits for the
    body nor holds the interim answer), with a Location on the proxy; then the 201."""
    body = os.urandom(50_000)
    headers = {**interop(version), **complete(version, True), "Content-Length": str(len(body))}
    reader, writer, exchange = await start_creation(haproxy, headers)
    try:
        exchange.interim.append(await _read_head(reader))
        first = exchange.interim[0]
        assert first.status == 104, first
        location = first.headers["location"]
        assert URL(location).port == haproxy  # the proxy's address, not the gateway's
        writer.write(body)
        await writer.drain()
        answer = await read_reply(reader, exchange, "POST")
    finally:
        writer.close()
    check_interim(version, exchange, location)
    assert (answer.status, answer.offset, answer.headers["location"]) == \
        (201, len(body), location)
    assert is_complete(version, answer)


async def test_104_and_100_both_cross(haproxy: int) -> None:
    """With Expect: 100-continue the gateway sends two interim answers, 104 then 100; a proxy
    that forwards only the first 1xx would leave the client waiting for its 100."""
    headers = {**interop(9), **complete(9, True), "Content-Length": "4",
               "Expect": "100-continue"}
    reader, writer, exchange = await start_creation(haproxy, headers)
    try:
        exchange.interim.append(await _read_head(reader))
        exchange.interim.append(await _read_head(reader))
        assert [r.status for r in exchange.interim] == [104, 100]
        writer.write(b"data")
        await writer.drain()
        answer = await read_reply(reader, exchange, "POST")
    finally:
        writer.close()
    assert (answer.status, answer.offset) == (201, 4)


async def test_cut_off_creation_resumes_through_the_proxy(haproxy: int) -> None:
    """What the 104 is for: the connection breaks midway, the client resumes at the URL it
    was given, through the proxy, and the upload completes."""
    body = os.urandom(300_000)
    headers = {**interop(9), **complete(9, True), "Content-Length": str(len(body))}
    reader, writer, _ = await start_creation(haproxy, headers)
    interim = await _read_head(reader)
    assert interim.status == 104, interim
    path = URL(interim.headers["location"]).path
    writer.write(body[:120_000])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()

    head = (await send(haproxy, "HEAD", path, interop(9))).answer
    assert head.status == 204
    assert 0 < head.offset <= 120_000
    offset = head.offset
    done = (await send(haproxy, "PATCH", path, append_headers(9, offset, True),
                       body[offset:])).answer
    assert (done.status, done.offset, done.headers["upload-complete"]) == (204, len(body), "?1")
