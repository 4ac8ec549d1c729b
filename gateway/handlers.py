"""One thin handler per tus method: parse, ask ``protocol``, perform, answer.

Each handler is called by ``routes.TusView`` after the method override and the Tus-Resumable
check; every ``TusError`` they raise becomes a response in ``middleware.tus_errors``.
"""

from __future__ import annotations

from aiohttp import web

from gateway.access import (
    auth_on,
    check_access,
    creator,
    owned,
    perform_held,
    requester,
)
from gateway.auth import check_plan
from gateway.download import Download
from gateway.http import body_facts, headers_of, location, uploads_of
from gateway.keys import CONFIG, LINKS
from gateway.sink_api import ReportsProgress, Retrying
from gateway.uploads import Uploads, checked_id
from protocol import decisions, errors
from protocol.effects import Terminate
from protocol.filetypes import check_creation
from protocol.headers import ConcatFinal, ConcatPartial, Headers
from protocol.model import UploadState
from protocol.state import UploadStatus

TUS_RESUMABLE = {"Tus-Resumable": errors.TUS_VERSION}
# What a POST or PATCH answer says about the upload (HEAD says everything).
WRITE_ANSWER_HEADERS = ("Tus-Resumable", "Upload-Offset", "Upload-Expires")


def _write_answer(state: UploadState, settings: decisions.ProtocolSettings) -> dict[str, str]:
    full = decisions.upload_headers(state, settings)
    return {k: v for k, v in full.items() if k in WRITE_ANSWER_HEADERS}


async def options(request: web.Request, headers: Headers) -> web.Response:
    return web.Response(status=204, headers=decisions.options_headers(uploads_of(request).settings))


async def post(request: web.Request, headers: Headers) -> web.Response:
    uploads = uploads_of(request)
    principal = await requester(request, headers)
    uploads.admit("create")
    facts = body_facts(request)
    plan = decisions.plan_create(headers, facts, uploads.settings)
    if isinstance(plan.concat, ConcatFinal):
        # Only the partials' owner may join them (anyone else: 404, as for unknown ids).
        for partial_id in dict.fromkeys(plan.concat.upload_ids):
            await owned(request, headers, partial_id)
    elif not isinstance(plan.concat, ConcatPartial):
        # A partial is a piece of a file, not a file: its final is checked (below, and by
        # its content at the finish).
        check_creation(uploads.allowed_types, plan.metadata, plan.length)
    if isinstance(plan.concat, ConcatFinal):
        check_creation(uploads.allowed_types, plan.metadata, None)
    await check_plan(principal, plan.length, plan.concat, uploads)
    plan = await uploads.hooks.pre_create(plan, request)  # before anything is stored
    made_by = await creator(request, headers)
    if isinstance(plan.concat, ConcatFinal):
        state = await uploads.create_final(plan.concat, plan.length, plan.metadata,
                                           creator=made_by)
    else:
        state = await uploads.create(plan.length, plan.metadata, plan.concat, creator=made_by)
    upload_id = state.info.upload_id
    where = location(request, upload_id)
    reader = uploads.body_reader(request.content)
    try:
        async with uploads.locked(upload_id, reader):
            state = await perform_held(request, headers, state, plan.effects, reader)
    except errors.TusError as exc:
        # The upload exists now; whatever went wrong with its first bytes, say where it is
        # so the client can resume (TUS-CWU-05).
        exc.extra_headers["Location"] = where
        raise
    answer = _write_answer(state, uploads.settings)
    answer["Location"] = where
    return web.Response(status=201, headers=answer)


async def head(request: web.Request, headers: Headers) -> web.Response:
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await check_access(request, headers, upload_id)
    # A writer is asked to commit and let go, but the read needs no lock of its own: the
    # store reports committed offsets only.
    await uploads.settled(upload_id)
    state = await uploads.live(upload_id)
    return web.Response(status=200, headers=decisions.upload_headers(state, uploads.settings))


async def patch(request: web.Request, headers: Headers) -> web.Response:
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await check_access(request, headers, upload_id)
    facts = body_facts(request)
    if facts.present:
        uploads.admit("append")
    if facts.present or "Upload-Length" in headers or "Upload-Checksum" in headers:
        uploads.empty_patches.forget(upload_id)
    else:
        uploads.empty_patch(upload_id)  # nothing to store: 429 when repeated too soon
    reader = uploads.body_reader(request.content)
    async with uploads.locked(upload_id, reader):
        state = await uploads.live(upload_id)
        plan = decisions.plan_patch(headers, facts, state, uploads.settings)
        finishing = state.status is UploadStatus.COMPLETE
        state = await perform_held(request, headers, state, plan.effects, reader)
        if finishing:
            # A retried final PATCH finishes a delivery that failed before: that is work, so
            # the next empty PATCH is not held back for this one.
            uploads.empty_patches.forget(upload_id)
    answer = _write_answer(state, uploads.settings)
    return web.Response(status=204, headers=answer)


async def delete(request: web.Request, headers: Headers) -> web.Response:
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await check_access(request, headers, upload_id)
    async with uploads.locked(upload_id):
        state = await uploads.live(upload_id)
        await uploads.perform(state, (Terminate("terminated"),))
    return web.Response(status=204, headers=TUS_RESUMABLE)


async def get(request: web.Request, headers: Headers) -> web.StreamResponse:
    """Download a finished upload. Finished uploads never change, so no lock is taken."""
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    if "sig" in request.query or "exp" in request.query:
        # A signed link stands in for the owner's credentials (``gateway.links``).
        request.app[LINKS].check(upload_id, request.query.get("exp", ""),
                                 request.query.get("sig", ""), now=uploads.clock.now())
        try:
            state = await uploads.live(upload_id)
        except errors.Gone:
            if auth_on(request):
                raise errors.NotFound() from None  # as for its owner (``gateway.access``)
            raise
    else:
        state = await owned(request, headers, upload_id)
    # Once a sink released the spool's copy, the file it delivered here stands in for it.
    path, state = await uploads.download(state)
    plan = decisions.plan_download(state)
    return Download(path,
                    send_timeout_s=request.app[CONFIG].send_timeout_s, headers={
                        "Content-Type": plan.content_type,
                        "Content-Disposition": plan.disposition,
                        "X-Content-Type-Options": "nosniff",
                        "Cache-Control": "no-store",
                    })


async def upload_status(request: web.Request) -> web.Response:
    """``GET /api/upload/status/{id}``: the upload's progress and its sink's, as JSON."""
    upload_id = checked_id(request.match_info["upload_id"])
    body = await status_body(request, headers_of(request), upload_id)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def status_body(request: web.Request, headers: Headers,
                      upload_id: str) -> dict[str, object]:
    """What the status endpoint (and each event of the event stream) says about an upload
    the request may see."""
    uploads = uploads_of(request)
    state = await owned(request, headers, upload_id)
    sink = state.info.sink
    body: dict[str, object] = {
        "id": upload_id, "offset": state.offset, "length": state.info.length,
        "status": str(state.status),
        **live_progress(uploads, state),
        "sink": None if sink is None else {
            "status": str(sink.status), "ref": sink.ref, "error": sink.error,
            "will_retry": sink.will_retry, "detail": dict(sink.detail)},
    }
    body["hooks"] = uploads.hooks.describe(state)
    if sink is not None and sink.status is UploadStatus.REJECTED:
        body["rejected"] = sink.error
    body["links"] = links_of(request, state)
    if isinstance(uploads.sink, ReportsProgress):
        body["progress"] = await uploads.sink.progress(upload_id)
    return body


def links_of(request: web.Request, state: UploadState) -> dict[str, str | None]:
    """Where the upload lives: its tus URL, status and events, and while its bytes can be
    downloaded here, an expiring signed download link."""
    upload_id = state.info.upload_id
    uploads = uploads_of(request)
    download = None
    if state.finished and state.status is not UploadStatus.REJECTED and (
            # A sink that released the spool's copy serves its delivered file instead.
            not state.info.data_removed or uploads.sink.releases_spool):
        download = (location(request, upload_id) + "?"
                    + request.app[LINKS].query(upload_id, now=uploads.clock.now()))
    return {"upload": location(request, upload_id),
            "status": f"/api/upload/status/{upload_id}",
            "events": f"/api/upload/events/{upload_id}", "download": download}


def live_progress(uploads: Uploads, state: UploadState) -> dict[str, object]:
    """What a person watching an upload wants: name, size, bytes so far (including those of
    a request still streaming on this instance), percent, speed and ETA over the last few
    seconds, and when it was created, last active and will expire."""
    info = state.info
    upload_id = info.upload_id
    length = info.length
    received = state.offset
    inflight = uploads.inflight.get(upload_id)
    if inflight is not None:
        start, reader = inflight
        received = max(received, start + reader.received)
    if length is not None:
        received = min(received, length)
    complete = state.finished
    meter = uploads.meters.get(upload_id)
    now = uploads.meters.now()
    speed = None if meter is None or complete else meter.speed(now)
    eta = 0.0 if complete else (
        None if meter is None or length is None else meter.eta(length - received, now))
    percent = None
    if length:
        percent = round(100.0 * received / length, 1)
    elif length == 0:
        percent = 100.0
    filename = info.metadata.get("filename") or info.metadata.get("name")
    return {
        "filename": filename.decode("utf-8", "replace") if filename is not None else None,
        "size": length, "bytes_received": received, "percent": percent,
        "speed_bytes_per_s": None if speed is None else round(speed),
        "eta_s": None if eta is None else round(eta, 1),
        "created_at": info.created_at, "last_activity": state.last_activity,
        "expires_at": decisions.expires_at(state, uploads.settings), "complete": complete,
    }


async def sink_retry(request: web.Request) -> web.Response:
    """``POST /api/sink/retry/{id}``: deliver a failed upload again."""
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await owned(request, headers_of(request), upload_id)
    if not isinstance(uploads.sink, Retrying):
        raise errors.SinkCannotRetry()
    await uploads.sink.retry(upload_id)
    return web.json_response({"id": upload_id, "status": "draining"}, status=202)
