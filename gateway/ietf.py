"""Handlers for requests that speak the IETF resumable uploads draft (``protocol.ietf``).

``routes._TusView`` sends a request here when it carries ``Upload-Draft-Interop-Version``.
The uploads are the tus uploads: the same store, locks, sink and hooks, so an upload created
here can be resumed with tus and the other way round.

aiohttp has no API for interim responses, so the 104 that tells the client where its upload
lives is written on the connection by hand before the final response, the way
``http.send_continue`` writes a 100. It is only sent over HTTP/1.1: HTTP/1.0 has no 1xx.

Errors answer as problem details (RFC 9457) here rather than in the error middleware, which
speaks tus (``Tus-Resumable`` on every answer, ``CODE: message`` bodies).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.auth import bearer_token, check_bearer, verify_token
from gateway.clients import client_key
from gateway.http import body_facts, location, public_origin, send_continue, uploads_of
from gateway.keys import CONFIG
from gateway.middleware import CLOSE_AFTER
from gateway.uploads import Uploads, checked_id
from protocol import decisions, errors, ietf
from protocol.headers import Headers
from protocol.model import UploadState
from protocol.state import UploadStatus

IetfHandler = Callable[[web.Request, Headers, ietf.Draft], Awaitable[web.StreamResponse]]


async def dispatch(request: web.Request, headers: Headers, method: str,
                   handlers: dict[str, IetfHandler]) -> web.StreamResponse:
    """Run the draft handler for ``method``; a ``TusError`` becomes a problem-details answer."""
    draft: ietf.Draft | None = None
    try:
        draft = ietf.draft_of(headers)
        public_origin(request)  # refuse a malformed Host before anything can be created
        decisions.check_method(method, handlers)
        return await handlers[method](request, headers, draft)
    except errors.TusError as exc:
        return await _problem_response(request, draft, exc)


async def _problem_response(request: web.Request, draft: ietf.Draft | None,
                            exc: errors.TusError) -> web.StreamResponse:
    answer = ietf.problem(draft, exc)
    if request.method == "HEAD":
        response = web.Response(status=answer.status, headers=answer.headers)
    else:
        response = web.Response(status=answer.status, headers=answer.headers,
                                body=json.dumps(answer.body).encode(),
                                content_type=ietf.PROBLEM_JSON)
    if exc.code in CLOSE_AFTER:
        response.force_close()
        if not request.content.is_eof():
            # As in the error middleware: answer, then close, rather than read the rest of a
            # dead or abandoned body.
            await response.prepare(request)
            await response.write_eof()
            if request.protocol is not None:
                request.protocol.force_close()
    return response


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
    max_size = _authorize(request, headers)
    uploads = uploads_of(request)
    uploads.admit("create")
    facts = body_facts(request)
    plan = ietf.plan_creation(draft, headers, facts, uploads.settings)
    if max_size is not None:
        if plan.length is None:
            raise errors.TooLarge(f"this token allows at most {max_size} bytes, so the upload "
                                  "length must be known at creation")
        if plan.length > max_size:
            raise errors.TooLarge(f"this token allows at most {max_size} bytes")
    tus_plan = decisions.CreatePlan(plan.length, plan.metadata, None, None)
    tus_plan = await uploads.hooks.pre_create(tus_plan, request)  # before anything is stored
    state = await uploads.create(tus_plan.length, tus_plan.metadata, None,
                                 client=client_key(request, headers))
    upload_id = state.info.upload_id
    where = location(request, upload_id)
    reader = uploads.body_reader(request.content)
    try:
        async with uploads.locked(upload_id, reader):
            await send_interim(request, ietf.interim_headers(draft, where, uploads.settings))
            if plan.has_body:
                await send_continue(request)
                state = await uploads.append(state, 0, reader, plan.max_bytes, None)
            state = await _conclude(uploads, state, plan.complete)
    except errors.TusError as exc:
        # The upload exists; whatever went wrong with its first bytes, say where it is.
        exc.extra_headers["Location"] = where
        raise
    answer = ietf.creation_headers(draft, state, where, uploads.settings, time.time())
    return web.Response(status=201, headers=answer)


def _authorize(request: web.Request, headers: Headers) -> int | None:
    """``--auth`` for a draft creation; returns the token's ``max_size``, if any.

    ``auth.check_creation`` reads the length the tus way, so only its token checks are used
    here and the size limit is held against the draft's idea of the length.
    """
    config = request.app[CONFIG]
    if config.auth == "none":
        return None
    token = bearer_token(headers)
    if token is None:
        raise errors.AuthRequired()
    if config.auth == "bearer":
        check_bearer(config.auth_tokens, token)
        return None
    return verify_token(config.auth_secret, token, now=time.time()).max_size


async def _conclude(uploads: Uploads, state: UploadState, complete: bool) -> UploadState:
    """After the body: a request that said it ends the upload fixes its length (if it was not
    known) and finishes it; one that said so with too few bytes is refused, bytes kept."""
    if complete and state.info.length is None:
        state = await uploads.declare_length(state, state.offset)
    if complete and state.info.length is not None and state.offset != state.info.length:
        raise errors.InconsistentLength(
            f"the upload ended at {state.offset} bytes, not at its length {state.info.length}")
    if state.status is UploadStatus.COMPLETE:
        state = await uploads.finish(state)
    return state


async def head(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    ietf.check_head(draft, headers)
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    # "The server MAY terminate any transfers for the same upload resource before sending
    # the response": the writer is asked to commit and let go, so the offset is current.
    await uploads.settled(upload_id)
    state = await uploads.live(upload_id)
    return web.Response(status=204, headers=ietf.state_headers(draft, state, uploads.settings,
                                                                time.time()))


async def append(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    facts = body_facts(request)
    if facts.present:
        uploads.admit("append")
    reader = uploads.body_reader(request.content)
    async with uploads.locked(upload_id, reader):
        state = await uploads.live(upload_id)
        plan = ietf.plan_append(draft, headers, facts, state, uploads.settings)
        if plan.new_length is not None:
            state = await uploads.declare_length(state, plan.new_length)
        if facts.present:
            await send_continue(request)
            state = await uploads.append(state, plan.offset, reader, plan.max_bytes, None)
        state = await _conclude(uploads, state, plan.complete)
    return web.Response(status=draft.append_status,
                        headers=ietf.append_headers(draft, state, uploads.settings, time.time()))


async def cancel(request: web.Request, headers: Headers, draft: ietf.Draft) -> web.Response:
    ietf.check_delete(draft, headers)
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    async with uploads.locked(upload_id):
        await uploads.live(upload_id)
        await uploads.terminate(upload_id, "terminated")
    return web.Response(status=204, headers={ietf.INTEROP_HEADER: str(draft.version)})


COLLECTION: dict[str, IetfHandler] = {"OPTIONS": options, "POST": create}
UPLOAD: dict[str, IetfHandler] = {"OPTIONS": options, "HEAD": head, "PATCH": append,
                                  "DELETE": cancel}
