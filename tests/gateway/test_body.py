"""The body reader hands out what the transport delivered without copying large pieces, and
gathers small ones; a body in small HTTP chunks is stored whole."""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from gateway.body import SMALL_PIECE, BodyReader
from tests.conftest import GatewayProcess


def reader_with(*pieces: bytes, chunked: bool = False) -> StreamReader:
    loop = asyncio.get_running_loop()
    # A limit above what the tests feed: nothing here pauses the (absent) transport.
    content = StreamReader(BaseProtocol(loop), 2**22, loop=loop)
    for piece in pieces:
        if chunked:
            content.begin_http_chunk_receiving()
        content.feed_data(piece)
        if chunked:
            content.end_http_chunk_receiving()
    content.feed_eof()
    return content


async def collect(body: BodyReader) -> list[bytes]:
    return [chunk async for chunk in body.chunks()]


async def test_buffered_pieces_are_handed_out_as_they_came_not_joined() -> None:
    # Several pieces waiting at once is the rule with many uploads on one loop; joining
    # them copied every byte once more and held the copy (c's peak memory).
    pieces = [bytes([n]) * 100_000 for n in range(4)]
    body = BodyReader(reader_with(*pieces), stall_timeout_s=5)
    got = await collect(body)
    assert len(got) == len(pieces)
    assert all(g is p for g, p in zip(got, pieces, strict=True))
    assert body.received == 400_000


async def test_chunked_bodies_read_through_their_chunk_ends() -> None:
    pieces = [b"abc", b"defg", b"h"]
    body = BodyReader(reader_with(*pieces, chunked=True), stall_timeout_s=5)
    assert b"".join(await collect(body)) == b"abcdefgh"
    assert body.received == 8


async def test_skipped_bytes_span_pieces() -> None:
    body = BodyReader(reader_with(b"0123", b"4567", b"89"), stall_timeout_s=5)
    body.skip = 6
    assert b"".join(await collect(body)) == b"6789"
    assert body.received == 4


async def test_small_chunks_are_handed_out_together_up_to_a_bound() -> None:
    # A body in one-byte HTTP chunks: not a turn of the read loop for every byte.
    pieces = [bytes([n % 256]) for n in range(100_000)]
    body = BodyReader(reader_with(*pieces, chunked=True), stall_timeout_s=5)
    got = await collect(body)
    assert b"".join(got) == b"".join(pieces)
    assert len(got) <= 3, [len(g) for g in got]
    assert max(len(g) for g in got) <= SMALL_PIECE


@pytest.mark.both_stores
@pytest.mark.parametrize("chunk_size", [1, 100, 70_000])
def test_a_body_in_small_http_chunks_is_stored_whole(
        gateway_process: Callable[..., GatewayProcess], chunk_size: int) -> None:
    """As a client sends it: a chunked PATCH of many small chunks (once a 500, when more
    pieces than one system call takes reached the disk)."""
    gw = gateway_process()
    data = os.urandom(300_000)
    status, headers = _exchange(gw.port, b"POST /files/ HTTP/1.1\r\nHost: gw\r\n"
                                b"Tus-Resumable: 1.0.0\r\nUpload-Length: %d\r\n"
                                b"Content-Length: 0\r\n\r\n" % len(data))
    assert status == 201
    path = urllib.parse.urlsplit(headers["location"]).path.encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(data[at:at + chunk_size]),
                                          data[at:at + chunk_size])
                       for at in range(0, len(data), chunk_size)) + b"0\r\n\r\n"
    status, headers = _exchange(gw.port, b"PATCH " + path + b" HTTP/1.1\r\nHost: gw\r\n"
                                b"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                                b"Content-Type: application/offset+octet-stream\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert (status, headers.get("upload-offset")) == (204, str(len(data)))
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}" + path.decode(), timeout=30) as got:
        assert got.read() == data
    assert "Traceback" not in gw.log()


def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    """One request on a connection of its own; the status and headers of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = conn.recv(65536)
            if not more:
                break
            answer += more
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), {k.lower(): v for k, v in fields.items()}
