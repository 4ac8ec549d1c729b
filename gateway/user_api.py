"""The user's own view: their uploads, and the earlier app's session API over the same uploads.

``GET /api/uploads`` lists the caller's uploads, newest first, a page at a time
(``?limit=`` 1 to 100, default 20; ``?cursor=`` from the previous page's ``next``). With
auth on the caller is its subject; without auth, its address (as for the per-client limits),
so on a private machine it is everything uploaded from there.

The session API keeps the earlier app's front-end and scripts working; each call is a thin
layer over the tus upload it names, with the same auth, ownership, limits, quotas, types,
hooks and sink:

- ``POST /api/upload/create-session`` with ``{"filename", "fileSize", "contentType"}``
  (``contentType`` optional) creates an upload of that length and answers its id, its tus
  URL, the stream, status and events URLs, and how the sink will send it (one part up to
  20 MiB, else parts of the Notion window size, as Notion's File Upload API requires).
- ``POST /api/upload/stream/{id}`` takes the file's bytes as the request body. The body
  starts at byte 0 unless ``Upload-Offset: n`` or ``Content-Range: bytes n-.../...`` says
  otherwise; bytes the upload already has are read and dropped, so a client that simply
  sends the whole file again after an interruption resumes where the gateway stopped, and
  one that asks the status for the offset can send only the rest. A start past what the
  upload has is 409 with the current offset.
- ``POST /api/upload/abort/{id}`` removes the upload, as a tus DELETE does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from aiohttp import web

from gateway.access import creator, owned, requester
from gateway.auth import check_plan
from gateway.clients import client_key
from gateway.events import stream_events
from gateway.handlers import links_of, live_progress, status_body
from gateway.http import (
    defer_continue,
    expect_continue,
    headers_of,
    send_continue,
    uploads_of,
)
from gateway.keys import CONFIG, EVENTS
from gateway.uploads import checked_id
from notion_sink.windows import MAX_PARTS
from protocol import decisions, errors
from protocol.effects import Append, Effect, Finish, Terminate
from protocol.filetypes import check_creation, parse_media_type
from protocol.headers import Headers
from protocol.model import UploadState
from protocol.names import MAX_NAME_BYTES
from protocol.state import UploadStatus

MAX_JSON_BYTES = 16 * 1024
MAX_PAGE = 100
DEFAULT_PAGE = 20
# Notion's File Upload API: a file up to 20 MiB goes in one request, larger ones in parts.
SINGLE_PART_MAX = 20 * 1024 * 1024
# ASCII digits only: \d would also take other scripts' digits ("\u0661"), which int() reads.
CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19}|\*)/(\d{1,19}|\*)", re.ASCII)


# --- the user's uploads ------------------------------------------------------------------------
async def list_uploads(request: web.Request) -> web.Response:
    """``GET /api/uploads``: the caller's uploads, newest first, paged."""
    uploads = uploads_of(request)
    headers = headers_of(request)
    principal = await requester(request, headers)
    owner = client_key(request, principal)
    limit = _int_query(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    cursor = _cursor(request.query.get("cursor"))
    page = await uploads.store.owned(owner, before=cursor, limit=limit)
    items = []
    for upload_id, _created in page:
        try:
            state = await uploads.live(upload_id)
        except (errors.NotFound, errors.Gone):
            continue  # removed meanwhile; the sweeper takes it out of the list
        items.append(describe(request, state))
    following = None
    if len(page) == limit:
        last_id, last_at = page[-1]
        following = base64.urlsafe_b64encode(
            json.dumps([last_at, last_id]).encode()).decode("ascii")
    return web.json_response({"uploads": items, "next": following},
                             headers={"Cache-Control": "no-store"})


def describe(request: web.Request, state: UploadState) -> dict[str, object]:
    """One upload as the list shows it."""
    uploads = uploads_of(request)
    sink = state.info.sink
    progress = live_progress(uploads, state)
    return {
        "id": state.info.upload_id, "name": progress["filename"], "size": state.info.length,
        "offset": state.offset, "bytes_received": progress["bytes_received"],
        "percent": progress["percent"], "status": str(state.status),
        "created_at": state.info.created_at, "last_activity": state.last_activity,
        "sink": None if sink is None else {
            "status": str(sink.status), "ref": sink.ref, "error": sink.error,
            "will_retry": sink.will_retry},
        "rejected": sink.error if sink is not None and sink.status is UploadStatus.REJECTED
        else None,
        "links": links_of(request, state),
    }


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not low <= int(raw) <= high:
        raise errors.InvalidQuery(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _cursor(raw: str | None) -> tuple[float, str] | None:
    if raw is None:
        return None
    try:
        if len(raw) > 200:
            raise ValueError("too long")
        created_at, upload_id = json.loads(base64.urlsafe_b64decode(raw.encode("ascii")))
        if not isinstance(created_at, (int, float)) or isinstance(created_at, bool) or \
                not math.isfinite(created_at) or not isinstance(upload_id, str):
            raise ValueError("not a cursor")
        return float(created_at), checked_id(upload_id)
    except (ValueError, TypeError, UnicodeError, binascii.Error, errors.NotFound):
        raise errors.InvalidQuery("cursor is not one this gateway gave out") from None


# --- live events -------------------------------------------------------------------------------
async def upload_events(request: web.Request) -> web.StreamResponse:
    """``GET /api/upload/events/{id}``: the upload's progress, phase and sink state as
    server-sent events (``gateway.events``), from whichever instance holds it."""
    upload_id = checked_id(request.match_info["upload_id"])
    headers = headers_of(request)
    await owned(request, headers, upload_id)  # before anything is subscribed

    async def snapshot() -> dict[str, object]:
        return await status_body(request, headers, upload_id)
    return await stream_events(request, upload_id, snapshot, request.app[EVENTS])


# --- the session API ---------------------------------------------------------------------------
async def create_session(request: web.Request) -> web.Response:
    """``POST /api/upload/create-session``."""
    uploads = uploads_of(request)
    headers = headers_of(request)
    principal = await requester(request, headers)
    uploads.admit("create")
    body = await _json_object(request)
    filename = body.get("filename")
    size = body.get("fileSize")
    content_type = body.get("contentType")
    if not isinstance(filename, str) or not filename.strip() or \
            len(filename.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise errors.InvalidJson(f"filename must be a file name of 1 to {MAX_NAME_BYTES} bytes")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**63:
        raise errors.InvalidJson("fileSize must be a non-negative integer")
    media_type = None
    if content_type is not None:
        media_type = parse_media_type(content_type) if isinstance(content_type, str) else None
        if media_type is None:
            raise errors.InvalidJson("contentType must be a media type such as video/mp4")
    metadata = {"filename": filename.encode("utf-8", "surrogatepass")}
    if media_type is not None:
        metadata["filetype"] = media_type.encode("ascii")
    settings = uploads.settings
    if settings.max_size is not None and size > settings.max_size:
        raise errors.TooLarge(f"{size} bytes is above the maximum of {settings.max_size}")
    check_creation(uploads.allowed_types, metadata, size)
    await check_plan(principal, size, None, uploads)
    plan = await uploads.hooks.pre_create(decisions.CreatePlan(size, metadata, None, None),
                                          request)
    state = await uploads.create(plan.length, plan.metadata, None,
                                 creator=await creator(request, headers))
    if size == 0:
        async with uploads.locked(state.info.upload_id):
            state = await uploads.perform(state, (Finish(),))
    upload_id = state.info.upload_id
    # As the Notion sink will send it (notion_sink.windows.plan_parts): the window, grown
    # so that no file needs more than MAX_PARTS parts.
    part = max(request.app[CONFIG].notion.window_bytes, -(-size // MAX_PARTS))
    single = size <= SINGLE_PART_MAX
    links = links_of(request, state)
    answer = {
        "upload_id": upload_id, "id": upload_id, "filename": filename, "file_size": size,
        "tus_url": links["upload"], "stream_url": f"/api/upload/stream/{upload_id}",
        "status_url": links["status"], "events_url": links["events"],
        "upload_type": "single" if single else "multipart",
        "part_size": size if single else part,
        "total_parts": 1 if single else math.ceil(size / part),
    }
    return web.json_response(answer, status=201, headers={"Location": str(links["upload"])})


async def _json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise errors.InvalidJson(f"the body is larger than {MAX_JSON_BYTES} bytes")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise errors.InvalidJson(f"the body is larger than {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise errors.InvalidJson() from None
    if not isinstance(body, dict):
        raise errors.InvalidJson()
    return body


async def stream(request: web.Request) -> web.Response:
    """``POST /api/upload/stream/{id}``: the file's bytes, from byte 0 or a stated offset."""
    uploads = uploads_of(request)
    headers = headers_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await owned(request, headers, upload_id)
    start, total = _stream_start(headers)
    uploads.admit("append")
    reader = uploads.body_reader(request.content)
    async with uploads.locked(upload_id, reader):
        state = await uploads.live(upload_id)
        length = state.info.length
        if total is not None and length is not None and total != length:
            # Another file's bytes, or the wrong upload: nothing of it may land here.
            raise errors.InconsistentLength(
                f"Content-Range says the file has {total} bytes; the upload has {length}")
        if start > state.offset:
            raise errors.MismatchedOffset(
                f"the upload has {state.offset} bytes; the body must start at or before it",
                headers={"Upload-Offset": str(state.offset)},
                data={"offset": state.offset})
        if length is not None and request.content_length is not None and \
                start + request.content_length > length:
            raise errors.SizeExceeded(f"the body would take the upload past its {length} bytes")
        reader.skip = state.offset - start
        effects: tuple[Effect, ...] = (Finish(),)
        if not state.finished:
            room = None if length is None else length - state.offset
            effects = (Append(state.offset, room), Finish())
        state = await uploads.perform(state, effects, reader,
                                      before_body=lambda: send_continue(request))
    complete = state.finished
    return web.json_response({
        "status": "completed" if complete else "incomplete", "upload_id": upload_id,
        "offset": state.offset, "file_size": state.info.length,
        "bytes_uploaded": state.offset, "upload_status": str(state.status),
        "filename": live_progress(uploads, state)["filename"],
        "links": links_of(request, state)}, headers={"Cache-Control": "no-store"})


def _stream_start(headers: Headers) -> tuple[int, int | None]:
    """Where the body starts in the file (``Upload-Offset``, ``Content-Range``, else 0),
    and the file's size if Content-Range states it."""
    offset = headers.one("Upload-Offset", errors.InvalidOffset)
    if offset is not None:
        if not (offset.isascii() and offset.isdigit() and len(offset) <= 19):
            raise errors.InvalidOffset()
        return int(offset), None
    content_range = headers.one("Content-Range", errors.InvalidHeader)
    if content_range is not None:
        match = CONTENT_RANGE.fullmatch(content_range.strip(" \t"))
        if match is None:
            raise errors.InvalidHeader("Content-Range must be 'bytes <first>-<last>/<size>'")
        first, last, size = match.groups()
        total = None if size == "*" else int(size)
        # RFC 9110 section 14.4: a range whose last byte precedes its first, or lies past
        # the complete length, is invalid.
        if last != "*" and (int(last) < int(first) or (total is not None and
                                                       int(last) >= total)):
            raise errors.InvalidHeader("Content-Range's last byte must be at or after its "
                                       "first and before the file's size")
        return int(first), total
    return 0, None


async def abort(request: web.Request) -> web.Response:
    """``POST /api/upload/abort/{id}``: remove the upload."""
    uploads = uploads_of(request)
    upload_id = checked_id(request.match_info["upload_id"])
    await owned(request, headers_of(request), upload_id)
    async with uploads.locked(upload_id):
        state = await uploads.live(upload_id)
        await uploads.perform(state, (Terminate("aborted"),))
    return web.json_response({"status": "aborted", "upload_id": upload_id})


def setup_user_routes(app: web.Application) -> list[web.AbstractRoute]:
    return [
        app.router.add_get("/api/uploads", list_uploads, expect_handler=expect_continue),
        app.router.add_get("/api/upload/events/{upload_id}", upload_events,
                           expect_handler=expect_continue),
        app.router.add_post("/api/upload/create-session", create_session,
                            expect_handler=expect_continue),
        # 100 Continue only once the stream is accepted and about to be read.
        app.router.add_post("/api/upload/stream/{upload_id}", stream,
                            expect_handler=defer_continue),
        app.router.add_post("/api/upload/abort/{upload_id}", abort,
                            expect_handler=expect_continue),
    ]
