"""Start-up and its failures: every resource has a cleanup context of its own
(``gateway.app``), so a resource that fails to start leaves those made before it closed,
with nothing of them left running: no worker thread, no task, no lock on the data
directory. The failure itself says plainly what is wrong."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.app import StartupError, create_app
from gateway.config import GatewayConfig
from tests.conftest import free_port


def gateway_threads() -> list[str]:
    """The gateway's own worker threads (the I/O pool's); the loop's default executor,
    which ``asyncio.to_thread`` uses, belongs to the loop and ends with it."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("tus-io", "tus-sync"))]


def other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def failed_start(config: GatewayConfig, expected: type[BaseException],
                       match: str) -> None:
    """Start the gateway as ``web.run_app`` does, see it fail, and clean up as it does."""
    runner = web.AppRunner(create_app(config))
    with pytest.raises(expected, match=match):
        await runner.setup()
    await runner.cleanup()


async def test_an_unreachable_redis_stops_the_start_plainly_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    config = GatewayConfig.from_env({}, data_dir=tmp_path / "d", redis_url=url)
    tasks = other_tasks()
    await failed_start(config, StartupError, f"^cannot reach Redis at {url}: ")
    assert gateway_threads() == []
    assert other_tasks() <= tasks


async def test_a_sink_that_cannot_start_closes_the_store_and_the_threads_before_it(
        tmp_path: Path) -> None:
    """The disk store opened (its worker threads ran, it locked the data directory), then
    the directory sink could not make its folder: the store is closed again, so another
    gateway may use the directory, and the threads are gone."""
    root = tmp_path / "d"
    root.mkdir()
    (root / "complete").write_bytes(b"a file where the sink's folder goes")
    config = GatewayConfig.from_env({}, data_dir=root)
    tasks = other_tasks()
    await failed_start(config, FileExistsError, "complete")
    assert gateway_threads() == []
    assert other_tasks() <= tasks
    (root / "complete").unlink()
    runner = web.AppRunner(create_app(config))
    await runner.setup()  # the data directory's lock was let go
    await runner.cleanup()
