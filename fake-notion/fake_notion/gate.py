"""The fake Notion server's HTTP gate: what every request goes through before its handler.

In order (rules 1-4, 27-28 of docs/notion-contract.md §12): a request ID; the bearer token (401);
the token's rate budget (429 with Retry-After, counted for every request, each part send
included); ``Notion-Version`` (400); the route (400 ``invalid_request_url``); the fault
plan (409/5xx/529, HTML, slow, reset, or "carried out, then failed"). Every rejection is
Notion's error envelope with ``x-notion-request-id``; every request lands in the log.
Also here: the small helpers the handlers share (request context, JSON bodies, cursors).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from fake_notion.faults import UNKNOWN, Fault, RequestRecord, retry_after_seconds
from fake_notion.rules import JSON_BODY_MAX, PAGE_SIZE_MAX, PART_MAX, NotionError, validation
from fake_notion.state import FakeNotion

# An oversized part is read (and dropped) this far past its limit so that the client gets
# the 400 instead of a broken pipe; beyond that the fake stops reading.
DRAIN_SLACK = 64 * 1024 * 1024
FAKE = web.AppKey("fake_notion", FakeNotion)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the gate learned about a request, for the handlers."""

    request_id: str
    token: str
    version: str
    base: str  # this server's own origin, for upload_url and file URLs (rule 9)


CTX = web.RequestKey("notion_ctx", RequestContext)
# The page a request created, for the "created, then 503" fault (rule 28).
COMMITTED = web.RequestKey("notion_committed", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- rendering ---------------------------------------------------------------------------------
def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def json_answer(request: web.Request, body: dict[str, Any], status: int = 200) -> web.Response:
    ctx = request[CTX]
    return web.json_response({**body, "request_id": ctx.request_id}, status=status)



# --- the gate: ids, auth, rate limit, version, faults, log (rules 1-4, 27-28) ------------------
def _reset_connection(request: web.Request) -> None:
    """Abort with a TCP RST (SO_LINGER 0), the way a dying proxy drops a connection."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


async def drain(request: web.Request) -> None:
    """Read what is left of a request body so the client sees our answer, not EPIPE."""
    drained = 0
    try:
        while drained < PART_MAX + DRAIN_SLACK:
            chunk = await request.content.readany()
            if not chunk:
                return
            drained += len(chunk)
    except (OSError, asyncio.IncompleteReadError):
        return


def _error_response(error: NotionError, request_id: str) -> web.Response:
    body: dict[str, Any] = {"object": "error", "status": error.status, "code": error.code,
                            "message": error.message, "request_id": request_id}
    if error.additional_data is not None:
        body["additional_data"] = dict(error.additional_data)
    return web.json_response(body, status=error.status,
                             headers={**error.headers, "x-notion-request-id": request_id})


_FAULT_CODES: Mapping[int, tuple[str, str]] = {
    409: ("conflict_error", "Conflict occurred while saving. Please try again."),
    429: ("rate_limited", "You have been rate limited. Please try again in a few minutes."),
    500: ("internal_server_error", "Unexpected error occurred."),
    502: ("bad_gateway", "Bad Gateway"),
    503: ("service_unavailable", "Notion is unavailable, please try again later."),
    504: ("gateway_timeout", "Gateway Timeout"),
    529: ("service_overload", "Notion is overloaded, please try again later."),
}


def _fault_error(fault: Fault, committed: str | None) -> NotionError:
    code, message = _FAULT_CODES.get(fault.status, ("internal_server_error", "Injected."))
    headers: dict[str, str] = {}
    extra: dict[str, Any] | None = None
    if fault.status in (429, 529):
        # §9: both carry Retry-After; the body repeats it as a string of whole seconds.
        headers["Retry-After"] = str(fault.retry_after_s)
        extra = {"retry_after": str(fault.retry_after_s)}
        if fault.status == 429:
            extra["rate_limit_reason"] = fault.reason
    if committed is not None:
        # §9: "a write that returns 503 may already have been applied"; the wording of
        # retry_guidance is not documented, the key names are.
        extra = {"committed_resource_id": committed,
                 "retry_guidance": "The page was created; do not repeat the request."}
    return NotionError(fault.status, code, message, extra, headers)


_HTML_PAGE = ("<html><head><title>{status}</title></head><body><center><h1>{status}</h1>"
              "</center><hr><center>cloudflare</center></body></html>")


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every API request: ID, auth, rate budget, version, route, faults, log."""
    if request.path.startswith("/_fake/"):
        return await handler(request)  # hosted-file downloads are not the API
    fake = request.app[FAKE]
    request_id = str(uuid.uuid4())
    now = fake.clock.monotonic()
    route = request.match_info.route
    known = route.name is not None and request.match_info.http_exception is None
    endpoint = route.name if known and route.name else UNKNOWN
    token: str | None = None
    counted = False
    fault: Fault | None = None
    try:
        token = _authenticate(fake, request)
        _rate_limit(fake, token, now)
        counted = True
        version = _check_version(fake, request)
        if endpoint == UNKNOWN:
            raise NotionError(400, "invalid_request_url", "Invalid request URL.")
        request[CTX] = RequestContext(request_id, token, version, str(request.url.origin()))
        fault = fake.faults.take(endpoint)
        response = await (handler(request) if fault is None
                          else _with_fault(request, handler, fault))
    except NotionError as error:
        await drain(request)
        response = _error_response(error, request_id)
    except _NoAnswer:
        fake.log.append(RequestRecord(now, token, request.method, request.path, endpoint,
                                      0, fault.label() if fault else None, counted))
        raise asyncio.CancelledError from None  # nothing to answer on a dead socket
    except asyncio.CancelledError:
        # The client went away and the server cancelled the handler: logged as status 0.
        fake.log.append(RequestRecord(now, token, request.method, request.path, endpoint,
                                      0, fault.label() if fault else None, counted))
        raise
    response.headers.setdefault("x-notion-request-id", request_id)
    fake.log.append(RequestRecord(now, token, request.method, request.path, endpoint,
                                  response.status, fault.label() if fault else None,
                                  counted))
    return response


class _NoAnswer(Exception):
    """No answer will be sent (a reset on purpose, or the client left during a delay)."""


async def _with_fault(request: web.Request, handler: Handler,
                      fault: Fault) -> web.StreamResponse:
    if not fault.after:
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)  # real time: client timeouts are real
            if request.transport is None or request.transport.is_closing():
                # The client gave up while we stalled: the request is never carried out,
                # whether or not this server cancels handlers on disconnect.
                raise _NoAnswer
        if fault.kind == "slow":
            return await handler(request)
        if fault.kind == "reset":
            _reset_connection(request)
            raise _NoAnswer
        await drain(request)
        if fault.kind == "html":
            return web.Response(status=fault.status, content_type="text/html",
                                text=_HTML_PAGE.format(status=fault.status))
        raise _fault_error(fault, None)
    # after=True: carry the request out, then fail in its place (an ambiguous outcome).
    response = await handler(request)
    if fault.delay_s:
        await asyncio.sleep(fault.delay_s)
    if response.status >= 400 or fault.kind == "slow":
        return response
    if fault.kind == "reset":
        _reset_connection(request)
        raise _NoAnswer
    if fault.kind == "html":
        return web.Response(status=fault.status, content_type="text/html",
                            text=_HTML_PAGE.format(status=fault.status))
    committed = request.get(COMMITTED) if fault.status == 503 else None
    raise _fault_error(fault, committed)


def _authenticate(fake: FakeNotion, request: web.Request) -> str:
    """Rule 1: ``Authorization: Bearer <token>`` with a registered token; no prefix rules."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or token not in fake.bots:
        raise NotionError(401, "unauthorized", "API token is invalid.")
    return token


def _rate_limit(fake: FakeNotion, token: str, now: float) -> None:
    """Rule 27: every request, each part send included, spends from the token's budget."""
    if token in fake.blocked:
        raise NotionError(429, "rate_limited", "This integration has been blocked.",
                          {"rate_limit_reason": "public_api_request_blocked"})
    wait = fake.limiter.acquire(token, now)
    if wait is not None:
        seconds = retry_after_seconds(wait)
        raise NotionError(
            429, "rate_limited",
            "You have been rate limited. Please try again in a few minutes.",
            {"rate_limit_reason": "public_api_request_rate_limit",
             "retry_after": str(seconds)},
            {"Retry-After": str(seconds)})


def _check_version(fake: FakeNotion, request: web.Request) -> str:
    """Rule 2."""
    version = request.headers.get("Notion-Version")
    if version is None:
        raise NotionError(400, "missing_version",
                          "Notion-Version header failed validation: Notion-Version header "
                          "should be defined, instead was `undefined`.")
    if version not in fake.config.accepted_versions:
        accepted = ", ".join(sorted(fake.config.accepted_versions))
        raise NotionError(400, fake.config.bad_version_code,
                          f"Notion-Version header failed validation: Notion-Version header "
                          f"should be one of {accepted}, instead was `{version[:40]}`.")
    return version


async def json_body(request: web.Request, *, empty_ok: bool = True) -> Any:
    """Rule 3: JSON bodies; an empty body reads as ``{}`` where the API allows it."""
    raw = bytearray()
    while chunk := await request.content.readany():
        raw += chunk
        if len(raw) > JSON_BODY_MAX:
            raise validation(f"Request body too large: the limit is {JSON_BODY_MAX} bytes.")
    if not raw.strip():
        if empty_ok:
            return {}
        raise validation("body failed validation: body should be defined, instead was "
                         "`undefined`.")
    try:
        return json.loads(raw)
    except ValueError:
        raise NotionError(400, "invalid_json", "Error parsing JSON body.") from None


def body_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise validation("body failed validation: body should be an object.")
    return body


# --- pagination (rules 22, 25) ------------------------------------------------------------------
def page_size_of(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= PAGE_SIZE_MAX:
        raise validation(f"page_size should be an integer between 1 and {PAGE_SIZE_MAX}, "
                         f"instead was `{raw[:20]}`.")
    return int(raw)


def cursor_index(ids: list[str], cursor: str | None) -> int:
    """Cursors are opaque to clients; here one is the ID of the first item of its page."""
    if cursor is None:
        return 0
    try:
        return ids.index(cursor)
    except ValueError:
        raise validation(f"start_cursor `{cursor[:64]}` is not a valid cursor.") from None


