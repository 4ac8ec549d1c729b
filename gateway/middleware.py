"""The one place where protocol errors become HTTP responses.

A ``TusError`` is answered with its own status, code and headers (no body for HEAD). Anything
else is a bug: it is logged with its traceback and answered ``ERR_INTERNAL`` 500.
Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from protocol import errors

log = logging.getLogger(__name__)

# After these the request body was not read to its end; keeping the connection would make
# the server read (and drop) the rest of a possibly huge or dead body first.
CLOSE_AFTER = frozenset({408, 423, 503})


@web.middleware
async def tus_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.TusError as exc:
        return error_response(request, exc)
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(request, errors.Internal())


def error_response(request: web.Request, exc: errors.TusError) -> web.Response:
    headers = {"Tus-Resumable": errors.TUS_VERSION, **exc.extra_headers}
    if request.method == "HEAD":
        response = web.Response(status=exc.status, headers=headers)
    else:
        response = web.Response(status=exc.status, text=exc.body(), headers=headers)
    if exc.status in CLOSE_AFTER or (exc.status == 413 and not request.content.is_eof()):
        response.force_close()
    return response
