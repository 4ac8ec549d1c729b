"""Map the tus methods on the two URLs to their handlers.

Both URLs are served by a view so that X-HTTP-Method-Override can pick the handler (tus:
"the Server MUST interpret the request as if the value of the header was the method") and so
that aiohttp-cors can answer browser preflights on the same resources.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import aiohttp_cors
from aiohttp import web

from gateway import handlers
from gateway import ietf as gateway_ietf
from gateway.config import GatewayConfig
from gateway.handlers import sink_retry, upload_status
from gateway.health import health
from gateway.http import defer_continue, headers_of
from gateway.metrics import metrics_handler
from gateway.page import setup_page
from protocol import decisions, errors, ietf
from protocol.headers import Headers

Handler = Callable[[web.Request, Headers], Awaitable[web.StreamResponse]]


class _TusView(aiohttp_cors.CorsViewMixin, web.View):
    METHODS: Mapping[str, Handler] = {}
    IETF_METHODS: dict[str, gateway_ietf.IetfHandler] = {}

    async def _dispatch(self) -> web.StreamResponse:
        request = self.request
        headers = headers_of(request)
        method = decisions.effective_method(request.method, headers)
        if ietf.INTEROP_HEADER in headers and method != "GET":
            # The IETF resumable uploads draft on the same URLs and uploads; it has no
            # Tus-Resumable. A GET stays a plain download whatever it carries.
            return await gateway_ietf.dispatch(request, headers, method, self.IETF_METHODS)
        decisions.check_version(method, headers)
        handler = self.METHODS.get(method)
        if handler is None:
            raise errors.MethodNotAllowed(
                headers={"Allow": ", ".join(sorted(self.METHODS))})
        return await handler(request, headers)

    async def options(self) -> web.StreamResponse:
        if ("Origin" in self.request.headers
                and "Access-Control-Request-Method" in self.request.headers):
            response: web.StreamResponse = await super().options()  # type: ignore[no-untyped-call]
            return response
        return await self._dispatch()

    get = head = post = put = patch = delete = _dispatch


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
    return [
        app.router.add_route("*", base, CollectionView, expect_handler=defer_continue),
        app.router.add_route("*", base + "{upload_id}", UploadView,
                             expect_handler=defer_continue),
        app.router.add_get("/api/upload/status/{upload_id}", upload_status),
        app.router.add_get("/api/system/health", health),
        app.router.add_get("/metrics", metrics_handler),
        app.router.add_post("/api/sink/retry/{upload_id}", sink_retry),
    ]
