"""Every typed application key, in one place.

The resources ``gateway.app`` starts, one ``cleanup_ctx`` each, pass on to the next ones
through these keys; each key is set once, by the context that made its object, and only
once that object works. ``RUNTIME`` is the last: what the handlers read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import GatewayConfig
from protocol.ietf import Draft

if TYPE_CHECKING:
    from gateway.aio import IoPool
    from gateway.auth import Principal
    from gateway.clock import Clock
    from gateway.events import EventBus
    from gateway.forward_auth import ForwardAuth
    from gateway.links import Links
    from gateway.resources import ResourceMonitor
    from gateway.sinks import Sink
    from gateway.state.base import Locker
    from gateway.state.parts import StoreParts
    from gateway.state.redis import RedisBackend
    from gateway.uploads import Intake, Uploads


@dataclass
class SweepLog:
    """The expiry sweep's turns on this instance, for the health endpoint."""

    last: float | None = None
    removed: int = 0
    removed_total: int = 0

    def record(self, removed: int, at: float) -> None:
        """A turn ended at ``at`` (wall time) and removed ``removed`` uploads."""
        self.last = at
        self.removed = removed
        self.removed_total += removed


@dataclass(frozen=True)
class Runtime:
    """What the handlers and the health endpoint read, made once everything started."""

    uploads: Uploads
    monitor: ResourceMonitor
    started_at: float
    sweep: SweepLog = field(default_factory=SweepLog)

    def require(self) -> Uploads:
        return self.uploads

    @property
    def sweep_last(self) -> float | None:
        return self.sweep.last

    @property
    def sweep_removed(self) -> int:
        return self.sweep.removed

    @property
    def sweep_removed_total(self) -> int:
        return self.sweep.removed_total


CONFIG = web.AppKey("config", GatewayConfig)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
# Request bodies streaming in (``Intake``): made with the app, since admission control
# counts them before the upload service exists.
INTAKE: web.AppKey[Intake] = web.AppKey("intake")
POOL: web.AppKey[IoPool] = web.AppKey("io_pool")
REDIS: web.AppKey[RedisBackend] = web.AppKey("redis_backend")  # only with --redis-url
STORE: web.AppKey[StoreParts] = web.AppKey("store")  # its parts; ``.store`` is called
LOCKER: web.AppKey[Locker] = web.AppKey("locker")
SINK: web.AppKey[Sink] = web.AppKey("sink")
MONITOR: web.AppKey[ResourceMonitor] = web.AppKey("resource_monitor")
# Live upload events (``gateway.events``): in-process, or through Redis with --redis-url.
EVENTS: web.AppKey[EventBus] = web.AppKey("events")
RUNTIME = web.AppKey("runtime", Runtime)
# Set on a request that speaks the IETF draft (None until its version is known): its errors
# answer as problem details (``gateway.middleware``).
DRAFT: web.RequestKey[Draft | None] = web.RequestKey("ietf_draft")
# Only with --auth forward: the client that asks the operator's endpoint.
FORWARD_AUTH: web.AppKey[ForwardAuth] = web.AppKey("forward_auth")
# Signs and checks download links (``gateway.links``).
LINKS: web.AppKey[Links] = web.AppKey("links")
# Who the request comes from, once checked (``gateway.auth.principal_of``).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
