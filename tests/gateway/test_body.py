"""The body reader hands out what the transport delivered, piece by piece, without copies."""

from __future__ import annotations

import asyncio

from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from gateway.body import BodyReader


def reader_with(*pieces: bytes, chunked: bool = False) -> StreamReader:
    loop = asyncio.get_running_loop()
    # A limit above what the tests feed: nothing here pauses the (absent) transport.
    content = StreamReader(BaseProtocol(loop), 2**20, loop=loop)
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
    assert await collect(body) == [b"67", b"89"]
    assert body.received == 4
