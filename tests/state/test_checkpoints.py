"""The ``SinkCheckpoints`` part: a remote sink's confirmed parts. A store without it cannot
run the Notion sink (``gateway.state.parts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.state.base import SinkCheckpoints, UploadStore
from protocol import errors
from protocol.model import Checkpoint
from tests.state.stores import new_info, store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(SinkCheckpoints)


async def test_checkpoint_records_parts_of_the_current_remote_upload(
        open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(31)
    await store.create(info)
    upload_id = info.upload_id
    assert await store.checkpoint(upload_id) == Checkpoint()
    await store.start_remote(upload_id, "remote-1", 100.0)
    assert await store.add_parts(upload_id, "remote-1", [1, 3])
    assert await store.add_parts(upload_id, "remote-1", [3, 2])
    restarted = await open_store()
    assert await restarted.checkpoint(upload_id) == Checkpoint("remote-1", 100.0,
                                                               frozenset({1, 2, 3}))
    # A new remote upload (the old one expired) starts from no parts, and a late sender of
    # the old one cannot record into it.
    await restarted.start_remote(upload_id, "remote-2", 200.0)
    assert not await restarted.add_parts(upload_id, "remote-1", [4])
    assert await restarted.checkpoint(upload_id) == Checkpoint("remote-2", 200.0)
    await restarted.terminate(upload_id, "terminated")
    assert await restarted.checkpoint(upload_id) == Checkpoint()
    with pytest.raises((errors.NotFound, errors.Gone)):
        await restarted.start_remote(upload_id, "remote-3", 300.0)


async def test_parallel_part_records_are_all_kept(open_store: StoreFactory) -> None:
    store = await open_store()
    info = new_info(32)
    await store.create(info)
    await store.start_remote(info.upload_id, "r", 1.0)
    await asyncio.gather(*(store.add_parts(info.upload_id, "r", [n]) for n in range(1, 21)))
    assert (await store.checkpoint(info.upload_id)).parts == frozenset(range(1, 21))
