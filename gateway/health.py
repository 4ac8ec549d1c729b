"""``GET /api/system/health``: is the gateway well, and if not, which part is not.

Overall ``healthy``, ``degraded`` (working, but an operator should look: memory high, the
sink's breaker open, the expiry sweep late, free disk space below --min-free-disk) or
``unhealthy`` (the state store cannot be reached, or memory is critical). 200 for the first
two, 503 for the last, so a load balancer takes an unhealthy instance out and leaves a
degraded one in.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.http import uploads_of
from gateway.keys import CLOCK, CONFIG, RUNTIME
from gateway.metrics import METRICS
from gateway.sink_api import HasBreaker
from protocol import errors

RANK = {"healthy": 0, "degraded": 1, "unhealthy": 2}
# An id no upload has: looking it up is one round trip to the store and changes nothing.
PROBE_ID = "0" * 32


async def health(request: web.Request) -> web.Response:
    app = request.app
    config = app[CONFIG]
    uploads = uploads_of(request)
    components: dict[str, dict[str, object]] = {
        "resources": _resources(request),
        "state_store": await _store(request),
        "sink": _sink(request),
        "expiry": _expiry(request),
        "disk": _disk(request),
    }
    worst = max((str(c["status"]) for c in components.values()), key=RANK.__getitem__)
    body = {"status": worst, "timestamp": uploads.clock.now(), "components": components,
            "active_uploads": uploads.active, "instance": {
                "store": "redis" if config.redis.url else "disk", "sink": config.sink}}
    return web.json_response(body, status=503 if worst == "unhealthy" else 200,
                             headers={"Cache-Control": "no-store"})


def _resources(request: web.Request) -> dict[str, object]:
    monitor = request.app[RUNTIME].monitor
    if monitor is None:
        return {"status": "healthy"}
    return monitor.describe()


def _disk(request: web.Request) -> dict[str, object]:
    """Free space of the data directory's filesystem; degraded below --min-free-disk, when
    new uploads and PATCH requests are refused with 507 (the gateway still serves)."""
    monitor = request.app[RUNTIME].monitor
    if monitor is None:
        return {"status": "healthy"}
    return {**monitor.describe_disk(), "min_free": request.app[CONFIG].min_free_disk}


async def _store(request: web.Request) -> dict[str, object]:
    uploads = uploads_of(request)
    kind = "redis" if request.app[CONFIG].redis.url else "disk"
    started = time.perf_counter()
    try:
        await uploads.store.get(PROBE_ID)
    except (errors.NotFound, errors.Gone):
        pass  # the store answered
    except errors.StateUnavailable as exc:
        return {"status": "unhealthy", "kind": kind, "reachable": False,
                "error": exc.detail}
    latency_ms = (time.perf_counter() - started) * 1000
    # Records that could not be read are set aside (disk) or answered as not found (Redis):
    # the gateway works on, but someone's upload needs an operator.
    unreadable = uploads.store.unreadable
    return {"status": "degraded" if unreadable else "healthy", "kind": kind,
            "reachable": True, "latency_ms": round(latency_ms, 2),
            "unreadable_records": unreadable}


def _sink(request: web.Request) -> dict[str, object]:
    sink = uploads_of(request).sink
    out: dict[str, object] = {"status": "healthy", "kind": request.app[CONFIG].sink}
    if isinstance(sink, HasBreaker):
        state = sink.breaker_state()
        out["circuit_breaker"] = state
        if state != "closed":
            out["status"] = "degraded"  # uploads go on; deliveries wait for the remote
        rate = request.app[METRICS].sink_success_rate()
        out["success_rate"] = None if rate is None else round(100.0 * rate, 1)
        limited = sink.rate_limit()
        if limited is not None:
            out["rate_limit"] = limited  # why the remote slows deliveries down
    return out


def _expiry(request: web.Request) -> dict[str, object]:
    runtime = request.app[RUNTIME]
    interval = request.app[CONFIG].sweep_interval_s
    last = runtime.sweep_last
    out: dict[str, object] = {"status": "healthy", "interval_s": interval, "last_run": last,
                              "last_removed": runtime.sweep_removed,
                              "removed_total": runtime.sweep_removed_total}
    started = runtime.started_at
    reference = last if last is not None else started
    # Two missed turns: the sweeper is stuck or failing (with several instances any one
    # of them runs it, and each notes its own turns only).
    if reference is not None and request.app[CLOCK].now() - reference > 3 * interval and \
            not request.app[CONFIG].redis.url:
        out["status"] = "degraded"
    return out
