"""The spool's writes: any number of body pieces, and small pieces kept as bytes, not objects."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.aio import IoPool
from gateway.state.spool import IOV_MAX, SpoolWriter, pump, pwrite_steps


@pytest.mark.allow_blocking
def test_more_buffers_than_one_system_call_takes_are_all_written(tmp_path: Path) -> None:
    # A body sent in one-byte chunks once reached pwritev as thousands of buffers: EINVAL,
    # and the PATCH answered 500.
    pieces = [bytes([n % 251]) for n in range(3 * IOV_MAX + 7)]
    path = tmp_path / "data"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert sum(pwrite_steps(fd, pieces, 5)) == len(pieces)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * 5 + b"".join(pieces)


async def test_small_pieces_reach_the_writes_as_few_buffers(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    writer = SpoolWriter(path, 0, None, durable=False, commit_interval=1 << 30)
    batches: list[int] = []
    real_write, real_finish = writer.write, writer.finish

    def write(buffers: list[bytes]) -> None:
        batches.append(len(buffers))
        real_write(buffers)

    def finish(buffers: list[bytes], keep: bool) -> None:
        batches.append(len(buffers))
        real_finish(buffers, keep)

    writer.write = write  # type: ignore[method-assign]
    writer.finish = finish  # type: ignore[method-assign]
    large = os.urandom(100_000)
    tiny = [bytes([n % 256]) for n in range(20_000)]

    async def body() -> AsyncIterator[bytes]:
        for piece in tiny[:10_000]:
            yield piece
        yield large
        for piece in tiny[10_000:]:
            yield piece

    pool = IoPool(2)
    try:
        size = await pump(writer, body(), pool, buffer_bytes=64 * 1024, max_bytes=None,
                          crowded=lambda: False)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.close)
    expected = b"".join(tiny[:10_000]) + large + b"".join(tiny[10_000:])
    assert size == len(expected)
    assert path.read_bytes() == expected
    # 20,000 one-byte pieces and one large one: a handful of buffers, not 20,001 objects.
    assert sum(batches) <= 4, batches
