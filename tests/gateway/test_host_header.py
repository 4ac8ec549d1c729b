"""A malformed Host is refused with 400 ERR_INVALID_HOST before anything is created.

The gateway writes the Host (or, behind a proxy, the forwarded host) into ``Location`` and
the IETF 104: a value that is not a host[:port] would send the client elsewhere
(``http://evil.example/x?/files/<id>``), and one that is not even Latin-1 cannot be written
in a header at all. Requests are written on a raw socket, since an HTTP client library
would not send such a Host.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.keys import CONFIG
from tests.conftest import ClientFactory
from tests.gateway.test_ietf import Exchange, Reply, read_reply

Client = TestClient[Any, Any]
# Values that are not host[:port] (RFC 9110 section 7.2, RFC 3986 section 3.2.2).
BAD_HOSTS: list[bytes] = [
    b"evil.example/x?", b"evil.example?x=", b"evil.example#f", b"user@evil.example",
    b"evil.example\\x", b"a b.example", b"evil.example:99999", b"evil.example:8o",
    b"evil.example:", b"[::1", b"[evil.example]", b"", b'"quoted.example"', b"x" * 300,
    b"\xff\xfe.example",  # not UTF-8, decoded by aiohttp to lone surrogates
    "\u0565\u0565.example".encode(),  # UTF-8, and beyond Latin-1
    "ex\u00e4mple.example".encode(),  # UTF-8 within Latin-1: still not a host on the wire
]
TUS_CREATE = {"Tus-Resumable": "1.0.0", "Upload-Length": "3"}
IETF_CREATE = {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1",
               "Content-Type": "application/octet-stream"}


async def exchange(client: Client, host: bytes, headers: dict[str, str],
                   body: bytes = b"") -> Exchange:
    lines = [b"POST /files/ HTTP/1.1", b"Host: " + host, b"Connection: close",
             b"Content-Length: " + str(len(body)).encode()]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    result = Exchange()
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        await read_reply(reader, result, "POST")
    finally:
        writer.close()
    return result


def created(text: str) -> float:
    match = re.search(r'^tus_uploads_total\{event="created"\} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


async def assert_nothing_created(client: Client) -> None:
    metrics = await (await client.get("/metrics")).text()
    assert created(metrics) == 0
    uploads = client.app[CONFIG].data_dir / "uploads"
    assert not uploads.is_dir() or not any(uploads.iterdir())


def assert_refused(result: Exchange, ietf: bool) -> None:
    answer: Reply = result.answer
    assert answer.status == 400, answer
    assert not result.interim, "a 104 went out for a request that was refused"
    assert "location" not in answer.headers
    if ietf:
        assert answer.problem()["code"] == "ERR_INVALID_HOST"
    else:
        assert answer.body.startswith(b"ERR_INVALID_HOST:"), answer.body


@pytest.mark.parametrize("behind_proxy", [False, True])
async def test_malformed_host_is_refused_before_creation(make_client: ClientFactory,
                                                        behind_proxy: bool) -> None:
    client: Client = await make_client(behind_proxy=behind_proxy)
    for host in BAD_HOSTS:
        assert_refused(await exchange(client, host, TUS_CREATE), ietf=False)
        assert_refused(await exchange(client, host, IETF_CREATE, b"abc"), ietf=True)
    await assert_nothing_created(client)
    # Good hosts still work, an IPv6 literal with a port among them.
    for host in (b"127.0.0.1", b"up.example:8080", b"[::1]:1080", b"UP-1.example."):
        answer = (await exchange(client, host, TUS_CREATE)).answer
        assert answer.status == 201, answer
        assert answer.headers["location"].startswith(f"http://{host.decode()}/files/")


async def test_malformed_forwarded_host_is_refused_before_creation(
        make_client: ClientFactory) -> None:
    client: Client = await make_client(behind_proxy=True)
    for bad in BAD_HOSTS:
        if not bad:
            continue  # an empty forwarded host names none: the Host header counts
        value = bad.decode("latin-1")
        cases = [{"X-Forwarded-Host": value}]
        if '"' not in value and "\\" not in value:  # else it is Forwarded's quoting
            cases += [{"Forwarded": f'for=1.2.3.4;host="{value}"'},
                      {"Forwarded": f"host={value};proto=https"}]
        for forwarded in cases:
            assert_refused(await exchange(client, b"127.0.0.1", {**TUS_CREATE, **forwarded}),
                           ietf=False)
            assert_refused(await exchange(client, b"127.0.0.1",
                                          {**IETF_CREATE, **forwarded}, b"abc"), ietf=True)
    await assert_nothing_created(client)
