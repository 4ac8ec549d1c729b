"""Recording a finished file in Notion: a page in the user's database and one in the index.

Each file gets a random salt and the SHA-512 of the salt followed by its bytes; that salted
hash is the file's key. Page creation is not safe to repeat: after a timeout or a 5xx the
page may exist (Notion can commit and still answer 503). So each page is created at most
once per key: look the key up first, create only if it is absent, and after any failure
look again before the next try. The salt and hash are chosen once and kept by the caller,
so a retry after a crash looks for the same key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notion_sink.client import NotionClient
from notion_sink.drain import Resilient
from notion_sink.retry import Permanent, Retryable
from notion_sink.settings import NOTION_PROPERTY_ROLES

HASH_CHUNK = 256 * 1024
# Lookups and creations tried for one page before the record is given up for now.
CREATE_ROUNDS = 6


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Where records go and what their properties are called (configuration)."""

    user_database_id: str
    index_database_id: str
    title: str = "Name"
    size: str = "Size"
    hash: str = "Hash"
    salt: str = "Salt"
    created: str = "Created"
    file: str = "File"
    index_title: str = "Hash"
    index_database: str = "Database"
    index_page: str = "Page"

    def named(self, pairs: Iterable[str]) -> RecordSettings:
        """These settings with property names overridden by ``role=Name`` pairs."""
        changes: dict[str, str] = {}
        for pair in pairs:
            role, _, name = pair.partition("=")
            role = role.strip()
            if role not in NOTION_PROPERTY_ROLES:
                raise ValueError(f"unknown record property role {role!r}")
            changes[role] = name.strip()
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class FileKey:
    salt: str
    sha512: str


def new_salt() -> str:
    return secrets.token_hex(16)


def salted_sha512(path: Path, salt: str) -> str:
    """Blocking (run it in a worker thread): SHA-512 of ``salt`` then the file's bytes."""
    digest = hashlib.sha512(salt.encode())
    # One buffer, filled again and again: hashing a large file allocates nothing per read,
    # so worker threads do not leave freed chunks behind in their malloc arenas.
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [buffer]):
            digest.update(view[:n])
    finally:
        os.close(fd)
    return digest.hexdigest()


def _text(value: str) -> dict[str, Any]:
    return {"rich_text": [{"text": {"content": value[:2000]}}]}


def _title(value: str) -> dict[str, Any]:
    return {"title": [{"text": {"content": value[:2000]}}]}


def user_page(settings: RecordSettings, *, filename: str, sent_as: str, size: int,
              key: FileKey, created_at: float, remote_id: str) -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(created_at, dt.UTC).isoformat()
    return {
        settings.title: _title(filename),
        settings.size: {"number": size},
        settings.hash: _text(key.sha512),
        settings.salt: _text(key.salt),
        settings.created: {"date": {"start": created}},
        settings.file: {"files": [{"type": "file_upload", "file_upload": {"id": remote_id},
                                   "name": sent_as}]},
    }


def index_page(settings: RecordSettings, key: FileKey, page_id: str) -> dict[str, Any]:
    return {settings.index_title: _title(key.sha512),
            settings.index_database: _text(settings.user_database_id),
            settings.index_page: _text(page_id)}


class Recorder:
    def __init__(self, client: NotionClient, resilient: Resilient,
                 settings: RecordSettings) -> None:
        self.client = client
        self.resilient = resilient
        self.settings = settings

    async def record(self, *, filename: str, sent_as: str, size: int, key: FileKey,
                     created_at: float, remote_id: str, fresh: bool = False
                     ) -> tuple[str, str]:
        """Both pages, each exactly once; returns (user page id, index page id).

        ``fresh``: the key was made by the caller just now, so no page with it can exist
        yet and the first lookups are skipped (two requests of a scarce budget)."""
        settings = self.settings
        page_id = await self._once(
            settings.user_database_id, settings.hash, "rich_text", key.sha512,
            user_page(settings, filename=filename, sent_as=sent_as, size=size, key=key,
                      created_at=created_at, remote_id=remote_id), fresh)
        index_id = await self._once(settings.index_database_id, settings.index_title, "title",
                                    key.sha512, index_page(settings, key, page_id), fresh)
        return page_id, index_id

    async def _once(self, database: str, prop: str, kind: str, key: str,
                    properties: Mapping[str, Any], fresh: bool) -> str:
        client = self.client

        def lookup() -> Awaitable[list[dict[str, Any]]]:
            return client.query_equals(database, prop, key, kind)

        for round_ in range(CREATE_ROUNDS):
            found = [] if fresh and round_ == 0 else await self.resilient.run(lookup)
            if found:
                return str(found[0]["id"])
            try:
                page = await self.resilient.run(
                    lambda: client.create_page(database, properties), retry=False)
            except Retryable:
                continue  # it may have been created after all: look again first
            return str(page["id"])
        raise Permanent(f"no record in {database} after {CREATE_ROUNDS} rounds")
