"""Map the tus methods on the two URLs (the collection, also without its trailing slash, and
an upload) to their handlers.

Both URLs are served by a view so that X-HTTP-Method-Override can pick the handler (tus:
"the Server MUST interpret the request as if the value of the header was the method") and so
that aiohttp-cors can answer browser preflights on the same resources.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any

import aiohttp_cors
from aiohttp import web

from gateway import handlers
from gateway import ietf as gateway_ietf
from gateway.config import GatewayConfig
from gateway.handlers import sink_retry, upload_status
from gateway.health import health
from gateway.http import defer_continue, expect_continue, headers_of, public_origin, unrouted
from gateway.metrics import metrics_handler
from gateway.page import setup_page
from gateway.user_api import setup_user_routes
from protocol import decisions, ietf
from protocol.headers import Headers

Handler = Callable[[web.Request, Headers], Awaitable[web.StreamResponse]]
# What a CORS preflight asks with (the Fetch standard: an origin, a method, header names).
PREFLIGHT = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")


class _TusView(aiohttp_cors.CorsViewMixin, web.View):
    METHODS: Mapping[str, Handler] = {}
    IETF_METHODS: dict[str, gateway_ietf.IetfHandler] = {}

    def __await__(self) -> Generator[None, None, web.StreamResponse]:
        # web.View picks a handler by attribute name and refuses any other method with a 405
        # of its own before our code runs (and aiohttp-cors then fails on that answer, so the
        # client got nothing). Here every method comes to ``_dispatch``, which answers it.
        return self._answer().__await__()

    async def _answer(self) -> web.StreamResponse:
        if self.request.method == "OPTIONS":
            return await self.options()
        return await self._dispatch()

    @classmethod
    def get_request_config(cls, request: web.Request,
                           request_method: str) -> Mapping[str, Any]:
        # aiohttp-cors finds a method's settings by attribute name and raises KeyError for a
        # method the view does not name. On an actual request every method is answered (a
        # refusal too, which a browser should be able to read), so all share the resource's
        # settings; a preflight still asks ``_get_config``, which refuses what the gateway
        # does not serve.
        config: Mapping[str, Any] = request.app[aiohttp_cors.APP_CONFIG_KEY].defaults
        return config

    async def _get_config(self, request: web.Request, origin: str,
                          request_method: str) -> Mapping[str, Any]:
        if request_method not in decisions.TUS_METHODS:
            raise KeyError(request_method)  # aiohttp-cors answers the preflight with 403
        return self.get_request_config(request, request_method)

    async def _dispatch(self) -> web.StreamResponse:
        request = self.request
        headers = headers_of(request)
        method = decisions.effective_method(request.method, headers)
        if ietf.speaks_draft(method, headers):
            # The IETF resumable uploads draft on the same URLs and uploads; it has no
            # Tus-Resumable. A GET stays a plain download unless its interop version
            # retrieves the offset with GET (9 on).
            return await gateway_ietf.dispatch(request, headers, method, self.IETF_METHODS)
        public_origin(request)  # refuse a malformed Host before anything can be created
        decisions.check_method(method, self.METHODS)
        decisions.check_version(method, headers)
        return await self.METHODS[method](request, headers)

    async def options(self) -> web.StreamResponse:
        if ("Origin" in self.request.headers
                and "Access-Control-Request-Method" in self.request.headers):
            if not all(self.request.headers.get(name, "").isascii() for name in PREFLIGHT):
                # A browser sends ASCII here. aiohttp-cors would quote the value in its 403,
                # and bytes that are not UTF-8 cannot be encoded there (a 500).
                raise web.HTTPForbidden(text="CORS preflight request failed: the origin, "
                                             "method or header names are not ASCII")
            response: web.StreamResponse = await super().options()  # type: ignore[no-untyped-call]
            return response
        return await self._dispatch()


class CollectionView(_TusView):
    METHODS = {"OPTIONS": handlers.options, "POST": handlers.post}
    IETF_METHODS = gateway_ietf.COLLECTION


class UploadView(_TusView):
    METHODS = {"OPTIONS": handlers.options, "HEAD": handlers.head, "PATCH": handlers.patch,
               "DELETE": handlers.delete, "GET": handlers.get}
    IETF_METHODS = gateway_ietf.UPLOAD


def setup_routes(app: web.Application, config: GatewayConfig) -> list[web.AbstractRoute]:
    base = config.base_path
    setup_page(app, config)  # not CORS-enabled: the page is only for same-origin use
    collection = [app.router.add_route("*", base, CollectionView, expect_handler=defer_continue)]
    if base != "/":
        # The collection without its slash is the collection too, as for tusd and @tus/server:
        # some clients strip the slash from the URL they are given (the resumable-upload CLI
        # does). Uploads keep one URL, <base_path><id>, whichever was used to create them.
        collection.append(app.router.add_route("*", base.rstrip("/"), CollectionView,
                                               expect_handler=defer_continue))
    routes = [
        *collection,
        app.router.add_route("*", base + "{upload_id}", UploadView,
                             expect_handler=defer_continue),
        app.router.add_get("/api/upload/status/{upload_id}", upload_status,
                           expect_handler=expect_continue),
        app.router.add_get("/api/system/health", health, expect_handler=expect_continue),
        app.router.add_get("/metrics", metrics_handler, expect_handler=expect_continue),
        app.router.add_post("/api/sink/retry/{upload_id}", sink_retry,
                            expect_handler=expect_continue),
    ]
    routes += setup_user_routes(app)
    # Last, so it takes only what nothing else does (see ``unrouted``).
    app.router.add_route("*", "/{path:.*}", unrouted, expect_handler=expect_continue)
    return routes
