"""Per-user quotas: the bytes a user's uploads hold and how many are open.

Theory of operation
-------------------
A *creator* is what a new upload is made under (``Creator``): the principal's key (hashed,
``gateway.clients``), its name, its user database, and its limits. The limits are the
gateway's (``--quota-bytes``, ``--quota-uploads``), each overridden per user by a token
claim or a forward-auth answer (``quota_bytes``, ``quota_uploads``; see
``gateway.auth.UserSettings``). ``--quota-size`` is the flag of the byte quota. A figure of 0
is no quota of its own; the open uploads of a user without one are still bounded by
``--max-open-uploads-per-client``.

- **Bytes held**: every upload of the user that has not been delivered holds its length
  (while the length is deferred, the bytes it has so far): unfinished ones, finished ones
  waiting for the sink, and failed deliveries. Delivered, rejected, removed and expired
  uploads hold nothing; a partial holds nothing once finished (its final holds the sum).
  The figure per upload lives in the store (``gateway.state.base.Owners``), so instances
  sharing Redis see one account, and a new figure is accepted atomically against the
  quota: two creations at once cannot both slip under it.
- It is checked when an upload is created with a known length, and again when a deferred
  length is declared; a refusal is ``429 ERR_QUOTA_EXCEEDED`` with Retry-After, naming the
  limit, what is used and what was asked for, and changes nothing.
- Figures are released where the upload stops holding bytes (delivered, rejected, removed,
  expired). Should one be missed (a crash between a delivery and its release), a refusal
  first looks at the user's uploads again and releases what no longer holds bytes, so a
  stale figure can delay nobody for long.
- **Open uploads**: the store's open-upload slots per client (``OpenSlots``) already count
  them; ``--quota-uploads`` (or the user's own figure) replaces
  ``--max-open-uploads-per-client`` as that client's bound, refused as a quota.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.auth import Principal
from gateway.config import GatewayConfig
from gateway.state.base import Owners
from protocol import errors
from protocol.model import UploadState
from protocol.state import UploadStatus

log = logging.getLogger(__name__)

# A refusal looks again at this many of the user's newest uploads at most.
RECONCILE_MAX = 1000
RECONCILE_PAGE = 100
# A client refused again and again costs one such look per this long, not one per refusal
# (each look reads up to RECONCILE_MAX records); the clients looked at lately are kept up
# to RECONCILED_KEPT, the oldest forgotten first.
RECONCILE_EVERY_S = 10.0
RECONCILED_KEPT = 10_000
RETRY_AFTER_S = 60
# A creation holds its bytes and lists the upload before its record is written, so a listed
# upload without a record may be one being made right now; only one listed longer ago than
# this is what a creation that never finished left behind.
CREATION_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class Creator:
    """What a new upload is made under."""

    client: str  # the owner key (``gateway.clients.client_key``)
    subject: str | None = None
    database: str | None = None
    quota_bytes: int = 0  # 0: no limit
    quota_uploads: int = 0  # 0: --max-open-uploads-per-client


def creator_of(config: GatewayConfig, principal: Principal, client: str) -> Creator:
    user = principal.user
    quota_bytes = config.quota_bytes if user.quota_bytes is None else user.quota_bytes
    quota_uploads = config.quota_uploads if user.quota_uploads is None else user.quota_uploads
    return Creator(client, principal.subject, user.database, quota_bytes, quota_uploads)


def held_bytes(state: UploadState) -> int:
    """The bytes an upload holds against its owner's quota (see the module docstring)."""
    info = state.info
    if state.status in (UploadStatus.DRAINED, UploadStatus.REJECTED,
                        UploadStatus.TERMINATED) or info.data_removed:
        return 0
    if info.is_partial and state.finished:
        return 0
    return state.offset if info.length is None else info.length


class Quotas:
    def __init__(self, owners: Owners, read: Callable[[str], Awaitable[UploadState]],
                 now: Callable[[], float]) -> None:
        self._owners = owners
        self._read = read
        self._now = now
        self._reconciled: OrderedDict[str, float] = OrderedDict()

    async def hold(self, creator: Creator, upload_id: str, nbytes: int) -> None:
        """Count ``nbytes`` for the upload against the creator's byte quota, or raise
        ``errors.QuotaExceeded`` and change nothing."""
        limit = creator.quota_bytes
        used = await self._owners.hold_bytes(creator.client, upload_id, nbytes,
                                             max_total=limit)
        if used is None:
            return
        if self._may_reconcile(creator.client):
            await self.reconcile(creator.client)
            used = await self._owners.hold_bytes(creator.client, upload_id, nbytes,
                                                 max_total=limit)
            if used is None:
                return
        raise errors.QuotaExceeded(
            f"your uploads hold {used} bytes of your {limit}-byte quota, and this upload "
            f"needs {nbytes}; finish, deliver or delete uploads first",
            headers={"Retry-After": str(RETRY_AFTER_S)},
            data={"limit": "bytes", "used": used, "quota": limit, "requested": nbytes,
                  "retry_after": RETRY_AFTER_S})

    def _may_reconcile(self, client: str) -> bool:
        now = self._now()
        last = self._reconciled.get(client)
        if last is not None and now - last < RECONCILE_EVERY_S:
            return False
        self._reconciled[client] = now
        self._reconciled.move_to_end(client)
        while len(self._reconciled) > RECONCILED_KEPT:
            self._reconciled.popitem(last=False)
        return True

    async def reconcile(self, client: str) -> None:
        """Release the figures of the client's uploads that no longer hold bytes.

        Only what is settled is released: a figure held by a request still under way (a
        creation before its record is written, a deferred length before it is saved) must
        stay, or two creations at once could both pass the quota."""
        cursor: tuple[float, str] | None = None
        seen = 0
        while seen < RECONCILE_MAX:
            page = await self._owners.owned(client, before=cursor, limit=RECONCILE_PAGE)
            if not page:
                return
            for upload_id, created in page:
                try:
                    state = await self._read(upload_id)
                except errors.Gone:
                    await self._owners.forget_owned(client, upload_id)
                    continue
                except errors.NotFound:
                    if self._now() - created >= CREATION_GRACE_S:
                        await self._owners.forget_owned(client, upload_id)
                    continue
                if state.info.length is None and not state.finished:
                    continue  # its figure is the length being declared, not yet on record
                if held_bytes(state) == 0:
                    await self._owners.release_bytes(client, upload_id)
            seen += len(page)
            cursor = page[-1][1], page[-1][0]

    async def release(self, state: UploadState) -> None:
        """The upload holds nothing any more (delivered, rejected, partial finished)."""
        await self._owners.release_bytes(state.info.client, state.info.upload_id)

    async def forget(self, state: UploadState) -> None:
        """The upload is removed: out of its owner's list, its bytes released."""
        await self._owners.forget_owned(state.info.client, state.info.upload_id)


def uploads_refusal(creator: Creator, used: int) -> errors.TusError:
    """The quota refusal for a creator at its open-uploads bound."""
    limit = creator.quota_uploads
    return errors.QuotaExceeded(
        f"you have {used} unfinished uploads, your quota is {limit}; finish or delete "
        "some first", headers={"Retry-After": str(RETRY_AFTER_S)},
        data={"limit": "uploads", "used": used, "quota": limit, "requested": 1,
              "retry_after": RETRY_AFTER_S})
