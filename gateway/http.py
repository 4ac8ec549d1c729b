"""Small helpers shared by the handlers: request facts, Location, interim 100 responses."""

from __future__ import annotations

from aiohttp import HttpVersion11, web

from gateway.config import GatewayConfig
from gateway.keys import CONFIG, RUNTIME
from gateway.uploads import Uploads
from protocol import origin
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


async def expect_continue(request: web.Request) -> None:
    """``Expect`` on every other route: what aiohttp's own handler does, but an unknown value
    gets a fixed 417. aiohttp's default echoes the value into its answer, and a value with
    bytes that are not UTF-8 made that answer itself fail: a 500 and a traceback, before any
    middleware could see the request."""
    if request.version < (1, 1):
        return
    if request.headers.get("Expect", "").lower() != "100-continue":
        raise web.HTTPExpectationFailed(text="the only expectation understood is 100-continue")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def unrouted(request: web.Request) -> web.StreamResponse:
    """The last route, for what no other route takes: the 404 or 405 aiohttp would give,
    from a route whose ``Expect`` handling is ``expect_continue``."""
    me = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not me:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def public_origin(request: web.Request) -> tuple[str, str]:
    """The scheme and host[:port] the client used (``protocol.origin``); a malformed Host,
    or behind a proxy (``--behind-proxy``) a malformed forwarded host, is ``InvalidHost``.

    The upload URLs call this before anything else, so a request that could not be given a
    sound ``Location`` changes nothing.
    """
    config: GatewayConfig = request.app[CONFIG]
    # An HTTP/1.0 request may omit Host: then the address it arrived on names the server.
    local_host = request.host if request.version < HttpVersion11 else None
    return origin.public_origin(headers_of(request), request.scheme,
                                behind_proxy=config.behind_proxy, local_host=local_host)


def location(request: web.Request, upload_id: str) -> str:
    """Absolute URL of an upload (TUS-CRE-11).

    By default it is built from the request's own scheme and Host, so it is right for the
    client that asked. Behind a proxy (``--behind-proxy``), Forwarded or X-Forwarded-* name
    the public scheme and host instead.
    """
    scheme, host = public_origin(request)
    return f"{scheme}://{host}{request.app[CONFIG].base_path}{upload_id}"
