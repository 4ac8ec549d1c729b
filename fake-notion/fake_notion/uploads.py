"""File upload endpoints of the fake Notion server (docs/notion-contract.md §3, rules 5-22 of §12).

- create: mode, filename (<= 900 bytes, allowed extension), content type (allowed,
  matching the extension), ``number_of_parts`` 1..max for multi-part (rules 5-9);
- send: form data with a boundary and one ``file`` part, streamed to its own file on disk
  in a worker thread; part numbers and sizes; single-part size and type (rules 10-13);
- complete: every part present, total within the workspace limit (rules 16-17);
- retrieve and list (rules 21-22); ``users/me`` with the per-file limit (rule 14).

State changes happen on the event loop only after the bytes are on disk, so concurrent
sends of different parts never see each other half-done, and a resent part replaces the
earlier one atomically (the old file is removed afterwards).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import BodyPartReader, web

from fake_notion.gate import (
    CTX,
    DRAIN_SLACK,
    FAKE,
    RequestContext,
    body_object,
    cursor_index,
    drain,
    iso,
    json_answer,
    json_body,
    page_size_of,
)
from fake_notion.rules import (
    FILENAME_MAX_BYTES,
    PAGE_SIZE_MAX,
    PART_MAX,
    PART_MIN,
    PART_NUMBER_MAX,
    SINGLE_PART_MAX,
    NotionError,
    bare_mime,
    check_content_type,
    normalize_id,
    resolve_name_and_type,
    validation,
)
from fake_notion.state import IN_TRASH_VERSION, READ_CHUNK, FakeNotion, FakeUpload, StoredPart

FLUSH_BYTES = 1024 * 1024  # part bytes go to the writer thread in 1 MiB slices


def _render_upload(fake: FakeNotion, upload: FakeUpload, ctx: RequestContext, *,
                   fresh: bool = False) -> dict[str, Any]:
    expiry = upload.created + timedelta(seconds=fake.config.upload_ttl_s)
    out: dict[str, Any] = {
        "object": "file_upload", "id": upload.id,
        "created_time": iso(upload.created),
        "created_by": {"id": fake.bots[upload.owner], "type": "bot"},
        "last_edited_time": iso(upload.last_edited),
        # Rule 20: null once attached; rule 18: otherwise always created + 1 h.
        "expiry_time": None if upload.attached else iso(expiry),
        "status": upload.status, "filename": upload.filename,
        "content_type": upload.content_type, "content_length": upload.content_length,
    }
    if ctx.version >= IN_TRASH_VERSION:
        out["in_trash"] = False
    else:
        out["archived"] = False
    if upload.status == "pending":
        out["upload_url"] = f"{ctx.base}/v1/file_uploads/{upload.id}/send"
        if upload.mode == "multi_part" and (not fresh or fake.config.complete_url_at_create):
            out["complete_url"] = f"{ctx.base}/v1/file_uploads/{upload.id}/complete"
    if upload.mode == "multi_part":
        out["number_of_parts"] = {"total": upload.total_parts, "sent": len(upload.parts)}
    return out


# --- blocking helpers (worker threads only) ---------------------------------------------------
class _PartWriter:
    """Writes one received part to its own file and hashes it; every method blocks.

    The methods run in worker threads and may race when a handler is cancelled mid-write
    (the client went away): ``discard`` can then run while a ``write`` is still going.
    A lock orders them, and after ``discard`` the others do nothing, so no file is left
    behind and no handle stays open.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._lock = threading.Lock()
        self._discarded = False

    def open(self) -> None:
        with self._lock:
            if self._discarded:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Held open across several worker-thread calls, so no ``with`` block.
            self._file = open(self.path, "wb")  # noqa: SIM115

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._file is None:
                return  # discarded
            self._file.write(data)
            self._hash.update(data)
            self.size += len(data)

    def close(self) -> str:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            return self._hash.hexdigest()

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            if self._file is not None:
                self._file.close()
                self._file = None
            self.path.unlink(missing_ok=True)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


async def create_upload(request: web.Request) -> web.StreamResponse:
    """Rules 5-9."""
    fake, ctx = request.app[FAKE], request[CTX]
    body = body_object(await json_body(request))
    mode = body.get("mode", "single_part")
    if mode not in ("single_part", "multi_part", "external_url"):
        raise validation("body failed validation: body.mode should be one of "
                         "`single_part`, `multi_part`, `external_url`, instead was "
                         f"`{mode}`.")
    if mode == "external_url":
        raise validation("mode `external_url` is not supported by the fake Notion server.")
    filename = body.get("filename")
    content_type = body.get("content_type")
    if filename is not None and not isinstance(filename, str):
        raise validation("body failed validation: body.filename should be a string.")
    if content_type is not None and not isinstance(content_type, str):
        raise validation("body failed validation: body.content_type should be a string.")
    parts = body.get("number_of_parts")
    if mode == "multi_part":
        if filename is None:
            raise validation("body failed validation: body.filename should be defined "
                             "for mode `multi_part`, instead was `undefined`.")
        if isinstance(parts, bool) or not isinstance(parts, int) \
                or not 1 <= parts <= fake.config.max_parts:
            raise validation(f"body failed validation: body.number_of_parts should be an "
                             f"integer between 1 and {fake.config.max_parts}, instead was "
                             f"`{parts}`.")
    elif parts is not None:
        raise validation("body failed validation: body.number_of_parts is only allowed "
                         "with mode `multi_part`.")
    filename, content_type = resolve_name_and_type(fake.config.file_types, filename, content_type)
    now = fake.clock.now()
    upload = FakeUpload(str(uuid.uuid4()), ctx.token, mode, filename, content_type,
                        parts, now, fake.clock.monotonic() + fake.config.upload_ttl_s, now,
                        fake.next_seq())
    fake.uploads[upload.id] = upload
    return json_answer(request, _render_upload(fake, upload, ctx, fresh=True))


async def send_upload(request: web.Request) -> web.StreamResponse:
    """Rules 10-13."""
    fake, ctx = request.app[FAKE], request[CTX]
    upload_id = normalize_id(request.match_info["id"], "file_upload_id")
    upload = fake.own_upload(upload_id, ctx.token)
    _require_pending(fake, upload, "send to")
    _require_form_data(request)
    form = await _read_form(fake, request, upload)
    try:
        _require_pending(fake, upload, "send to")  # it may have expired while bytes streamed
        if upload.mode == "multi_part":
            stale = _accept_part(fake, upload, form)
        else:
            stale = _accept_single(fake, upload, form)
    except NotionError:
        await asyncio.to_thread(form.file.discard)
        raise
    upload.last_edited = fake.clock.now()
    if stale is not None:
        await asyncio.to_thread(_unlink, stale)
    return json_answer(request, _render_upload(fake, upload, ctx))


async def complete_upload(request: web.Request) -> web.StreamResponse:
    """Rules 16-17."""
    fake, ctx = request.app[FAKE], request[CTX]
    upload_id = normalize_id(request.match_info["id"], "file_upload_id")
    body = await json_body(request)
    if body != {}:
        raise validation("body failed validation: complete takes no body parameters.")
    upload = fake.own_upload(upload_id, ctx.token)
    if upload.mode != "multi_part":
        raise validation(f"File upload with ID: {upload.id} is not a multi_part upload; "
                         "only multi_part uploads are completed.")
    if upload.completed and upload.status == "uploaded" \
            and not fake.config.repeat_complete_is_error:
        return json_answer(request, _render_upload(fake, upload, ctx))
    _require_pending(fake, upload, "complete")
    assert upload.total_parts is not None
    missing = [n for n in range(1, upload.total_parts + 1) if n not in upload.parts]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        raise validation(f"Send all {upload.total_parts} parts before completing; "
                         f"missing part numbers: {shown}.")
    total = upload.content_length or 0
    if total > fake.config.workspace_limit_bytes:
        raise validation(f"The file size of {total} bytes exceeds the limit of "
                         f"{fake.config.workspace_limit_bytes} bytes.")
    upload.status = "uploaded"
    upload.completed = True
    upload.last_edited = fake.clock.now()
    return json_answer(request, _render_upload(fake, upload, ctx))


async def retrieve_upload(request: web.Request) -> web.StreamResponse:
    """Rule 21."""
    fake, ctx = request.app[FAKE], request[CTX]
    upload = fake.own_upload(normalize_id(request.match_info["id"], "file_upload_id"),
                              ctx.token)
    return json_answer(request, _render_upload(fake, upload, ctx))


async def list_uploads(request: web.Request) -> web.StreamResponse:
    """Rule 22: the caller's uploads, newest first, filtered and paginated."""
    fake, ctx = request.app[FAKE], request[CTX]
    status = request.query.get("status")
    if status is not None and status not in ("pending", "uploaded", "expired", "failed"):
        raise validation("query failed validation: status should be one of `pending`, "
                         f"`uploaded`, `expired`, `failed`, instead was `{status}`.")
    page_size = page_size_of(request.query.get("page_size", str(PAGE_SIZE_MAX)))
    mine = [u for u in fake.uploads.values() if u.owner == ctx.token]
    for upload in mine:
        fake.refresh(upload)
    mine = sorted((u for u in mine if status is None or u.status == status),
                  key=lambda u: -u.seq)
    start = cursor_index([u.id for u in mine], request.query.get("start_cursor"))
    window = mine[start:start + page_size]
    more = start + page_size < len(mine)
    return json_answer(request, {
        "object": "list",
        "results": [_render_upload(fake, u, ctx) for u in window],
        "next_cursor": mine[start + page_size].id if more else None, "has_more": more,
        "type": "file_upload", "file_upload": {}})


async def users_me(request: web.Request) -> web.StreamResponse:
    """Rule 14: where clients read the workspace's per-file limit."""
    fake, ctx = request.app[FAKE], request[CTX]
    return json_answer(request, {
        "object": "user", "id": fake.bots[ctx.token], "name": "Fake integration",
        "avatar_url": None, "type": "bot",
        "bot": {"owner": {"type": "workspace", "workspace": True},
                "workspace_name": "Fake workspace",
                "workspace_limits": {
                    "max_file_upload_size_in_bytes": fake.config.workspace_limit_bytes}}})


def _require_pending(fake: FakeNotion, upload: FakeUpload, action: str) -> None:
    """Rule 11 / rule 19: only a pending, unexpired upload takes bytes or completes."""
    fake.refresh(upload)
    if upload.status == "pending":
        return
    if upload.status == "expired":
        raise validation(f"File upload with ID: {upload.id} has expired; create a new file "
                         "upload.")
    raise validation(f"Cannot {action} a file upload with status `{upload.status}`; it must "
                     "be `pending`.")


def _require_form_data(request: web.Request) -> None:
    """Rule 10: multipart/form-data, and the boundary that makes it parseable."""
    raw = request.headers.get("Content-Type", "")
    mime, _, params = raw.partition(";")
    if bare_mime(mime) != "multipart/form-data":
        raise validation("Content-Type should be `multipart/form-data`, instead was "
                         f"`{raw[:80] or 'undefined'}`.")
    boundary = [p for p in params.split(";") if p.strip().lower().startswith("boundary=")]
    if not boundary or not boundary[0].split("=", 1)[1].strip().strip('"'):
        raise validation("Content-Type `multipart/form-data` must carry a boundary; let the "
                         "HTTP library set the header.")


@dataclass(slots=True)
class _Form:
    """A parsed send request: the stored bytes and the fields that came with them."""

    file: _PartWriter
    sha256: str
    part_number: str | None
    filename: str | None
    content_type: str | None


async def _read_form(fake: FakeNotion, request: web.Request, upload: FakeUpload) -> _Form:
    """Stream the ``file`` part to its own file (in a thread); collect the other fields."""
    limit = PART_MAX if upload.mode == "multi_part" else SINGLE_PART_MAX
    limit = min(limit, fake.config.workspace_limit_bytes)
    writer: _PartWriter | None = None
    digest = ""
    fields: dict[str, str] = {}
    meta: tuple[str | None, str | None] = (None, None)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise validation("Nested multipart bodies are not accepted.")
            if part.name == "file":
                if writer is not None:
                    raise validation("Send exactly one `file` form field.")
                writer = _PartWriter(fake.storage_dir / upload.id / f"{uuid.uuid4().hex}.part")
                await asyncio.to_thread(writer.open)
                digest = await _store_file(part, writer, limit)
                meta = (part.filename, part.headers.get("Content-Type"))
            elif part.name in ("part_number",):
                value = await part.read_chunk(64)
                await part.release()
                fields[part.name] = value.decode("utf-8", "replace")
            else:
                await part.release()  # unknown fields are ignored, as form parsers do
    except NotionError:
        if writer is not None:
            await asyncio.to_thread(writer.discard)
        await drain(request)
        raise
    except (ValueError, RuntimeError, AssertionError, OSError,
            asyncio.IncompleteReadError) as exc:
        # A malformed body, or the client hung up mid-part (run_app's default): no part.
        if writer is not None:
            await asyncio.to_thread(writer.discard)
        raise validation(f"The multipart/form-data body could not be parsed: {exc}") from None
    except asyncio.CancelledError:
        # The client hung up and the server cancels handlers (aiohttp's TestServer does):
        # still no part, and no file left behind.
        if writer is not None:
            await asyncio.shield(asyncio.to_thread(writer.discard))
        raise
    if writer is None:
        raise validation("body failed validation: the `file` form field should be defined, "
                         "instead was `undefined`.")
    return _Form(writer, digest, fields.get("part_number"), meta[0], meta[1])


async def _store_file(part: BodyPartReader, writer: _PartWriter, limit: int) -> str:
    """Copy a form part to disk in 1 MiB slices; over ``limit`` -> 400 after reading on."""
    buffer = bytearray()
    received = 0
    while chunk := await part.read_chunk(READ_CHUNK):
        received += len(chunk)
        if received > limit:
            if received > limit + DRAIN_SLACK:
                break
            continue  # keep reading so the client gets the 400, not a reset
        buffer += chunk
        if len(buffer) >= FLUSH_BYTES:
            await asyncio.to_thread(writer.write, bytes(buffer))
            buffer.clear()
    if received > limit:
        raise validation(f"The file size of at least {received} bytes exceeds the limit of "
                         f"{limit} bytes for this request.")
    if buffer:
        await asyncio.to_thread(writer.write, bytes(buffer))
    return await asyncio.to_thread(writer.close)


def _accept_part(fake: FakeNotion, upload: FakeUpload, form: _Form) -> Path | None:
    """Rule 13: validate one multi-part part and store it; returns a replaced file."""
    assert upload.total_parts is not None
    raw = form.part_number
    if raw is None:
        raise validation("body failed validation: part_number should be defined for a "
                         "multi_part upload, instead was `undefined`.")
    if not raw.isascii() or not raw.isdigit():
        raise validation(f"body failed validation: part_number should be a decimal integer "
                         f"string, instead was `{raw}`.")
    number = int(raw)
    if not 1 <= number <= min(upload.total_parts, PART_NUMBER_MAX):
        raise validation(f"body failed validation: part_number should be between 1 and "
                         f"{upload.total_parts}, instead was `{number}`.")
    size = form.file.size
    last = number == upload.total_parts
    if size > PART_MAX or (not last and size < PART_MIN):
        raise validation(f"Part {number} is {size} bytes: every part must be between "
                         f"{PART_MIN} and {PART_MAX} bytes, except the last, which can be "
                         "smaller.")
    if size == 0 and not fake.config.allow_empty_file:
        raise validation(f"Part {number} is empty.")
    if number in upload.parts and not fake.config.resend_replaces_part:
        raise validation(f"Part {number} has already been sent.")
    old = upload.parts.get(number)
    total = (upload.content_length or 0) - (old.size if old else 0) + size
    if total > fake.config.workspace_limit_bytes:
        raise validation(f"The file size of {total} bytes exceeds the limit of "
                         f"{fake.config.workspace_limit_bytes} bytes.")
    upload.parts[number] = StoredPart(form.file.path, size, form.sha256)
    fake.parts_stored[(upload.id, number)] += 1
    return old.path if old else None


def _accept_single(fake: FakeNotion, upload: FakeUpload, form: _Form) -> Path | None:
    """Rule 12: the whole file in one send, with a name and type that are allowed."""
    if form.part_number is not None and fake.config.part_number_on_single_part_is_error:
        raise validation("body failed validation: part_number is only allowed for a "
                         "multi_part upload.")
    size = form.file.size
    if size == 0 and not fake.config.allow_empty_file:
        raise validation("The file is empty.")
    types = fake.config.file_types
    sent_type = check_content_type(types, form.content_type) if form.content_type else None
    filename, content_type = upload.filename, upload.content_type
    if filename is None:
        # The name comes from the form part when create gave none (§3.2).
        if not form.filename:
            raise validation("Provide a `filename` at create or in the form data.")
        if len(form.filename.encode()) > FILENAME_MAX_BYTES:
            raise validation(f"The filename is longer than {FILENAME_MAX_BYTES} bytes.")
        filename, inferred = resolve_name_and_type(types, form.filename,
                                                   content_type or sent_type)
        content_type = content_type or inferred
    if sent_type is not None and content_type is not None and sent_type != content_type:
        raise validation(f"The content type of the file ({sent_type}) does not match the "
                         f"content type of the file upload ({content_type}).")
    content_type = content_type or sent_type
    if content_type is None:
        raise validation("The file's content type could not be determined.")
    upload.filename, upload.content_type = filename, content_type
    upload.parts[1] = StoredPart(form.file.path, size, form.sha256)
    fake.parts_stored[(upload.id, 1)] += 1
    upload.status = "uploaded"
    upload.completed = True
    return None


