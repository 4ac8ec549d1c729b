"""Background work that one instance at a time does: a lease held for as long as it runs.

``held_lease`` takes the lease (or says someone else has it), extends it every third of its
time to live while the work runs, and lets it go when the work ends. An instance that stops
extending it (killed, paused) loses it once the time runs out, and another instance's scan
takes the work over. If this process finds its lease taken (it was too slow to extend it),
the work is cancelled: another instance goes on, and two never do the same work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from gateway.state.base import Leases
from protocol import errors

log = logging.getLogger(__name__)


def lease_ttl(lock_ttl_s: float) -> float:
    """Long enough to ride out a Redis hiccup, short enough that a dead instance's work is
    taken over within seconds."""
    return max(3 * lock_ttl_s, 3.0)


@contextlib.asynccontextmanager
async def held_lease(store: Leases, name: str, owner: str,
                     ttl_s: float) -> AsyncIterator[bool]:
    """Yields True while ``owner`` holds ``name``; False (and nothing held) if another
    instance holds it or the store cannot be reached, in which case a later scan retries."""
    try:
        held = await store.hold_lease(name, owner, ttl_s)
    except errors.StateUnavailable:
        held = False
    if not held:
        yield False
        return
    work = asyncio.current_task()
    assert work is not None
    keeper = asyncio.create_task(_keep(store, name, owner, ttl_s, work))
    try:
        yield True
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        with contextlib.suppress(errors.StateUnavailable):
            await asyncio.shield(store.drop_lease(name, owner))


async def _keep(store: Leases, name: str, owner: str, ttl_s: float,
                work: asyncio.Task[None]) -> None:
    while True:
        await asyncio.sleep(ttl_s / 3)
        try:
            if await store.hold_lease(name, owner, ttl_s):
                continue
        except errors.StateUnavailable:
            continue  # still ours unless the outage outlasts the lease
        log.warning("lost the lease %s (this process was too slow to extend it); another "
                    "instance goes on", name)
        work.cancel()
        return
