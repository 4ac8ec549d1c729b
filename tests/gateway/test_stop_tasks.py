"""Stopping background tasks: a stop must not hang on one task, and must say which one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from gateway.aio import stop_tasks


async def test_a_task_that_ignores_its_cancellation_is_left_behind_and_named(
        caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()

    async def polite() -> None:
        await asyncio.sleep(3600)

    async def failing() -> None:
        raise RuntimeError("its own to log")

    held = asyncio.create_task(stubborn(), name="stubborn-task")
    ended = asyncio.create_task(polite(), name="polite-task")
    broken = asyncio.create_task(failing(), name="failing-task")
    await asyncio.sleep(0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gateway.aio"):
        await stop_tasks([held, ended, None, broken], grace_s=0.3)
    assert time.monotonic() - started < 2.0
    assert ended.cancelled() and broken.done() and not held.done()
    [warning] = [r for r in caplog.records if r.name == "gateway.aio"]
    assert "stubborn-task" in warning.getMessage()
    assert "release.wait()" in warning.getMessage()  # where it waits
    release.set()
    await held
