"""The one place where protocol errors become HTTP responses.

A ``TusError`` is answered with its own status, code and headers (no body for HEAD), in the
form the request speaks (``error_response``). Anything
else is a bug: it is logged with its traceback and answered ``ERR_INTERNAL`` 500, except a
full disk (ENOSPC, EDQUOT), which is a condition of the machine: 507 with Retry-After and one
warning. Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.keys import DRAFT
from gateway.state.spool import is_disk_full
from protocol import errors, ietf

log = logging.getLogger(__name__)

# After these the body is dead or abandoned on purpose: close instead of reading the rest.
# Other errors let aiohttp read and drop a leftover body for a bounded time, so a client
# that sends its whole body before reading still sees the 4xx (tusd issue 1371).
CLOSE_AFTER = frozenset({errors.RequestTimeout.code, errors.UploadInterrupted.code,
                         errors.ServerShutdown.code, errors.ClientDisconnected.code})


@web.middleware
async def tus_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.TusError as exc:
        response = error_response(request, exc)
        if exc.code in CLOSE_AFTER and not request.content.is_eof():
            # Send the answer, then close at once; otherwise aiohttp would linger reading
            # the rest of a dead or abandoned body. (Closing first would drop the answer.)
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError:
                pass  # the client is already gone: nobody to answer, nothing went wrong
            if request.protocol is not None:
                request.protocol.force_close()
        return response
    except (web.HTTPException, asyncio.CancelledError):
        raise
    except OSError as exc:
        if is_disk_full(exc):
            # A record that found the disk full (a body's bytes arrive as
            # InsufficientStorage from the spool, which logs them). Operational, not a bug:
            # one warning, no traceback; the record writes leave nothing half-done.
            log.warning("no space left on the disk in %s %s: %s", request.method,
                        request.path, exc)
            return error_response(request, errors.InsufficientStorage())
        log.exception("unexpected I/O error in %s %s", request.method, request.path)
        return error_response(request, errors.Internal())
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(request, errors.Internal())


def error_response(request: web.Request, exc: errors.TusError) -> web.Response:
    """The answer in the form the request speaks: problem details (RFC 9457) for the IETF
    draft, tus's otherwise (JSON on the API endpoints and for errors read by machine)."""
    if DRAFT in request:
        answer = ietf.problem(request[DRAFT], exc)
        if request.method == "HEAD":
            response = web.Response(status=answer.status, headers=answer.headers)
        else:
            response = web.Response(status=answer.status, headers=answer.headers,
                                    body=json.dumps(answer.body).encode(),
                                    content_type=ietf.PROBLEM_JSON)
    else:
        headers = {"Tus-Resumable": errors.TUS_VERSION, **exc.extra_headers}
        if request.method == "HEAD":
            response = web.Response(status=exc.status, headers=headers)
        elif exc.json_body or request.path.startswith("/api/"):
            # The JSON endpoints answer errors in JSON too, as do errors whose details are
            # read by machine.
            response = web.json_response(exc.as_json(), status=exc.status, headers=headers)
        else:
            response = web.Response(status=exc.status, text=exc.body(), headers=headers)
    if exc.code in CLOSE_AFTER:
        response.force_close()
    return response
