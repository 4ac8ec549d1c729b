"""``--auth forward`` (``gateway.forward_auth``): the operator's endpoint says who is asking.

Each test runs its own small auth endpoint (a real aiohttp server on loopback: a session
cookie or a bearer token names a user; it counts the questions it is asked and can be told to
fail in the ways an endpoint fails) beside an in-process gateway asking it. What is checked
is what a client sees (status, code, headers), what the endpoint saw (how many questions,
with which headers), and what was stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.keys import STORE
from tests.conftest import ClientFactory, free_port
from tests.helpers import TUS, bearer, error_code, patch_headers

Client = TestClient[Any, Any]

DB = "0123456789abcdef0123456789abcdef"
ADMIN = "tok-admin-51b0e6d2"
TIMEOUT_S = 0.3


def cookie(session: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; session={session}"}


@dataclass
class AuthEndpoint:
    """The operator's login, as far as the gateway can tell: ``session`` cookies and bearer
    tokens name users; ``mode`` says how it answers."""

    sessions: dict[str, str] = field(default_factory=lambda: {
        "s-alice": "alice", "s-alice-2": "alice", "s-bob": "bob"})
    tokens: dict[str, str] = field(default_factory=lambda: {
        "fa-carol": "carol", "fa-dave": "dave", "fa-alice": "alice"})
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # sub -> extra fields
    mode: str = "ok"
    delay_s: float = 0.0
    calls: list[dict[str, str]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/auth"

    def user_of(self, request: web.Request) -> str | None:
        session = request.cookies.get("session")
        if session is not None:
            return self.sessions.get(session)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.tokens.get(token) if scheme.lower() == "bearer" else None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append({name: request.headers.get(name, "") for name in (
            "Authorization", "Cookie", "X-Forwarded-Method", "X-Forwarded-Uri")})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        user = self.user_of(request)
        answers: dict[str, Callable[[], web.StreamResponse]] = {
            "500": lambda: web.Response(status=500, text="boom"),
            "401": lambda: web.Response(status=401),
            "403": lambda: web.Response(status=403),
            "redirect": lambda: web.Response(status=302, headers={"Location": "/login"}),
            "garbage": lambda: web.Response(text="<html>welcome back</html>"),
            "not-object": lambda: web.json_response(["alice"]),
            "no-sub": lambda: web.json_response({"admin": False}),
            "bad-sub": lambda: web.json_response({"sub": "alice bob"}),
            "bad-db": lambda: web.json_response({"sub": "alice", "db": "not-a-database"}),
            "bad-quota": lambda: web.json_response({"sub": "alice", "quota_bytes": -1}),
            "huge": lambda: web.json_response({"sub": "alice", "pad": "x" * 70_000}),
        }
        if self.mode in answers:
            return answers[self.mode]()
        if user is None:
            return web.Response(status=401)
        return web.json_response({"sub": user, **self.settings.get(user, {})})

    async def start(self, port: int | None = None) -> None:
        app = web.Application()
        app.router.add_get("/auth", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=port)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[AuthEndpoint]:
    auth = AuthEndpoint()
    await auth.start()
    yield auth
    await auth.stop()


async def gateway(make_client: ClientFactory, endpoint: AuthEndpoint, **overrides: Any) -> Client:
    settings: dict[str, Any] = {"auth": "forward", "auth_url": endpoint.url,
                                "auth_timeout_s": TIMEOUT_S, **overrides}
    client: Client = await make_client(**settings)
    return client


async def create(client: Client, auth: dict[str, str], length: int = 11) -> Any:
    return await client.post("/files/", headers={**TUS, "Upload-Length": str(length), **auth})


async def created(client: Client, auth: dict[str, str], length: int = 11) -> str:
    r = await create(client, auth, length)
    assert r.status == 201, await r.text()
    return str(r.headers["Location"]).rsplit("/", 1)[1]


async def code_of(response: Any) -> str | None:
    return error_code(response.method, response.status, response.content_type,
                      await response.read())


async def listing(client: Client, auth: dict[str, str]) -> list[str]:
    r = await client.get("/api/uploads", headers=auth)
    assert r.status == 200, await r.text()
    return [item["id"] for item in (await r.json())["uploads"]]


Request = Callable[[Client, str, dict[str, str]], Awaitable[Any]]


async def head(client: Client, upload_id: str, auth: dict[str, str]) -> Any:
    return await client.head(f"/files/{upload_id}", headers={**TUS, **auth})


async def patch(client: Client, upload_id: str, auth: dict[str, str]) -> Any:
    return await client.patch(f"/files/{upload_id}", data=b"hello",
                              headers={**patch_headers(0), **auth})


async def status(client: Client, upload_id: str, auth: dict[str, str]) -> Any:
    return await client.get(f"/api/upload/status/{upload_id}", headers=auth)


async def delete(client: Client, upload_id: str, auth: dict[str, str]) -> Any:
    return await client.delete(f"/files/{upload_id}", headers={**TUS, **auth})


# --- who owns what --------------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_users_by_cookie_and_by_bearer_own_their_uploads(
        make_client: ClientFactory, endpoint: AuthEndpoint) -> None:
    client = await gateway(make_client, endpoint, auth_admin_tokens=(ADMIN,))
    users = {"alice": cookie("s-alice"), "bob": cookie("s-bob"),
             "carol": bearer("fa-carol"), "dave": bearer("fa-dave")}
    owned = {name: await created(client, auth) for name, auth in users.items()}

    for owner, upload_id in owned.items():
        for name, auth in users.items():
            if name == owner:
                continue
            for request in (head, patch, status, delete):
                r = await request(client, upload_id, auth)
                assert r.status == 404, (name, owner, request.__name__)
                assert request is head or await code_of(r) == "ERR_UPLOAD_NOT_FOUND"
        r = await head(client, upload_id, users[owner])
        assert r.status == 200 and r.headers["Upload-Offset"] == "0", owner
        assert await listing(client, users[owner]) == [upload_id]
    # Alice is alice whichever credentials say so: another session, or a bearer token.
    for offset, auth in ((0, cookie("s-alice-2")), (5, bearer("fa-alice"))):
        r = await client.patch(f"/files/{owned['alice']}", data=b"hello",
                               headers={**patch_headers(offset), **auth})
        assert r.status == 204, await r.text()
        assert await listing(client, auth) == [owned["alice"]]

    # The endpoint got the request's own credentials, and what it may log.
    seen = {(c["Cookie"], c["Authorization"]) for c in endpoint.calls}
    assert ("theme=dark; session=s-bob", "") in seen
    assert ("", "Bearer fa-carol") in seen
    first = endpoint.calls[0]
    assert (first["X-Forwarded-Method"], first["X-Forwarded-Uri"]) == ("POST", "/files/")

    # An admin token is known to the gateway itself: it acts on everyone's uploads without
    # asking the endpoint.
    asked = len(endpoint.calls)
    for upload_id in owned.values():
        assert (await head(client, upload_id, bearer(ADMIN))).status == 200
    assert (await delete(client, owned["dave"], bearer(ADMIN))).status == 204
    assert len(endpoint.calls) == asked
    assert (await head(client, owned["dave"], users["dave"])).status == 404


# --- the cache ------------------------------------------------------------------------------------
async def test_answers_are_reused_for_the_cache_time(make_client: ClientFactory,
                                                     endpoint: AuthEndpoint) -> None:
    client = await gateway(make_client, endpoint, auth_cache_s=1.5)
    started = time.monotonic()
    upload_id = await created(client, cookie("s-alice"))
    for request in (head, patch, status, head, head):
        assert (await request(client, upload_id, cookie("s-alice"))).status < 300
    assert time.monotonic() - started < 1.5, "too slow to say anything about the cache"
    assert len(endpoint.calls) == 1
    # Other credentials are another question, even for the same user.
    assert (await head(client, upload_id, cookie("s-alice-2"))).status == 200
    assert len(endpoint.calls) == 2
    await asyncio.sleep(1.6)
    assert (await head(client, upload_id, cookie("s-alice"))).status == 200
    assert len(endpoint.calls) == 3
    assert (await head(client, upload_id, cookie("s-alice"))).status == 200
    assert len(endpoint.calls) == 3


async def test_a_zero_cache_time_asks_every_time(make_client: ClientFactory,
                                                 endpoint: AuthEndpoint) -> None:
    client = await gateway(make_client, endpoint, auth_cache_s=0)
    upload_id = await created(client, cookie("s-alice"))
    for _ in range(3):
        assert (await head(client, upload_id, cookie("s-alice"))).status == 200
    assert len(endpoint.calls) == 4


async def test_concurrent_requests_share_one_question(make_client: ClientFactory,
                                                      endpoint: AuthEndpoint) -> None:
    client = await gateway(make_client, endpoint, auth_timeout_s=5)
    upload_id = await created(client, cookie("s-alice"))
    endpoint.delay_s = 0.3
    answers = await asyncio.gather(*(head(client, upload_id, cookie("s-alice-2"))
                                     for _ in range(5)))
    assert [r.status for r in answers] == [200] * 5
    assert len(endpoint.calls) == 2


async def test_the_cache_is_bounded(make_client: ClientFactory, endpoint: AuthEndpoint) -> None:
    """With room for 3 answers, 10 sessions leave only the last 3 remembered: asking for
    those costs nothing, the one before them is asked again."""
    client = await gateway(make_client, endpoint, auth_cache_entries=3, auth_cache_s=60)
    sessions = [f"s-many-{n}" for n in range(10)]
    for session in sessions:
        endpoint.sessions[session] = "alice"
    upload_id = await created(client, bearer("fa-alice"))
    for session in sessions:
        assert (await head(client, upload_id, cookie(session))).status == 200
    asked = len(endpoint.calls)
    assert asked == 11
    for session in reversed(sessions[-3:]):
        assert (await head(client, upload_id, cookie(session))).status == 200
    assert len(endpoint.calls) == asked
    assert (await head(client, upload_id, cookie(sessions[-4]))).status == 200
    assert len(endpoint.calls) == asked + 1
    assert (await head(client, upload_id, cookie(sessions[0]))).status == 200
    assert len(endpoint.calls) == asked + 2


# --- refusals -------------------------------------------------------------------------------------
async def test_requests_without_credentials_never_reach_the_endpoint(
        make_client: ClientFactory, endpoint: AuthEndpoint) -> None:
    client = await gateway(make_client, endpoint)
    upload_id = await created(client, cookie("s-alice"))
    asked = len(endpoint.calls)
    for other in ({}, {"X-Api-Key": "s-alice"}, {"Cookie-Ish": "session=s-alice"}):
        r = await create(client, other)
        assert r.status == 401 and await code_of(r) == "ERR_AUTH_REQUIRED"
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="tus-gateway"'
        for request in (head, patch, status, delete):
            assert (await request(client, upload_id, other)).status == 401
        assert (await client.get("/api/uploads", headers=other)).status == 401
    assert len(endpoint.calls) == asked
    assert await listing(client, cookie("s-alice")) == [upload_id]


@pytest.mark.parametrize(("mode", "status", "code"), [
    ("401", 401, "ERR_AUTH_REQUIRED"), ("403", 403, "ERR_AUTH_INVALID")])
async def test_the_endpoints_refusals_pass_through(make_client: ClientFactory,
                                                   endpoint: AuthEndpoint, mode: str,
                                                   status: int, code: str) -> None:
    client = await gateway(make_client, endpoint)
    upload_id = await created(client, cookie("s-alice"))
    endpoint.mode = mode
    for _ in range(3):
        r = await create(client, cookie("s-alice-2"))
        assert (r.status, await code_of(r)) == (status, code)
        r = await patch(client, upload_id, cookie("s-alice-2"))
        assert (r.status, await code_of(r)) == (status, code)
    assert ("WWW-Authenticate" in r.headers) == (status == 401)
    # Refusals are remembered too: repeating bad credentials does not flood the endpoint.
    assert len(endpoint.calls) == 2
    endpoint.mode = "ok"
    r = await head(client, upload_id, cookie("s-alice"))
    assert r.status == 200 and r.headers["Upload-Offset"] == "0"
    assert await listing(client, cookie("s-alice")) == [upload_id]


BROKEN = ["500", "redirect", "garbage", "not-object", "no-sub", "bad-sub", "bad-db",
          "bad-quota", "huge", "slow"]


@pytest.mark.parametrize("mode", BROKEN)
async def test_a_broken_endpoint_is_503_and_changes_nothing(make_client: ClientFactory,
                                                            endpoint: AuthEndpoint, mode: str,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    client = await gateway(make_client, endpoint)
    upload_id = await created(client, cookie("s-alice"))
    asked = len(endpoint.calls)
    if mode == "slow":
        endpoint.delay_s = TIMEOUT_S * 4
    else:
        endpoint.mode = mode
    started = time.monotonic()
    r = await create(client, cookie("s-alice-2"))
    assert (r.status, await code_of(r)) == (503, "ERR_AUTH_UNAVAILABLE"), await r.text()
    assert r.headers["Retry-After"].isdigit()
    assert time.monotonic() - started < TIMEOUT_S * 4, "the gateway waited past its timeout"
    for request in (patch, delete, status):
        r = await request(client, upload_id, cookie("s-alice-2"))
        assert (r.status, await code_of(r)) == (503, "ERR_AUTH_UNAVAILABLE")
    # A failure is not remembered: every request asked again.
    assert len(endpoint.calls) == asked + 4
    endpoint.mode, endpoint.delay_s = "ok", 0.0
    await asyncio.sleep(TIMEOUT_S * 4)  # let a slow answer in flight finish
    r = await head(client, upload_id, cookie("s-alice-2"))
    assert r.status == 200 and r.headers["Upload-Offset"] == "0"
    assert await listing(client, cookie("s-alice-2")) == [upload_id]
    # The operator is told (a warning), without a traceback: nothing in the gateway broke.
    assert any("forward auth failed" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_an_endpoint_that_is_down_is_503(make_client: ClientFactory) -> None:
    auth = AuthEndpoint()
    port = free_port()
    await auth.start(port)
    try:
        client = await gateway(make_client, auth)
        upload_id = await created(client, cookie("s-alice"))
        await auth.stop()
        r = await create(client, cookie("s-bob"))
        assert (r.status, await code_of(r)) == (503, "ERR_AUTH_UNAVAILABLE")
        assert "Retry-After" in r.headers
        r = await delete(client, upload_id, cookie("s-alice-2"))
        assert (r.status, await code_of(r)) == (503, "ERR_AUTH_UNAVAILABLE")
        await auth.start(port)
        assert await listing(client, cookie("s-bob")) == []
        assert await listing(client, cookie("s-alice-2")) == [upload_id]
    finally:
        await auth.stop()


# --- what the answer says about the user ----------------------------------------------------------
@pytest.mark.both_stores
async def test_the_answers_settings_reach_the_upload(make_client: ClientFactory,
                                                     endpoint: AuthEndpoint) -> None:
    endpoint.settings = {"alice": {"db": DB, "quota_bytes": 100},
                         "carol": {"max_size": 10}, "dave": {"quota_uploads": 1}}
    client = await gateway(make_client, endpoint)
    store = client.app[STORE].store
    upload_id = await created(client, cookie("s-alice"), 60)
    info = (await store.get(upload_id)).info
    assert (info.subject, info.database) == ("alice", DB)
    r = await create(client, cookie("s-alice"), 41)
    assert (r.status, await code_of(r)) == (429, "ERR_QUOTA_EXCEEDED")
    assert await listing(client, cookie("s-alice")) == [upload_id]
    assert (await create(client, cookie("s-alice"), 40)).status == 201
    # Bob's answer names no database and no quota: the gateway's defaults.
    bobs = await created(client, cookie("s-bob"), 1000)
    info = (await store.get(bobs)).info
    assert (info.subject, info.database) == ("bob", None)
    r = await create(client, bearer("fa-carol"), 11)
    assert (r.status, await code_of(r)) == (413, "ERR_UPLOAD_TOO_LARGE")
    assert (await create(client, bearer("fa-carol"), 10)).status == 201
    await created(client, bearer("fa-dave"), 5)
    r = await create(client, bearer("fa-dave"), 5)
    assert (r.status, await code_of(r)) == (429, "ERR_QUOTA_EXCEEDED")
