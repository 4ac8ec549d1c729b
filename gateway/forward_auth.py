"""``--auth forward``: the operator's own endpoint says who a request comes from.

Theory of operation
-------------------
The gateway often sits beside an application that already has a login (a session cookie, its
own tokens). Rather than teach the gateway that login, it asks the application, as nginx
``auth_request`` and Traefik forwardAuth do: a ``GET`` of ``--auth-url`` carrying the
request's ``Authorization`` and ``Cookie`` headers (and, for the endpoint's logs,
``X-Forwarded-Method``, ``X-Forwarded-Uri`` and ``X-Forwarded-Host``). The answer decides:

- 2xx with a JSON object ``{"sub": "alice", "admin": false, "db": "<database id>",
  "max_size": n, "quota_bytes": n, "quota_uploads": n}`` (only ``sub`` required): allowed,
  as that subject with those settings (``gateway.auth.user_claims`` checks each field);
- 401: ``ERR_AUTH_REQUIRED`` (the client should log in); 403: ``ERR_AUTH_INVALID``;
- anything else (a redirect, a 5xx, a timeout after ``--auth-timeout``, a body that is no
  such object or larger than 64 KiB): ``503 ERR_AUTH_UNAVAILABLE`` with Retry-After.
  A broken endpoint must not let anyone in, nor look like the client's fault.

A request with neither header is refused (401) without asking: there is nothing to decide on.

Answers are reused for ``--auth-cache`` seconds per credentials (a SHA-256 of the two
headers; the credentials themselves are not kept), so a PATCH every few MiB does not cost a
round trip each. The answer must therefore depend on the credentials only. Refusals are
cached too, so a client repeating bad credentials cannot flood the endpoint. The cache holds
at most ``--auth-cache-entries`` answers, the oldest dropped first, and concurrent requests
with the same credentials share one question.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway.auth import Principal, user_claims
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import AuthSettings
from protocol import errors

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024
# Headers passed on to the endpoint: the credentials, and what it may want to log.
CREDENTIALS = ("Authorization", "Cookie")


@dataclass(frozen=True, slots=True)
class _Answer:
    principal: Principal | None
    error: errors.TusError | None
    until: float


class ForwardAuth:
    def __init__(self, settings: AuthSettings, session: aiohttp.ClientSession, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._url = settings.url
        self._cache_s = settings.cache_s
        self._max_entries = settings.cache_entries
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
        self._session = session
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        self._asking: dict[str, asyncio.Future[_Answer]] = {}
        self.asked = 0  # questions sent to the endpoint (a figure for tests and metrics)

    async def ask(self, request: web.Request) -> Principal:
        """The request's principal, or the auth error to answer with."""
        credentials = [(name, request.headers.getall(name, [])) for name in CREDENTIALS]
        if not any(values for _, values in credentials):
            raise errors.AuthRequired()
        key = _key(credentials)
        answer = self._cached(key)
        if answer is None:
            pending = self._asking.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._asking[key] = pending
                try:
                    answer = await self._ask(request, credentials)
                    pending.set_result(answer)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: nobody else may be waiting
                    raise
                finally:
                    del self._asking[key]
                self._remember(key, answer)
            else:
                answer = await asyncio.shield(pending)
        if answer.error is not None:
            raise type(answer.error)(answer.error.detail, data=answer.error.data)
        assert answer.principal is not None
        return answer.principal

    def _cached(self, key: str) -> _Answer | None:
        answer = self._cache.get(key)
        if answer is None:
            return None
        if answer.until <= self._clock.monotonic():
            del self._cache[key]
            return None
        return answer

    def _remember(self, key: str, answer: _Answer) -> None:
        if self._cache_s <= 0 or answer.until <= self._clock.monotonic():
            return
        self._cache[key] = answer
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    async def _ask(self, request: web.Request,
                   credentials: list[tuple[str, list[str]]]) -> _Answer:
        headers: list[tuple[str, str]] = [(name, value) for name, values in credentials
                                          for value in values]
        headers += [("X-Forwarded-Method", request.method),
                    ("X-Forwarded-Uri", request.rel_url.raw_path[:2048]),
                    ("X-Forwarded-Host", request.headers.get("Host", "")[:256])]
        self.asked += 1
        until = self._clock.monotonic() + self._cache_s
        try:
            async with self._session.get(self._url, headers=headers, allow_redirects=False,
                                         timeout=self._timeout) as response:
                if response.status == 401:
                    return _Answer(None, errors.AuthRequired(), until)
                if response.status == 403:
                    return _Answer(None, errors.AuthInvalid(), until)
                if not 200 <= response.status < 300:
                    return self._unavailable(f"the endpoint answered {response.status}")
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, UnicodeError, ValueError) as exc:
            return self._unavailable(f"the endpoint could not be asked: {exc!r}")
        if len(raw) > MAX_ANSWER_BYTES:
            return self._unavailable("the endpoint's answer is too large")
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
            sub, admin, user = user_claims(payload)
            if sub is None:
                raise ValueError("sub is missing")
        except (ValueError, RecursionError) as exc:
            return self._unavailable(f"the endpoint's answer is not a decision: {exc}")
        return _Answer(Principal("sub:" + sub, sub, admin, user), None, until)

    def _unavailable(self, why: str) -> _Answer:
        # Not cached: the next request asks again.
        log.warning("forward auth failed: %s", why)
        return _Answer(None, errors.AuthUnavailable(), 0.0)


def _key(credentials: list[tuple[str, list[str]]]) -> str:
    digest = hashlib.sha256()
    for name, values in credentials:
        for value in values:
            digest.update(name.encode() + b"\0")
            digest.update(value.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()
