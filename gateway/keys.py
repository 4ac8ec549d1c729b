"""Every typed application key, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config import GatewayConfig
from protocol.ietf import Draft

if TYPE_CHECKING:
    from gateway.resources import ResourceMonitor
    from gateway.uploads import Uploads


@dataclass
class Runtime:
    """Resources made at start-up by ``cleanup_ctx``; filled in before the first request."""

    uploads: Uploads | None = field(default=None)
    monitor: ResourceMonitor | None = field(default=None)
    started_at: float | None = None
    # The expiry sweep's last turn on this instance, for the health endpoint.
    sweep_last: float | None = None
    sweep_removed: int = 0
    sweep_removed_total: int = 0

    def require(self) -> Uploads:
        if self.uploads is None:
            raise RuntimeError("the gateway has not started")
        return self.uploads


CONFIG = web.AppKey("config", GatewayConfig)
RUNTIME = web.AppKey("runtime", Runtime)
# Set on a request that speaks the IETF draft (None until its version is known): its errors
# answer as problem details (``gateway.middleware``).
DRAFT: web.RequestKey[Draft | None] = web.RequestKey("ietf_draft")
