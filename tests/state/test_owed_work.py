"""The ``OwedWork`` part: indexes of uploads whose finish, sink work or hook may be owed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from gateway.state.base import OwedWork, UploadStore
from tests.state.stores import chunks, new_info, store_fixture

# Every store this module runs on has the part, its own or kept in the gateway's process.
StoreFactory = Callable[[], Awaitable[UploadStore]]

open_store = store_fixture(OwedWork)


async def test_owed_sink_work_is_an_index_any_instance_reads(
        open_store: StoreFactory, request: pytest.FixtureRequest) -> None:
    store = await open_store()
    await store.owe_sink("a" * 32, True)
    await store.owe_sink("b" * 32, True)
    await store.owe_sink("a" * 32, False)
    await store.owe_sink("c" * 32, False)  # never owed: nothing happens
    assert await store.sink_owed() == ["b" * 32]
    if request.node.callspec.params["open_store"] == "redis":
        # Shared: another instance (here, a restarted one) sees the same index.
        assert await (await open_store()).sink_owed() == ["b" * 32]


async def test_uploads_owing_their_finish_are_an_index(open_store: StoreFactory) -> None:
    store = await open_store()
    infos = [new_info(n, 3) for n in (60, 61, 62)]
    for info in infos:
        await store.create(info)
        await store.owe_finish(info.upload_id, True)
    await store.owe_finish(infos[0].upload_id, False)
    await store.terminate(infos[1].upload_id, "terminated")
    assert await store.finish_owed() == [infos[2].upload_id]
    # Complete and not finished: still owed after a restart.
    await store.append(infos[2].upload_id, 0, chunks(b"abc"), max_bytes=3, checksum=None)
    assert infos[2].upload_id in await (await open_store()).finish_owed()


async def test_owed_hooks_are_an_index(open_store: StoreFactory) -> None:
    store = await open_store()
    await store.owe_hook("a" * 32, True)
    await store.owe_hook("b" * 32, True)
    await store.owe_hook("a" * 32, False)
    await store.owe_hook("c" * 32, False)  # never owed: nothing happens
    assert await store.hooks_owed() == ["b" * 32]
