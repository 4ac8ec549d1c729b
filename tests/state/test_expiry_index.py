"""The ``ExpiryIndex`` part: when each upload is next due for the sweeper."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from gateway.state.base import ExpiryIndex, UploadStore
from tests.state.stores import new_info, store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(ExpiryIndex)


async def test_the_expiry_index_returns_only_due_uploads(open_store: StoreFactory,
                                                         request: pytest.FixtureRequest) -> None:
    store = await open_store()
    now = 1_000_000.0
    ids = [new_info(n).upload_id for n in range(50, 56)]
    for i, upload_id in enumerate(ids):
        await store.create(new_info(50 + i))
        await store.schedule_expiry(upload_id, now + 10 * i)  # 0, 10, ..., 50 s from now
    assert await store.due_for_expiry(now - 1, 100) == []
    assert await store.due_for_expiry(now + 25, 100) == ids[:3]
    assert await store.due_for_expiry(now + 25, 2) == ids[:2], "earliest first, bounded"
    await store.schedule_expiry(ids[0], now + 100)  # bytes arrived: it moves
    await store.schedule_expiry(ids[1], None)  # never due
    await store.terminate(ids[2], "expired")  # removal takes it out of the index
    assert await store.due_for_expiry(now + 25, 100) == []
    assert await store.due_for_expiry(now + 100, 100) == [*ids[3:], ids[0]]
    # After a restart the index may return an upload sooner than noted (the sweeper reads
    # the record again), never later.
    restarted = await open_store()
    due = await restarted.due_for_expiry(now + 100, 100)
    assert set(due) >= {*ids[3:], ids[0]}
    if request.node.callspec.params["open_store"] == "redis":
        assert due == [*ids[3:], ids[0]]
