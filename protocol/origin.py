"""The public scheme and host[:port] that upload URLs are built from.

Theory of operation: ``Location`` (and the IETF draft's 104) is ``<scheme>://<host><base
path><id>``, with the host taken from the request: its ``Host`` header, or behind a proxy the
host the proxy says the client asked for (``Forwarded``, else ``X-Forwarded-Host``). Whatever
is copied there must be a host[:port] and nothing more: a ``/``, ``?``, ``#`` or ``@`` would
make the URL point elsewhere (``http://evil.example/x?/files/<id>``), a CR or LF would split
the response, and a character beyond Latin-1 cannot be written in a header at all. So the
host is checked before anything is created, and a request whose host is malformed is refused
as a whole (RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request) status code
to any HTTP/1.1 request message that lacks a Host header field and to any request message
that contains more than one Host header field line or a Host header field with an invalid
field value.").

The grammar accepted is narrower than RFC 3986's ``host``: a name of letters, digits, ``-``,
``.`` and ``_`` (the characters host names use in practice), or an IPv4 address, or an IPv6
literal in brackets; then an optional port of up to five digits, at most 65535. A reg-name's
percent-escapes and sub-delimiters (``!$&'()*+,;=``) are legal in a URL but no client sends
them as a host, and they would reach ``Location`` verbatim.
"""

from __future__ import annotations

import ipaddress
import re

from protocol import errors
from protocol.headers import Headers

# RFC 1035: a name is at most 253 characters (255 octets on the wire); ":65535" adds six.
MAX_HOST_CHARS = 253 + 6
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PORT = re.compile(r"[0-9]{1,5}")
SCHEMES = ("http", "https")


def parse_host(value: str, what: str = "Host") -> str:
    """``value`` if it is a host[:port] fit to be copied into a URL; else ``InvalidHost``."""
    if not value or len(value) > MAX_HOST_CHARS or not value.isascii():
        raise errors.InvalidHost(f"{what} is not a host[:port]")
    if value.startswith("["):
        literal, bracket, rest = value[1:].partition("]")
        if not bracket or not _is_ipv6(literal):
            raise errors.InvalidHost(f"{what} is not a host[:port]")
        port = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port is None:
            raise errors.InvalidHost(f"{what} is not a host[:port]")
    else:
        name, colon, port_text = value.partition(":")
        port = port_text if colon else None
        if not _NAME.fullmatch(name):
            raise errors.InvalidHost(f"{what} is not a host[:port]")
    if port is not None and not (_PORT.fullmatch(port) and int(port) <= 65535):
        raise errors.InvalidHost(f"{what} has an invalid port")
    return value


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def public_origin(headers: Headers, scheme: str, *, behind_proxy: bool,
                  local_host: str | None = None) -> tuple[str, str]:
    """The scheme and host[:port] of the URL the client used.

    ``scheme`` is the connection's own. ``local_host`` is the address the request arrived
    on, for an HTTP/1.0 request, which may omit Host; pass None for HTTP/1.1, where Host is
    required. Behind a proxy (``--behind-proxy``), ``Forwarded`` or else ``X-Forwarded-Host``
    and ``X-Forwarded-Proto`` name the public scheme and host; a forwarded host is held to
    the same grammar as Host, while a proto other than http or https is ignored (the
    connection's own is kept).
    """
    host = headers.one("Host", errors.InvalidHost)
    if host is None:
        if local_host is None:
            raise errors.InvalidHost("the request has no Host header")
        host = local_host
    host = parse_host(host)
    if not behind_proxy:
        return scheme, host
    forwarded = headers.first("Forwarded")
    if forwarded is not None:
        # RFC 7239: the first element was added by the proxy nearest the client.
        first = first_forwarded_element(forwarded)
        proto, fwd_host = first.get("proto", "").lower(), first.get("host", "")
    else:
        proto = _first_of_list(headers.first("X-Forwarded-Proto") or "").lower()
        fwd_host = _first_of_list(headers.first("X-Forwarded-Host") or "")
    if fwd_host:
        host = parse_host(fwd_host, "the forwarded host")
    if proto in SCHEMES:
        scheme = proto
    return scheme, host


def _first_of_list(value: str) -> str:
    return value.split(",", 1)[0].strip()


def first_forwarded_element(value: str) -> dict[str, str]:
    """The parameters of the first element of a ``Forwarded`` header (RFC 7239 section 4),
    names lower-cased, quoted strings unquoted.

    A quoted value may hold ``,`` and ``;``, so the header is read character by character
    rather than split; an unterminated quote ends the value.
    """
    params: dict[str, str] = {}
    name: list[str] = []
    val: list[str] = []
    in_value = quoted = escaped = False
    for ch in value:
        if quoted:
            if escaped:
                val.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            else:
                val.append(ch)
        elif ch in ",;":
            key = "".join(name).strip().lower()
            if key:
                params.setdefault(key, "".join(val).strip())
            if ch == ",":
                return params
            name, val, in_value = [], [], False
        elif ch == "=" and not in_value:
            in_value = True
        elif ch == '"' and in_value and not "".join(val).strip():
            quoted = True
        elif in_value:
            val.append(ch)
        else:
            name.append(ch)
    key = "".join(name).strip().lower()
    if key:
        params.setdefault(key, "".join(val).strip())
    return params
