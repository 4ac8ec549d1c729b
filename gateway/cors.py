"""CORS through aiohttp-cors, with the tus headers a browser client needs.

A browser can only read response headers that are exposed; a missing Upload-Offset or
Location in the expose list is the most common "cannot resume in the browser" bug.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp_cors
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from gateway.config import GatewayConfig
from gateway.http import expect_continue

ALLOW_HEADERS = (
    "Authorization", "Content-Type", "Origin", "X-Requested-With", "X-HTTP-Method-Override",
    "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata", "Upload-Defer-Length",
    "Upload-Concat", "Upload-Checksum", "Upload-Complete", "Upload-Draft-Interop-Version",
    "Upload-Incomplete", "Content-Disposition",
    # The session API's stream and the event streams (gateway/user_api.py).
    "Content-Range", "Last-Event-ID",
)
EXPOSE_HEADERS = (
    "Location", "Upload-Offset", "Upload-Length", "Upload-Metadata", "Upload-Defer-Length",
    "Upload-Concat", "Upload-Expires", "Tus-Version", "Tus-Resumable", "Tus-Max-Size",
    "Tus-Extension", "Tus-Checksum-Algorithm", "Content-Disposition", "Retry-After",
    "WWW-Authenticate", "Upload-Complete", "Upload-Incomplete", "Upload-Limit",
    "Upload-Draft-Interop-Version",
)
ALLOW_METHODS = ("POST", "HEAD", "PATCH", "DELETE", "OPTIONS", "GET")
# Browsers cap this (Chrome at 2 hours); a day means "as long as you allow".
MAX_AGE_S = 86400


def setup_cors(app: web.Application, config: GatewayConfig,
               routes: Iterable[web.AbstractRoute]) -> None:
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        expose_headers=EXPOSE_HEADERS,
        allow_headers=ALLOW_HEADERS,
        allow_methods=ALLOW_METHODS,
        max_age=MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(config.cors_origins, options))
    for route in routes:
        cors.add(route)
    # The preflight routes aiohttp-cors adds answer Expect with aiohttp's own handler, which
    # fails (500) on a value that is not text; the gateway's answers 417 like every route.
    for route in app.router.routes():
        if route.method == "OPTIONS" and \
                getattr(route, "_expect_handler", None) is _default_expect_handler:
            route._expect_handler = expect_continue
