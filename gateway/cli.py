"""``tus-gateway``: the command line.

Every setting of ``GatewayConfig`` (``config.settings``: its own fields and those of its
parts) is a flag of ``serve`` and an environment variable (``--max-size`` / ``TUS_MAX_SIZE``);
flags win over the environment, the environment over the defaults. The help text of each flag
is the field's documentation in the class that declares it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import itertools
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway import notion_commands
from gateway.aio import new_loop
from gateway.app import create_app
from gateway.auth import mint_token, verify_token
from gateway.config import (
    MIN_AUTH_SECRET_CHARS,
    GatewayConfig,
    env_name,
    option_name,
    parse_duration,
    parse_field,
    parse_size,
    redacted,
    secret_values,
    settings,
)
from gateway.logs import ACCESS_LOGGER, AccessLogger, setup_logging
from protocol import errors


def _class_docs(owner: type[Any]) -> dict[str, str]:
    """The docstring under each field of a settings class, read from its source."""
    tree = ast.parse(inspect.getsource(inspect.getmodule(owner) or owner))
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == owner.__name__:
            body = node.body
            for stmt, nxt in itertools.pairwise(body):
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str)):
                    docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _field_docs() -> dict[str, str]:
    """The help text of every setting, by its name (``settings``)."""
    by_owner: dict[type[Any], dict[str, str]] = {}
    docs: dict[str, str] = {}
    for setting in settings():
        if setting.owner not in by_owner:
            by_owner[setting.owner] = _class_docs(setting.owner)
        docs[setting.name] = by_owner[setting.owner].get(setting.attr, "")
    return docs


def _default_text(value: Any, name: str = "") -> str:
    if name == "file_mode":
        return f"{value:04o}"  # octal, as the flag takes it
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _metavar(name: str) -> str:
    if name.endswith("_bytes"):
        return "SIZE"
    if name.endswith("_s"):
        return "DURATION"
    return option_name(name).upper().replace("-", "_")


def _settings_text(docs: dict[str, str]) -> str:
    lines = ["settings of 'serve' (flag, environment variable, default):"]
    for f in settings():
        lines.append(f"  --{option_name(f.name)} {_metavar(f.name)}  [{env_name(f.name)}, "
                     f"default {_default_text(f.default, f.name)}]")
        lines.append(f"      {docs.get(f.name, '')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    docs = _field_docs()
    parser = argparse.ArgumentParser(
        prog="tus-gateway",
        description="A resumable upload gateway speaking tus 1.0.0 with every extension.",
        epilog=_settings_text(docs),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the gateway",
        description="Run the gateway. Sizes take binary units (512MiB, 5GiB); durations take "
                    "s, m, h or d (30s, 24h). Every flag can also be set by the environment "
                    "variable named after it.",
    )
    show_config = commands.add_parser(
        "config", help="print the effective configuration as JSON, secrets masked",
        description="Print the configuration `serve` would run with, from the same flags, "
                    "environment and defaults, as JSON with secrets masked; exit 2 if it is "
                    "invalid.",
    )
    for f in settings():
        flag = "--" + option_name(f.name)
        help_text = f"{docs.get(f.name, '')} [env {env_name(f.name)}; default " \
                    f"{_default_text(f.default, f.name)}]".replace("%", "%%")
        for target in (serve, show_config):
            if isinstance(f.default, bool):
                target.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                    default=None, help=help_text)
            else:
                target.add_argument(flag, dest=f.name, default=None,
                                    metavar=_metavar(f.name), help=help_text)
    token = commands.add_parser(
        "token", help="mint an upload token for --auth hmac",
        description="Print an upload token signed with the gateway's auth secret; send it as "
                    "`Authorization: Bearer <token>` with every request.",
    )
    token.add_argument("--secret", default=None,
                       help=f"the gateway's auth secret [env {env_name('auth_secret')}]")
    token.add_argument("--ttl", default="1h",
                       help="how long the token creates uploads (30m, 1h, 7d; default 1h)")
    token.add_argument("--sub", default=None, help="whom the token is for (optional)")
    token.add_argument("--max-size", default=None, metavar="SIZE",
                       help="largest upload the token may create (512MiB, 5GiB; optional)")
    token.add_argument("--db", default=None,
                       help="the user's own Notion database id (optional)")
    token.add_argument("--quota-size", default=None, metavar="SIZE",
                       help="the user's byte quota, overriding --quota-size (optional)")
    token.add_argument("--quota-uploads", default=None, type=int, metavar="N",
                       help="the user's open-upload quota, overriding --quota-uploads "
                            "(optional)")
    token.add_argument("--admin", action="store_true",
                       help="the token may act on every user's uploads")
    fake = commands.add_parser(
        "fake-notion", add_help=False,
        help="run a fake Notion API server for trying the Notion sink locally "
             "(`tus-gateway fake-notion --help` for its options)")
    del fake  # its arguments are the fake's own: main() hands them over unparsed
    upload = commands.add_parser(
        "upload", add_help=False,
        help="upload files to any tus server, resuming interrupted uploads "
             "(`tus-gateway upload --help` for its options)")
    del upload  # its arguments are the uploader's own: main() hands them over unparsed
    def notion_flags(target: argparse.ArgumentParser) -> None:
        for f in settings():
            if f.name.startswith("notion_") and not isinstance(f.default, bool):
                target.add_argument("--" + option_name(f.name), dest=f.name, default=None,
                                    metavar=_metavar(f.name),
                                    help=docs.get(f.name, "").replace("%", "%%"))

    notion_commands.add_parser(commands, notion_flags)
    sink = commands.add_parser("sink", help="act on deliveries of a running gateway")
    sink_commands = sink.add_subparsers(dest="sink_command", required=True)
    retry = sink_commands.add_parser("retry", help="deliver a failed upload again")
    retry.add_argument("upload_id")
    retry.add_argument("--url", default="http://127.0.0.1:1080",
                       help="the running gateway (default http://127.0.0.1:1080)")
    retry.add_argument("--token", default=None,
                       help="with --auth on: the upload owner's or an admin token (default "
                            "TUS_TOKEN from the environment)")
    return parser


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> GatewayConfig:
    overrides: dict[str, Any] = {}
    for f in settings():
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        overrides[f.name] = raw if isinstance(raw, bool) else parse_field(f.name, raw)
    return GatewayConfig.from_env(environ, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake-notion"]:
        # A distribution of its own (fake-notion/), so the gateway's wheel ships no test server.
        if importlib.util.find_spec("fake_notion") is None:
            print("tus-gateway fake-notion: the fake-notion package is not installed; install it "
                  "from the source tree with `pip install ./fake-notion` (make install-test does)",
                  file=sys.stderr)
            return 2
        from fake_notion.cli import main as fake_main
        return fake_main(argv[1:], prog="tus-gateway fake-notion")
    if argv[:1] == ["upload"]:
        # Loaded only for this command: a serving gateway does not carry the client.
        from tus_client.cli import command as upload_command
        return upload_command(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "sink":
        return sink_retry(args.url, args.upload_id,
                          args.token or os.environ.get("TUS_TOKEN") or None)
    if args.command == "token":
        return print_token(args, dict(os.environ))
    try:
        config = config_from_args(args, dict(os.environ))
    except ValueError as exc:
        print(f"tus-gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(json.dumps(redacted(config), indent=2))
        return 0
    if args.command == "notion":
        return notion_commands.run(args, config.notion)
    if config.sink == "notion" and config.notion.check_at_start and (
            problems := notion_commands.check_at_start(config.notion)):
        for problem in problems:  # a wrong setting stops the gateway before it listens
            print(f"tus-gateway: notion: {problem}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, secret_values(config))
    logging.getLogger("gateway.cli").debug("effective configuration",
                                           extra={"config": redacted(config)})
    app = create_app(config)
    log = logging.getLogger("gateway")
    try:
        web.run_app(
            app, host=config.host, port=config.port, loop=new_loop(),
            shutdown_timeout=config.shutdown_timeout_s,
            access_log=logging.getLogger(ACCESS_LOGGER) if config.access_log else None,
            access_log_class=AccessLogger,
            print=lambda _msg: log.info(
                "serving tus on http://%s:%d%s (data in %s)", config.host, config.port,
                config.base_path, config.data_dir.resolve()),
        )
    except RuntimeError as exc:
        print(f"tus-gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def print_token(args: argparse.Namespace, environ: dict[str, str]) -> int:
    """``tus-gateway token``: print an upload token for ``--auth hmac``."""
    secret = args.secret or environ.get(env_name("auth_secret"), "")
    try:
        if len(secret) < MIN_AUTH_SECRET_CHARS:
            raise ValueError(f"the secret (--secret or {env_name('auth_secret')}) must have "
                             f"at least {MIN_AUTH_SECRET_CHARS} characters")
        ttl_s = parse_duration(args.ttl)
        if ttl_s <= 0:
            raise ValueError("--ttl must be positive")
        max_size = None if args.max_size is None else parse_size(args.max_size)
        quota_bytes = None if args.quota_size is None else parse_size(args.quota_size)
        token = mint_token(secret, ttl_s, now=time.time(), sub=args.sub, max_size=max_size,
                           db=args.db, quota_bytes=quota_bytes,
                           quota_uploads=args.quota_uploads, admin=args.admin)
        # What the gateway would refuse is refused here, not at the first request.
        verify_token(secret, token, now=time.time())
    except (ValueError, errors.AuthInvalid) as exc:
        print(f"tus-gateway: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def sink_retry(url: str, upload_id: str, token: str | None = None) -> int:
    """Ask a running gateway to deliver a failed upload again; 0 when it started."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{url.rstrip('/')}/api/sink/retry/{upload_id}",
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"tus-gateway: {exc.code}: {exc.read().decode().strip()}", file=sys.stderr)
    except OSError as exc:
        print(f"tus-gateway: cannot reach the gateway at {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
