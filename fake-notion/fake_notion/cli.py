"""``fake-notion`` (also ``tus-gateway fake-notion``): run the fake on its own."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
from pathlib import Path

from aiohttp import web

from fake_notion.app import create_fake_app
from fake_notion.rules import SCHEMA_TYPES, NotionError
from fake_notion.state import CAPABILITIES, KNOWN_VERSIONS, PLANS, FakeConfig, FakeNotion


def _database_arg(raw: str) -> tuple[str, str | None, dict[str, str]]:
    """``NAME[@ID]:prop=type,prop=type`` -> (name, id or None, schema)."""
    head, sep, spec = raw.partition(":")
    name, at, db_id = head.partition("@")
    if not sep or not name or (at and not db_id):
        raise argparse.ArgumentTypeError(f"expected NAME[@ID]:prop=type,...; got {raw!r}")
    schema: dict[str, str] = {}
    for item in filter(None, spec.split(",")):
        prop, eq, kind = item.partition("=")
        if not eq or not prop or kind not in SCHEMA_TYPES:
            raise argparse.ArgumentTypeError(f"bad property {item!r} (types: "
                                             f"{', '.join(sorted(SCHEMA_TYPES))})")
        schema[prop] = kind
    return name, db_id or None, schema


def main(argv: list[str] | None = None, prog: str = "fake-notion") -> int:
    """Run the fake on its own (``fake-notion``, ``tus-gateway fake-notion``).

    Prints one JSON line on stdout once the port is bound: the URL, the token and the
    database IDs (``{"url": ..., "token": ..., "databases": {name: id}}``).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description="A fake Notion API server for tests (strict).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="ntn_fake_token",
                        help="the bearer token clients must send")
    parser.add_argument("--rate", type=float, default=3.0,
                        help="requests per second per token (0 turns the limit off)")
    parser.add_argument("--burst", type=int, default=5)
    parser.add_argument("--notion-version", dest="versions", action="append",
                        help="accepted Notion-Version (repeatable; default: "
                             f"{', '.join(sorted(KNOWN_VERSIONS))})")
    parser.add_argument("--plan", choices=sorted(PLANS), default=None,
                        help="the workspace's plan, which sets its per-file limit (free: "
                             "5 MiB, paid: 5 GiB, the default)")
    parser.add_argument("--workspace-limit", type=int, default=None,
                        help="per-file limit in bytes, instead of the plan's")
    parser.add_argument("--parent-page", action="append", default=[], metavar="ID",
                        help="a page shared with the token, under which databases may be "
                             "created (repeatable)")
    parser.add_argument("--storage-dir", type=Path, default=None,
                        help="where part bytes go (default: a temporary directory)")
    parser.add_argument("--database", action="append", default=[], type=_database_arg,
                        metavar="NAME[@ID]:prop=type,...",
                        help="create a database shared with the token, with this id if "
                             "given (repeatable: one per user database, say)")
    parser.add_argument("--unshared-database", action="append", default=[],
                        type=_database_arg, metavar="NAME[@ID]:prop=type,...",
                        help="create a database nobody shared with the token: requests "
                             "for it answer 404 object_not_found (repeatable)")
    parser.add_argument("--capabilities", default=",".join(sorted(CAPABILITIES)),
                        help="the token's content capabilities, comma-separated (default "
                             "all: %(default)s); an endpoint needing a missing one answers "
                             "403 restricted_resource")
    args = parser.parse_args(argv)
    temp = args.storage_dir is None
    storage = Path(tempfile.mkdtemp(prefix="fake-notion-")) if temp else args.storage_dir
    config = FakeConfig(rate_per_s=args.rate, burst=args.burst,
                        workspace_limit_bytes=(args.workspace_limit or
                                               PLANS[args.plan or "paid"]),
                        accepted_versions=frozenset(args.versions or KNOWN_VERSIONS))
    fake = FakeNotion(storage, config=config, token=args.token)
    try:
        fake.set_capabilities(args.token, filter(None, args.capabilities.split(",")))
        ids = {name: fake.add_database(name, schema, database_id=db_id)
               for name, db_id, schema in args.database}
        ids.update({name: fake.add_database(name, schema, database_id=db_id, shared_with=())
                    for name, db_id, schema in args.unshared_database})
        for page in args.parent_page:
            fake.add_parent_page(page)
    except NotionError as exc:  # an id that is not one
        parser.error(exc.message)
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
