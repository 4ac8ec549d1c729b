"""A fake Notion server that holds clients to the File Upload API contract, strictly.

The contract is docs/notion-contract.md; "rule N" below is an item of its §12, "What a
faithful fake must enforce". The fake exists so that the sink's tests fail on the mistakes
real Notion would punish, so every default is the strict reading, and each behaviour the
docs leave UNCONFIRMED has a switch in :class:`FakeConfig`.

Enforced:

- Transport and auth (rules 1-4): bearer token (401 ``unauthorized``), ``Notion-Version``
  (400 ``missing_version``; values outside ``accepted_versions`` get 400 with a configurable
  code), invalid JSON (400 ``invalid_json``), unknown path or method (400
  ``invalid_request_url``), IDs with or without dashes. Every request with a known token,
  each part send included, takes a token from the rate limiter before anything else.
- Create (rules 5-9): mode, ``filename`` <= 900 UTF-8 bytes with an allowed extension,
  ``content_type`` on the allow-list (never ``application/octet-stream``) and matching the
  extension, ``number_of_parts`` 1..``max_parts`` (1,000) for ``multi_part``; inferred
  types (``.mp4`` -> ``application/mp4``); ``upload_url``/``complete_url`` on this server's
  own base URL. ``external_url`` is rejected (400): the sink does not use it.
- Send (rules 10-15): ``multipart/form-data`` with a boundary and a ``file`` part; the
  upload is the caller's (else 404), ``pending`` and not expired; single part <= 20 MiB and
  <= the workspace limit, with an allowed, consistent type; multi-part ``part_number`` a
  decimal string in 1..total, non-final parts 5..20 MiB, the last <= 20 MiB, the running
  total <= the workspace limit; parts in any order and concurrently; a resent part
  replaces the earlier bytes and counts once. Bytes go to one file per part on disk.
- Complete (rules 16-17): multi-part, pending, unexpired, every part present, total within
  the limit; body empty or ``{}``; the bytes are then read back in part order
  (:meth:`FakeNotion.uploaded_sha256`, :meth:`FakeNotion.uploaded_bytes`).
- Lifecycle (rules 18-20): expiry one hour after create on the fake clock, never pushed
  back; an unattached upload then turns ``expired`` and refuses send, complete and attach;
  the first attach clears ``expiry_time`` for good.
- Retrieve and list (rules 21-22), ``GET /v1/users/me`` with the workspace limit (rule 14).
- Databases and capabilities (§7.4): any number of databases, each with its own schema and
  the tokens it is shared with (:meth:`FakeNotion.add_database`, ``--database``;
  :meth:`FakeNotion.share_database` shares or unshares one later); one that does not exist
  or is not shared is 404 ``object_not_found`` for pages and queries alike. Each token has
  content capabilities (:meth:`FakeNotion.set_capabilities`, ``--capabilities``): creating
  a page needs insert content, queries and reading a page need read content, else 403
  ``restricted_resource``.
- Pages (rule 23): the parent database exists and is shared with the token (else 404);
  property names or IDs exist; values have the schema's type (title, rich_text, number,
  checkbox, date, files, url, select, multi_select, email, phone_number); read-only types
  are refused; rich text <= 2000 chars, arrays <= 100, body <= 500 KB; ``files`` items of
  type ``file_upload`` refer to an ``uploaded``, unexpired upload of the caller.
- Versions and data sources (§1, §7.3): every database has one data source (more with
  :meth:`FakeNotion.add_data_source`); from 2025-09-03 ``GET /v1/databases/{id}`` lists
  them, ``GET /v1/data_sources/{id}`` and ``POST /v1/data_sources/{id}/query`` serve them
  (400 ``invalid_request_url`` before); a ``data_source_id`` page parent works in every
  version, a ``database_id`` parent or query only while the database has one data source
  (else 400 ``multiple_data_sources_for_database``); ``POST /v1/databases`` creates a
  database under a page shared with the integration (:meth:`FakeNotion.add_parent_page`),
  its schema in ``properties`` before 2025-09-03 and in ``initial_data_source`` after.
- Query (rules 24-25): ``POST /v1/databases/{id}/query`` with 2022-06-28 semantics only;
  ``rich_text``/``title`` conditions (``equals`` exact and case-sensitive on the joined
  plain text), ``number``, ``checkbox``, ``and``/``or`` up to two levels, ``page_size`` <= 100,
  cursors. Read back (rule 26): ``files`` come back as hosted files whose one-hour URL
  serves the bytes.
- Rate limit and faults (rules 27-28, 15): a token bucket per token on the fake clock with
  429 ``rate_limited``, ``Retry-After`` and ``additional_data``; a blocked token; scripted
  or random 409/5xx/529, HTML bodies, slow answers, connection resets, and "carried out,
  then failed" (a 503 on a page that was created, with ``committed_resource_id``).

Switchable (:class:`FakeConfig`; strict by default): accepted versions and the code for
an unaccepted one; rate and burst (0 = off); ``max_parts`` (1,000 or 10,000); the
workspace limit (paid 5 GiB or free 5 MiB); the file-type table; ``complete_url`` at
create; a resent part replaces or is refused; a second complete is 400 or answers again;
``part_number`` on a single-part send; empty files; case-sensitive ``equals``; a query
lag (no read-after-write). Faults are switched per request through ``fake.faults``
(:class:`FaultPlan`), time through ``fake.clock.advance(seconds)``.

Not modelled: data sources with schemas of their own (they share their database's),
``external_url`` imports, blocks
beyond attaching media children, page updates and deletes, icons and covers, a
workspace-wide rate budget, per-endpoint limits.

Layout: ``rules`` (pure rules and tables), ``filetypes`` (the accepted file types, §5),
``faults`` (clock, rate limiter, fault plan, request log), ``state`` (:class:`FakeNotion`,
:class:`FakeConfig`), ``gate`` (the gate every request passes), ``uploads`` and ``pages``
(the endpoints), ``app`` (wires them into an aiohttp app) and ``cli`` (the ``fake-notion``
command). This package imports nothing of the sink it tests: it holds its own reading of
the contract, so that a mistake shared by the sink and the fake cannot hide.

All file I/O runs in worker threads (``asyncio.to_thread``); the event loop never touches
the disk.
"""

from __future__ import annotations

from fake_notion.app import create_fake_app
from fake_notion.faults import (
    COMPLETE,
    CREATE,
    DB_CREATE,
    DB_QUERY,
    DB_RETRIEVE,
    DS_QUERY,
    DS_RETRIEVE,
    LIST,
    PAGE_CREATE,
    PAGE_RETRIEVE,
    RETRIEVE,
    SEND,
    USERS_ME,
    FakeClock,
    Fault,
    FaultPlan,
    RequestRecord,
)
from fake_notion.state import DEFAULT_VERSION, LATEST_VERSION, PLANS, FakeConfig, FakeNotion

__all__ = ["COMPLETE", "CREATE", "DB_CREATE", "DB_QUERY", "DB_RETRIEVE", "DEFAULT_VERSION",
           "DS_QUERY", "DS_RETRIEVE", "LATEST_VERSION", "LIST", "PAGE_CREATE", "PAGE_RETRIEVE",
           "PLANS", "RETRIEVE", "SEND", "USERS_ME", "FakeClock", "FakeConfig",
           "FakeNotion", "Fault", "FaultPlan", "RequestRecord", "create_fake_app"]
