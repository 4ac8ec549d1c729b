"""Live upload events (``gateway.events``): the buses and the event stream, on real parts.

The Redis bus runs against real redis-server processes (the session's, and one of its own
where a test kills it); two buses on one Redis stand for two gateway instances. The stream
runs on a real aiohttp server on loopback, read by a real HTTP client, with a snapshot
the test changes by hand in place of the upload service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.events import (
    END_ID,
    EventBus,
    LocalBus,
    RedisBus,
    Subscription,
    is_final,
    progress_event,
    status_event,
    stream_events,
)
from gateway.keys import CONFIG, EVENTS
from gateway.middleware import tus_errors
from gateway.state.redis import RedisBackend
from protocol import errors
from tests.redis_server import RedisServer

UPLOAD = "0123456789abcdef0123456789abcdef"


def progress(offset: int, length: int | None = 1000) -> dict[str, object]:
    return progress_event(UPLOAD, offset=offset, bytes_received=offset, length=length,
                          speed_bytes_per_s=100.0, eta_s=1.25)


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


# --- subscriptions and the in-process bus ----------------------------------------------------
async def test_progress_coalesces_and_statuses_are_kept_in_order() -> None:
    sub = Subscription(UPLOAD)
    sub.offer(progress(1))
    sub.offer(status_event(UPLOAD, "receiving"))
    sub.offer(progress(2))
    sub.offer(status_event(UPLOAD, "complete"))
    sub.offer(progress(3))
    got = [await sub.next(0) for _ in range(4)]
    assert [e and e["event"] for e in got] == ["status", "status", "progress", None]
    assert [e and e["data"] for e in got[:2]] == [{"id": UPLOAD, "status": "receiving"},
                                                  {"id": UPLOAD, "status": "complete"}]
    assert got[2] is not None and got[2]["data"] == {
        "id": UPLOAD, "offset": 3, "bytes_received": 3, "length": 1000, "percent": 0.3,
        "speed_bytes_per_s": 100, "eta_s": 1.2}
    assert sub.dropped == 0


async def test_status_events_are_bounded_and_the_newest_kept() -> None:
    sub = Subscription(UPLOAD, max_kept=3)
    for n in range(10):
        sub.offer(status_event(UPLOAD, f"s{n}"))
    sub.offer(progress(7))
    got = []
    while (event := await sub.next(0)) is not None:
        got.append(event)
    data = [e["data"] for e in got]
    assert [d["status"] for d in data[:3]] == ["s7", "s8", "s9"]  # type: ignore[index]
    assert got[3]["event"] == "progress" and len(got) == 4
    assert sub.dropped == 7


async def test_next_waits_then_times_out_and_close_wakes_it() -> None:
    sub = Subscription(UPLOAD)
    started = time.monotonic()
    assert await sub.next(0.1) is None
    assert time.monotonic() - started >= 0.09
    waiter = asyncio.create_task(sub.next(30))
    await asyncio.sleep(0.05)
    sub.close()
    assert await asyncio.wait_for(waiter, 2) is None
    assert sub.closed


def test_progress_percent_and_final_statuses() -> None:
    assert progress_event(UPLOAD, offset=0, bytes_received=0, length=0)["data"] == {
        "id": UPLOAD, "offset": 0, "bytes_received": 0, "length": 0, "percent": 100.0,
        "speed_bytes_per_s": None, "eta_s": None}
    deferred = progress_event(UPLOAD, offset=5, bytes_received=9, length=None)
    assert deferred["data"]["percent"] is None  # type: ignore[index]
    for status in ("drained", "rejected", "terminated"):
        assert is_final({"status": status})
    assert is_final({"status": "failed", "sink": {"will_retry": False}})
    assert is_final({"status": "failed", "sink": None})
    assert not is_final({"status": "failed", "sink": {"will_retry": True}})
    for status in ("created", "receiving", "complete", "draining"):
        assert not is_final({"status": status})


async def test_local_bus_fans_out_to_every_subscriber_of_the_upload() -> None:
    bus = LocalBus()
    other = "f" * 32
    async with bus.subscribe(UPLOAD) as a, bus.subscribe(UPLOAD) as b, \
            bus.subscribe(other) as c:
        assert bus.subscriptions == 3
        bus.publish(UPLOAD, status_event(UPLOAD, "complete"))
        for sub in (a, b):
            event = await sub.next(1)
            assert event is not None and event["data"] == {"id": UPLOAD, "status": "complete"}
        assert await c.next(0.05) is None
    assert bus.subscriptions == 0
    bus.publish(UPLOAD, progress(1))  # nobody follows it: nothing kept
    assert bus.dropped == 0


async def test_local_bus_bounds_its_subscriptions() -> None:
    bus = LocalBus(max_subscriptions=2)
    async with bus.subscribe(UPLOAD), bus.subscribe(UPLOAD):
        with pytest.raises(errors.TooManyEventStreams):
            async with bus.subscribe("e" * 32):
                pass
        assert bus.subscriptions == 2
    async with bus.subscribe("e" * 32):
        assert bus.subscriptions == 1


async def test_stop_all_ends_subscriptions_now_and_later() -> None:
    bus = LocalBus()
    async with bus.subscribe(UPLOAD) as sub:
        bus.stop_all()
        assert sub.closed and await sub.next(5) is None
        async with bus.subscribe(UPLOAD) as late:
            assert late.closed
        bus.publish(UPLOAD, progress(1))
        assert bus.dropped == 1
    await bus.close()


# --- the Redis bus ------------------------------------------------------------------------------
@pytest.fixture
async def instances(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await make(prefix, **bus_options)``: one gateway instance's Redis client and bus."""
    async with AsyncExitStack() as stack:
        async def make(prefix: str, url: str = redis_server.url,
                       **options: Any) -> tuple[RedisBus, RedisBackend]:
            backend = RedisBackend(url, prefix=prefix)
            await backend.open()
            stack.push_async_callback(backend.close)
            bus = RedisBus(backend.client, backend.keys, **options)
            bus.start()
            stack.push_async_callback(bus.close)
            return bus, backend
        yield make


def prefix() -> str:
    return "ev" + uuid.uuid4().hex[:12]


async def numsub(backend: RedisBackend, upload_id: str) -> int:
    channel = backend.keys.events(upload_id)
    answer = await backend.client.pubsub_numsub(channel)
    return int(answer[0][1])


async def test_redis_bus_between_two_instances(instances: Callable[..., Any]) -> None:
    p = prefix()
    one, _ = await instances(p)
    two, backend = await instances(p)
    elsewhere, _ = await instances(prefix())  # another deployment on the same Redis
    async with two.subscribe(UPLOAD) as a, two.subscribe(UPLOAD) as b, \
            one.subscribe(UPLOAD) as c, elsewhere.subscribe(UPLOAD) as d:
        # One pub/sub connection per instance, however many streams follow the upload.
        assert await numsub(backend, UPLOAD) == 2
        one.publish(UPLOAD, progress(10))
        one.publish(UPLOAD, status_event(UPLOAD, "complete"))
        for sub in (a, b, c):
            got = [await sub.next(2), await sub.next(2)]
            assert [e and e["event"] for e in got] == ["progress", "status"]
            assert got[0] is not None and got[0]["data"] == progress(10)["data"]
        assert await d.next(0.2) is None
    assert one.dropped == 0


async def test_redis_bus_unsubscribes_when_the_last_subscriber_leaves(
        instances: Callable[..., Any]) -> None:
    bus, backend = await instances(prefix())
    async with bus.subscribe(UPLOAD):
        async with bus.subscribe(UPLOAD):
            assert await numsub(backend, UPLOAD) == 1
        assert await numsub(backend, UPLOAD) == 1
    deadline = time.monotonic() + 5
    while await numsub(backend, UPLOAD):
        assert time.monotonic() < deadline, "the channel stays subscribed"
        await asyncio.sleep(0.02)
    # Followed again: subscribed again, and confirmed before the stream goes on.
    async with bus.subscribe(UPLOAD) as sub:
        assert await numsub(backend, UPLOAD) == 1
        bus.publish(UPLOAD, status_event(UPLOAD, "draining"))
        assert await sub.next(2) is not None


async def test_redis_bus_coalesces_progress_and_keeps_statuses(
        instances: Callable[..., Any]) -> None:
    p = prefix()
    sender, _ = await instances(p, flush_interval_s=0.2)
    receiver, _ = await instances(p)
    async with receiver.subscribe(UPLOAD) as sub:
        for offset in range(1, 201):
            sender.publish(UPLOAD, progress(offset))
            if offset % 50 == 0:
                sender.publish(UPLOAD, status_event(UPLOAD, f"at{offset}"))
            await asyncio.sleep(0)  # the sender sends what is there, then waits
        got = []
        while (event := await sub.next(1.0)) is not None:
            got.append(event)
    statuses = [e["data"]["status"] for e in got if e["event"] == "status"]
    offsets = [e["data"]["offset"] for e in got if e["event"] == "progress"]
    assert statuses == ["at50", "at100", "at150", "at200"]
    assert offsets[-1] == 200
    assert len(offsets) < 20, offsets  # not one message per publish


async def test_redis_bus_bounds_what_waits_to_be_sent(instances: Callable[..., Any]) -> None:
    bus, _ = await instances(prefix(), max_pending=2, flush_interval_s=30.0)
    bus.publish(UPLOAD, status_event(UPLOAD, "first"))
    await asyncio.sleep(0.2)  # sent; the sender now waits out its interval
    for n in range(5):
        bus.publish(UPLOAD, status_event(UPLOAD, f"s{n}"))
    assert bus.dropped == 3
    bus.publish(UPLOAD, {"event": "status", "data": {"not json": object()}})
    assert bus.dropped == 4


async def test_redis_bus_ignores_foreign_messages(instances: Callable[..., Any]) -> None:
    bus, backend = await instances(prefix())
    async with bus.subscribe(UPLOAD) as sub:
        channel = backend.keys.events(UPLOAD)
        for raw in (b"not json", b"[]", b'{"event": "other", "data": {}}',
                    b'{"event": "status", "data": 5}'):
            await backend.client.publish(channel, raw)
        await backend.client.publish(channel, json.dumps(status_event(UPLOAD, "ok")))
        event = await sub.next(2)
        assert event is not None and event["data"] == {"id": UPLOAD, "status": "ok"}
    assert bus.dropped == 4


@pytest.mark.slow
async def test_redis_bus_survives_a_redis_restart(tmp_path: Path,
                                                  instances: Callable[..., Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        p = prefix()
        one, _ = await instances(p, url=server.url)
        two, _ = await instances(p, url=server.url)
        async with two.subscribe(UPLOAD) as sub:
            one.publish(UPLOAD, status_event(UPLOAD, "before"))
            assert await sub.next(2) is not None
            caplog.set_level(logging.DEBUG, logger="gateway.events")
            server.kill()
            for n in range(50):  # the upload path goes on publishing meanwhile
                one.publish(UPLOAD, progress(n))
                await asyncio.sleep(0.01)
            assert await sub.next(0.5) is None
            server.start()
            deadline = time.monotonic() + 20
            while True:
                assert time.monotonic() < deadline, "no event arrived after the restart"
                one.publish(UPLOAD, status_event(UPLOAD, "after"))
                event = await sub.next(0.5)
                if event is not None and event["event"] == "status":
                    assert event["data"] == {"id": UPLOAD, "status": "after"}
                    break
        records = [r for r in caplog.records if r.name == "gateway.events"]
        assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR]
        warnings = [r for r in records if r.levelno == logging.WARNING]
        assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]  # one per bus
        assert one._listener is not None and not one._listener.done()
        assert one._sender is not None and not one._sender.done()
    finally:
        server.stop()


# --- the stream -----------------------------------------------------------------------------------
class World:
    """The upload as the stream's snapshot sees it, changed by the test."""

    def __init__(self) -> None:
        self.state: dict[str, object] | None = {"id": UPLOAD, "status": "receiving",
                                                "offset": 0, "sink": None}
        self.reads = 0

    async def snapshot(self) -> dict[str, object]:
        self.reads += 1
        if self.state is None:
            raise errors.NotFound()
        return dict(self.state)

    def set(self, **changes: object) -> None:
        assert self.state is not None
        self.state = {**self.state, **changes}


class Client:
    """A real HTTP client of the stream's server."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.base + path, **kwargs)


StreamClient = Callable[..., Awaitable[tuple[Client, World, EventBus]]]


@pytest.fixture
async def stream_client() -> AsyncIterator[StreamClient]:
    """A real server on loopback with one route, GET /events/{id}, on a bus of the test's
    choosing. Its handlers are not cancelled when their client leaves, as in production
    (``web.run_app``); aiohttp's test server would cancel them, hiding what the stream
    itself must notice."""
    async with AsyncExitStack() as stack:
        async def make(bus: EventBus | None = None, *, cancel_handlers: bool = False,
                       **options: Any) -> tuple[Client, World, EventBus]:
            world = World()
            events = bus if bus is not None else LocalBus()

            async def handler(request: web.Request) -> web.StreamResponse:
                return await stream_events(request, request.match_info["id"],
                                           world.snapshot, request.app[EVENTS], **options)
            app = web.Application(middlewares=[tus_errors])
            app[EVENTS] = events
            app.router.add_get("/events/{id}", handler)
            runner = web.AppRunner(app, handler_cancellation=cancel_handlers,
                                   shutdown_timeout=5.0)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Client(session, f"http://127.0.0.1:{port}"), world, events
        yield make


async def read_block(response: aiohttp.ClientResponse,
                     timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The next block of the stream (an event, or a comment), or None at its end."""
    block: dict[str, Any] = {}
    async with asyncio.timeout(timeout_s):
        while True:
            raw = await response.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if block:
                    return block
                continue
            if line.startswith(":"):
                block["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(": ")
            block[name] = json.loads(value) if name == "data" else value


async def read_event(response: aiohttp.ClientResponse,
                     timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The next event, past any comment (a ping)."""
    while True:
        block = await read_block(response, timeout_s)
        if block is None or "comment" not in block:
            return block


async def test_stream_sends_status_then_progress_and_ends_after_a_final_status(
        stream_client: StreamClient) -> None:
    client, world, bus = await stream_client(progress_interval_s=0.0)
    async with client.get(f"/events/{UPLOAD}") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Accel-Buffering"] == "no"
        first = await read_event(r)
        assert first is not None
        assert first["event"] == "status" and first["data"] == world.state
        assert int(first["retry"]) > 0 and "id" not in first
        bus.publish(UPLOAD, progress(500))
        event = await read_event(r)
        assert event == {"event": "progress", "data": progress(500)["data"]}
        # The event's own payload is not sent: the snapshot read after it is.
        world.set(status="complete", offset=1000)
        bus.publish(UPLOAD, status_event(UPLOAD, "bogus"))
        event = await read_event(r)
        assert event == {"event": "status", "data": world.state}
        world.set(status="drained")
        bus.publish(UPLOAD, status_event(UPLOAD, "drained"))
        event = await read_event(r)
        assert event == {"event": "status", "data": world.state, "id": END_ID}
        assert await read_block(r) is None  # the stream ended
    await until(lambda: bus.subscriptions == 0)


async def test_a_final_upload_streams_once_then_answers_204_to_the_reconnect(
        stream_client: StreamClient) -> None:
    client, world, bus = await stream_client()
    world.set(status="failed", sink={"will_retry": False})
    async with client.get(f"/events/{UPLOAD}") as r:
        event = await read_event(r)
        assert event is not None and event["id"] == END_ID and event["event"] == "status"
        assert await read_block(r) is None
    r = await client.get(f"/events/{UPLOAD}", headers={"Last-Event-ID": END_ID})
    assert r.status == 204
    # Still a retry to come: the stream stays open.
    world.set(sink={"will_retry": True})
    async with client.get(f"/events/{UPLOAD}", headers={"Last-Event-ID": END_ID}) as r:
        assert r.status == 200
        event = await read_event(r)
        assert event is not None and "id" not in event
        assert bus.subscriptions == 1


async def test_a_removed_upload_ends_the_stream_with_gone(stream_client: StreamClient) -> None:
    client, world, bus = await stream_client()
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        world.state = None
        bus.publish(UPLOAD, status_event(UPLOAD, "terminated"))
        assert await read_event(r) == {"event": "gone", "data": {"id": UPLOAD}}
        assert await read_block(r) is None
    # Unknown from the start: a plain 404 with its code, no stream.
    r = await client.get(f"/events/{UPLOAD}")
    assert r.status == 404
    assert "ERR_UPLOAD_NOT_FOUND" in await r.text()
    assert bus.subscriptions == 0


async def test_the_stream_rereads_the_upload_when_no_event_comes(
        stream_client: StreamClient) -> None:
    client, world, _ = await stream_client(poll_s=0.2)
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        world.set(offset=300)  # changed, and the message about it was lost
        event = await read_event(r, timeout_s=3)
        assert event == {"event": "status", "data": world.state}
        reads = world.reads
        await asyncio.sleep(0.5)
        assert world.reads > reads  # it keeps looking, and sends only what changed


async def test_progress_is_sent_at_most_every_interval(stream_client: StreamClient) -> None:
    client, _, bus = await stream_client(progress_interval_s=0.3)
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        started = time.monotonic()
        for offset in range(1, 101):
            bus.publish(UPLOAD, progress(offset))
            await asyncio.sleep(0.005)
        seen = []
        while True:
            event = await read_event(r, timeout_s=2)
            assert event is not None and event["event"] == "progress"
            seen.append(event["data"]["offset"])
            if seen[-1] == 100:
                break
        assert len(seen) <= 2 + (time.monotonic() - started) / 0.3, seen


async def test_heartbeat_and_max_duration(stream_client: StreamClient) -> None:
    client, _, bus = await stream_client(heartbeat_s=0.2, max_s=1.0)
    started = time.monotonic()
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        assert await read_block(r) == {"comment": "ping"}
        while (block := await read_block(r)) is not None:
            assert block == {"comment": "ping"}
    assert 0.9 <= time.monotonic() - started < 5
    await until(lambda: bus.subscriptions == 0)


@pytest.mark.parametrize("cancel_handlers", [False, True])
async def test_a_client_that_goes_away_releases_its_subscription(
        stream_client: StreamClient, cancel_handlers: bool) -> None:
    client, _, bus = await stream_client(cancel_handlers=cancel_handlers)
    r = await client.get(f"/events/{UPLOAD}")
    assert await read_event(r) is not None
    assert bus.subscriptions == 1
    r.close()  # drops the connection; nothing is published, no ping or re-read is due
    started = time.monotonic()
    await until(lambda: bus.subscriptions == 0, timeout_s=5)
    assert time.monotonic() - started < 2.5


async def test_more_streams_than_allowed_get_429(stream_client: StreamClient) -> None:
    client, _, bus = await stream_client(LocalBus(max_subscriptions=1))
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        refused = await client.get(f"/events/{UPLOAD}")
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "5"
        assert "ERR_TOO_MANY_EVENT_STREAMS" in await refused.text()
    await until(lambda: bus.subscriptions == 0)
    async with client.get(f"/events/{UPLOAD}") as r:
        assert r.status == 200


async def test_stopping_the_bus_ends_open_streams(stream_client: StreamClient) -> None:
    client, _, bus = await stream_client()
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        bus.stop_all()
        assert await read_block(r, timeout_s=3) is None


async def test_a_stream_follows_an_upload_on_another_instance(
        stream_client: StreamClient, instances: Callable[..., Any]) -> None:
    p = prefix()
    receiving, _ = await instances(p)  # where the bytes arrive
    streaming, _ = await instances(p)  # where the browser's stream landed
    client, world, _ = await stream_client(streaming, progress_interval_s=0.0)
    async with client.get(f"/events/{UPLOAD}") as r:
        assert await read_event(r) is not None
        receiving.publish(UPLOAD, progress(250))
        assert await read_event(r) == {"event": "progress", "data": progress(250)["data"]}
        world.set(status="terminated")
        receiving.publish(UPLOAD, status_event(UPLOAD, "terminated"))
        event = await read_event(r)
        assert event is not None and event["data"]["status"] == "terminated"
        assert await read_block(r) is None
    await until(lambda: streaming.subscriptions == 0)


# --- the application ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["disk", "redis"], indirect=True)
async def test_the_app_makes_the_bus_its_configuration_asks_for(
        make_client: Callable[..., Any]) -> None:
    client = await make_client(max_event_streams=7)
    bus = client.server.app[EVENTS]
    config = client.server.app[CONFIG]
    assert isinstance(bus, RedisBus if config.redis.url else LocalBus)
    assert bus.max_subscriptions == 7
    async with bus.subscribe(UPLOAD) as sub:
        bus.publish(UPLOAD, status_event(UPLOAD, "complete"))
        event: Mapping[str, object] | None = await sub.next(2)
        assert event is not None and event["event"] == "status"


async def test_a_stopping_gateway_ends_its_event_streams(tmp_path: Path) -> None:
    app = create_app(GatewayConfig.from_settings(data_dir=tmp_path / "data").validate())
    world = World()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_events(request, UPLOAD, world.snapshot, request.app[EVENTS])
    app.router.add_get("/events", handler)
    runner = web.AppRunner(app, shutdown_timeout=30.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/events") as r:
            assert await read_event(r) is not None
            started = time.monotonic()
            stopping = asyncio.create_task(runner.cleanup())
            assert await read_block(r, timeout_s=5) is None
            await asyncio.wait_for(stopping, 10)
            # Not held up for the streams' hour, nor for the 30 s shutdown timeout.
            assert time.monotonic() - started < 5
    finally:
        await runner.cleanup()
