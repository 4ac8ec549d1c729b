"""The one composition root: ``create_app(config)``.

Resources are made and closed by ``cleanup_ctx`` in order: the I/O threads, the store, the
sink, then the upload service (which recovers interrupted work before serving), then the
hooks (post-finish notices a stop interrupted), then the expiry sweeper. Nothing is
created at import time.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from gateway.aio import IoPool, stop_tasks
from gateway.config import FsyncPolicy, GatewayConfig
from gateway.cors import setup_cors
from gateway.keys import CONFIG, RUNTIME, Runtime
from gateway.metrics import METRICS, Metrics, measured
from gateway.middleware import tus_errors
from gateway.resources import ResourceMonitor
from gateway.routes import setup_routes
from gateway.sinks import DirectorySink, Sink
from gateway.state.base import Locker, UploadStore
from gateway.state.disk import DiskStore
from gateway.state.memlock import MemoryLocker
from gateway.uploads import Uploads, indexing
from protocol import errors

if TYPE_CHECKING:
    from gateway.state.redis import RedisBackend

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig) -> web.Application:
    config.validate()
    metrics = Metrics()
    # Counting sits outside the error middleware, so errors count with their real status.
    app = web.Application(middlewares=[metrics.middleware(), tus_errors])
    app[CONFIG] = config
    app[RUNTIME] = Runtime()
    app[METRICS] = metrics
    app.cleanup_ctx.append(_uploads)
    app.cleanup_ctx.append(_hooks)
    app.cleanup_ctx.append(_sweeper)
    app.on_shutdown.append(_interrupt_receivers)
    setup_cors(app, config, setup_routes(app, config))
    return app


async def _uploads(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = IoPool(config.io_threads)
    durable = config.fsync is FsyncPolicy.ACK
    backend: RedisBackend | None = None
    store: UploadStore
    locker: Locker
    journal: Path | None = config.data_dir / "delivered.log"
    if config.redis_url:
        # Imported only when configured (redis-py costs a single-process gateway ~7 MiB),
        # and in a thread, since an import reads files.
        redis_state = await asyncio.to_thread(importlib.import_module, "gateway.state.redis")
        RedisBackend, RedisLocker, RedisStore = (
            redis_state.RedisBackend, redis_state.RedisLocker, redis_state.RedisStore)
        backend = RedisBackend(config.redis_url, prefix=config.redis_prefix,
                               lock_ttl_s=config.lock_ttl_s)
        store = RedisStore(backend, config.data_dir, pool, fsync=config.fsync,
                           write_buffer_bytes=config.write_buffer_bytes,
                           commit_interval_bytes=config.commit_interval_bytes,
                           sync_interval_bytes=config.sync_interval_bytes,
                           tombstone_ttl_s=config.tombstone_ttl_s, file_mode=config.file_mode)
        locker = RedisLocker(backend)
        journal = None  # the folder is shared; Redis records each delivery
    else:
        store = DiskStore(config.data_dir, pool, fsync=config.fsync,
                          write_buffer_bytes=config.write_buffer_bytes,
                          commit_interval_bytes=config.commit_interval_bytes,
                          # Windows of a long PATCH can go to Notion before it ends.
                          sync_interval_bytes=(config.sync_interval_bytes
                                               if config.sink == "notion" else None),
                          indexing=indexing(config), file_mode=config.file_mode)
        locker = MemoryLocker()
    metrics = app[METRICS]
    store = measured(store, metrics)
    monitor: ResourceMonitor | None = None
    directory: DirectorySink | None = None
    notion: Any = None
    session: aiohttp.ClientSession | None = None
    sink: Sink
    if config.sink == "notion":
        notion_module = await asyncio.to_thread(importlib.import_module, "notion_sink.sink")
        session = aiohttp.ClientSession()
        limiter = None
        if backend is not None:
            # Several instances share one integration's request budget.
            shared = await asyncio.to_thread(importlib.import_module,
                                             "notion_sink.shared_limit")
            limiter = shared.RedisRateLimiter(backend, rate=config.notion_rate, burst=1)
        sink = notion = notion_module.NotionSink(config, store, pool, session,
                                                 limiter=limiter, metrics=metrics)
        metrics.watch_breaker(lambda: str(notion.breaker.state))
    else:
        sink = directory = DirectorySink(config.data_dir / "complete", journal, pool,
                                         durable=durable, file_mode=config.file_mode)
    try:
        if backend is not None:
            try:
                await backend.open()
            except errors.StateUnavailable as exc:
                raise StartupError(f"cannot reach Redis at {_safe_url(config.redis_url)}: "
                                   f"{exc.__cause__ or exc}") from exc
        await store.open()
        if directory is not None:
            await directory.open()
        uploads = Uploads(config, store, locker, sink)
        uploads.metrics = metrics
        metrics.watch_active(lambda: uploads.active)
        metrics.watch_unreadable(lambda: store.unreadable)
        monitor = ResourceMonitor(pool, budget=config.memory_budget_bytes,
                                  high_percent=config.memory_high_percent,
                                  critical_percent=config.memory_critical_percent,
                                  max_active=config.max_concurrent_uploads,
                                  active=lambda: uploads.active,
                                  disk_path=config.data_dir,
                                  disk_floor=config.free_disk_floor)
        await monitor.start()
        uploads.monitor = app[RUNTIME].monitor = monitor
        await uploads.recover()
        app[RUNTIME].uploads = uploads
        app[RUNTIME].started_at = time.time()
        yield
    finally:
        if monitor is not None:
            await monitor.close()
        if notion is not None:
            await notion.close()
        if session is not None:
            await session.close()
        await store.close()
        if backend is not None:
            await backend.close()
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


class StartupError(RuntimeError):
    """A dependency the configuration names is not usable; the message says which."""


def _safe_url(url: str) -> str:
    """The URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def _hooks(app: web.Application) -> AsyncIterator[None]:
    """Post-finish hooks that a stop interrupted go out once recovery is done; the hook
    tasks end before the store closes."""
    hooks = app[RUNTIME].require().hooks
    try:
        await hooks.start()
        yield
    finally:
        await hooks.close()


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    uploads = app[RUNTIME].require()

    async def loop() -> None:
        while True:
            await asyncio.sleep(config.sweep_interval_s)
            try:
                removed = await uploads.sweep(time.time())
                runtime = app[RUNTIME]
                runtime.sweep_last = time.time()
                runtime.sweep_removed = removed
                runtime.sweep_removed_total += removed
                if removed:
                    log.info("removed %d expired uploads", removed)
            except Exception:
                log.exception("expiry sweep failed; trying again next interval")

    task = asyncio.create_task(loop(), name="tus-expiry-sweeper")
    yield
    await stop_tasks([task])


async def _interrupt_receivers(app: web.Application) -> None:
    uploads = app[RUNTIME].uploads
    if uploads is not None:
        uploads.interrupt_all()
