"""Asyncio helpers: the I/O worker threads, and finishing a step despite cancellation."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
# How long a stop waits for one cancelled background task.
STOP_GRACE_S = 5.0


class IoPool:
    """The worker threads that do every blocking file operation, so none runs on the loop."""

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


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None],
                     grace_s: float = STOP_GRACE_S) -> None:
    """Cancel background tasks and wait until each has ended; what they raise on the way
    out is theirs to log, not the caller's (a shutdown goes on regardless).

    A task still running ``grace_s`` after its cancellation is left behind with a warning
    that shows where it waits: a stop must not hang on one task, and the log must say
    which one held it up."""
    given = [t for t in tasks if t is not None]
    running = [t for t in given if not t.done()]
    for task in running:
        task.cancel()
    if running:
        _, pending = await asyncio.wait(running, timeout=grace_s)
        for task in pending:
            where = io.StringIO()
            task.print_stack(limit=20, file=where)
            log.warning("background task %s did not stop within %.3g s of being cancelled; "
                        "left behind. %s", task.get_name(), grace_s, where.getvalue())
    for task in given:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: it is the task's own to log


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


def new_loop() -> asyncio.AbstractEventLoop:
    """The event loop ``tus-gateway serve`` runs on: uvloop where it is installed (a
    dependency on Linux: a large body costs fewer cycles per byte in its transport), else
    asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
