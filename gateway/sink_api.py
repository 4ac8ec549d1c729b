"""What a sink is to the gateway, and what the gateway lends a sink: the one interface between
them.

A sink (``gateway.sinks.DirectorySink``, ``notion_sink.sink.NotionSink``) implements ``Sink``,
the core every sink has. What only some sinks can do, each declares by deriving from a
capability class below; the gateway asks for one by type (``isinstance(sink, Retrying)``)
and offers what depends on it only where the sink declared it:

- ``ReportsProgress``: the delivery's progress in the status API (``progress``);
- ``Retrying``: a failed delivery can be started again (``POST /api/sink/retry/{id}``);
- ``HasBreaker``: a circuit breaker guards the remote; health and metrics show its state;
- ``SendsEarly``: windows leave before the upload is complete, so the store must make the
  bytes durable and commit the offset every ``sync_interval_bytes`` inside a long PATCH;
- ``NeedsCheckpoints``: the delivery's progress lives in the store's sink checkpoints, so
  the sink cannot start on a store without them;
- ``Closing``: background work to stop when the gateway stops;
- ``LimitsFileSize``: the remote takes files up to a size learnt at run time (a Notion
  workspace's upload limit): a creation above it answers 413, and Tus-Max-Size says it.

A capability is a base class, not a shape: a sink has it because it says so, not because a
method of that name happens to exist.

The other way round, a sink that runs beside the gateway (``notion_sink``) gets from it only
what the Protocols here describe, through its constructor: ``SinkStore`` (the parts of the
state store a sink works with), ``Offloader`` (the I/O threads), ``SinkMetrics`` (its
counters) and, when instances share Redis, ``SharedScripts`` (the shared state's scripts,
for a rate limiter every instance shares). ``notion_sink`` imports nothing else of
``gateway`` (a test checks it), so the gateway's internals can change without it. The
generic runner of owed background work (``gateway.jobs``) is the one other module it uses.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from protocol.decisions import ProtocolSettings
from protocol.model import Checkpoint, SinkState, UploadInfo, UploadState

T = TypeVar("T")


class Sink(Protocol):
    state_needs_saving: bool
    """False when the sink keeps its own record of deliveries, so the upload's record need
    not be rewritten after every delivery."""

    releases_spool: bool
    """True when a finished delivery (``drained``) holds the whole file, so the spool's copy
    is released once the delivery is on record."""

    async def deliver(self, state: UploadState, data: Path) -> SinkState:
        """Deliver a complete upload (idempotent); returns the sink state to record."""

    async def retain(self, upload_ids: set[str]) -> None:
        """Forget deliveries of uploads that no longer exist (called after recovery)."""

    def handed_over(self, state: UploadState, data: Path) -> None:
        """The delivery's state is saved: work that continues in the background may start."""

    def receiving(self, state: UploadState) -> None:
        """A PATCH for the upload starts or ends: a sink that sends windows before the
        upload is complete looks at its committed offset again."""

    async def delivered_file(self, state: UploadState) -> Path | None:
        """The delivered file to serve for a download once the spool's copy is released,
        or None if this sink keeps none here; ``errors.DeliveredFileRemoved`` if it kept
        one that is no longer there."""


# --- capabilities a sink declares ------------------------------------------------------------
class ReportsProgress(abc.ABC):
    """The delivery's progress, shown as ``progress`` by ``GET /api/upload/status/{id}``."""

    @abc.abstractmethod
    async def progress(self, upload_id: str) -> dict[str, object]:
        """JSON-ready facts about the upload's delivery (any instance answers the same)."""


class Retrying(abc.ABC):
    """A failed delivery can be started again (``tus-gateway sink retry``)."""

    @abc.abstractmethod
    async def retry(self, upload_id: str) -> None:
        """Start the failed delivery again; ``errors.SinkNotFailed`` if it has not failed."""


class HasBreaker(abc.ABC):
    """A circuit breaker guards the remote the sink delivers to: while it is not closed,
    health says ``degraded`` (uploads go on, deliveries wait)."""

    @abc.abstractmethod
    def breaker_state(self) -> str:
        """``closed``, ``half_open`` or ``open``."""

    def rate_limit(self) -> dict[str, object] | None:
        """The remote's last rate limit, while it may still hold (its reason, the status,
        ``retry_after_s``, ``at``), for health; None: none lately."""
        return None


class SendsEarly(abc.ABC):  # noqa: B024 (a declaration: nothing more to implement)
    """Windows of an upload leave while it still receives bytes (``Sink.receiving`` starts
    them), so the store must make the bytes durable and commit the offset every
    ``sync_interval_bytes`` inside a long PATCH: otherwise no window is ready before the
    request ends."""


class NeedsCheckpoints(abc.ABC):  # noqa: B024 (a declaration: nothing more to implement)
    """The delivery's progress lives in the store's sink checkpoints
    (``gateway.state.base.SinkCheckpoints``): the gateway refuses to start this sink on a
    store that does not keep them."""


class Announces(abc.ABC):
    """The delivery moves on in the background (``draining`` to ``drained`` or ``failed``):
    the sink tells the gateway each time it has recorded a new state, so that the upload's
    event streams hear of it at once and a delivered upload stops holding its owner's
    quota."""

    @abc.abstractmethod
    def announce_to(self, saved: Callable[[UploadState], Awaitable[None]]) -> None:
        """Call ``saved`` with the upload's state after each delivery state is recorded;
        what it raises is logged, never the sink's concern."""


class Closing(abc.ABC):
    """The sink runs background work (tasks, connections) that must end with the gateway."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the background work; called once, before the store closes."""


class LimitsFileSize(abc.ABC):
    """The remote refuses files above a size it tells at run time: the gateway refuses
    them at creation instead of after the bytes were sent."""

    @abc.abstractmethod
    def max_file_size(self) -> int | None:
        """The largest file the remote takes now, in bytes; None while it is not known."""

    # What the limit is, in words a client reads in the 413 ("the Notion workspace's file
    # upload limit").
    file_size_limit_name: str = "the sink's file size limit"


def sink_limited(settings: ProtocolSettings, sink: object) -> ProtocolSettings:
    """``settings`` with ``max_size`` lowered to what ``sink`` takes (``LimitsFileSize``)."""
    if not isinstance(sink, LimitsFileSize):
        return settings
    limit = sink.max_file_size()
    if limit is None or (settings.max_size is not None and settings.max_size <= limit):
        return settings
    return dataclasses.replace(settings, max_size=limit, max_size_by=sink.file_size_limit_name)


# --- what the gateway lends a sink -----------------------------------------------------------
class SinkStore(Protocol):
    """The parts of the state store (``gateway.state.base``) a sink works with: upload
    records and their bytes, a remote sink's checkpoint, the index of owed sink work and
    the leases that keep one instance at a time on an upload's delivery."""

    async def get(self, upload_id: str) -> UploadState:
        """The current snapshot; raises ``errors.NotFound`` or ``errors.Gone``."""

    async def save_info(self, info: UploadInfo, *, durable: bool = True) -> None:
        """Replace the record atomically; never brings a removed upload back."""

    def data_path(self, upload_id: str) -> Path:
        """Where the bytes of an upload live."""

    async def discard_data(self, upload_id: str) -> None:
        """Delete the spool copy of an upload whose record says ``data_removed``."""

    async def checkpoint(self, upload_id: str) -> Checkpoint:
        """The upload's checkpoint; an empty one if the sink has not started."""

    async def start_remote(self, upload_id: str, remote_id: str, started_at: float) -> None:
        """Record a new remote upload; its confirmed parts start empty."""

    async def add_parts(self, upload_id: str, remote_id: str, parts: Sequence[int]) -> bool:
        """Record confirmed parts of ``remote_id``; False (nothing recorded) if the
        checkpoint moved to another remote upload meanwhile."""

    async def owe_sink(self, upload_id: str, owed: bool) -> None:
        """Note (or clear) that the sink still owes work on this upload."""

    async def sink_owed(self) -> list[str]:
        """The uploads the sink still owes work on (an index: entries may be stale)."""

    async def claim_lease(self, name: str, ttl_s: float) -> bool:
        """True for one caller per ``ttl_s`` among all processes sharing the store."""

    async def hold_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take or extend ``owner``'s lease ``name``; False while someone else holds it."""

    async def drop_lease(self, name: str, owner: str) -> None:
        """End ``owner``'s lease now."""


class Offloader(Protocol):
    """The gateway's I/O threads (``gateway.aio.IoPool``): blocking file reads and hashing
    run there, never on the event loop."""

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread."""


class SharedKeys(Protocol):
    def rate(self, name: str) -> str:
        """The key of the shared rate limiter ``name``."""


class SharedScripts(Protocol):
    """The state every instance shares (``gateway.state.redis.RedisBackend``): its key
    names and its registered scripts (``gateway.state.redis_keys``), which map an
    unreachable Redis to ``errors.StateUnavailable``."""

    @property
    def keys(self) -> SharedKeys: ...

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the registered script ``name`` with these keys and arguments."""


class SinkMetrics(Protocol):
    """The sink's counters in the gateway's metrics (``tus_sink_requests``,
    ``tus_sink_parts``); outcomes are a closed set, so they never grow a series per upload."""

    def request_done(self, outcome: str) -> None:
        """One request to the remote ended: ``ok`` or ``failed``."""

    def part_done(self, outcome: str) -> None:
        """One part send ended: ``sent``, ``retried`` or ``failed``."""
