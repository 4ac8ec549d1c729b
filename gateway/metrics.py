"""Prometheus metrics: what the gateway does, counted where it happens.

Each app has its own ``CollectorRegistry`` (not the process-wide default), so two gateways
in one process (tests) never share or clash over counters. ``/metrics`` renders it in the
text exposition format.

Figures that are a state rather than an event (uploads receiving bytes right now, the
circuit breaker's state) are read when scraped, through callbacks, so they can never drift
from the truth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from gateway.state.base import CoreStore
from protocol import errors
from protocol.decisions import KNOWN_METHODS

# Request bodies on a LAN finish in milliseconds, a 5 GB PATCH over a phone in hours.
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 2.5, 10, 30, 120, 600, 3600)
# Store calls: microseconds (cached) to a second (an fsync on a busy disk, a Redis failover).
STORE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
# The "_created" timestamp series double every scrape for little use; the process has no
# other metrics that could want them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tus_requests", "HTTP requests answered, by method and status",
                                ["method", "status"], registry=registry)
        self.bytes_received = Counter("tus_bytes_received",
                                      "Upload body bytes received", registry=registry)
        self.uploads = Counter("tus_uploads", "Upload lifecycle events",
                               ["event"], registry=registry)
        for event in ("created", "finished", "rejected", "terminated", "expired"):
            self.uploads.labels(event)  # present at 0 before the first one
        self.active = Gauge("tus_active_uploads",
                            "Uploads receiving a request body right now", registry=registry)
        self.patch_duration = Histogram("tus_patch_duration_seconds",
                                        "PATCH requests from start to answer",
                                        buckets=DURATION_BUCKETS, registry=registry)
        self.lock_wait = Histogram("tus_lock_wait_seconds",
                                   "Time a request waited for an upload's lock",
                                   buckets=(*STORE_BUCKETS, 10), registry=registry)
        self.release_requests = Counter(
            "tus_lock_release_requests",
            "Requests that asked the holder of an upload to let go", registry=registry)
        self.store_latency = Histogram("tus_store_latency_seconds",
                                       "State store calls, by operation", ["op"],
                                       buckets=STORE_BUCKETS, registry=registry)
        self.store_errors = Counter("tus_store_errors", "State store calls that failed",
                                    ["op"], registry=registry)
        self.sink_parts = Counter("tus_sink_parts", "Parts sent to a remote sink, by outcome",
                                  ["outcome"], registry=registry)
        for outcome in ("sent", "retried", "failed"):
            self.sink_parts.labels(outcome)
        self.sink_requests = Counter("tus_sink_requests",
                                     "Requests to a remote sink, by outcome", ["outcome"],
                                     registry=registry)
        for outcome in ("ok", "failed"):
            self.sink_requests.labels(outcome)
        self.breaker = Gauge("tus_sink_breaker_state",
                             "The sink's circuit breaker: 0 closed, 1 half-open, 2 open",
                             registry=registry)
        self.unreadable = Gauge("tus_unreadable_records",
                                "Upload records the store could not read (set aside or "
                                "answered as not found; each is logged once)",
                                registry=registry)
        self.admission = Counter("tus_admission_refused",
                                 "Requests refused to protect the gateway, by reason",
                                 ["reason"], registry=registry)

    def watch_active(self, count: Callable[[], int]) -> None:
        self.active.set_function(lambda: float(count()))

    def watch_unreadable(self, count: Callable[[], int]) -> None:
        self.unreadable.set_function(lambda: float(count()))

    def watch_breaker(self, state: Callable[[], str]) -> None:
        self.breaker.set_function(lambda: float(BREAKER_STATES.get(state(), 0)))

    def sink_success_rate(self) -> float | None:
        """Share of sink requests that succeeded since start, or None before the first."""
        ok = self.sink_requests.labels("ok")._value.get()
        failed = self.sink_requests.labels("failed")._value.get()
        total = ok + failed
        return None if total == 0 else ok / total

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self) -> Middleware:
        """Counts every answered request (outside the error middleware, so errors count
        with their real status) and times PATCHes."""
        requests, patch_duration = self.requests, self.patch_duration

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            method = method_label(request)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                requests.labels(method, status_label(status)).inc()
                if method == "PATCH":
                    patch_duration.observe(time.perf_counter() - started)
        return count


def method_label(request: web.Request) -> str:
    """The method a request is counted under: the one it asks for (an override counts, as
    the upload URLs honour it), from a closed set.

    Every label value is a series kept for the life of the process, so a value the client
    makes up must never become one: anything but a known method is "other".
    """
    method = request.method
    override = request.headers.get("X-HTTP-Method-Override")
    if override is not None and method != "OPTIONS":
        method = override.strip().upper()
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    """A status as a label: HTTP statuses are three digits, so at most 500 series."""
    return str(status) if 100 <= status <= 599 else "other"


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                            "Cache-Control": "no-store"})


class MeasuredStore:
    """A store that times every call of the store it wraps (and counts the failures), so
    slow disks and slow Redis show in ``tus_store_latency_seconds``. It has exactly the
    wrapped store's parts: a part the store lacks is an attribute it lacks, so
    ``gateway.state.parts`` sees the same parts through it."""

    def __init__(self, store: CoreStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        # An append lasts as long as the client's body takes: that is not store latency.
        if name in ("data_path", "append") or not callable(target):
            if callable(target):
                self.__dict__[name] = target  # found directly from now on
            return target
        latency = self._metrics.store_latency.labels(name)
        failures = self._metrics.store_errors.labels(name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await target(*args, **kwargs)
            except errors.TusError as exc:
                # Not found, gone, a wrong offset: answers, not failures of the store.
                if isinstance(exc, errors.StateUnavailable):
                    failures.inc()
                raise
            except Exception:
                failures.inc()
                raise
            finally:
                latency.observe(time.perf_counter() - started)
        self.__dict__[name] = timed  # wrapped once, found directly from now on
        return timed


Store = TypeVar("Store", bound=CoreStore)


def measured(store: Store, metrics: Metrics) -> Store:
    return cast(Store, MeasuredStore(store, metrics))
