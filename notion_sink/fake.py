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
- Pages (rule 23): the parent database exists and is shared with the token (else 404);
  property names or IDs exist; values have the schema's type (title, rich_text, number,
  checkbox, date, files, url, select, multi_select, email, phone_number); read-only types
  are refused; rich text <= 2000 chars, arrays <= 100, body <= 500 KB; ``files`` items of
  type ``file_upload`` refer to an ``uploaded``, unexpired upload of the caller.
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

Not modelled: data sources (2025-09-03 query paths), ``external_url`` imports, blocks
beyond attaching media children, page updates and deletes, icons and covers, a
workspace-wide rate budget, per-endpoint limits.

Layout: ``fake_rules`` (pure rules and tables), ``fake_faults`` (clock, rate limiter, fault
plan, request log), ``fake_state`` (:class:`FakeNotion`, :class:`FakeConfig`),
``fake_http`` (the gate every request passes), ``fake_uploads`` and ``fake_pages`` (the
endpoints). This module wires them into an app and runs it from the command line.

All file I/O runs in worker threads (``asyncio.to_thread``); the event loop never touches
the disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from notion_sink.fake_faults import (
    COMPLETE,
    CREATE,
    DB_QUERY,
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
from notion_sink.fake_http import FAKE, gate
from notion_sink.fake_pages import create_page, download_file, query_database, retrieve_page
from notion_sink.fake_rules import PAID_WORKSPACE_LIMIT, SCHEMA_TYPES
from notion_sink.fake_state import DEFAULT_VERSION, FakeConfig, FakeNotion
from notion_sink.fake_uploads import (
    complete_upload,
    create_upload,
    list_uploads,
    retrieve_upload,
    send_upload,
    users_me,
)

__all__ = ["COMPLETE", "CREATE", "DB_QUERY", "LIST", "PAGE_CREATE", "PAGE_RETRIEVE",
           "RETRIEVE", "SEND", "USERS_ME", "FakeClock", "FakeConfig", "FakeNotion", "Fault",
           "FaultPlan", "RequestRecord", "create_fake_app", "main"]


def create_fake_app(fake: FakeNotion) -> web.Application:
    """The fake's aiohttp application; the endpoints are those of §3 and §7.

    ``client_max_size`` stays at aiohttp's default: JSON bodies are read (and capped at
    500 KB) by the handlers, and part bodies stream through ``request.multipart()``.
    """
    app = web.Application(middlewares=[gate])
    app[FAKE] = fake
    routes = [
        ("POST", "/v1/file_uploads", CREATE, create_upload),
        ("GET", "/v1/file_uploads", LIST, list_uploads),
        ("POST", "/v1/file_uploads/{id}/send", SEND, send_upload),
        ("POST", "/v1/file_uploads/{id}/complete", COMPLETE, complete_upload),
        ("GET", "/v1/file_uploads/{id}", RETRIEVE, retrieve_upload),
        ("GET", "/v1/users/me", USERS_ME, users_me),
        ("POST", "/v1/pages", PAGE_CREATE, create_page),
        ("GET", "/v1/pages/{id}", PAGE_RETRIEVE, retrieve_page),
        ("POST", "/v1/databases/{id}/query", DB_QUERY, query_database),
    ]
    for method, path, name, handler in routes:
        # The route name is the endpoint name in the log and in fault scripts.
        app.router.add_route(method, path, handler, name=name)
    app.router.add_get("/_fake/files/{id}", download_file, name="files.download")
    return app


# --- command line -------------------------------------------------------------------------------
def _database_arg(raw: str) -> tuple[str, dict[str, str]]:
    """``NAME:prop=type,prop=type`` -> (name, schema)."""
    name, sep, spec = raw.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:prop=type,...; got {raw!r}")
    schema: dict[str, str] = {}
    for item in filter(None, spec.split(",")):
        prop, eq, kind = item.partition("=")
        if not eq or not prop or kind not in SCHEMA_TYPES:
            raise argparse.ArgumentTypeError(f"bad property {item!r} (types: "
                                             f"{', '.join(sorted(SCHEMA_TYPES))})")
        schema[prop] = kind
    return name, schema


def main(argv: list[str] | None = None) -> int:
    """Run the fake on its own (``tus-gateway fake-notion``).

    Prints one JSON line on stdout once the port is bound: the URL, the token and the
    database IDs (``{"url": ..., "token": ..., "databases": {name: id}}``).
    """
    parser = argparse.ArgumentParser(
        prog="tus-gateway fake-notion", description="A fake Notion API server for tests (strict).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="ntn_fake_token",
                        help="the bearer token clients must send")
    parser.add_argument("--rate", type=float, default=3.0,
                        help="requests per second per token (0 turns the limit off)")
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--notion-version", dest="versions", action="append",
                        help=f"accepted Notion-Version (repeatable; default {DEFAULT_VERSION})")
    parser.add_argument("--workspace-limit", type=int, default=PAID_WORKSPACE_LIMIT,
                        help="per-file limit in bytes (free workspaces: 5242880)")
    parser.add_argument("--storage-dir", type=Path, default=None,
                        help="where part bytes go (default: a temporary directory)")
    parser.add_argument("--database", action="append", default=[], type=_database_arg,
                        metavar="NAME:prop=type,...", help="create a database (repeatable)")
    args = parser.parse_args(argv)
    temp = args.storage_dir is None
    storage = Path(tempfile.mkdtemp(prefix="fake-notion-")) if temp else args.storage_dir
    config = FakeConfig(rate_per_s=args.rate, burst=args.burst,
                        workspace_limit_bytes=args.workspace_limit,
                        accepted_versions=frozenset(args.versions or [DEFAULT_VERSION]))
    fake = FakeNotion(storage, config=config, token=args.token)
    try:
        ids = {name: fake.add_database(name, schema) for name, schema in args.database}
    except ValueError as exc:
        parser.error(str(exc))
    # Bind and listen before printing, so a client that reads the line can connect at once
    # (the kernel queues it until the app runs); ``--port 0`` picks a free port.
    sock = socket.create_server((args.host, args.port))
    port = sock.getsockname()[1]
    print(json.dumps({"url": f"http://{args.host}:{port}", "token": args.token,
                      "databases": ids}), flush=True)
    try:
        web.run_app(create_fake_app(fake), sock=sock, print=None)
    finally:
        sock.close()
        if temp:
            shutil.rmtree(storage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
