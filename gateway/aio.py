"""Asyncio helpers: the I/O worker threads, and finishing a step despite cancellation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class IoPool:
    """The worker threads that do every blocking file operation (design invariant 7)."""

    def __init__(self, threads: int, background_threads: int = 4) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tus-io")
        # Syncs nobody waits for (a window of a long body) get threads of their own, so they
        # never hold up the writes and reads that requests are waiting for.
        self._background = ThreadPoolExecutor(max_workers=background_threads,
                                              thread_name_prefix="tus-sync")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit_background(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._background, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._background.shutdown(wait=True)


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel background tasks and wait until each has ended; what they raise on the way
    out is theirs to log, not the caller's (a shutdown goes on regardless)."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def run_to_completion(step: Coroutine[Any, Any, T] | asyncio.Future[T]) -> T:
    """Await ``step`` to its end even if we are cancelled meanwhile, then pass the
    cancellation on. ``asyncio.shield`` alone would let the caller go on (and release locks)
    while the step still runs."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result
