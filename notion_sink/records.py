"""Recording a finished file in Notion: a page in the user's database and one in the index.

Each file gets a random salt and the SHA-512 of the salt followed by its bytes; that salted
hash is the file's key. Page creation is not safe to repeat: after a timeout or a 5xx the
page may exist (Notion can commit and still answer 503). So each page is created at most
once per key: look the key up first, create only if it is absent, and after any failure
look again before the next try. The salt and hash are chosen once and kept by the caller,
so a retry after a crash looks for the same key.

Each file's page goes to its user database (``UserDatabases.choose``): the one the creator's
credentials named, else the creator's entry in ``notion_user_databases``, else the default.
The caller keeps the choice with the salt and hash, so a retry after a crash looks in, and
creates in, the database it chose the first time, whatever the configuration says by then;
the lookup and the creation of a page always name the same database. The index has one page
per file, naming that database and the page in it.

A database named by credentials is checked for the shape of a Notion id before it goes into
any request (it ends up in a URL path). A database that Notion does not know or does not let
the integration use (404 ``object_not_found``, 403 ``restricted_resource``: docs/notion-contract.md
§8) fails the record for good (``DatabaseUnavailable``) instead of being tried again and again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from notion_sink.client import NotionClient
from notion_sink.drain import Resilient
from notion_sink.retry import Permanent, Retryable, SinkError
from notion_sink.settings import NOTION_PROPERTY_ROLES, notion_id, parse_user_databases

HASH_CHUNK = 256 * 1024
# Databases found usable, remembered per process so that each costs one probe request, not
# one per file; bounded like the map of user databases (a token may name any database).
KNOWN_DATABASES_MAX = 10_001
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


def index_page(settings: RecordSettings, key: FileKey, page_id: str,
               database: str | None = None) -> dict[str, Any]:
    """The index page of a file: its key, and the user database and page it is recorded in
    (``database`` None: the default user database)."""
    return {settings.index_title: _title(key.sha512),
            settings.index_database: _text(database or settings.user_database_id),
            settings.index_page: _text(page_id)}


class RecordRefused(Permanent):
    """Notion refused a record in ``database`` for good (its message says why)."""

    def __init__(self, database: str, cause: SinkError, why: str = "refused the record") -> None:
        super().__init__(f"the Notion database {database} {why}: {cause}",
                         status=cause.status, code=cause.code)
        self.database = database


class DatabaseUnavailable(RecordRefused):
    """Notion does not know a database, or does not let the integration use it."""

    def __init__(self, database: str, cause: SinkError) -> None:
        super().__init__(database, cause,
                         "does not exist or is not shared with the integration"
                         if cause.status == 404 else
                         "refuses the integration (a capability it lacks)")


@dataclass(frozen=True, slots=True)
class DatabaseChoice:
    """The user database of one upload and why: ``credentials`` (the creator's token or
    forward-auth answer named it), ``subject`` (the creator's entry in the map) or
    ``default``."""

    database: str
    source: str

    def describe(self, subject: str | None) -> str:
        if self.source == "credentials":
            return "named by the creator's credentials"
        if self.source == "subject":
            return f"mapped to subject {subject!r}"
        return "the default"


class UserDatabases:
    """Which user database an upload's page goes to (configuration plus the upload's own
    facts; pure)."""

    def __init__(self, default: str, mapping: Iterable[str] = ()) -> None:
        self.default = default
        # Validated at start (``NotionSettings.problems``); ids in Notion's dashed form.
        self.by_subject = parse_user_databases(mapping)

    def choose(self, subject: str | None, named: str | None) -> DatabaseChoice:
        """The database for an upload created by ``subject`` whose credentials named
        ``named``. A named id that is not a Notion id is refused (``Permanent``) before it
        reaches any request."""
        if named is not None:
            database = notion_id(named)
            if database is None:
                # The value is hostile: shown short and quoted, so it cannot forge a log line.
                raise Permanent(f"the user database named by the creator's credentials is "
                                f"not a Notion database id: {named[:40]!r}")
            return DatabaseChoice(database, "credentials")
        if subject is not None and subject in self.by_subject:
            return DatabaseChoice(self.by_subject[subject], "subject")
        # As configured (not reshaped): the index keeps naming it as it always has.
        return DatabaseChoice(self.default, "default")


class Recorder:
    def __init__(self, client: NotionClient, resilient: Resilient,
                 settings: RecordSettings) -> None:
        self.client = client
        self.resilient = resilient
        self.settings = settings
        self._usable: dict[str, None] = {}  # databases probed here, oldest first
        self._probing: dict[str, asyncio.Lock] = {}  # one probe at a time per database

    async def check(self, database: str) -> None:
        """Make sure the user database ``database`` exists, is shared with the integration
        and has the key property, before a file is sent for it: one query per database and
        process (``DatabaseUnavailable``, or ``RecordRefused`` for a schema without the
        key). Files for the same database wait for one probe rather than each sending
        their own."""
        if database in self._usable:
            return
        lock = self._probing.setdefault(database, asyncio.Lock())
        try:
            async with lock:
                if database not in self._usable:
                    await self._probe(database)
        finally:
            if not lock.locked() and self._probing.get(database) is lock:
                # (A file still waiting on it finds the database known, or probes again.)
                del self._probing[database]

    async def _probe(self, database: str) -> None:
        settings, client = self.settings, self.client
        try:
            await self.resilient.run(
                lambda: client.probe_database(database, settings.hash, "rich_text"))
        except Permanent as exc:
            _refused(database, exc, "cannot hold the records")
        if len(self._usable) >= KNOWN_DATABASES_MAX:
            del self._usable[next(iter(self._usable))]
        self._usable[database] = None

    async def record(self, *, filename: str, sent_as: str, size: int, key: FileKey,
                     created_at: float, remote_id: str, fresh: bool = False,
                     database: str | None = None) -> tuple[str, str]:
        """Both pages, each exactly once; returns (user page id, index page id).

        ``database``: the user database the file's page goes to (None: the default); the
        caller chose it once and passes the same one on every retry. ``fresh``: the key was
        made by the caller just now, so no page with it can exist yet and the first
        lookups are skipped (two requests of a scarce budget)."""
        settings = self.settings
        database = database or settings.user_database_id
        page_id = await self._once(
            database, settings.hash, "rich_text", key.sha512,
            user_page(settings, filename=filename, sent_as=sent_as, size=size, key=key,
                      created_at=created_at, remote_id=remote_id), fresh)
        index_id = await self._once(settings.index_database_id, settings.index_title, "title",
                                    key.sha512, index_page(settings, key, page_id, database),
                                    fresh)
        return page_id, index_id

    async def _once(self, database: str, prop: str, kind: str, key: str,
                    properties: Mapping[str, Any], fresh: bool) -> str:
        """The page with ``key`` in ``database``: found, or created there. The lookup and
        the creation name the same database, so a page is never made twice."""
        client = self.client

        def lookup() -> Awaitable[list[dict[str, Any]]]:
            return client.query_equals(database, prop, key, kind)

        for round_ in range(CREATE_ROUNDS):
            try:
                found = [] if fresh and round_ == 0 else await self.resilient.run(lookup)
            except Permanent as exc:
                # Unshared or deleted since it was chosen, or no such property: no retry
                # will change that.
                _refused(database, exc)
            if found:
                return str(found[0]["id"])
            try:
                page = await self.resilient.run(
                    lambda: client.create_page(database, properties), retry=False)
            except Retryable:
                continue  # it may have been created after all: look again first
            except Permanent as exc:
                # Notion's message says what it refused (the database, a property, the
                # attached file); it is kept whole.
                _refused(database, exc)
            return str(page["id"])
        raise Permanent(f"no record in {database} after {CREATE_ROUNDS} rounds")


def _refused(database: str, error: Permanent, why: str = "refused the record") -> NoReturn:
    """Raise ``error``, naming ``database`` when it concerns it: 404 and 403 say that Notion
    does not know the database or lets the integration do nothing there, a 400 that a
    request in it does not fit its schema (docs/notion-contract.md §8). Other refusals (a bad
    token, a blocked integration) are not the database's doing and stay as they are."""
    if error.status in (403, 404):
        raise DatabaseUnavailable(database, error) from error
    if error.status == 400:
        raise RecordRefused(database, error, why) from error
    raise error
