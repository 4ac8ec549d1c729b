"""The Notion HTTP API, as far as the sink uses it: file uploads, pages, database queries.

Everything that can go wrong on the wire is turned into a ``SinkError`` here, at the
boundary (``retry.classify`` is the one table by HTTP status and Notion error code): callers
never see aiohttp's exceptions. Part bodies stream from the spool file in bounded reads that
run in worker threads, so a 20 MiB part never sits in memory and the event loop never blocks
on the disk.

Only the ``Notion-Version`` this client is configured with is sent. From 2025-09-03 a
database holds data sources (docs/notion-contract.md §7.3): each database is resolved once
per process to its data source (``GET /v1/databases/{id}``), pages are created under a
``data_source_id`` parent and queries go to ``POST /v1/data_sources/{id}/query``. Under
2022-06-28 the database endpoints keep their old shape (``POST /v1/databases/{id}/query``,
a ``database_id`` parent).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import payload as aiohttp_payload
from aiohttp.abc import AbstractStreamWriter

from notion_sink.retry import Permanent, Retryable, SinkError, classify
from notion_sink.settings import notion_id
from protocol.retry import parse_retry_after

DEFAULT_BASE_URL = "https://api.notion.com"
# The versions the sink speaks (docs/notion-contract.md §1); dated strings compare as text.
LEGACY_VERSION = "2022-06-28"
DATA_SOURCES_VERSION = "2025-09-03"
DEFAULT_VERSION = "2026-03-11"
# Databases resolved to their data source, remembered per process; bounded like the map of
# user databases (a token may name any database).
KNOWN_SOURCES_MAX = 10_001
READ_CHUNK = 256 * 1024

# Reads ``length`` bytes at ``start`` of a file without blocking the loop (a worker thread).
ReadRange = Callable[[Path, int, int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class ClientSettings:
    base_url: str = DEFAULT_BASE_URL
    token: str = ""
    version: str = DEFAULT_VERSION
    timeout_s: float = 60.0
    # A 20 MiB part on a slow link takes longer than a JSON call (docs/notion-contract.md §10.12).
    send_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class FileUpload:
    """The fields of a Notion File Upload object that the sink acts on."""

    id: str
    status: str
    expiry_time: str | None
    parts_sent: int | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileUpload:
        parts = data.get("number_of_parts")
        sent = parts.get("sent") if isinstance(parts, Mapping) else None
        return cls(str(data["id"]), str(data.get("status")), data.get("expiry_time"),
                   sent if isinstance(sent, int) else None, data)


class SpoolRange(aiohttp_payload.Payload):
    """``length`` bytes of a spool file from ``start``, read in worker threads as sent."""

    def __init__(self, path: Path, start: int, length: int,
                 read: ReadRange, *, filename: str,
                 content_type: str) -> None:
        super().__init__(path, content_type=content_type, filename=filename)
        self._path = path
        self._start = start
        self._length = length
        self._size = length  # aiohttp announces it as the part's length
        self._read = read

    async def _chunks(self) -> AsyncIterator[bytes]:
        done = 0
        while done < self._length:
            want = min(READ_CHUNK, self._length - done)
            chunk = await self._read(self._path, self._start + done, want)
            if len(chunk) != want:
                # The spool never shrinks below a committed offset; a short read means the
                # file changed under us, and sending less than announced would be worse.
                raise OSError(f"{self._path.name}: short read at {self._start + done}")
            done += want
            yield chunk

    async def write(self, writer: AbstractStreamWriter) -> None:
        async for chunk in self._chunks():
            await writer.write(chunk)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a spool range is binary and is streamed, never decoded")


def read_range(path: Path, start: int, length: int) -> bytes:
    """Blocking: ``length`` bytes of ``path`` from ``start`` (for a worker thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, start)
    finally:
        os.close(fd)


class NotionClient:
    def __init__(self, session: aiohttp.ClientSession, settings: ClientSettings,
                 read: ReadRange, *, data_sources: Mapping[str, str] | None = None) -> None:
        """``data_sources``: the data source chosen for a database that has several
        ({database id: data source id}, both dashed)."""
        self._session = session
        self._settings = settings
        self._read = read
        self._base = settings.base_url.rstrip("/")
        self._chosen = dict(data_sources or {})
        self._sources: dict[str, str] = {}  # database -> its data source, oldest first

    @property
    def version(self) -> str:
        return self._settings.version

    @property
    def uses_data_sources(self) -> bool:
        return self._settings.version >= DATA_SOURCES_VERSION

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._settings.token}",
                "Notion-Version": self._settings.version}

    async def _call(self, method: str, path: str, *, json_body: Any = None,
                    data: Any = None, timeout_s: float | None = None) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._settings.timeout_s)
        headers = self._headers()
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        with mapped_errors():
            async with self._session.request(method, self._base + path, data=data,
                                             headers=headers, timeout=timeout) as response:
                body = await response.read()
                if response.status >= 400:
                    raise _http_error(response.status, response.headers, body)
        try:
            parsed = json.loads(body)
        except ValueError as exc:
            raise Retryable(f"{method} {path}: the answer is not JSON",
                            status=response.status) from exc
        if not isinstance(parsed, dict):
            raise Retryable(f"{method} {path}: the answer is not an object",
                            status=response.status)
        return parsed

    # --- file uploads ------------------------------------------------------------------------
    async def create_upload(self, *, filename: str, content_type: str,
                            number_of_parts: int | None) -> FileUpload:
        body: dict[str, Any] = {"filename": filename, "content_type": content_type}
        if number_of_parts is None:
            body["mode"] = "single_part"
        else:
            body.update(mode="multi_part", number_of_parts=number_of_parts)
        return FileUpload.from_json(await self._call("POST", "/v1/file_uploads",
                                                     json_body=body))

    async def send_part(self, upload_id: str, path: Path, start: int, length: int, *,
                        part_number: int | None, filename: str,
                        content_type: str) -> FileUpload:
        form = aiohttp.MultipartWriter("form-data")
        if part_number is not None:
            number = form.append(str(part_number))
            number.set_content_disposition("form-data", name="part_number")
        part = SpoolRange(path, start, length, self._read, filename=filename,
                          content_type=content_type)
        form.append_payload(part)
        part.set_content_disposition("form-data", name="file", filename=filename)
        return FileUpload.from_json(await self._call(
            "POST", f"/v1/file_uploads/{upload_id}/send", data=form,
            timeout_s=self._settings.send_timeout_s))

    async def complete(self, upload_id: str) -> FileUpload:
        return FileUpload.from_json(await self._call(
            "POST", f"/v1/file_uploads/{upload_id}/complete", json_body={}))

    async def retrieve(self, upload_id: str) -> FileUpload:
        return FileUpload.from_json(await self._call("GET", f"/v1/file_uploads/{upload_id}"))

    # --- the workspace -----------------------------------------------------------------------
    async def me(self) -> dict[str, Any]:
        """The integration's bot user (``GET /v1/users/me``)."""
        return await self._call("GET", "/v1/users/me")

    async def upload_limit(self) -> int | None:
        """The workspace's largest file upload in bytes
        (``bot.workspace_limits.max_file_upload_size_in_bytes``, docs/notion-contract.md
        §3.6), or None when the answer does not say."""
        return upload_limit_of(await self.me())

    # --- pages, databases and data sources ---------------------------------------------------
    async def retrieve_database(self, database_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/databases/{database_id}")

    async def retrieve_data_source(self, data_source_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/data_sources/{data_source_id}")

    async def data_source(self, database_id: str) -> str:
        """The data source the sink uses in ``database_id``: its only one, or the one the
        configuration chose; asked once per database and process. A database with several
        and none chosen, or a choice that is not among them, is refused (``Permanent``,
        400) with the ids to choose from."""
        key = notion_id(database_id) or database_id
        known = self._sources.get(key)
        if known is not None:
            return known
        answer = await self.retrieve_database(database_id)
        found = [s["id"] for s in answer.get("data_sources") or ()
                 if isinstance(s, dict) and isinstance(s.get("id"), str)]
        # Only ids of Notion's shape ever go into a request path.
        sources = [source for s in found if (source := notion_id(s)) is not None]
        chosen = self._chosen.get(key)
        if chosen is not None and chosen not in sources:
            raise Permanent(f"the data source {chosen} chosen for the Notion database {key} "
                            f"(notion_data_sources) is not one of its data sources: "
                            f"{', '.join(sources) or 'none'}", status=400,
                            code="validation_error")
        if chosen is None and len(sources) != 1:
            raise Permanent(
                f"the Notion database {key} has {len(sources)} data sources"
                + (f" ({', '.join(sources)}) and none is chosen: add {key}=<data source id> "
                   "to notion_data_sources" if sources else
                   " the integration can see"), status=400,
                code="multiple_data_sources_for_database" if sources else "validation_error")
        source = chosen or sources[0]
        if len(self._sources) >= KNOWN_SOURCES_MAX:
            del self._sources[next(iter(self._sources))]
        self._sources[key] = source
        return source

    async def create_database(self, parent_page: str, title: str,
                              schema: Mapping[str, str]) -> dict[str, Any]:
        """A database under ``parent_page`` with ``schema`` (property name -> type): its
        properties go in ``initial_data_source`` from 2025-09-03 (§7.3), at the top before."""
        properties: dict[str, Any] = {name: {kind: {}} for name, kind in schema.items()}
        body: dict[str, Any] = {"parent": {"type": "page_id", "page_id": parent_page},
                                "title": [{"type": "text", "text": {"content": title}}]}
        if self.uses_data_sources:
            body["initial_data_source"] = {"properties": properties}
        else:
            body["properties"] = properties
        return await self._call("POST", "/v1/databases", json_body=body)

    async def _query_path(self, database_id: str) -> str:
        if self.uses_data_sources:
            return f"/v1/data_sources/{await self.data_source(database_id)}/query"
        return f"/v1/databases/{database_id}/query"

    async def create_page(self, database_id: str,
                          properties: Mapping[str, Any]) -> dict[str, Any]:
        parent: dict[str, str] = {"database_id": database_id}
        if self.uses_data_sources:
            # A database_id parent works only while the database has one data source.
            parent = {"type": "data_source_id",
                      "data_source_id": await self.data_source(database_id)}
        return await self._call("POST", "/v1/pages", json_body={
            "parent": parent, "properties": properties})

    async def probe_database(self, database_id: str, prop: str, kind: str = "rich_text"
                             ) -> None:
        """One query of at most one page that fails unless the database exists, is shared
        with the integration, may be read and has ``prop`` of type ``kind``
        (docs/notion-contract.md §7.2: 404, 403, or 400 for an unknown property)."""
        await self._call("POST", await self._query_path(database_id), json_body={
            "filter": {"property": prop, kind: {"is_empty": True}}, "page_size": 1})

    async def query_equals(self, database_id: str, prop: str, value: str,
                           kind: str = "rich_text") -> list[dict[str, Any]]:
        """Pages whose ``prop`` (rich_text or title) is exactly ``value``; every page."""
        pages: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            body: dict[str, Any] = {"filter": {"property": prop, kind: {"equals": value}},
                                    "page_size": 100}
            if cursor:
                body["start_cursor"] = cursor
            answer = await self._call("POST", await self._query_path(database_id),
                                      json_body=body)
            pages.extend(r for r in answer.get("results", []) if isinstance(r, dict))
            cursor = answer.get("next_cursor")
            if not answer.get("has_more") or not cursor:
                return pages


def upload_limit_of(me: Mapping[str, Any]) -> int | None:
    """``bot.workspace_limits.max_file_upload_size_in_bytes`` of a bot user, if it is a
    positive integer."""
    bot = me.get("bot")
    limits = bot.get("workspace_limits") if isinstance(bot, Mapping) else None
    value = (limits.get("max_file_upload_size_in_bytes")
             if isinstance(limits, Mapping) else None)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """aiohttp's transport failures become retryable sink errors."""
    try:
        yield
    except SinkError:
        raise
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise Retryable(f"{type(exc).__name__}: {exc}") from exc


def _http_error(status: int, headers: Mapping[str, str], body: bytes) -> SinkError:
    code: str | None = None
    reason: str | None = None
    message = body[:300].decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = data.get("code") if isinstance(data.get("code"), str) else None
        message = str(data.get("message", message))
        extra = data.get("additional_data")
        if isinstance(extra, dict) and isinstance(extra.get("rate_limit_reason"), str):
            reason = extra["rate_limit_reason"][:80]
        if isinstance(extra, dict) and "Retry-After" not in headers:
            # The body repeats Retry-After as whole seconds (§9): a proxy that drops the
            # header does not make the sink retry sooner than Notion asked.
            repeated = extra.get("retry_after")
            if isinstance(repeated, str) and repeated.isdigit() and len(repeated) <= 6:
                headers = {**headers, "Retry-After": repeated}
    # Whole seconds by the contract (docs/notion-contract.md §9); the one parser of the
    # project also takes an HTTP date, and ignores anything else.
    raw = headers.get("Retry-After")
    retry_after = None if raw is None else parse_retry_after(raw, time.time())
    error = classify(status, code, retry_after, reason)
    error.args = (f"{status} {code or ''}: {message}".strip(),)
    return error
