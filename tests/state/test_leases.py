"""The ``Leases`` part: background work that one process at a time does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.state.base import Leases, UploadStore
from tests.state.stores import store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(Leases)


async def test_lease_goes_to_one_caller_per_period(open_store: StoreFactory,
                                                   request: pytest.FixtureRequest) -> None:
    store = await open_store()
    assert await store.claim_lease("sweep", 0.3)
    shared = request.node.callspec.params["open_store"] == "redis"
    # With a shared store the second instance waits its turn; alone, the disk store's one
    # process always has it.
    assert await (await open_store()).claim_lease("sweep", 0.3) is not shared


async def test_a_held_lease_is_one_owners_until_dropped_or_expired(
        open_store: StoreFactory) -> None:
    store = await open_store()
    assert await store.hold_lease("drain:x", "a", 0.4)
    assert not await store.hold_lease("drain:x", "b", 0.4)
    assert await store.hold_lease("drain:x", "a", 0.4), "the owner extends its lease"
    await store.drop_lease("drain:x", "b")  # not b's to drop
    assert not await store.hold_lease("drain:x", "b", 0.4)
    await store.drop_lease("drain:x", "a")
    assert await store.hold_lease("drain:x", "b", 0.2)
    await asyncio.sleep(0.3)
    assert await store.hold_lease("drain:x", "a", 0.4), "an unextended lease ends by itself"
    assert not await store.hold_lease("drain:x", "b", 0.4)
