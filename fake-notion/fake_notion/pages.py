"""Pages, database queries and hosted files of the fake Notion server
(docs/notion-contract.md §6-§7).

- ``POST /v1/pages`` (rule 23): the integration needs the insert-content capability (403
  ``restricted_resource``, §7.4); the parent database must exist and be shared with the
  token (404 ``object_not_found``, the same answer for both); property keys must exist (by
  name or ID); values must have the schema's type;
  ``files`` items and media children of type ``file_upload`` must refer to the caller's
  uploaded, unexpired uploads, and attaching them clears their expiry (rule 20), but only
  once the whole page is accepted.
- ``POST /v1/databases/{id}/query`` (rules 24-25): 2022-06-28 semantics; gone (400
  ``invalid_request_url``) under 2025-09-03 and later; read-content capability (else 403),
  then a database that exists and is shared (else 404), as for pages (§7.2).
- ``GET /v1/pages/{id}`` (read content) and the hosted-file URLs it hands out (rule 26),
  which serve the assembled bytes for one hour.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from fake_notion.gate import (
    COMMITTED,
    CTX,
    FAKE,
    RequestContext,
    body_object,
    cursor_index,
    iso,
    json_answer,
    json_body,
    page_size_of,
)
from fake_notion.rules import (
    PAGE_SIZE_MAX,
    SCHEMA_TYPES,
    FileRef,
    NotionError,
    Property,
    compile_filter,
    empty_value,
    normalize_id,
    not_found,
    plain_text,
    property_value,
    validation,
)
from fake_notion.state import (
    DATA_SOURCES_VERSION,
    IN_TRASH_VERSION,
    INSERT_CONTENT,
    READ_CHUNK,
    READ_CONTENT,
    FakeDatabase,
    FakeNotion,
    FakePage,
)


def _render_files(fake: FakeNotion, refs: list[FileRef],
                  ctx: RequestContext) -> list[dict[str, Any]]:
    """Rule 26: attached uploads read back as Notion-hosted files with one-hour URLs."""
    out: list[dict[str, Any]] = []
    expiry = fake.clock.now() + timedelta(hours=1)
    for ref in refs:
        if ref.upload_id is not None:
            url = (f"{ctx.base}/_fake/files/{ref.upload_id}"
                   f"?expires={int(fake.clock.monotonic() + 3600)}")
            out.append({"name": ref.name, "type": "file",
                        "file": {"url": url, "expiry_time": iso(expiry)}})
        else:
            out.append({"name": ref.name, "type": "external",
                        "external": {"url": ref.external_url}})
    return out


def _render_page(fake: FakeNotion, page: FakePage, ctx: RequestContext) -> dict[str, Any]:
    db = fake.databases[page.database_id]
    bot = {"object": "user", "id": fake.bots[page.owner]}
    props: dict[str, Any] = {}
    for prop in db.properties.values():
        value = page.values.get(prop.name, empty_value(prop.type))
        if prop.type == "files":
            value = _render_files(fake, value, ctx)
        elif prop.type in ("created_time", "last_edited_time"):
            value = iso(page.created)
        elif prop.type in ("created_by", "last_edited_by"):
            value = bot
        props[prop.name] = {"id": prop.id, "type": prop.type, prop.type: value}
    out: dict[str, Any] = {
        "object": "page", "id": page.id, "created_time": iso(page.created),
        "last_edited_time": iso(page.created), "created_by": bot, "last_edited_by": bot,
        "cover": None, "icon": None,
        "parent": ({"type": "data_source_id", "data_source_id": page.data_source_id,
                    "database_id": page.database_id}
                   if ctx.version >= DATA_SOURCES_VERSION else
                   {"type": "database_id", "database_id": page.database_id}),
        "in_trash": False, "properties": props,
        "url": f"https://www.notion.so/{page.id.replace('-', '')}", "public_url": None,
    }
    if ctx.version < IN_TRASH_VERSION:
        out["archived"] = False
    return out


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


async def create_page(request: web.Request) -> web.StreamResponse:
    """Rule 23."""
    fake, ctx = request.app[FAKE], request[CTX]
    fake.require(ctx.token, INSERT_CONTENT)
    body = body_object(await json_body(request, empty_ok=False))
    db, source_id = _page_parent(fake, ctx, body.get("parent"))
    props = body.get("properties")
    if not isinstance(props, dict):
        raise validation("body failed validation: body.properties should be defined, "
                         "instead was `undefined`.")
    lookup = fake.attachable(ctx.token)
    values: dict[str, Any] = {}
    attached: set[str] = set()
    for key, value in props.items():
        prop = db.resolve(key)
        if prop is None:
            raise validation(f"{key} is not a property that exists.")
        if prop.name in values:
            raise validation(f"{prop.name} is given more than once (by name and by ID).")
        stored = property_value(prop, f"body.properties.{key}", value, lookup)
        values[prop.name] = stored
        if prop.type == "files":
            attached.update(r.upload_id for r in stored if r.upload_id is not None)
    attached.update(_media_children(body.get("children"), lookup))
    # Rule 20: attaching happens only when the whole page is accepted.
    for upload_id in attached:
        upload = fake.uploads[upload_id]
        upload.attached = True
    now = fake.clock.now()
    page = FakePage(str(uuid.uuid4()), db.id, ctx.token, now, fake.clock.monotonic(),
                    fake.next_seq(), values, source_id)
    fake.pages[page.id] = page
    request[COMMITTED] = page.id
    return json_answer(request, _render_page(fake, page, ctx))


async def retrieve_page(request: web.Request) -> web.StreamResponse:
    fake, ctx = request.app[FAKE], request[CTX]
    fake.require(ctx.token, READ_CONTENT)
    page_id = normalize_id(request.match_info["id"], "page_id")
    page = fake.pages.get(page_id)
    if page is None:
        raise not_found("page", page_id)
    try:
        fake.visible_database(page.database_id, ctx.token)
    except NotionError:
        raise not_found("page", page_id) from None
    return json_answer(request, _render_page(fake, page, ctx))


async def query_database(request: web.Request) -> web.StreamResponse:
    """Rules 24-25 (2022-06-28 semantics)."""
    fake, ctx = request.app[FAKE], request[CTX]
    if ctx.version >= DATA_SOURCES_VERSION:
        # §7.3: the path is gone from 2025-09-03 (queries go to data sources).
        raise NotionError(400, "invalid_request_url", "Invalid request URL.")
    fake.require(ctx.token, READ_CONTENT)
    db = fake.visible_database(normalize_id(request.match_info["id"], "database_id"),
                                ctx.token)
    return await _query(request, db, fake.single_source(db), "page_or_database")


async def query_data_source(request: web.Request) -> web.StreamResponse:
    """§7.3: ``POST /v1/data_sources/{id}/query``, from 2025-09-03; same body as rule 24."""
    fake, ctx = request.app[FAKE], request[CTX]
    _needs_data_sources(ctx)
    fake.require(ctx.token, READ_CONTENT)
    source_id = normalize_id(request.match_info["id"], "data_source_id")
    db = fake.visible_source(source_id, ctx.token)
    return await _query(request, db, source_id, "page_or_data_source")


async def _query(request: web.Request, db: FakeDatabase, source_id: str,
                 kind: str) -> web.StreamResponse:
    fake, ctx = request.app[FAKE], request[CTX]
    body = body_object(await json_body(request))
    raw_size = body.get("page_size", PAGE_SIZE_MAX)
    if isinstance(raw_size, bool) or not isinstance(raw_size, int):
        raise validation("body failed validation: body.page_size should be an integer.")
    page_size = page_size_of(str(raw_size))
    match = None
    if body.get("filter") is not None:
        match = compile_filter(body["filter"], db.resolve,
                               case_sensitive=fake.config.case_sensitive_equals)
    order = _sort_key(body.get("sorts"), db)
    cursor = body.get("start_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise validation("body failed validation: body.start_cursor should be a string.")
    visible_before = fake.clock.monotonic() - fake.config.query_lag_s
    pages = [p for p in fake.pages.values() if p.data_source_id == source_id
             and (fake.config.query_lag_s <= 0 or p.created_mono <= visible_before)]
    if match is not None:
        pages = [p for p in pages if match(_getter(p))]
    pages = order(pages)
    start = cursor_index([p.id for p in pages], cursor)
    window = pages[start:start + page_size]
    more = start + page_size < len(pages)
    return json_answer(request, {
        "object": "list", "results": [_render_page(fake, p, ctx) for p in window],
        "next_cursor": pages[start + page_size].id if more else None, "has_more": more,
        "type": kind, kind: {}})


def _needs_data_sources(ctx: RequestContext) -> None:
    if ctx.version < DATA_SOURCES_VERSION:
        # The data source endpoints do not exist before 2025-09-03 (§7.3).
        raise NotionError(400, "invalid_request_url", "Invalid request URL.")


def _page_parent(fake: FakeNotion, ctx: RequestContext, parent: Any) -> tuple[FakeDatabase, str]:
    """Rule 23 and §7.3: a ``data_source_id`` parent works in every version; a
    ``database_id`` parent only while its database has one data source."""
    if not isinstance(parent, dict):
        raise validation("body failed validation: body.parent should be defined.")
    kind = parent.get("type")
    if isinstance(parent.get("data_source_id"), str) and kind in (None, "data_source_id"):
        source_id = normalize_id(parent["data_source_id"], "body.parent.data_source_id")
        return fake.visible_source(source_id, ctx.token), source_id
    if isinstance(parent.get("database_id"), str) and kind in (None, "database_id"):
        db = fake.visible_database(
            normalize_id(parent["database_id"], "body.parent.database_id"), ctx.token)
        return db, fake.single_source(db)
    raise validation("body failed validation: body.parent.database_id or "
                     "body.parent.data_source_id should be defined (the fake supports "
                     "database and data source parents only).")


def _schema(db: FakeDatabase) -> dict[str, Any]:
    return {p.name: {"id": p.id, "name": p.name, "type": p.type, p.type: {}}
            for p in db.properties.values()}


def _title_of(name: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": name, "link": None}, "plain_text": name}]


def _render_database(fake: FakeNotion, db: FakeDatabase, ctx: RequestContext) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": "database", "id": db.id, "title": _title_of(db.name), "is_inline": False,
        "parent": ({"type": "page_id", "page_id": db.parent_page} if db.parent_page
                   else {"type": "workspace", "workspace": True}),
        "in_trash": False, "url": f"https://www.notion.so/{db.id.replace('-', '')}"}
    if ctx.version >= DATA_SOURCES_VERSION:
        out["data_sources"] = [{"id": i, "name": n} for i, n in db.data_sources.items()]
    else:
        # Before data sources, the schema lives on the database (§7.3).
        fake.single_source(db)
        out["properties"] = _schema(db)
    if ctx.version < IN_TRASH_VERSION:
        out["archived"] = False
    return out


async def retrieve_database(request: web.Request) -> web.StreamResponse:
    """``GET /v1/databases/{id}``: the schema before 2025-09-03, the list of data
    sources from then on (§7.3)."""
    fake, ctx = request.app[FAKE], request[CTX]
    fake.require(ctx.token, READ_CONTENT)
    db = fake.visible_database(normalize_id(request.match_info["id"], "database_id"),
                                ctx.token)
    return json_answer(request, _render_database(fake, db, ctx))


async def retrieve_data_source(request: web.Request) -> web.StreamResponse:
    """``GET /v1/data_sources/{id}`` (from 2025-09-03): its schema and its database."""
    fake, ctx = request.app[FAKE], request[CTX]
    _needs_data_sources(ctx)
    fake.require(ctx.token, READ_CONTENT)
    source_id = normalize_id(request.match_info["id"], "data_source_id")
    db = fake.visible_source(source_id, ctx.token)
    out: dict[str, Any] = {
        "object": "data_source", "id": source_id, "title": _title_of(db.data_sources[source_id]),
        "parent": {"type": "database_id", "database_id": db.id},
        "properties": _schema(db), "in_trash": False}
    if ctx.version < IN_TRASH_VERSION:
        out["archived"] = False
    return json_answer(request, out)


async def create_database(request: web.Request) -> web.StreamResponse:
    """``POST /v1/databases`` under a page shared with the integration: the schema in
    ``properties`` before 2025-09-03, in ``initial_data_source.properties`` from then on."""
    fake, ctx = request.app[FAKE], request[CTX]
    fake.require(ctx.token, INSERT_CONTENT)
    body = body_object(await json_body(request, empty_ok=False))
    parent = body.get("parent")
    if not isinstance(parent, dict) or not isinstance(parent.get("page_id"), str):
        raise validation("body failed validation: body.parent.page_id should be defined.")
    page_id = normalize_id(parent["page_id"], "body.parent.page_id")
    if page_id not in fake.shared_pages:
        raise not_found("page", page_id)
    if ctx.version >= DATA_SOURCES_VERSION:
        if "properties" in body:
            raise validation("body failed validation: body.properties is not allowed; "
                             "use body.initial_data_source.properties.")
        initial = body.get("initial_data_source")
        props = initial.get("properties") if isinstance(initial, dict) else None
        where = "body.initial_data_source.properties"
    else:
        if "initial_data_source" in body:
            raise validation("body failed validation: body.initial_data_source is not a "
                             "known field.")
        props, where = body.get("properties"), "body.properties"
    if not isinstance(props, dict) or not props:
        raise validation(f"body failed validation: {where} should be defined.")
    schema: dict[str, str] = {}
    for name, spec in props.items():
        kinds = [k for k in spec if k in SCHEMA_TYPES] if isinstance(spec, dict) else []
        if len(kinds) != 1 or not isinstance(name, str) or not name:
            raise validation(f"body failed validation: {where}.{str(name)[:40]} should be "
                             "a property object with one type.")
        schema[name] = kinds[0]
    title = body.get("title")
    name = "".join(str(t.get("text", {}).get("content", "")) for t in title
                   if isinstance(t, dict) and isinstance(t.get("text"), dict)
                   )[:200] if isinstance(title, list) else ""
    try:
        db_id = fake.add_database(name or "Untitled", schema, shared_with=[ctx.token])
    except ValueError as exc:
        raise validation(f"body failed validation: {exc}.") from None
    db = fake.databases[db_id]
    db.parent_page = page_id
    return json_answer(request, _render_database(fake, db, ctx))


async def download_file(request: web.Request) -> web.StreamResponse:
    """Rule 26: the hosted-file URL serves the bytes until its hour is up."""
    fake = request.app[FAKE]
    upload_id = request.match_info["id"]
    upload = fake.uploads.get(upload_id)
    try:
        expires = float(request.query.get("expires", ""))
    except ValueError:
        expires = -1.0
    if upload is None or upload.status != "uploaded":
        raise web.HTTPNotFound(text="NoSuchKey")
    if fake.clock.monotonic() > expires:
        raise web.HTTPForbidden(text="Request has expired")
    parts = upload.assembled()
    response = web.StreamResponse(headers={"Content-Type": upload.content_type
                                           or "application/octet-stream"})
    response.content_length = sum(p.size for p in parts)
    await response.prepare(request)
    for part in parts:
        offset = 0
        while offset < part.size:
            chunk = await asyncio.to_thread(_read_at, part.path, offset, READ_CHUNK)
            if not chunk:
                break
            offset += len(chunk)
            await response.write(chunk)
    await response.write_eof()
    return response


def _media_children(children: Any, lookup: Callable[[str], str]) -> set[str]:
    """Media blocks among ``children`` attach uploads too (§6); other blocks pass through."""
    if children is None:
        return set()
    if not isinstance(children, list) or len(children) > 100:
        raise validation("body failed validation: body.children should be an array of at "
                         "most 100 blocks.")
    found: set[str] = set()
    for i, block in enumerate(children):
        if not isinstance(block, dict):
            raise validation(f"body failed validation: body.children[{i}] should be an "
                             "object.")
        kind = block.get("type")
        media = block.get(kind) if kind in ("file", "image", "pdf", "audio", "video") else None
        if isinstance(media, dict) and media.get("type") == "file_upload":
            ref = media.get("file_upload")
            if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
                raise validation(f"body failed validation: body.children[{i}].{kind}."
                                 "file_upload.id should be a string.")
            upload_id = normalize_id(ref["id"], f"body.children[{i}].{kind}.file_upload.id")
            lookup(upload_id)
            found.add(upload_id)
    return found


def _getter(page: FakePage) -> Callable[[Property], Any]:
    return lambda prop: page.values.get(prop.name, empty_value(prop.type))


def _sort_key(sorts: Any, db: FakeDatabase) -> Callable[[list[FakePage]], list[FakePage]]:
    """``sorts`` by created/edited time or a text/number property; default newest first."""
    if sorts is None:
        return lambda pages: sorted(pages, key=lambda p: -p.seq)
    if not isinstance(sorts, list) or len(sorts) > 100:
        raise validation("body failed validation: body.sorts should be an array.")
    keys: list[tuple[Callable[[FakePage], Any], bool]] = []
    for i, sort in enumerate(sorts):
        if not isinstance(sort, dict) or sort.get("direction") not in ("ascending",
                                                                         "descending"):
            raise validation(f"body failed validation: body.sorts[{i}] needs a `direction` "
                             "of `ascending` or `descending`.")
        reverse = sort["direction"] == "descending"
        if sort.get("timestamp") in ("created_time", "last_edited_time"):
            keys.append((lambda p: p.seq, reverse))
            continue
        prop = db.resolve(str(sort.get("property")))
        if prop is None:
            raise validation(f"Could not find sort property with name or id: "
                             f"{sort.get('property')}")
        keys.append((_value_key(prop), reverse))

    def apply(pages: list[FakePage]) -> list[FakePage]:
        ordered = sorted(pages, key=lambda p: p.seq)
        for key, reverse in reversed(keys):  # stable sorts, least significant first
            ordered.sort(key=key, reverse=reverse)
        return ordered
    return apply


def _value_key(prop: Property) -> Callable[[FakePage], Any]:
    def key(page: FakePage) -> Any:
        value = page.values.get(prop.name, empty_value(prop.type))
        if prop.type in ("title", "rich_text"):
            return (0, plain_text(value))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value)
        return (1, str(value))  # empties sort last, as in Notion
    return key


# --- the app ------------------------------------------------------------------------------------
