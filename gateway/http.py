"""Small helpers shared by the handlers: request facts, Location, interim 100 responses."""

from __future__ import annotations

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.keys import CONFIG, RUNTIME
from gateway.uploads import Uploads
from protocol.decisions import BodyFacts
from protocol.headers import Headers


def uploads_of(request: web.Request) -> Uploads:
    return request.app[RUNTIME].require()


def headers_of(request: web.Request) -> Headers:
    return Headers(list(request.headers.items()))


def body_facts(request: web.Request) -> BodyFacts:
    length = request.content_length
    present = request.body_exists and (length is None or length > 0)
    return BodyFacts(present, length, request.headers.get("Content-Type"))


async def send_continue(request: web.Request) -> None:
    """Answer ``Expect: 100-continue`` only after every check passed (TUS-CWU-04).

    The route's expect handler does nothing, so a request we reject never transfers its body.
    """
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def defer_continue(request: web.Request) -> None:
    return None


def location(request: web.Request, upload_id: str) -> str:
    """Absolute URL of an upload (TUS-CRE-11).

    By default it is built from the request's own scheme and Host, so it is right for the
    client that asked. Behind a proxy (``--behind-proxy``), Forwarded or X-Forwarded-* name
    the public scheme and host instead.
    """
    config: GatewayConfig = request.app[CONFIG]
    scheme, host = request.scheme, request.host
    if config.behind_proxy:
        scheme, host = _forwarded(request, scheme, host)
    return f"{scheme}://{host}{config.base_path}{upload_id}"


def _forwarded(request: web.Request, scheme: str, host: str) -> tuple[str, str]:
    forwarded = request.headers.get("Forwarded")
    if forwarded:
        # RFC 7239: the first element was added by the proxy nearest the client.
        for pair in forwarded.split(",", 1)[0].split(";"):
            name, _, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if name.lower() == "proto" and value in ("http", "https"):
                scheme = value
            elif name.lower() == "host" and _plausible_host(value):
                host = value
        return scheme, host
    fwd_host = request.headers.get("X-Forwarded-Host", "").split(",", 1)[0].strip()
    fwd_proto = request.headers.get("X-Forwarded-Proto", "").split(",", 1)[0].strip().lower()
    if fwd_host and _plausible_host(fwd_host):
        host = fwd_host
    if fwd_proto in ("http", "https"):
        scheme = fwd_proto
    return scheme, host


def _plausible_host(value: str) -> bool:
    """A host[:port] with no characters that could break out of a URL."""
    return bool(value) and len(value) <= 255 and all(
        ch.isalnum() or ch in "-.:[]_" for ch in value)
