"""What the fake Notion server remembers, and the hooks tests use to look at it.

:class:`FakeNotion` holds the tokens, databases, pages and file uploads of one fake
workspace, plus the clock, the rate limiter, the fault plan and the request log that the
HTTP layer (``fake_notion.gate``) consults on every request. :class:`FakeConfig` holds
the limits and the switches for behaviour the contract leaves UNCONFIRMED; the defaults are
the strict reading. Part bytes live in one file per part under ``storage_dir``; reading them
back (:meth:`FakeNotion.uploaded_sha256`) happens in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from fake_notion.faults import FakeClock, FaultPlan, RateLimiter, RequestRecord, peak_burst
from fake_notion.filetypes import FileTypes
from fake_notion.rules import (
    FREE_WORKSPACE_LIMIT,
    MAX_PARTS,
    PAID_WORKSPACE_LIMIT,
    SCHEMA_TYPES,
    UPLOAD_TTL_S,
    NotionError,
    Property,
    normalize_id,
    not_found,
    plain_text,
    restricted,
    validation,
)

DEFAULT_VERSION = "2022-06-28"
LATEST_VERSION = "2026-03-11"
# Every version the real API answered with in July 2026 that has the File Upload API (§1).
KNOWN_VERSIONS = frozenset({DEFAULT_VERSION, "2025-09-03", LATEST_VERSION})
# The workspace limit by plan (§4): free 5 MiB, paid 5 GiB.
PLANS = {"free": FREE_WORKSPACE_LIMIT, "paid": PAID_WORKSPACE_LIMIT}
# An integration's content capabilities (docs/notion-contract.md §7.4); a new token has all.
READ_CONTENT, UPDATE_CONTENT, INSERT_CONTENT = "read_content", "update_content", "insert_content"
CAPABILITIES = frozenset({READ_CONTENT, UPDATE_CONTENT, INSERT_CONTENT})
# From 2025-09-03 the query path moved to data sources (docs/notion-contract.md §7.3);
# versions before it keep ``/v1/databases/{id}/query``. Dated strings compare correctly as text.
DATA_SOURCES_VERSION = "2025-09-03"
IN_TRASH_VERSION = "2026-03-11"  # ``archived`` becomes ``in_trash`` (§1)
READ_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class FakeConfig:
    """Limits and switches. The defaults are the strict reading of the contract."""

    # Rule 2: the versions the fake accepts; each answers as that version does (§1, §7.3).
    accepted_versions: frozenset[str] = KNOWN_VERSIONS
    # The code for a well-formed but unaccepted version is UNCONFIRMED (§11).
    bad_version_code: str = "validation_error"
    # Rule 27 / §9: "an average of three requests per second"; ``rate_per_s <= 0`` is off.
    rate_per_s: float = 3.0
    # "Some bursts beyond the average rate are allowed": a small bucket, the strict side.
    burst: int = 5
    # Rule 6: 1,000 parts (older reference); the newest OpenAPI says 10,000.
    max_parts: int = MAX_PARTS
    # Rule 14: a paid workspace by default, since free ones cannot use multi-part at all.
    workspace_limit_bytes: int = PAID_WORKSPACE_LIMIT
    file_types: FileTypes = field(default_factory=FileTypes)
    upload_ttl_s: float = UPLOAD_TTL_S
    # Rule 9: the docs say ``complete_url`` is there while pending; OBS saw none at create.
    complete_url_at_create: bool = True
    # Rule 13: a resent part number replaces the earlier bytes; False makes it a 400.
    resend_replaces_part: bool = True
    # Rule 16: complete twice -> 400; False answers the uploaded object again.
    repeat_complete_is_error: bool = True
    # §11: ``part_number`` on a single-part send is UNCONFIRMED; strict refuses it.
    part_number_on_single_part_is_error: bool = True
    # §4: whether a 0-byte file or final part is accepted is unknown; strict refuses it.
    allow_empty_file: bool = False
    # Rule 25: ``equals`` on rich text compares exactly; False folds case.
    case_sensitive_equals: bool = True
    # §7.2: read-after-write of queries is not promised; pages younger than this many
    # seconds stay out of query results (0 = visible at once).
    query_lag_s: float = 0.0


@dataclass(slots=True)
class StoredPart:
    path: Path
    size: int
    sha256: str


@dataclass(slots=True)
class FakeUpload:
    """One file upload as the fake keeps it (§2)."""

    id: str
    owner: str
    mode: str
    filename: str | None
    content_type: str | None
    total_parts: int | None
    created: datetime
    expires_at: float  # on the fake clock's monotonic scale
    last_edited: datetime
    seq: int
    status: str = "pending"
    attached: bool = False
    completed: bool = False
    parts: dict[int, StoredPart] = field(default_factory=dict)

    @property
    def content_length(self) -> int | None:
        if not self.parts:
            return None
        return sum(p.size for p in self.parts.values())

    def assembled(self) -> list[StoredPart]:
        """The bytes in part order (only meaningful once uploaded)."""
        return [self.parts[n] for n in sorted(self.parts)]


@dataclass(slots=True)
class FakeDatabase:
    id: str
    name: str
    properties: dict[str, Property]  # by name
    shared_with: frozenset[str] | None  # None: every token; changed by ``share_database``
    # Its data sources (§7.3), id -> name, the first made with it; they share its schema.
    data_sources: dict[str, str] = field(default_factory=dict)
    parent_page: str | None = None

    def resolve(self, key: str) -> Property | None:
        """Property keys may be names or IDs (rule 23)."""
        if key in self.properties:
            return self.properties[key]
        return next((p for p in self.properties.values() if p.id == key), None)


@dataclass(slots=True)
class FakePage:
    id: str
    database_id: str
    owner: str
    created: datetime
    created_mono: float
    seq: int
    values: dict[str, Any]  # property name -> stored value (see rules.property_value)
    data_source_id: str = ""


class FakeNotion:
    """The state of one fake Notion workspace, and the hooks tests use to inspect it."""

    def __init__(self, storage_dir: Path, *, config: FakeConfig | None = None,
                 token: str | None = None, seed: int = 0,
                 clock: FakeClock | None = None) -> None:
        # Part bytes live in files under ``storage_dir`` (created lazily, in a thread).
        self.storage_dir = storage_dir
        self.config = config or FakeConfig()
        self.clock = clock or FakeClock()
        self.faults = FaultPlan(seed)
        self.limiter = RateLimiter(self.config.rate_per_s, self.config.burst)
        self.log: list[RequestRecord] = []
        # How often each (upload id, part number) was stored: a resent part counts again,
        # so tests can prove that a resumed drain sent nothing twice.
        self.parts_stored: Counter[tuple[str, int]] = Counter()
        self.uploads: dict[str, FakeUpload] = {}
        self.databases: dict[str, FakeDatabase] = {}
        self.sources: dict[str, str] = {}  # data source id -> its database id
        self.shared_pages: set[str] = set()  # pages a database may be created under
        self.pages: dict[str, FakePage] = {}
        self.bots: dict[str, str] = {}  # token -> bot user id
        self.capabilities: dict[str, frozenset[str]] = {}  # token -> its content capabilities
        self.blocked: set[str] = set()
        self._seq = 0
        self.default_token = self.add_token(token)

    # --- harness API ------------------------------------------------------------------------
    def add_token(self, token: str | None = None, *,
                  capabilities: Iterable[str] = CAPABILITIES) -> str:
        """Register an integration token (each has its own bot user and rate budget) with
        its content ``capabilities`` (§7.4: all three by default)."""
        token = token or f"ntn_fake_{uuid.uuid4().hex}"
        self.bots.setdefault(token, str(uuid.uuid4()))
        self.set_capabilities(token, capabilities)
        return token

    def set_capabilities(self, token: str, capabilities: Iterable[str]) -> None:
        """What the integration ``token`` may do with content (§7.4): ``read_content``
        (queries, reading pages), ``insert_content`` (creating pages), ``update_content``.
        An endpoint that needs one it lacks answers 403 ``restricted_resource``."""
        wanted = frozenset(capabilities)
        if not wanted <= CAPABILITIES:
            raise ValueError(f"unknown capabilities {sorted(wanted - CAPABILITIES)} (known: "
                             f"{', '.join(sorted(CAPABILITIES))})")
        self.capabilities[token] = wanted

    def block_token(self, token: str) -> None:
        """Rule 27: answer 429 ``public_api_request_blocked`` (never to be retried)."""
        self.blocked.add(token)

    def set_rate(self, rate_per_s: float, burst: int) -> None:
        """Change the limit on a running fake (buckets start full again)."""
        self.config = replace(self.config, rate_per_s=rate_per_s, burst=burst)
        self.limiter = RateLimiter(rate_per_s, burst)

    def add_database(self, name: str, schema: Mapping[str, str], *,
                     shared_with: Iterable[str] | None = None,
                     database_id: str | None = None) -> str:
        """A database with ``schema`` (property name -> type); exactly one ``title``.

        Call it once per database a test needs (one per user, say); each gets its own id
        (``database_id``: this one, dashed or not, when a test must know it in advance).
        ``shared_with``: the tokens it is shared with (None: every token; ``[]``: none, so
        it exists but every request for it is 404, as for a database nobody shared)."""
        unknown = {t for t in schema.values() if t not in SCHEMA_TYPES}
        if unknown:
            raise ValueError(f"unknown property types {sorted(unknown)}")
        if sum(t == "title" for t in schema.values()) != 1:
            raise ValueError("a Notion database has exactly one title property")
        props = {}
        for i, (prop_name, kind) in enumerate(schema.items()):
            # Notion's property IDs are short opaque strings; the title's is always "title".
            pid = "title" if kind == "title" else f"p{i:03d}"
            props[prop_name] = Property(pid, prop_name, kind)
        db_id = str(uuid.uuid4()) if database_id is None else normalize_id(database_id,
                                                                             "database_id")
        if db_id in self.databases:
            raise ValueError(f"database {db_id} exists already")
        self.databases[db_id] = FakeDatabase(
            db_id, name, props, None if shared_with is None else frozenset(shared_with))
        self.add_data_source(db_id, name)
        return db_id

    def add_data_source(self, database_id: str, name: str = "Another source") -> str:
        """One more data source in a database (§7.3), with the database's schema; from the
        second on, a ``database_id`` parent or query no longer works in any version."""
        db = self.databases[normalize_id(database_id, "database_id")]
        source_id = str(uuid.uuid4())
        db.data_sources[source_id] = name
        self.sources[source_id] = db.id
        return source_id

    def primary_source(self, db: FakeDatabase) -> str:
        return next(iter(db.data_sources))

    def share_database(self, database_id: str, shared_with: Iterable[str] | None) -> None:
        """Share a database with these tokens only (None: every token; ``[]``: nobody), as
        a user does by adding or removing the integration's connection."""
        db = self.databases[normalize_id(database_id, "database_id")]
        db.shared_with = None if shared_with is None else frozenset(shared_with)

    def upload(self, upload_id: str) -> FakeUpload:
        """The live state of an upload (expiry applied), for assertions."""
        upload = self.uploads[normalize_id(upload_id, "file_upload_id")]
        self.refresh(upload)
        return upload

    def pages_in(self, database_id: str) -> list[FakePage]:
        """Every page of a database, oldest first (what really exists, whatever the
        faults made the answers say)."""
        db_id = normalize_id(database_id, "database_id")
        return sorted((p for p in self.pages.values() if p.database_id == db_id),
                      key=lambda p: p.seq)

    def page_text(self, page_id: str, prop: str) -> str:
        """The plain text of a title or rich_text property of a page."""
        page = self.pages[normalize_id(page_id, "page_id")]
        return plain_text(page.values.get(prop, []))

    async def uploaded_bytes(self, upload_id: str) -> bytes:
        """All bytes of an uploaded file, in part order (read in a thread)."""
        parts = self._parts_for_reading(upload_id)
        return await asyncio.to_thread(_read_parts, [p.path for p in parts])

    async def uploaded_sha256(self, upload_id: str) -> str:
        """SHA-256 (hex) of the uploaded file, streamed from the part files in a thread."""
        parts = self._parts_for_reading(upload_id)
        return await asyncio.to_thread(_hash_parts, [p.path for p in parts])

    def count(self, endpoint: str | None = None, status: int | None = None) -> int:
        return sum(1 for r in self.log
                   if (endpoint is None or r.endpoint == endpoint)
                   and (status is None or r.status == status))

    def counts_by_endpoint(self) -> Counter[str]:
        return Counter(r.endpoint for r in self.log)

    def counts_by_status(self) -> Counter[int]:
        return Counter(r.status for r in self.log)

    def peak_burst(self, token: str | None = None, rate: float | None = None) -> float:
        """Worst burst the log shows for ``token`` against ``rate`` (see ``peak_burst``).

        ``fake.peak_burst() <= fake.config.burst`` says no window ever held more requests
        than the rate plus the burst allows.
        """
        token = token or self.default_token
        return peak_burst((r for r in self.log if r.token == token),
                          self.config.rate_per_s if rate is None else rate)

    # --- internals ----------------------------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _parts_for_reading(self, upload_id: str) -> list[StoredPart]:
        upload = self.uploads[normalize_id(upload_id, "file_upload_id")]
        if upload.mode == "multi_part" and not upload.completed:
            raise ValueError(f"upload {upload.id} is {upload.status}: no assembled bytes yet")
        return upload.assembled()

    def refresh(self, upload: FakeUpload) -> None:
        """Rule 19: an unattached upload past its expiry is ``expired``, for good."""
        if (not upload.attached and upload.status in ("pending", "uploaded")
                and self.clock.monotonic() >= upload.expires_at):
            upload.status = "expired"

    def own_upload(self, upload_id: str, token: str) -> FakeUpload:
        """Rule 11: an unknown upload, or another integration's, is 404."""
        upload = self.uploads.get(upload_id)
        if upload is None or upload.owner != token:
            raise not_found("file_upload", upload_id)
        self.refresh(upload)
        return upload

    def require(self, token: str, capability: str) -> None:
        """§7.4: an endpoint that needs a capability the integration lacks is 403, whatever
        the object (checked before the object is looked up)."""
        if capability not in self.capabilities.get(token, CAPABILITIES):
            raise restricted()

    def visible_database(self, db_id: str, token: str) -> FakeDatabase:
        """Rule 23: a database that does not exist, or is not shared with ``token``, is
        404 ``object_not_found``, the same answer for both (§8)."""
        db = self.databases.get(db_id)
        if db is None or (db.shared_with is not None and token not in db.shared_with):
            raise not_found("database", db_id)
        return db

    def visible_source(self, source_id: str, token: str) -> FakeDatabase:
        """§7.3: the database of a data source the token may see; else 404 naming the
        data source (also for a database id given where a data source id belongs)."""
        db_id = self.sources.get(source_id)
        db = None if db_id is None else self.databases.get(db_id)
        if db is None or (db.shared_with is not None and token not in db.shared_with):
            raise not_found("data_source", source_id)
        return db

    def single_source(self, db: FakeDatabase) -> str:
        """The one data source of ``db`` for a request that names the database: one with
        several refuses it in every version (§7.3)."""
        if len(db.data_sources) != 1:
            raise NotionError(
                400, "validation_error",
                f"Database {db.id} has multiple data sources; use a data source ID instead.",
                additional_data={"error_type": "multiple_data_sources_for_database",
                                 "minimum_api_version": DATA_SOURCES_VERSION})
        return self.primary_source(db)

    def add_parent_page(self, page_id: str | None = None) -> str:
        """A page shared with the integration, under which databases may be created."""
        pid = str(uuid.uuid4()) if page_id is None else normalize_id(page_id, "page_id")
        self.shared_pages.add(pid)
        return pid

    def attachable(self, token: str) -> Callable[[str], str]:
        """Rule 23: a ``file_upload`` reference must be this caller's, uploaded, unexpired."""
        def lookup(upload_id: str) -> str:
            upload = self.own_upload(upload_id, token)
            if upload.status != "uploaded":
                # §6: the exact error is UNCONFIRMED; a 400 says "fix the request".
                raise validation(f"File upload with ID: {upload_id} is {upload.status}; only "
                                 "an uploaded file upload can be attached.")
            return upload.filename or "file"
        return lookup


def _read_parts(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths)


def _hash_parts(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()

