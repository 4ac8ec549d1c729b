"""The Notion sink's settings: one frozen value, part of ``gateway.config.GatewayConfig``.

Each field is the flag ``--notion-<name>`` and the environment variable
``TUS_NOTION_<NAME>`` (the token: ``NOTION_TOKEN``, the name the Notion SDKs use); the
docstring under a field is its help text. Plain data, no I/O: the gateway's configuration
imports it without loading the sink.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

# Notion ids are UUIDs, given with or without their dashes (docs/notion-contract.md §1).
# Nothing else is one: an id from a token lands in a request path, so "../" or a query
# string must never get that far.
_NOTION_ID = re.compile(r"[0-9a-fA-F]{32}"
                        r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
                        r"-[0-9a-fA-F]{12}")
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
# Entries of notion_user_databases: the map is held in memory and checked at every start.
MAX_USER_DATABASES = 10_000

# What each record property holds (see notion_sink.records.RecordSettings).
NOTION_PROPERTY_ROLES = ("title", "size", "hash", "salt", "created", "file", "index_title",
                         "index_database", "index_page")


@dataclass(frozen=True, slots=True)
class NotionSettings:
    token: str = ""
    """The Notion integration's secret (Bearer token)."""
    base_url: str = "https://api.notion.com"
    """The Notion API; point it at `tus-gateway fake-notion` to try the sink locally."""
    version: str = "2026-03-11"
    """The Notion-Version every request sends: 2026-03-11 or 2025-09-03 (each database is
    resolved to its data source at start; pages and queries go through it), or 2022-06-28
    (the database endpoints of before data sources)."""
    data_sources: tuple[str, ...] = ()
    """The data source to use in a database that has several, as database=data-source ID
    pairs (comma-separated); a database with one data source needs none."""
    user_database: str = ""
    """Id of the database that gets one page per file (title, size, salted hash, the file):
    the default user database, for uploads whose creator has no database of their own."""
    user_databases: tuple[str, ...] = ()
    """Each user's own database, as subject=ID pairs (comma-separated, at most 10,000): the
    files of that auth subject get their pages there. A database named by the creator's
    credentials (an HMAC token's db claim, a forward-auth answer's db) comes first; a
    subject with neither uses user-database. Every database must be shared with the
    integration and have the user database's properties."""
    index_database: str = ""
    """Id of the global index database (salted hash -> user database and page)."""
    window_bytes: int = 5 * MiB
    """Part size for files over 20 MiB (5 to 20 MiB; larger files use bigger parts so that
    no file needs more than 1,000)."""
    concurrency: int = 4
    """Parts sent at once, over all uploads."""
    rate: float = 3.0
    """Requests per second to Notion, shared by every sender (Notion allows about 3)."""
    retry_deadline_s: float = 300.0
    """How long one Notion request is retried (backoff with full jitter, Retry-After
    honoured) before its delivery is marked failed; waiting on an open breaker does not
    count."""
    breaker_open_s: float = 30.0
    """After repeated failures, Notion is left alone this long before one probe request."""
    retry_failed_s: float = 300.0
    """A delivery that failed for a reason that may pass starts again after this long;
    0: only `tus-gateway sink retry` starts it."""
    scan_s: float = 10.0
    """How often each instance looks for drains that nobody runs (their instance died) and
    for failed deliveries due for a retry."""
    check_at_start: bool = True
    """Before it listens, `serve --sink notion` checks the token, both databases and their
    data sources and properties (as `tus-gateway notion check` does) and stops on a
    problem."""
    limit_refresh_s: float = 600.0
    """How often the workspace's file upload limit is read again (it is read at start): a
    creation above it answers 413, and Tus-Max-Size says it."""
    properties: tuple[str, ...] = ()
    """Property names of the records, as role=Name pairs overriding the defaults (roles:
    title=Name, size=Size, hash=Hash, salt=Salt, created=Created, file=File in the user
    database; index_title=Hash, index_database=Database, index_page=Page in the index)."""

    def problems(self, *, in_use: bool) -> list[str]:
        """What is wrong with these settings, named as the flags name them (``notion_*``);
        ``in_use``: the gateway delivers to Notion, so the credentials must be there."""
        problems = []
        if in_use:
            for name, value in (("notion_token", self.token),
                                ("notion_user_database", self.user_database),
                                ("notion_index_database", self.index_database)):
                if not value:
                    problems.append(f"the notion sink needs {name}")
        if not 5 * MiB <= self.window_bytes <= 20 * MiB:
            problems.append("notion_window_bytes must be between 5 and 20 MiB")
        if self.retry_deadline_s <= 0 or self.retry_failed_s < 0 or self.breaker_open_s <= 0:
            problems.append("notion_retry_deadline_s must be positive, "
                            "notion_retry_failed_s not negative")
        if self.limit_refresh_s <= 0:
            problems.append("notion_limit_refresh_s must be positive")
        if self.concurrency < 1 or self.rate <= 0 or self.scan_s <= 0:
            problems.append("notion_concurrency, notion_rate and notion_scan_s must be "
                            "positive")
        if not _VERSION.fullmatch(self.version):
            problems.append(f"notion_version must be a dated version like 2026-03-11, not "
                            f"{self.version[:40]!r}")
        problems += user_database_problems(self.user_databases)
        try:
            parse_data_sources(self.data_sources)
        except ValueError as exc:
            problems.append(f"notion_data_sources: {exc}")
        for pair in self.properties:
            role, sep, name = pair.partition("=")
            if not sep or role.strip() not in NOTION_PROPERTY_ROLES or not name.strip():
                problems.append(f"notion_properties: {pair!r} is not role=Name with a role "
                                f"among {', '.join(NOTION_PROPERTY_ROLES)}")
        return problems


def notion_id(raw: str) -> str | None:
    """``raw`` in the dashed lower-case form Notion answers with, or None when it is not a
    Notion id (32 hex digits, bare or in the 8-4-4-4-12 dashed form)."""
    if not _NOTION_ID.fullmatch(raw):
        return None
    digits = raw.replace("-", "").lower()
    return "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def parse_user_databases(entries: Iterable[str]) -> dict[str, str]:
    """``subject=ID`` entries as {subject: dashed id}; ``ValueError`` for the first entry
    that is not one (``user_database_problems`` names them all)."""
    mapping: dict[str, str] = {}
    for entry in entries:
        subject, sep, raw = entry.partition("=")
        database = notion_id(raw.strip())
        subject = subject.strip()
        if not sep or not subject or any(c.isspace() for c in subject) or database is None:
            raise ValueError(f"{entry[:80]!r} is not subject=ID with a Notion database id "
                             "(32 hex digits, dashes allowed)")
        if subject in mapping:
            raise ValueError(f"subject {subject[:80]!r} is given more than once")
        mapping[subject] = database
    return mapping


def parse_data_sources(entries: Iterable[str]) -> dict[str, str]:
    """``database=data-source`` entries as {dashed database id: dashed data source id};
    ``ValueError`` for the first entry that is not one (at most ``MAX_USER_DATABASES``)."""
    mapping: dict[str, str] = {}
    for count, entry in enumerate(entries):
        if count >= MAX_USER_DATABASES:
            raise ValueError(f"at most {MAX_USER_DATABASES} entries")
        raw_db, sep, raw_source = entry.partition("=")
        database, source = notion_id(raw_db.strip()), notion_id(raw_source.strip())
        if not sep or database is None or source is None:
            raise ValueError(f"{entry[:80]!r} is not database=data-source with two Notion "
                             "ids (32 hex digits, dashes allowed)")
        if database in mapping:
            raise ValueError(f"database {database} is given more than once")
        mapping[database] = source
    return mapping


def user_database_problems(entries: tuple[str, ...]) -> list[str]:
    """What is wrong with ``notion_user_databases``, one line per entry at fault."""
    if len(entries) > MAX_USER_DATABASES:
        return [f"notion_user_databases: at most {MAX_USER_DATABASES} entries, "
                f"not {len(entries)}"]
    problems = []
    seen: set[str] = set()
    for entry in entries:
        subject = entry.partition("=")[0].strip()
        try:
            parse_user_databases((entry,))
        except ValueError as exc:
            problems.append(f"notion_user_databases: {exc}")
            continue
        if subject in seen:
            problems.append(f"notion_user_databases: subject {subject[:80]!r} is given more "
                            "than once")
        seen.add(subject)
    return problems
