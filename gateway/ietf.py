"""Handlers for requests that speak the IETF resumable uploads draft (``protocol.ietf``).

``routes._TusView`` sends a request here when it carries ``Upload-Draft-Interop-Version``.
The uploads are the tus uploads: the same store, locks, sink and hooks, so an upload created
here can be resumed with tus and the other way round.

aiohttp has no API for interim responses, so the 104 that tells the client where its upload
lives is written on the connection by hand before the final response, the way
``http.send_continue`` writes a 100. It is only sent over HTTP/1.1: HTTP/1.0 has no 1xx.

Errors answer as problem details (RFC 9457): ``dispatch`` marks the request as a draft
request (``DRAFT``), and the error middleware chooses that form for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.access import (
    check_access,
    creator,
    perform_held,
    requester,
)
from gateway.auth import check_plan
from gateway.http import body_facts, location, public_origin, uploads_of
from gateway.keys import DRAFT
from gateway.uploads import checked_id
from protocol import decisions, errors, ietf
from protocol.effects import Terminate
from protocol.filetypes import check_creation
from protocol.headers import Headers

IetfHandler = Callable[[web.Request, Headers, ietf.Draft], Awaitable[web.StreamResponse]]


async def dispatch(request: web.Request, headers: Headers, method: str,
                   handlers: dict[str, IetfHandler]) -> web.StreamResponse:
    """Run the draft handler for ``method``. Its errors answer as problem details: the error
    middleware reads the request's draft (``DRAFT``), set here as soon as it is known."""
    request[DRAFT] = None
    draft = request[DRAFT] = ietf.draft_of(headers)
    public_origin(request)  # refuse a malformed Host before anything can be created
    decisions.check_method(method, handlers)
    if method not in ("POST", "PATCH"):
        return await handlers[method](request, headers, draft)
    try:
        return await handlers[method](request, headers, draft)
    except errors.TusError as exc:
        # From -12 the answer to a creation or append says whose answer it is.
        for name, value in ietf.error_headers(draft).items():
            exc.extra_headers.setdefault(name, value)
        raise


async def send_interim(request: web.Request, fields: list[tuple[str, str]]) -> None:
    """Write a 104 (Upload Resumption Supported) before the final response."""
    if request.version >= (1, 1):
        await request.writer.write(ietf.format_interim(fields))


async def options(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    return web.Response(status=204,
                        headers=ietf.options_headers(draft, uploads_of(request).settings))


async def create(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    """Upload creation: the upload exists, and the client learns its URL from the 104,
    before a byte of the body is read, so a cut-off request can be resumed."""
    uploads = uploads_of(request)
    principal = await requester(request, headers)
    uploads.admit("create")
    facts = body_facts(request)
    interim = ietf.interim_allowed(headers)
    plan = ietf.plan_creation(draft, headers, facts, uploads.settings)
    check_creation(uploads.allowed_types, plan.metadata, plan.length)
    await check_plan(principal, plan.length, None, uploads)
    tus_plan = decisions.CreatePlan(plan.length, plan.metadata, None, None)
    tus_plan = await uploads.hooks.pre_create(tus_plan, request)  # before anything is stored
    state = await uploads.create(tus_plan.length, tus_plan.metadata, None,
                                 creator=await creator(request, headers))
    upload_id = state.info.upload_id
    where = location(request, upload_id)
    reader = uploads.body_reader(request.content)
    try:
        async with uploads.locked(upload_id, reader):
            if interim:
                await send_interim(request, ietf.interim_headers(draft, where,
                                                                 uploads.settings))
            state = await perform_held(request, headers, state, plan.effects, reader)
    except errors.TusError as exc:
        # The upload exists; whatever went wrong with its first bytes, say where it is.
        exc.extra_headers["Location"] = where
        raise
    answer = ietf.creation_headers(draft, state, where, uploads.settings, uploads.clock.now())
    return web.Response(status=201, headers=answer)


async def head(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    ietf.check_head(draft, headers)
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await check_access(request, headers, upload_id)
    # "The server MAY terminate any transfers for the same upload resource before sending
    # the response": the writer is asked to commit and let go, so the offset is current.
    await uploads.settled(upload_id)
    state = await uploads.live(upload_id)
    return web.Response(status=204, headers=ietf.state_headers(draft, state, uploads.settings,
                                                                uploads.clock.now()))


async def offset_get(request: web.Request, headers: Headers,
                     draft: ietf.Draft) -> web.Response:
    """-12: "It can fetch the offset by sending a HEAD or GET request"; "serving response
    content for a GET request is unexpected", so GET answers what HEAD answers, no content.
    Only drafts with ``offset_get`` are routed here (``ietf.speaks_draft``)."""
    return await head(request, headers, draft)


async def append(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await check_access(request, headers, upload_id)
    facts = body_facts(request)
    if facts.present:
        uploads.admit("append")
    reader = uploads.body_reader(request.content)
    async with uploads.locked(upload_id, reader):
        state = await uploads.live(upload_id)
        plan = ietf.plan_append(draft, headers, facts, state, uploads.settings)
        state = await perform_held(request, headers, state, plan.effects, reader)
    answer = ietf.append_headers(draft, state, uploads.settings, uploads.clock.now())
    return web.Response(status=draft.append_status, headers=answer)


async def cancel(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    ietf.check_delete(draft, headers)
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await check_access(request, headers, upload_id)
    async with uploads.locked(upload_id):
        state = await uploads.live(upload_id)
        await uploads.perform(state, (Terminate("terminated"),))
    return web.Response(status=204, headers={ietf.INTEROP_HEADER: str(draft.version)})


COLLECTION: dict[str, IetfHandler] = {"OPTIONS": options, "POST": create}
UPLOAD: dict[str, IetfHandler] = {"OPTIONS": options, "HEAD": head, "GET": offset_get,
                                  "PATCH": append, "DELETE": cancel}
