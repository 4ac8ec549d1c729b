"""Live upload events: ``GET /api/upload/events/{id}`` as server-sent events.

Theory of operation
-------------------
Whatever changes an upload (bytes arriving, a phase or sink change) publishes an event on
the instance's ``EventBus``; an event stream subscribes to the upload's events and turns
them into server-sent events. With the state on disk there is one process, and the bus is
in-process (``LocalBus``). With ``--redis-url`` several instances share the work and the
instance receiving an upload's bytes is not necessarily the one holding the browser's
stream, so events go through Redis pub/sub (``RedisBus``): one channel per upload,
``<prefix>:{<id>}:events`` (``gateway.state.redis_keys``), JSON payloads.

- Publishing never holds up or fails the upload path: ``publish`` is synchronous, does
  no I/O itself, and drops (counts, logs at debug) what it cannot send; on Redis a
  background task sends what piled up, one pipeline per batch, at most every
  ``flush_interval_s``, the newest progress of each upload replacing older ones meanwhile.
- Every subscription has a bounded queue: byte progress coalesces (only the newest
  matters), status events are kept up to ``MAX_KEPT_STATUS``, beyond which the oldest go
  (a status only makes the stream re-read the upload, so the newest one is enough). The
  subscriptions of one instance are bounded by ``--max-event-streams``: one more is refused
  with ``ERR_TOO_MANY_EVENT_STREAMS`` (429) before its response starts.
- ``RedisBus`` holds ONE pub/sub connection per instance, subscribes an upload's channel
  while a local stream follows it and unsubscribes when the last one leaves, and fans
  each message out to the local subscriptions. A lost connection (Redis restarted) is made
  again with a backoff and every channel still followed is subscribed again; events
  published meanwhile are lost, which the streams' periodic re-read of the upload covers.
- Events are hints, the upload's state is the truth: on a status event a stream sends a
  fresh snapshot (what ``GET /api/upload/status/{id}`` answers), never the event's own
  payload, and it re-reads the snapshot every ``poll_s`` anyway, so a lost message cannot
  leave a page stale for long.

Bus events (``publish``; build them with ``progress_event`` and ``status_event``)::

    {"event": "progress", "data": <progress>}
    {"event": "status", "data": {"id": <upload id>, "status": <the new status>}}

Server-sent events of a stream, each ``data`` one JSON object::

    event: status    the snapshot: the body of GET /api/upload/status/{id}; the first event
                     of every stream, and again whenever it changed
    event: progress  {"id", "offset" (bytes committed), "bytes_received" (committed and
                     still streaming), "length" (null while deferred), "percent" (null
                     while the length is unknown), "speed_bytes_per_s", "eta_s" (null
                     while not measured)}, at most every ``progress_interval_s``
    event: gone      {"id"}: the upload was removed or expired; the stream ends

A stream ends after a status whose ``status`` is final (drained, rejected, terminated, or
failed without a retry to come); that event carries the id ``end``. An EventSource
reconnects by itself to any stream that ended: coming back with ``Last-Event-ID: end``
while the upload is still in that final status, it is answered 204, which tells it to stop
(HTML "server-sent events": "Clients will reconnect if the connection is closed; a client
can be told to stop reconnecting using the HTTP 204 No Content response code"). A stream
also ends after ``max_s`` (the browser reconnects after the ``retry`` the first event
sets), when the server stops, and within about a second of its client going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from gateway.aio import STOP_GRACE_S, stop_tasks
from protocol import errors

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.state.redis_keys import Keys

log = logging.getLogger(__name__)

PROGRESS = "progress"
STATUS = "status"
GONE = "gone"
# Status events a subscription keeps while its stream is busy sending; more drop the oldest.
MAX_KEPT_STATUS = 16
# Events waiting to go to Redis; more are dropped until the sender catches up.
MAX_PENDING_PUBLISHES = 10_000
# The id of a stream's final event (see the module docstring).
END_ID = "end"
FINAL_STATUSES = frozenset({"drained", "rejected", "terminated"})
# How often a stream looks whether its client is still there: the server does not cancel a
# handler whose client left, and a stream with nothing to send would never notice.
CLIENT_CHECK_S = 1.0


def progress_event(upload_id: str, *, offset: int, bytes_received: int, length: int | None,
                   speed_bytes_per_s: float | None = None,
                   eta_s: float | None = None) -> dict[str, object]:
    """A bus event: the upload's bytes so far (``offset`` committed, ``bytes_received``
    with those of a request still streaming)."""
    if length is None:
        percent = None
    elif length == 0:
        percent = 100.0
    else:
        percent = round(100.0 * min(bytes_received, length) / length, 1)
    return {"event": PROGRESS, "data": {
        "id": upload_id, "offset": offset, "bytes_received": bytes_received,
        "length": length, "percent": percent,
        "speed_bytes_per_s": None if speed_bytes_per_s is None else round(speed_bytes_per_s),
        "eta_s": None if eta_s is None else round(eta_s, 1)}}


def status_event(upload_id: str, status: str) -> dict[str, object]:
    """A bus event: the upload's phase or its sink's state changed; streams re-read it."""
    return {"event": STATUS, "data": {"id": upload_id, "status": status}}


def is_final(snapshot: Mapping[str, object]) -> bool:
    """Whether nothing more will happen to the upload that a stream should wait for."""
    status = snapshot.get("status")
    if status in FINAL_STATUSES:
        return True
    if status != "failed":
        return False
    sink = snapshot.get("sink")
    return not (isinstance(sink, Mapping) and sink.get("will_retry"))


class Subscription:
    """One stream's queue of an upload's events: the newest progress, the status events."""

    def __init__(self, upload_id: str, *, max_kept: int = MAX_KEPT_STATUS) -> None:
        self.upload_id = upload_id
        self.dropped = 0
        self.closed = False
        self._max_kept = max_kept
        self._statuses = 0
        self._pending: deque[Mapping[str, object]] = deque()
        self._wakeup = asyncio.Event()

    async def next(self, timeout_s: float) -> Mapping[str, object] | None:
        """The next event, or None when none came within ``timeout_s`` seconds or the
        subscription was closed (``closed`` tells which)."""
        if not self._pending and not self.closed and timeout_s > 0:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wakeup.wait()
        if not self._pending:
            return None
        event = self._pending.popleft()
        if event.get("event") != PROGRESS:
            self._statuses -= 1
        return event

    def offer(self, event: Mapping[str, object]) -> None:
        """Queue an event; never blocks. Progress replaces the progress still queued."""
        if self.closed:
            return
        if event.get("event") == PROGRESS:
            for queued in self._pending:
                if queued.get("event") == PROGRESS:
                    self._pending.remove(queued)
                    break
        else:
            if self._statuses >= self._max_kept:
                for queued in self._pending:
                    if queued.get("event") != PROGRESS:
                        self._pending.remove(queued)
                        break
                self.dropped += 1
                log.debug("event stream of %s fell behind; dropped a status event",
                          self.upload_id)
            else:
                self._statuses += 1
        self._pending.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()


class EventBus(Protocol):
    """Where uploads' events go, and where event streams follow them."""

    dropped: int
    """Events published but not sent (the bus was busy, closed or out of reach)."""

    @property
    def subscriptions(self) -> int:
        """Subscriptions open on this instance."""

    def publish(self, upload_id: str, event: Mapping[str, object]) -> None:
        """Send an event to the upload's subscribers on every instance. Never waits and
        never raises: what cannot be sent is dropped. Call it on the event loop."""

    def subscribe(self, upload_id: str) -> AbstractAsyncContextManager[Subscription]:
        """Follow the upload's events while the context is open. Entering raises
        ``errors.TooManyEventStreams`` when this instance follows its maximum already."""

    def stop_all(self) -> None:
        """End every subscription now, and those made later at once (the server stops)."""

    async def close(self) -> None:
        """Stop the bus; subscriptions end."""


class _Fanout:
    """Local subscriptions by upload, bounded in number: what both buses share."""

    def __init__(self, *, max_subscriptions: int) -> None:
        self.max_subscriptions = max_subscriptions
        self.dropped = 0
        self._local: dict[str, set[Subscription]] = {}
        self._count = 0
        self._stopped = False

    @property
    def subscriptions(self) -> int:
        return self._count

    def _deliver(self, upload_id: str, event: Mapping[str, object]) -> None:
        for subscription in self._local.get(upload_id, ()):
            subscription.offer(event)

    def _join(self, upload_id: str) -> Subscription:
        if self._count >= self.max_subscriptions:
            raise errors.TooManyEventStreams()
        subscription = Subscription(upload_id)
        if self._stopped:
            subscription.close()
        self._local.setdefault(upload_id, set()).add(subscription)
        self._count += 1
        return subscription

    def _leave(self, subscription: Subscription) -> bool:
        """Forget the subscription; True when it was the upload's last one here."""
        subscription.close()
        followers = self._local.get(subscription.upload_id)
        if followers is None or subscription not in followers:
            return False
        followers.discard(subscription)
        self._count -= 1
        if followers:
            return False
        del self._local[subscription.upload_id]
        return True

    def stop_all(self) -> None:
        self._stopped = True
        for followers in self._local.values():
            for subscription in followers:
                subscription.close()


class LocalBus(_Fanout):
    """Events within one process: the state is on disk, so every stream is here."""

    def __init__(self, *, max_subscriptions: int = 1000) -> None:
        super().__init__(max_subscriptions=max_subscriptions)

    def publish(self, upload_id: str, event: Mapping[str, object]) -> None:
        if self._stopped:
            self.dropped += 1
            return
        if upload_id in self._local:
            self._deliver(upload_id, dict(event))

    @contextlib.asynccontextmanager
    async def subscribe(self, upload_id: str) -> AsyncIterator[Subscription]:
        subscription = self._join(upload_id)
        try:
            yield subscription
        finally:
            self._leave(subscription)

    async def close(self) -> None:
        self.stop_all()


@dataclass(eq=False)
class _Channel:
    """One upload's channel on the pub/sub connection."""

    upload_id: str
    # Set once Redis confirmed the subscription on the current connection.
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    subscribed: bool = False  # SUBSCRIBE sent on the current connection


class RedisBus(_Fanout):
    """Events between instances through Redis pub/sub, on the gateway's Redis client."""

    # How long entering a subscription waits for Redis to confirm it, so that whatever
    # happens after the stream's first snapshot is heard; without Redis it goes on anyway.
    CONFIRM_S = 1.0
    # An idle pub/sub connection reads with this timeout, so the client's health check
    # (a PING) runs between reads and a connection that died silently is noticed.
    READ_S = 15.0
    MAX_BACKOFF_S = 2.0
    # How long closing lets the tasks end by themselves before it cancels them.
    CLOSE_GRACE_S = 0.5

    def __init__(self, client: aioredis.Redis, keys: Keys, *, max_subscriptions: int = 1000,
                 max_pending: int = MAX_PENDING_PUBLISHES,
                 flush_interval_s: float = 0.05) -> None:
        super().__init__(max_subscriptions=max_subscriptions)
        self._client = client
        # A Redis Cluster client (it knows nodes) refuses PUBLISH in a pipeline: there each
        # event goes on its own, and the cluster carries it to every node's subscribers.
        self._pipelined = not hasattr(client, "get_nodes")
        self._keys = keys
        self._max_pending = max_pending
        self._flush_interval_s = flush_interval_s
        # Insertion-ordered: an upload's progress (key: its id) moves to the end when
        # replaced; status events (key: a serial number) are each kept.
        self._outbox: dict[object, tuple[str, bytes]] = {}
        self._serial = 0
        self._outbox_ready = asyncio.Event()
        self._channels: dict[bytes, _Channel] = {}
        self._changed = asyncio.Event()
        # False from a lost connection until a subscription works again: meanwhile a new
        # subscription does not wait for a confirmation that cannot come.
        self._reachable = True
        self._sender: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        # The tasks stop by themselves once this is set. Cancelling them alone is not
        # enough: on Python 3.11 a redis-py command swallows a cancellation that lands as
        # it completes (its asyncio.wait_for, CPython gh-86296).
        self._closing = False

    def start(self) -> None:
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="tus-events-sender")
            self._listener = asyncio.create_task(self._listen(), name="tus-events-listener")

    async def close(self) -> None:
        self.stop_all()
        self._closing = True
        self._outbox_ready.set()
        self._changed.set()
        tasks = [t for t in (self._sender, self._listener) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.CLOSE_GRACE_S)
        await _cancel_until_done([self._sender, self._listener, self._reader])
        self._sender = self._listener = self._reader = None
        if self._outbox:
            self.dropped += len(self._outbox)
            self._outbox.clear()

    # --- publishing --------------------------------------------------------------------------
    def publish(self, upload_id: str, event: Mapping[str, object]) -> None:
        if self._stopped or self._sender is None:
            self.dropped += 1
            return
        try:
            payload = json.dumps(event, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            self.dropped += 1
            log.debug("event for %s not published: %r", upload_id, exc)
            return
        key: object
        if event.get("event") == PROGRESS:
            key = upload_id
            self._outbox.pop(key, None)
        else:
            self._serial += 1
            key = self._serial
        if len(self._outbox) >= self._max_pending:
            self.dropped += 1
            log.debug("event for %s not published: %d events wait already", upload_id,
                      len(self._outbox))
            return
        self._outbox[key] = (self._keys.events(upload_id), payload)
        self._outbox_ready.set()

    async def _send(self) -> None:
        while not self._closing:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch = list(self._outbox.values())
            self._outbox.clear()
            if not batch:
                continue
            try:
                if self._pipelined:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for channel, payload in batch:
                            pipe.publish(channel, payload)
                        await pipe.execute()
                else:
                    for channel, payload in batch:
                        await self._client.publish(channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis failure: the events are lost, not the bus
                self.dropped += len(batch)
                log.debug("%d events not published: %r", len(batch), exc)
            # Meanwhile progress coalesces: one message per upload and interval at most.
            await asyncio.sleep(self._flush_interval_s)

    # --- subscribing -------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def subscribe(self, upload_id: str) -> AsyncIterator[Subscription]:
        subscription = self._join(upload_id)
        try:
            name = self._keys.events(upload_id).encode()
            channel = self._channels.get(name)
            if channel is None:
                channel = self._channels[name] = _Channel(upload_id)
            if not channel.subscribed:
                self._changed.set()
            if self._reachable and not subscription.closed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.CONFIRM_S):
                        await channel.confirmed.wait()
            yield subscription
        finally:
            if self._leave(subscription):
                self._changed.set()

    async def _listen(self) -> None:
        """Keep the pub/sub connection for as long as the bus runs, through Redis restarts."""
        delay = 0.1
        while not self._closing:
            try:
                async with self._client.pubsub() as pubsub:
                    await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the connection is lost: make it again
                if self._reachable:
                    log.warning("event bus lost Redis (%s); reconnecting", exc)
                    delay = 0.1
                else:  # one line per outage, not one per attempt
                    log.debug("event bus still cannot reach Redis: %s", exc)
                    delay = min(delay * 2, self.MAX_BACKOFF_S)
                self._disconnected()
                await asyncio.sleep(delay)

    def _disconnected(self) -> None:
        self._reachable = False
        for name, channel in list(self._channels.items()):
            channel.subscribed = False
            channel.confirmed.clear()
            if self._followed(channel) == 0:
                del self._channels[name]

    def _followed(self, channel: _Channel) -> int:
        return len(self._local.get(channel.upload_id, ()))

    async def _follow(self, pubsub: aioredis.client.PubSub) -> None:
        """Subscribe what is followed here, unsubscribe what is no longer, and read
        messages, until the connection fails (which raises)."""
        reader: asyncio.Task[None] | None = None
        try:
            while not self._closing:
                self._changed.clear()
                add = [n for n, c in self._channels.items()
                       if not c.subscribed and self._followed(c)]
                drop = [n for n, c in self._channels.items()
                        if c.subscribed and not self._followed(c)]
                for name in [n for n, c in self._channels.items()
                             if not c.subscribed and not self._followed(c)]:
                    del self._channels[name]
                if add:
                    await pubsub.subscribe(*add)
                    for name in add:
                        self._channels[name].subscribed = True
                    if not self._reachable:
                        log.info("event bus reached Redis again")
                        self._reachable = True
                if drop:
                    await pubsub.unsubscribe(*drop)
                    for name in drop:
                        channel = self._channels[name]
                        channel.subscribed = False
                        channel.confirmed.clear()
                if reader is None and add:
                    reader = self._reader = asyncio.create_task(self._read(pubsub),
                                                                name="tus-events-reader")
                if self._closing:
                    return
                changed = asyncio.create_task(self._changed.wait())
                waiting: set[asyncio.Future[Any]] = {changed}
                if reader is not None:
                    waiting.add(reader)
                try:
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if reader is not None and reader.done():
                    reader.result()  # raises what ended it
                    raise ConnectionError("the pub/sub reader ended")
        finally:
            await _cancel_until_done([reader])

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        while not self._closing:
            message = await pubsub.get_message(timeout=self.READ_S)
            if message is None:
                continue
            kind = message.get("type")
            channel = self._channels.get(message.get("channel") or b"")
            if channel is None:
                continue
            if kind == "subscribe":
                channel.confirmed.set()
            elif kind == "message":
                event = _parsed(message.get("data"))
                if event is None:
                    self.dropped += 1
                    log.debug("unreadable event on %r dropped", message.get("channel"))
                else:
                    self._deliver(channel.upload_id, event)


async def _cancel_until_done(tasks: list[asyncio.Task[None] | None],
                             grace_s: float = STOP_GRACE_S) -> None:
    """``stop_tasks``, cancelling again a task that swallowed its cancellation (see
    ``RedisBus._closing``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    pending = [t for t in tasks if t is not None and not t.done()]
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [t for t in pending if not t.done()]
    await stop_tasks(tasks, grace_s=0.1)  # says which is left behind, if one is


def _parsed(raw: object) -> Mapping[str, object] | None:
    """A bus event from Redis: a JSON object with a known ``event`` and a ``data`` object."""
    if not isinstance(raw, bytes | str):
        return None
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if (not isinstance(event, dict) or event.get("event") not in (PROGRESS, STATUS)
            or not isinstance(event.get("data"), dict)):
        return None
    return event


# --- the stream -------------------------------------------------------------------------------
Snapshot = Callable[[], Awaitable[dict[str, object]]]


async def stream_events(request: web.Request, upload_id: str, snapshot: Snapshot,
                        bus: EventBus, *, heartbeat_s: float = 15.0, max_s: float = 3600.0,
                        poll_s: float = 5.0, progress_interval_s: float = 0.25,
                        retry_ms: int = 3000,
                        send_timeout_s: float | None = 60.0) -> web.StreamResponse:
    """Answer an event stream of the upload (see the module docstring).

    Before the response starts: ``TooManyEventStreams`` (429) when this instance follows
    its maximum already, and what the first ``snapshot()`` raises (``NotFound``, ``Gone``,
    ``StateUnavailable``) goes to the error middleware like any other request's error.
    """
    async with bus.subscribe(upload_id) as subscription:
        # Subscribed first: whatever happens after this snapshot is heard.
        state = await snapshot()
        if is_final(state) and request.headers.get("Last-Event-ID") == END_ID:
            return web.Response(status=204, headers={"Cache-Control": "no-store"})
        if not _client_connected(request):
            return web.Response(status=204)  # it left while the snapshot was read
        response = EventSourceResponse(ping_interval=heartbeat_s, send_timeout=send_timeout_s)
        # The library sets no-cache; a stream must not be kept by anyone at all.
        response.headers["Cache-Control"] = "no-store"
        # The client went away (reset) or stopped reading (a send timed out): the stream
        # ends quietly, as a download does.
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            await response.prepare(request)
            async with response:
                await _Stream(request, response, subscription, snapshot, upload_id,
                              poll_s, progress_interval_s).run(state, max_s, retry_ms)
        return response


@dataclass
class _Stream:
    request: web.Request
    response: EventSourceResponse
    subscription: Subscription
    snapshot: Snapshot
    upload_id: str
    poll_s: float
    progress_interval_s: float
    sent: Mapping[str, object] | None = None

    async def run(self, state: dict[str, object], max_s: float, retry_ms: int) -> None:
        if await self._status(state, retry_ms=retry_ms):
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline, next_poll, next_progress = now + max_s, now + self.poll_s, now
        held: Mapping[str, object] | None = None  # progress waiting for its turn
        while not self.subscription.closed and self._connected():
            now = loop.time()
            if now >= deadline:
                return
            if held is not None and now >= next_progress:
                await self.response.send(_json(held), event=PROGRESS)
                held, next_progress = None, now + self.progress_interval_s
                continue
            if now >= next_poll:
                next_poll = now + self.poll_s
                try:
                    state = await self.snapshot()
                except (errors.NotFound, errors.Gone):
                    await self.response.send(_json({"id": self.upload_id}), event=GONE)
                    return
                except errors.TusError:
                    continue  # out of reach for now (503): the next poll tries again
                if await self._status(state):
                    return
                continue
            wake = min(deadline, next_poll, now + CLIENT_CHECK_S,
                       next_progress if held is not None else math.inf)
            event = await self.subscription.next(wake - now)
            if event is None:
                continue
            data = event.get("data")
            if event.get("event") == PROGRESS and isinstance(data, Mapping):
                held = data
            elif event.get("event") == STATUS:
                next_poll = now  # re-read the upload rather than trust the event

    async def _status(self, state: dict[str, object], *, retry_ms: int | None = None) -> bool:
        """Send the snapshot if it changed; True when it is final and the stream ends."""
        final = is_final(state)
        if state != self.sent or retry_ms is not None:
            await self.response.send(_json(state), event=STATUS, retry=retry_ms,
                                     id=END_ID if final else None)
            self.sent = state
        return final

    def _connected(self) -> bool:
        return _client_connected(self.request) and self.response.is_connected()


def _client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _json(data: Mapping[str, object]) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)
