"""Who may act on an upload: the request's principal, checked against the upload's creator.

Every handler that names an upload reads it through ``owned``, so that a principal other
than the creator (and not an admin) meets the same 404 as an unknown id (``gateway.auth``
says why). Without auth nothing is checked and nothing extra is read.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from gateway.auth import Principal, check_owner, principal_of
from gateway.body import BodyReader
from gateway.clients import client_key
from gateway.http import send_continue, uploads_of
from gateway.keys import CONFIG
from gateway.quotas import RETRY_AFTER_S, Creator, creator_of
from protocol import errors
from protocol.effects import Append, DeclareLength, Effect
from protocol.filetypes import check_length, size_limit
from protocol.headers import Headers
from protocol.model import UploadState


async def requester(request: web.Request, headers: Headers) -> Principal:
    """The request's principal (``errors`` auth refusals when auth is on and it has none)."""
    return await principal_of(request, headers, now=uploads_of(request).clock.now())


async def creator(request: web.Request, headers: Headers) -> Creator:
    """What a creation is made under: the principal's key, name, database and limits."""
    principal = await requester(request, headers)
    return creator_of(request.app[CONFIG], principal, client_key(request, principal))


def auth_on(request: web.Request) -> bool:
    return bool(request.app[CONFIG].auth.mode != "none")


async def owned(request: web.Request, headers: Headers, upload_id: str) -> UploadState:
    """The upload's live state when the request may act on it, else 404 (410 for a removed
    one only without auth: its tombstone names no owner)."""
    uploads = uploads_of(request)
    if not auth_on(request):
        return await uploads.live(upload_id)
    principal = await requester(request, headers)
    try:
        state = await uploads.live(upload_id)
    except errors.Gone:
        raise errors.NotFound() from None
    check_owner(request.app[CONFIG], principal, state.info, client_key(request, principal))
    return state


async def check_access(request: web.Request, headers: Headers, upload_id: str) -> None:
    """``owned``, when auth is on; without auth nothing is read (the caller reads anyway)."""
    if auth_on(request):
        await owned(request, headers, upload_id)


async def admit_length(request: web.Request, headers: Headers, state: UploadState,
                       effects: Sequence[Effect]) -> None:
    """Before a plan declares a deferred length: the per-type size limit and the quota."""
    for effect in effects:
        if isinstance(effect, DeclareLength):
            uploads = uploads_of(request)
            check_length(uploads.allowed_types, state.info.metadata, effect.length)
            await uploads.admit_length(state, effect.length, await creator(request, headers))



async def bound_deferred(request: web.Request, headers: Headers, state: UploadState,
                         effects: Sequence[Effect]) -> tuple[tuple[Effect, ...], bool]:
    """While an upload's length is deferred, no length check has seen its bytes: hold its
    body to its type's size limit and to the creator's byte quota instead. Returns the
    effects to perform, and whether the quota set the bound (so that passing it answers
    as a quota, not as a length)."""
    if state.info.length is not None or any(isinstance(e, DeclareLength) for e in effects):
        return tuple(effects), False
    uploads = uploads_of(request)
    bounds: list[tuple[int, bool]] = []
    limit = size_limit(uploads.allowed_types, state.info.metadata)
    if limit is not None:
        bounds.append((max(limit - state.offset, 0), False))
    made_by = await creator(request, headers)
    room = await uploads.quota_room(state, made_by)
    if room is not None:
        bounds.append((room, True))
    if not bounds:
        return tuple(effects), False
    bound, by_quota = min(bounds)
    bounded: list[Effect] = []
    for effect in effects:
        if isinstance(effect, Append) and (effect.max_bytes is None
                                           or effect.max_bytes > bound):
            effect = Append(effect.offset, bound, effect.checksum)
        elif isinstance(effect, Append):
            by_quota = False  # the plan's own bound is the smaller
        bounded.append(effect)
    return tuple(bounded), by_quota


def deferred_refusal(error: errors.TusError, by_quota: bool) -> errors.TusError:
    """The answer for a body that passed the bound ``bound_deferred`` set: a quota refusal
    when the quota set it, else the length error as it is."""
    if not by_quota or not isinstance(error, errors.SizeExceeded):
        return error
    return errors.QuotaExceeded(
        "the upload's length is not declared yet and its bytes would pass your byte "
        "quota; the bytes before that point are kept",
        headers={"Retry-After": str(RETRY_AFTER_S)},
        data={"limit": "bytes", "retry_after": RETRY_AFTER_S})


async def perform_held(request: web.Request, headers: Headers, state: UploadState,
                       effects: Sequence[Effect], reader: BodyReader) -> UploadState:
    """Perform a plan that may write the request's body, held to the requester's limits: a
    deferred length it declares (``admit_length``), and the bytes of an upload whose length
    is still unknown (``bound_deferred``)."""
    uploads = uploads_of(request)
    await admit_length(request, headers, state, effects)
    held, by_quota = await bound_deferred(request, headers, state, effects)
    try:
        return await uploads.perform(state, held, reader,
                                     before_body=lambda: send_continue(request))
    except errors.SizeExceeded as exc:
        raise deferred_refusal(exc, by_quota) from None
