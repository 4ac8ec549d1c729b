"""Who a request comes from, for the limits kept per client.

Theory of operation
-------------------
- A client is the auth subject of its creation when ``--auth`` is on: the user a bearer
  token, an HMAC token's ``sub`` or a forward-auth answer names, or, for a token that names
  nobody, the token itself (one token, one client). Without auth it is the remote address:
  the peer's, or behind a proxy (``--behind-proxy``) the one that proxy saw.
- Behind a proxy the address is the *nearest* entry of ``Forwarded`` (the last element's
  ``for=``), else of ``X-Forwarded-For`` (the last entry of the last field line). A proxy
  appends what it saw to whatever the client sent, so every entry before the last is the
  client's own claim: taking the first would let one client pose as any number of clients
  and slip past its limit. With several proxies in a row, the nearest entry names the
  proxy before ours, so their clients share one limit: too strict, never evaded. As for
  ``Location``, the proxy must drop or overwrite the header it does not set itself
  (``deploy/`` shows how).
- The key kept is a SHA-256 of that identity, 32 hex digits: fixed in size (Redis key
  names, records), and no token or address is stored in the clear.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from gateway.auth import Principal
from gateway.config import GatewayConfig
from gateway.keys import CONFIG

# A forwarded address longer than this is no address; it is cut before it is hashed.
MAX_ADDRESS_CHARS = 100


def client_key(request: web.Request, principal: Principal) -> str:
    """The key that a creation's open uploads are counted under and that owns them (see the
    module docstring): the identity its checked credentials gave (``auth.principal_of``),
    else its address."""
    config: GatewayConfig = request.app[CONFIG]
    identity = principal.identity
    if identity is None:
        identity = "addr:" + remote_address(request, behind_proxy=config.behind_proxy)
    raw = identity.encode("utf-8", "surrogateescape")
    return hashlib.sha256(b"tus-gateway client\0" + raw).hexdigest()[:32]



def remote_address(request: web.Request, *, behind_proxy: bool) -> str:
    """The client's address: the peer's, or behind a proxy the nearest forwarded one."""
    if behind_proxy:
        nearest = (_nearest_forwarded_for(request.headers.getall("Forwarded", []))
                   or _nearest_x_forwarded_for(request.headers.getall("X-Forwarded-For", [])))
        if nearest:
            return nearest
    return request.remote or "unknown"


def _nearest_forwarded_for(lines: list[str]) -> str | None:
    """RFC 7239: elements are comma-separated in order of the proxies; the last is ours."""
    if not lines:
        return None
    element = lines[-1].rsplit(",", 1)[-1]
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.strip().lower() == "for":
            return _node(value.strip().strip('"')) or None
    return None


def _nearest_x_forwarded_for(lines: list[str]) -> str | None:
    if not lines:
        return None
    return _node(lines[-1].rsplit(",", 1)[-1].strip()) or None


def _node(value: str) -> str:
    """An address without its port (a client's connections differ only in that), lower
    case (IPv6 hex digits): ``[2001:db8::1]:4711`` → ``2001:db8::1``."""
    value = value[:MAX_ADDRESS_CHARS].lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:  # IPv4 or a name with a port; bare IPv6 has more colons
        return value.partition(":")[0]
    return value
