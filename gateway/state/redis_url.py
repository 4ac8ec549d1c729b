"""The forms ``--redis-url`` takes: one Redis, a Redis Cluster, or a Sentinel-watched primary.

Plain standard library, so that the settings can check a URL at start without loading
redis-py::

    redis://[user:password@]host[:port][/db]        one Redis (also rediss:// and unix://,
                                                     as redis-py reads them)
    redis+cluster://[user:password@]host:port[,host:port...]
                                                     a Redis Cluster: any of its nodes, the
                                                     client learns the rest (rediss+cluster://
                                                     with TLS)
    redis+sentinel://[user:password@]host:port[,host:port...]/service[?db=N]
                                                     the primary that these Sentinels name
                                                     ``service``, found again after a failover
                                                     (rediss+sentinel:// with TLS to Redis)

The user and password are Redis's (the cluster's nodes, or the Sentinel-watched servers);
the Sentinels themselves are reached without a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SINGLE_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# More seed nodes than this is a typo or an attack on the start-up, not a deployment.
MAX_NODES = 32
_HOST = re.compile(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.\-_]+)")
_SERVICE = re.compile(r"[A-Za-z0-9._\-]{1,128}")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a ``--redis-url`` names."""

    kind: Literal["single", "cluster", "sentinel"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    """Cluster seed nodes or Sentinels; empty for a single Redis (its URL says it all)."""
    service: str = ""
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False


def _nodes(hosts: str, default_port: int) -> tuple[tuple[str, int], ...]:
    found = []
    for item in hosts.split(","):
        item = item.strip()
        match = _HOST.match(item)
        if match is None:
            raise ValueError(f"names {item!r}, not host:port")
        host = match.group("v6") or match.group("name")
        rest = item[match.end():]
        port = default_port
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"names {item!r}, not host:port")
            port = int(rest[1:])
        if not 0 < port < 65536:
            raise ValueError(f"names {item!r}: a port is 1 to 65535")
        found.append((host, port))
    if not found or len(found) > MAX_NODES:
        raise ValueError(f"must name 1 to {MAX_NODES} host:port")
    return tuple(found)


def parse_redis_url(url: str) -> RedisTarget:
    """Which Redis the URL names; for one it cannot be, ``ValueError`` with a reason that
    reads after "redis_url "."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in SINGLE_SCHEMES:
        return RedisTarget("single", url)
    if not sep or scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise ValueError("must start with redis://, rediss:// or unix:// (one Redis), "
                         "redis+cluster:// or redis+sentinel://")
    rest, _, query_text = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    query = parse_qs(query_text, keep_blank_values=True)
    db = 0
    if "db" in query:
        raw = query.pop("db")[-1]
        if not raw.isdigit() or int(raw) > 15:
            raise ValueError("has a db that is not 0 to 15")
        db = int(raw)
    if query:
        raise ValueError(f"has unknown parameters: {', '.join(sorted(query))}")
    tls = scheme.startswith("rediss")
    if scheme in CLUSTER_SCHEMES:
        if path.strip("/") not in ("", "0") or db:
            raise ValueError("names a database: a Redis Cluster has database 0 only")
        return RedisTarget("cluster", url, _nodes(hosts, DEFAULT_PORT), username=username,
                           password=password, tls=tls)
    service = unquote(path.strip("/"))
    if not _SERVICE.fullmatch(service):
        raise ValueError("must name the Sentinel service after the hosts: "
                         "redis+sentinel://host:26379/mymaster")
    return RedisTarget("sentinel", url, _nodes(hosts, DEFAULT_SENTINEL_PORT), service,
                       username, password, db, tls)
