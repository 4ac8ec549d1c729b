"""``tus-gateway notion setup`` and ``tus-gateway notion check``, and the check at start.

``setup --parent-page PAGE`` creates the two databases the Notion sink writes to (the user
database and the index, with the properties ``notion_properties`` names) under a page shared
with the integration, and prints the settings to serve with. ``check`` asks Notion whether
the settings work: the token, both databases (and every database of
``notion_user_databases``), their data sources and property types, and the workspace's upload
limit. ``serve --sink notion`` runs the same check (without the per-user databases, which
may be many) before it listens, so a wrong setting stops the gateway with the check's
message instead of failing the first delivery.

The sink's modules are loaded only here, when a command needs them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.config import env_name

if TYPE_CHECKING:
    from notion_sink.client import NotionClient
    from notion_sink.drain import Resilient
    from notion_sink.records import RecordSettings
    from notion_sink.settings import NotionSettings

# Property roles and the Notion types the records need (docs/notion-sink.md).
USER_TYPES = {"title": "title", "size": "number", "hash": "rich_text", "salt": "rich_text",
              "created": "date", "file": "files"}
INDEX_TYPES = {"index_title": "title", "index_database": "rich_text",
               "index_page": "rich_text"}
# How long one check request is retried (429, 5xx) before the check gives up on it.
CHECK_DEADLINE_S = 30.0


def add_parser(commands: Any, notion_flags: Any) -> None:
    """The ``notion`` command and its two subcommands; ``notion_flags(parser)`` adds the
    ``--notion-*`` settings flags of ``serve`` to a parser."""
    notion = commands.add_parser("notion", help="set up or check the Notion sink's databases")
    sub = notion.add_subparsers(dest="notion_command", required=True)
    setup = sub.add_parser(
        "setup", help="create the user and index databases under a page",
        description="Create the two databases the Notion sink needs under a page shared "
                    "with the integration, and print the settings to serve with.")
    setup.add_argument("--parent-page", required=True, metavar="PAGE",
                       help="id of a Notion page shared with the integration")
    check = sub.add_parser(
        "check", help="check the token, the databases and the workspace's upload limit",
        description="Check that the Notion settings work; exit 1 if they do not.")
    for parser in (setup, check):
        notion_flags(parser)


@dataclass
class Report:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"ok: {line}" for line in self.ok] + [f"problem: {line}"
                                                       for line in self.problems]


async def _tools(settings: NotionSettings, session: aiohttp.ClientSession
                 ) -> tuple[NotionClient, Resilient, RecordSettings]:
    from notion_sink.breaker import BreakerPolicy, CircuitBreaker
    from notion_sink.client import ClientSettings, NotionClient, read_range
    from notion_sink.drain import Resilient
    from notion_sink.ratelimit import RateLimiter
    from notion_sink.records import RecordSettings
    from notion_sink.retry import RetryPolicy
    from notion_sink.settings import parse_data_sources

    async def read(path: Any, start: int, length: int) -> bytes:
        return await asyncio.to_thread(read_range, path, start, length)

    client = NotionClient(session, ClientSettings(base_url=settings.base_url,
                                                  token=settings.token,
                                                  version=settings.version), read,
                          data_sources=parse_data_sources(settings.data_sources))
    resilient = Resilient(CircuitBreaker(BreakerPolicy(open_for=settings.breaker_open_s)),
                          RateLimiter(rate=settings.rate, burst=1),
                          RetryPolicy(deadline=CHECK_DEADLINE_S))
    names = RecordSettings(settings.user_database, settings.index_database
                           ).named(settings.properties)
    return client, resilient, names


async def check(settings: NotionSettings, *, per_user: bool = True) -> Report:
    """What works and what does not with these settings, asked of Notion."""
    from notion_sink.retry import SinkError
    from notion_sink.settings import parse_user_databases

    report = Report()
    async with aiohttp.ClientSession() as session:
        client, resilient, names = await _tools(settings, session)
        try:
            limit = await resilient.run(client.upload_limit)
        except SinkError as exc:
            report.problems.append(f"the token is refused ({exc})" if exc.status in (401, 403)
                                   else f"Notion does not answer as it should ({exc})")
            return report
        report.ok.append(f"the token works (Notion-Version {settings.version})")
        if limit is None:
            report.problems.append("Notion did not say the workspace's upload limit")
        else:
            report.ok.append(f"the workspace takes files up to {limit} bytes")
        databases = [("user database", settings.user_database, USER_TYPES),
                     ("index database", settings.index_database, INDEX_TYPES)]
        if per_user:
            databases += [(f"database of {subject!r}", database, USER_TYPES) for
                          subject, database in parse_user_databases(settings.user_databases
                                                                    ).items()]
        for what, database, types in databases:
            if not database:
                report.problems.append(f"no {what} is set")
                continue
            wanted = {getattr(names, role): kind for role, kind in types.items()}
            await _check_database(client, resilient, what, database, wanted, report)
    return report


async def _check_database(client: NotionClient, resilient: Resilient, what: str,
                          database: str, wanted: Mapping[str, str], report: Report) -> None:
    from notion_sink.retry import SinkError

    try:
        if client.uses_data_sources:
            source = await resilient.run(lambda: client.data_source(database))
            schema = (await resilient.run(lambda: client.retrieve_data_source(source))
                      ).get("properties")
            where = f"{what} {database} (data source {source})"
        else:
            schema = (await resilient.run(lambda: client.retrieve_database(database))
                      ).get("properties")
            where = f"{what} {database}"
    except SinkError as exc:
        report.problems.append(f"the {what} {database}: {exc}")
        return
    types = {name: prop.get("type") for name, prop in (schema or {}).items()
             if isinstance(prop, dict)}
    wrong = [f"{name} must be {kind}" + (f", not {types[name]}" if name in types else
                                          " (missing)")
             for name, kind in wanted.items() if types.get(name) != kind]
    if wrong:
        report.problems.append(f"the {where}: {'; '.join(wrong)}")
    else:
        report.ok.append(f"the {where} has the properties the records need")


async def setup(settings: NotionSettings, parent_page: str) -> tuple[int, list[str]]:
    """Create both databases under ``parent_page``; (exit status, lines to print)."""
    from notion_sink.retry import SinkError
    from notion_sink.settings import notion_id

    page = notion_id(parent_page.strip())
    if page is None:
        return 2, [f"--parent-page: {parent_page[:80]!r} is not a Notion page id"]
    made: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        client, resilient, names = await _tools(settings, session)
        for name, title, types in (("user_database", "Uploads", USER_TYPES),
                                   ("index_database", "Upload index", INDEX_TYPES)):
            schema = {getattr(names, role): kind for role, kind in types.items()}
            try:
                # Not retried: a creation whose answer is lost may have happened.
                answer = await resilient.run(
                    functools.partial(client.create_database, page, title, schema),
                    retry=False)
            except SinkError as exc:
                done = [f"{env_name('notion_' + k)}={v}" for k, v in made.items()]
                return 1, [f"the {title} database could not be created: {exc}", *done]
            made[name] = str(answer["id"])
    lines = [f"{env_name('sink')}=notion"]
    lines += [f"{env_name('notion_' + name)}={value}" for name, value in made.items()]
    if settings.version != _default_version():
        lines.append(f"{env_name('notion_version')}={settings.version}")
    return 0, lines


def _default_version() -> str:
    from notion_sink.settings import NotionSettings

    return NotionSettings().version


def run(args: argparse.Namespace, settings: NotionSettings) -> int:
    """``tus-gateway notion setup|check``."""
    if not settings.token:
        print(f"tus-gateway notion: the token is needed ({env_name('notion_token')} or "
              "--notion-token)")
        return 2
    if args.notion_command == "setup":
        status, lines = asyncio.run(setup(settings, args.parent_page))
        print("\n".join(lines))
        return status
    report = asyncio.run(check(settings))
    print("\n".join(report.lines()))
    return 1 if report.problems else 0


def check_at_start(settings: NotionSettings) -> list[str]:
    """The problems that stop ``serve --sink notion`` before it listens."""
    return asyncio.run(check(settings, per_user=False)).problems
