"""The one composition root: ``create_app(config)``.

Each resource has a ``cleanup_ctx`` of its own, in this order: the I/O threads, the Redis
backend (with ``--redis-url``), the live events bus, the store and its locker, the sink
(with what it holds, such as the Notion sink's HTTP session), the resource monitor, the
upload service (which recovers interrupted work before serving), the hooks (post-finish
notices a stop interrupted), the expiry sweeper. Each closes only what it opened, and hands
what it made to the later ones through a typed key (``gateway.keys``) once it works, so a
failure to start one closes those before it (aiohttp's cleanup runs the contexts already
entered) and nothing else. Objects are complete when made: nothing is set on them afterwards.

Time comes from one ``Clock`` (``gateway.clock``), given to ``create_app``. Nothing is
created at import time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway import screening
from gateway.aio import IoPool, stop_tasks
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import GatewayConfig, mask_url_password
from gateway.cors import setup_cors
from gateway.events import EventBus, LocalBus, RedisBus
from gateway.forward_auth import ForwardAuth
from gateway.keys import (
    CLOCK,
    CONFIG,
    EVENTS,
    FORWARD_AUTH,
    INTAKE,
    LINKS,
    LOCKER,
    MONITOR,
    POOL,
    REDIS,
    RUNTIME,
    SINK,
    STORE,
    Runtime,
)
from gateway.links import Links
from gateway.metrics import METRICS, Metrics, measured
from gateway.middleware import tus_errors
from gateway.resources import ResourceMonitor
from gateway.routes import setup_routes
from gateway.sink_api import Announces, NeedsCheckpoints, SendsEarly
from gateway.sinks import opened_sink, sink_type
from gateway.state.base import CoreStore, Locker
from gateway.state.disk import DiskStore
from gateway.state.memlock import MemoryLocker
from gateway.state.parts import StoreParts
from gateway.uploads import Intake, Uploads, indexing
from protocol import errors
from protocol.filetypes import AllowedTypes
from protocol.model import UploadState

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig, *, clock: Clock = SYSTEM_CLOCK) -> web.Application:
    config.validate()
    metrics = Metrics()
    # Counting sits outside the error middleware, so errors count with their real status.
    app = web.Application(middlewares=[metrics.middleware(), tus_errors])
    app[CONFIG] = config
    app[CLOCK] = clock
    app[METRICS] = metrics
    app[LINKS] = Links(config)
    intake = app[INTAKE] = Intake()
    metrics.watch_active(intake.count)
    app.cleanup_ctx.append(_pool)
    if config.auth.mode == "forward":
        app.cleanup_ctx.append(_forward_auth)
    if config.redis.url:
        app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_events)
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_sink)
    app.cleanup_ctx.append(_monitor)
    app.cleanup_ctx.append(_uploads)
    app.cleanup_ctx.append(_hooks)
    app.cleanup_ctx.append(_sweeper)
    app.on_shutdown.append(_interrupt_receivers)
    app.on_shutdown.append(_end_event_streams)
    setup_cors(app, config, setup_routes(app, config))
    return app


class StartupError(RuntimeError):
    """A dependency the configuration names is not usable; the message says which."""


def _safe_url(url: str) -> str:
    """The URL without its password, fit for a log line (also with several hosts, as a
    Sentinel or cluster URL has)."""
    return mask_url_password(url)


async def _redis_module() -> Any:
    """``gateway.state.redis``, imported only when configured (redis-py costs a
    single-process gateway ~7 MiB), and in a thread, since an import reads files."""
    return await asyncio.to_thread(importlib.import_module, "gateway.state.redis")


async def _pool(app: web.Application) -> AsyncIterator[None]:
    pool = IoPool(app[CONFIG].io_threads)
    try:
        app[POOL] = pool
        yield
    finally:
        # Waiting for the threads blocks: a thread of the loop's own pool does it.
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


async def _forward_auth(app: web.Application) -> AsyncIterator[None]:
    # No cookie jar: each question carries exactly the request's own credentials.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[FORWARD_AUTH] = ForwardAuth(app[CONFIG].auth, session, clock=app[CLOCK])
        yield


async def _redis(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    redis_state = await _redis_module()
    backend = redis_state.RedisBackend(config.redis.url, prefix=config.redis.prefix,
                                       lock_ttl_s=config.lock_ttl_s,
                                       min_replicas=config.redis.min_replicas,
                                       replica_timeout_s=config.redis.replica_timeout_s)
    try:
        try:
            await backend.open()
        except errors.StateUnavailable as exc:
            raise StartupError(f"cannot reach Redis at {_safe_url(config.redis.url)}: "
                               f"{exc.__cause__ or exc}") from exc
        app[REDIS] = backend
        yield
    finally:
        await backend.close()  # also after a failed open: it made a connection pool


async def _events(app: web.Application) -> AsyncIterator[None]:
    """The live events bus: through Redis when instances share the work, else in-process."""
    config = app[CONFIG]
    bus: EventBus
    if config.redis.url:
        backend = app[REDIS]
        redis_bus = RedisBus(backend.client, backend.keys,
                             max_subscriptions=config.max_event_streams)
        redis_bus.start()
        bus = redis_bus
    else:
        bus = LocalBus(max_subscriptions=config.max_event_streams)
    try:
        app[EVENTS] = bus
        yield
    finally:
        await bus.close()


async def _store(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    pool = app[POOL]
    store: CoreStore
    locker: Locker
    if config.redis.url:
        redis_state = await _redis_module()
        RedisLocker, RedisStore = redis_state.RedisLocker, redis_state.RedisStore
        backend = app[REDIS]
        store = RedisStore(backend, config.data_dir, pool, fsync=config.fsync,
                           write_buffer_bytes=config.write_buffer_bytes,
                           commit_interval_bytes=config.commit_interval_bytes,
                           sync_interval_bytes=config.sync_interval_bytes,
                           tombstone_ttl_s=config.tombstone_ttl_s, file_mode=config.file_mode)
        locker = RedisLocker(backend)
    else:
        store = DiskStore(config.data_dir, pool, fsync=config.fsync,
                          write_buffer_bytes=config.write_buffer_bytes,
                          commit_interval_bytes=config.commit_interval_bytes,
                          # Windows of a long PATCH can go to the sink before it ends.
                          sync_interval_bytes=(config.sync_interval_bytes if issubclass(
                              await sink_type(config), SendsEarly) else None),
                          file_mode=config.file_mode)
        locker = MemoryLocker()
    metrics = app[METRICS]
    parts = StoreParts.of(store, indexing(config))
    # Timed as the gateway calls it: the store's own parts and those kept in this process
    # alike, so the same operations show in tus_store_latency_seconds on every backend.
    parts = dataclasses.replace(parts, store=measured(parts.store, metrics))
    store = parts.store
    try:
        await store.open()
        metrics.watch_unreadable(lambda: store.unreadable)
        app[STORE] = parts
        app[LOCKER] = locker
        yield
    finally:
        await store.close()


async def _sink(app: web.Application) -> AsyncIterator[None]:
    config, parts = app[CONFIG], app[STORE]
    if issubclass(await sink_type(config), NeedsCheckpoints) and parts.checkpoints is None:
        raise StartupError(f"the {config.sink.capitalize()} sink needs a state store that "
                           "keeps sink checkpoints, and this one does not")
    async with opened_sink(config, parts.store, app[POOL], app[METRICS],
                           backend=app.get(REDIS)) as sink:
        app[SINK] = sink
        yield


async def _monitor(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    monitor = ResourceMonitor(app[POOL], budget=config.memory_budget_bytes,
                              high_percent=config.memory_high_percent,
                              critical_percent=config.memory_critical_percent,
                              max_active=config.max_concurrent_uploads,
                              active=app[INTAKE].count,
                              disk_path=config.data_dir,
                              disk_floor=config.free_disk_floor)
    try:
        await monitor.start()
        app[MONITOR] = monitor
        yield
    finally:
        await monitor.close()


async def _uploads(app: web.Application) -> AsyncIterator[None]:
    """The upload service; it recovers what a stop interrupted before the first request.
    It holds nothing of its own to close: its parts close in their own contexts."""
    clock, monitor = app[CLOCK], app[MONITOR]
    config, pool = app[CONFIG], app[POOL]
    allowed = AllowedTypes.parse(config.allowed_types)

    async def screen(state: UploadState, data: Path) -> str | None:
        return await screening.screen(pool, allowed, state.info.metadata, data)

    uploads = Uploads(config, app[STORE], app[LOCKER], app[SINK], intake=app[INTAKE],
                      admission=monitor, metrics=app[METRICS], clock=clock, events=app[EVENTS],
                      **({} if allowed.allows_all else {"screen": screen}))
    sink = app[SINK]
    if isinstance(sink, Announces):
        sink.announce_to(uploads.sink_saved)
    await uploads.recover()
    app[RUNTIME] = Runtime(uploads, monitor, started_at=clock.now())
    yield


async def _hooks(app: web.Application) -> AsyncIterator[None]:
    """Post-finish hooks that a stop interrupted go out once recovery is done; the hook
    tasks end before the store closes."""
    hooks = app[RUNTIME].uploads.hooks
    try:
        await hooks.start()
        yield
    finally:
        await hooks.close()


async def _sweeper(app: web.Application) -> AsyncIterator[None]:
    config, clock, runtime = app[CONFIG], app[CLOCK], app[RUNTIME]
    uploads, turns = runtime.uploads, runtime.sweep

    async def loop() -> None:
        while True:
            await clock.sleep(config.sweep_interval_s)
            try:
                removed = await uploads.sweep(clock.now())
                turns.record(removed, clock.now())
                if removed:
                    log.info("removed %d expired uploads", removed)
            except Exception:
                log.exception("expiry sweep failed; trying again next interval")

    task = asyncio.create_task(loop(), name="tus-expiry-sweeper")
    try:
        yield
    finally:
        await stop_tasks([task])


async def _interrupt_receivers(app: web.Application) -> None:
    app[INTAKE].stop_all()


async def _end_event_streams(app: web.Application) -> None:
    # Event streams last up to an hour: ended here, they do not hold up the stop.
    bus = app.get(EVENTS)
    if bus is not None:
        bus.stop_all()
