"""Ownership of uploads with auth on (``gateway.access.owned``, ``gateway.auth.check_owner``).

Every route that names an upload is tried by its creator, by another user, by an admin, with
no credentials and with credentials nobody accepts, on in-process gateways (a real HTTP
server on loopback) keeping their state on disk and in a real redis-server: the creator and
an admin get through, another user meets the 404 of an unknown id, and the upload is exactly
as it was afterwards (offset, length, status, still there) with nothing created in anybody's
name. Then the same with HMAC subjects, the signed download links, and ``GET /api/uploads``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from gateway.auth import mint_token
from gateway.clock import ManualClock
from tests.conftest import ClientFactory
from tests.helpers import OCTETS, TUS, bearer, error_code, patch_headers, path_of

Client = TestClient[Any, Any]

ALICE = "tok-alice-5d1e8a0c"
BOB = "tok-bob-9b27f4e1"
ADMIN = "tok-admin-3c6d0f7a"
NOBODY = "tok-nobody-00000000"
SECRET = "7c1e9a3f5b2d4e6081a9c3b7d5f2e4a6"
INTEROP = {"Upload-Draft-Interop-Version": "6"}
HELLO = b"hello"  # the first 5 of 11 bytes of an open upload
REST = b" world"
NOT_FOUND = (404, "ERR_UPLOAD_NOT_FOUND")

# Who else tries, and what each must get: another user the 404 of an unknown id, no
# credentials 401, credentials nobody accepts 403.
REFUSALS = [("bob", bearer(BOB), NOT_FOUND),
            ("nobody", {}, (401, "ERR_AUTH_REQUIRED")),
            ("bad token", bearer(NOBODY), (403, "ERR_AUTH_INVALID"))]


@dataclass(frozen=True)
class Answer:
    status: int
    code: str | None
    body: bytes = b""


@dataclass
class Upload:
    upload_id: str
    others: list[str] = field(default_factory=list)  # more ids a route names (partials)

    @property
    def path(self) -> str:
        return f"/files/{self.upload_id}"


async def bearer_gateway(make_client: ClientFactory, **overrides: Any) -> Client:
    client: Client = await make_client(auth="bearer",
                                       auth_tokens=(f"alice={ALICE}", f"bob={BOB}"),
                                       auth_admin_tokens=(ADMIN,), **overrides)
    return client


async def answer_of(response: Any) -> Answer:
    body = await response.read()
    return Answer(response.status, error_code(response.method, response.status,
                                              response.content_type, body), body)


async def create(client: Client, auth: dict[str, str], length: int = 11,
                 body: bytes = b"", **extra: str) -> str:
    """A new upload of ``length`` bytes holding ``body``; its id."""
    headers = {**TUS, "Upload-Length": str(length), **auth, **extra}
    if body:
        headers["Content-Type"] = OCTETS
    r = await client.post("/files/", data=body or None, headers=headers)
    assert r.status == 201, await r.text()
    return URL(r.headers["Location"]).name


async def status_of(client: Client, upload_id: str, auth: dict[str, str]) -> Any:
    r = await client.get(f"/api/upload/status/{upload_id}", headers=auth)
    assert r.status == 200, await r.text()
    return await r.json()


async def settled(client: Client, upload_id: str, auth: dict[str, str]) -> Any:
    """The status once the sink has taken a finished upload (it moves on by itself until
    then, which would look like a change a refused request made)."""
    deadline = time.monotonic() + 10
    while True:
        body = await status_of(client, upload_id, auth)
        if body["status"] == "drained":
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)


async def open_upload(client: Client, auth: dict[str, str]) -> Upload:
    return Upload(await create(client, auth, body=HELLO))


async def finished_upload(client: Client, auth: dict[str, str]) -> Upload:
    upload = Upload(await create(client, auth, body=HELLO + REST))
    await settled(client, upload.upload_id, auth)
    return upload


async def two_partials(client: Client, auth: dict[str, str]) -> Upload:
    first = await create(client, auth, 5, HELLO, **{"Upload-Concat": "partial"})
    second = await create(client, auth, 6, REST, **{"Upload-Concat": "partial"})
    return Upload(first, [second])


async def snapshot(client: Client, upload: Upload) -> Any:
    """What the owner sees of the upload (and of any other upload the route names)."""
    seen: list[tuple[object, ...]] = []
    for upload_id in (upload.upload_id, *upload.others):
        r = await client.head(f"/files/{upload_id}", headers={**TUS, **bearer(ALICE)})
        if r.status != 200:
            seen.append(("gone", r.status))
            continue
        status = await status_of(client, upload_id, bearer(ALICE))
        seen.append((r.headers["Upload-Offset"], r.headers.get("Upload-Length"),
                     status["status"], status["offset"]))
    return seen


async def listing(client: Client, token: str) -> list[str]:
    r = await client.get("/api/uploads", params={"limit": "100"}, headers=bearer(token))
    assert r.status == 200, await r.text()
    return [item["id"] for item in (await r.json())["uploads"]]


async def offset_is(client: Client, upload: Upload, auth: dict[str, str], offset: int) -> None:
    r = await client.head(upload.path, headers={**TUS, **auth})
    assert r.status == 200 and r.headers["Upload-Offset"] == str(offset)


async def is_gone(client: Client, upload: Upload, auth: dict[str, str]) -> None:
    # With auth on a removed upload answers 404, not 410: its tombstone names no owner.
    r = await client.head(upload.path, headers={**TUS, **auth})
    assert r.status == 404


# --- the routes --------------------------------------------------------------------------------
Probe = Callable[[Client, Upload, dict[str, str]], Awaitable[Answer]]
Check = Callable[[Client, Upload, dict[str, str]], Awaitable[None]]


async def tus_head(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.head(up.path, headers={**TUS, **auth}))


async def tus_patch(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.patch(up.path, data=b" worl",
                                              headers={**patch_headers(5), **auth}))


async def tus_delete(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.delete(up.path, headers={**TUS, **auth}))


async def tus_get(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.get(up.path, headers={**TUS, **auth}))


async def concat_final(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    named = " ".join(f"/files/{i}" for i in (up.upload_id, *up.others))
    return await answer_of(await client.post("/files/", headers={
        **TUS, **auth, "Upload-Concat": f"final;{named}"}))


async def ietf_head(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.head(up.path, headers={**INTEROP, **auth}))


async def ietf_patch(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.patch(up.path, data=b" worl", headers={
        **INTEROP, **auth, "Upload-Offset": "5", "Upload-Complete": "?0",
        "Content-Type": "application/partial-upload"}))


async def ietf_delete(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.delete(up.path, headers={**INTEROP, **auth}))


async def api_status(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.get(f"/api/upload/status/{up.upload_id}",
                                            headers=auth))


async def sink_retry(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.post(f"/api/sink/retry/{up.upload_id}",
                                             headers=auth))


async def events(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    # The stream does not end by itself: an allowed one is judged by its head and first
    # event, then closed.
    async with client.get(f"/api/upload/events/{up.upload_id}", headers=auth) as r:
        if r.status != 200:
            return await answer_of(r)
        assert r.content_type == "text/event-stream", r.content_type
        first = await asyncio.wait_for(first_event(r.content), 10)
        assert b"event: status" in first and up.upload_id.encode() in first, first
        return Answer(r.status, None, first)


async def first_event(stream: Any) -> bytes:
    """The lines of the first server-sent event (up to the blank line that ends it, CRLF or
    LF as the server writes them)."""
    lines: list[bytes] = []
    while line := await stream.readline():  # b"" only at the end of the stream
        if line.strip():
            lines.append(line)
        elif lines:
            break
    return b"".join(lines)


async def session_stream(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.post(f"/api/upload/stream/{up.upload_id}",
                                             data=b" worl",
                                             headers={**auth, "Upload-Offset": "5"}))


async def session_abort(client: Client, up: Upload, auth: dict[str, str]) -> Answer:
    return await answer_of(await client.post(f"/api/upload/abort/{up.upload_id}",
                                             headers=auth))


async def moved_to_10(client: Client, up: Upload, auth: dict[str, str]) -> None:
    await offset_is(client, up, auth, 10)


async def unchanged(client: Client, up: Upload, auth: dict[str, str]) -> None:
    await offset_is(client, up, auth, 5)


async def whole_file(client: Client, up: Upload, auth: dict[str, str]) -> None:
    r = await client.get(up.path, headers={**TUS, **auth})
    assert r.status == 200 and await r.read() == HELLO + REST


async def final_made(client: Client, up: Upload, auth: dict[str, str]) -> None:
    # The partials are still there (a final reads them, it does not consume them).
    await offset_is(client, up, auth, 5)


@dataclass(frozen=True)
class Route:
    name: str
    prepare: Callable[[Client, dict[str, str]], Awaitable[Upload]]
    probe: Probe
    ok: int  # what the owner and an admin get
    after: Check  # what the owner's (or admin's) request did, seen by the one who sent it
    ok_code: str | None = None


ROUTES = [
    Route("tus HEAD", open_upload, tus_head, 200, unchanged),
    Route("tus PATCH", open_upload, tus_patch, 204, moved_to_10),
    Route("tus DELETE", open_upload, tus_delete, 204, is_gone),
    Route("tus GET", finished_upload, tus_get, 200, whole_file),
    Route("concat final", two_partials, concat_final, 201, final_made),
    Route("draft HEAD", open_upload, ietf_head, 204, unchanged),
    Route("draft PATCH", open_upload, ietf_patch, 201, moved_to_10),
    Route("draft DELETE", open_upload, ietf_delete, 204, is_gone),
    Route("status", open_upload, api_status, 200, unchanged),
    # The directory sink cannot retry: its 409 shows the request got past the owner check.
    Route("sink retry", open_upload, sink_retry, 409, unchanged, "ERR_SINK_CANNOT_RETRY"),
    Route("events", open_upload, events, 200, unchanged),
    Route("session stream", open_upload, session_stream, 200, moved_to_10),
    Route("session abort", open_upload, session_abort, 200, is_gone),
]


@pytest.mark.both_stores
@pytest.mark.parametrize("route", ROUTES, ids=[r.name for r in ROUTES])
async def test_only_the_owner_or_an_admin_reaches_an_upload(make_client: ClientFactory,
                                                            route: Route) -> None:
    client = await bearer_gateway(make_client)
    target = await route.prepare(client, bearer(ALICE))
    spare = await route.prepare(client, bearer(ALICE))  # for the admin
    bobs = await create(client, bearer(BOB))
    before = await snapshot(client, target)
    lists_before = (await listing(client, ALICE), await listing(client, BOB))
    assert lists_before[1] == [bobs]

    for who, auth, expected in REFUSALS:
        got = await route.probe(client, target, auth)
        code = None if route.probe in (tus_head, ietf_head) else expected[1]
        assert (got.status, got.code) == (expected[0], code), (who, got)
        assert await snapshot(client, target) == before, who
        assert (await listing(client, ALICE), await listing(client, BOB)) == lists_before, who

    for owner, upload in ((ALICE, target), (ADMIN, spare)):
        got = await route.probe(client, upload, bearer(owner))
        assert got.status == route.ok, (owner, got)
        assert got.code == route.ok_code, (owner, got)
        await route.after(client, upload, bearer(ALICE))


@pytest.mark.both_stores
async def test_a_final_may_not_join_another_users_partial(make_client: ClientFactory) -> None:
    """Bob names one of his partials and one of alice's: refused as if hers did not exist,
    and nothing is created, not even under his name."""
    client = await bearer_gateway(make_client)
    hers = await create(client, bearer(ALICE), 5, HELLO, **{"Upload-Concat": "partial"})
    his = await create(client, bearer(BOB), 6, REST, **{"Upload-Concat": "partial"})
    unknown = uuid.uuid4().hex
    for named in (f"/files/{his} /files/{hers}", f"/files/{hers} /files/{his}"):
        r = await client.post("/files/", headers={**TUS, **bearer(BOB),
                                                  "Upload-Concat": f"final;{named}"})
        assert (r.status, error_code("POST", r.status, r.content_type, await r.read())) \
            == NOT_FOUND
    r = await client.post("/files/", headers={**TUS, **bearer(BOB),
                                              "Upload-Concat": f"final;/files/{his} "
                                                               f"/files/{unknown}"})
    assert r.status == 404
    assert await listing(client, BOB) == [his]
    assert await listing(client, ALICE) == [hers]
    # The admin may join both users' partials.
    r = await client.post("/files/", headers={**TUS, **bearer(ADMIN),
                                              "Upload-Concat": f"final;/files/{hers} "
                                                               f"/files/{his}"})
    assert r.status == 201, await r.text()
    final = path_of(r.headers["Location"])
    r = await client.get(final, headers=bearer(ADMIN))
    assert r.status == 200 and await r.read() == HELLO + REST
    # ... and the final is the admin's: neither user sees it.
    for token in (ALICE, BOB):
        r = await client.head(final, headers={**TUS, **bearer(token)})
        assert r.status == 404, token


async def test_another_users_upload_answers_as_an_unknown_id(
        make_client: ClientFactory) -> None:
    """The same status, code and message: an id reveals nothing about its upload."""
    client = await bearer_gateway(make_client)
    hers = await finished_upload(client, bearer(ALICE))
    unknown = Upload(uuid.uuid4().hex)
    for probe in (tus_get, tus_patch, tus_delete, api_status, session_abort, ietf_delete):
        seen = await probe(client, hers, bearer(BOB))
        never = await probe(client, unknown, bearer(BOB))
        assert (seen.status, seen.code, seen.body) == (never.status, never.code, never.body)
        assert seen.status == 404
    await whole_file(client, hers, bearer(ALICE))


@pytest.mark.both_stores
async def test_a_removed_upload_is_404_to_everybody_with_auth_on(
        make_client: ClientFactory) -> None:
    client = await bearer_gateway(make_client)
    upload = await open_upload(client, bearer(ALICE))
    assert (await tus_delete(client, upload, bearer(ALICE))).status == 204
    for token in (ALICE, BOB, ADMIN):
        for probe in (tus_head, tus_get, tus_patch, api_status):
            got = await probe(client, upload, bearer(token))
            assert got.status == 404, (token, probe.__name__, got)
    # Without auth the tombstone still answers 410, as before.
    plain: Client = await make_client()
    upload = await open_upload(plain, {})
    assert (await tus_delete(plain, upload, {})).status == 204
    got = await tus_get(plain, upload, {})
    assert (got.status, got.code) == (410, "ERR_UPLOAD_GONE")


async def test_without_auth_the_url_is_the_capability(make_client: ClientFactory) -> None:
    """Nothing changes without auth: any client holding the URL continues, downloads and
    deletes, whatever Authorization it sends."""
    client: Client = await make_client()
    upload = await open_upload(client, {})
    assert (await tus_patch(client, upload, bearer(BOB))).status == 204
    assert (await session_stream(client, upload, {})).status == 200
    assert (await api_status(client, upload, bearer(NOBODY))).status == 200
    assert (await tus_delete(client, upload, bearer(ALICE))).status == 204


async def test_bare_bearer_tokens_are_subjects_of_their_own(make_client: ClientFactory) -> None:
    """A token listed without a name is an anonymous user of its own; two such tokens do not
    see each other's uploads, nor does a named user see theirs."""
    first, second = "tok-bare-1e0b7c55", "tok-bare-93fa2d08"
    client: Client = await make_client(auth="bearer",
                                       auth_tokens=(first, f"={second}", f"alice={ALICE}"))
    upload = await open_upload(client, bearer(first))
    for stranger in (second, ALICE):
        for probe in (tus_head, tus_patch, api_status, tus_delete):
            got = await probe(client, upload, bearer(stranger))
            assert got.status == 404, (stranger, probe.__name__, got)
        assert await listing(client, stranger) == []
    await offset_is(client, upload, bearer(first), 5)
    assert await listing(client, first) == [upload.upload_id]


# --- HMAC subjects ------------------------------------------------------------------------------
def hmac_token(ttl_s: float = 600, **claims: Any) -> dict[str, str]:
    return bearer(mint_token(SECRET, ttl_s, now=time.time(), **claims))


@pytest.mark.both_stores
async def test_hmac_subjects_own_their_uploads(make_client: ClientFactory) -> None:
    client: Client = await make_client(auth="hmac", auth_secret=SECRET)
    alice, alice_again = hmac_token(sub="alice"), hmac_token(900, sub="alice")
    assert alice != alice_again
    bob, admin = hmac_token(sub="bob"), hmac_token(admin=True)
    # Tokens that name nobody: each is a subject of its own.
    anon, other_anon = hmac_token(600), hmac_token(601)
    assert anon != other_anon

    hers = await open_upload(client, alice)
    theirs = await open_upload(client, anon)
    for upload, owners, strangers in ((hers, [alice, alice_again, admin], [bob, anon]),
                                      (theirs, [anon, admin], [other_anon, alice])):
        before = await offset_and_status(client, upload, owners[0])
        for stranger in strangers:
            for probe in (tus_head, tus_patch, api_status, tus_delete, session_abort):
                got = await probe(client, upload, stranger)
                assert got.status == 404, (probe.__name__, got)
            assert await offset_and_status(client, upload, owners[0]) == before
        for owner in owners:
            assert (await tus_head(client, upload, owner)).status == 200
            assert (await api_status(client, upload, owner)).status == 200
    # A second token of the same subject continues the upload.
    assert (await tus_patch(client, hers, alice_again)).status == 204
    await offset_is(client, hers, alice, 10)
    # Listings follow the subject, not the token.
    assert await hmac_listing(client, alice_again) == [hers.upload_id]
    assert await hmac_listing(client, anon) == [theirs.upload_id]
    assert await hmac_listing(client, other_anon) == []
    assert await hmac_listing(client, bob) == []

    refusals = [({}, (401, "ERR_AUTH_REQUIRED")),
                (hmac_token(-60, sub="alice"), (401, "ERR_AUTH_EXPIRED")),
                (bearer(mint_token("x" * 32, 600, now=time.time(), sub="alice")),
                 (403, "ERR_AUTH_INVALID"))]
    for auth, expected in refusals:
        got = await tus_get(client, hers, auth)
        assert (got.status, got.code) == expected
        got = await tus_patch(client, hers, auth)
        assert (got.status, got.code) == expected
    await offset_is(client, hers, alice, 10)
    assert (await tus_delete(client, theirs, admin)).status == 204
    await is_gone(client, theirs, anon)


async def offset_and_status(client: Client, upload: Upload, auth: dict[str, str]) -> Any:
    body = await status_of(client, upload.upload_id, auth)
    return body["offset"], body["status"]


async def hmac_listing(client: Client, auth: dict[str, str]) -> list[str]:
    r = await client.get("/api/uploads", headers=auth)
    assert r.status == 200, await r.text()
    return [item["id"] for item in (await r.json())["uploads"]]


# --- signed download links -----------------------------------------------------------------------
def with_query(link: str, upload_id: str | None = None, **changes: str) -> str:
    url = URL(link)
    path = url.path if upload_id is None else f"/files/{upload_id}"
    query = {**url.query, **changes}
    return str(URL(path).with_query({k: v for k, v in query.items() if v != ""}))


def flip(text: str) -> str:
    return text[:-1] + ("A" if text[-1] != "A" else "B")


async def test_signed_download_links(make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = await bearer_gateway(make_client, clock=clock, link_ttl_s=60)
    upload = await finished_upload(client, bearer(ALICE))
    other = await finished_upload(client, bearer(ALICE))
    unfinished = await open_upload(client, bearer(ALICE))
    assert (await status_of(client, unfinished.upload_id, bearer(ALICE)))["links"][
        "download"] is None

    link = (await status_of(client, upload.upload_id, bearer(ALICE)))["links"]["download"]
    assert link.startswith(f"http://127.0.0.1:{client.server.port}/files/{upload.upload_id}?")
    exp = int(URL(link).query["exp"])
    # The ttl, rounded up to the next whole minute (the link stays the same for a minute).
    assert int(clock.now() + 60) < exp <= int(clock.now() + 60) + 60 and exp % 60 == 0
    local = str(URL(link).relative())

    # Valid: no credentials needed, nor looked at.
    for auth in ({}, bearer(BOB), bearer(NOBODY)):
        r = await client.get(local, headers=auth)
        assert r.status == 200 and await r.read() == HELLO + REST, auth

    invalid = [
        with_query(link, sig=flip(URL(link).query["sig"])),       # signature altered
        with_query(link, exp=str(exp + 1)),                        # expiry moved on
        with_query(link, sig=""),                                  # exp alone
        with_query(link, exp=""),                                  # sig alone
        with_query(link, upload_id=other.upload_id),               # another upload
        with_query(link, upload_id=uuid.uuid4().hex),              # an id that never was
        with_query(link, sig="A" * 500),                           # too long to be ours
        with_query(link, exp="1" * 40),
    ]
    for bad in invalid:
        r = await client.get(bad)
        assert (r.status, error_code("GET", r.status, r.content_type, await r.read())) == (
            403, "ERR_LINK_INVALID"), bad

    # A link downloads; it does nothing else.
    for method in ("HEAD", "DELETE", "PATCH"):
        r = await client.request(method, local, headers=TUS)
        assert r.status == 401, method
    await whole_file(client, upload, bearer(ALICE))

    clock.advance(exp - clock.now() - 1)
    assert (await client.get(local)).status == 200
    clock.advance(1)
    r = await client.get(local)
    assert (r.status, error_code("GET", r.status, r.content_type, await r.read())) == (
        403, "ERR_LINK_EXPIRED")
    # Past its time a forged link is still told apart from an expired one.
    r = await client.get(invalid[0])
    assert r.status == 403 and "ERR_LINK_INVALID" in await r.text()
    # The owner's status hands out a fresh one.
    fresh = (await status_of(client, upload.upload_id, bearer(ALICE)))["links"]["download"]
    assert fresh != link
    r = await client.get(str(URL(fresh).relative()))
    assert r.status == 200 and await r.read() == HELLO + REST


# --- the user's list -----------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_each_user_lists_only_their_uploads_in_pages(make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = await bearer_gateway(make_client, clock=clock)
    hers: list[str] = []
    his: list[str] = []
    for n in range(5):
        hers.append(await create(client, bearer(ALICE)))
        clock.advance(1)
        if n % 2 == 0:
            his.append(await create(client, bearer(BOB)))
            clock.advance(1)

    assert await listing(client, ALICE) == hers[::-1]  # newest first
    assert await listing(client, BOB) == his[::-1]
    assert await listing(client, ADMIN) == []  # an admin acts on all, but lists its own

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/uploads", params=params, headers=bearer(ALICE))
        assert r.status == 200, await r.text()
        body = await r.json()
        pages.append([item["id"] for item in body["uploads"]])
        cursor = body["next"]
        if cursor is None:
            break
        assert len(pages) < 10
    assert pages == [hers[4:2:-1], hers[2:0:-1], hers[:1]]

    item = (await (await client.get("/api/uploads", params={"limit": "1"},
                                    headers=bearer(ALICE))).json())["uploads"][0]
    assert (item["id"], item["size"], item["offset"], item["status"]) == (
        hers[-1], 11, 0, "created")

    # Bob paging with alice's cursor still sees only his own uploads.
    r = await client.get("/api/uploads", params={"limit": "1"}, headers=bearer(ALICE))
    her_cursor = (await r.json())["next"]
    r = await client.get("/api/uploads", params={"cursor": her_cursor}, headers=bearer(BOB))
    assert {item["id"] for item in (await r.json())["uploads"]} <= set(his)

    r = await client.get("/api/uploads")
    assert r.status == 401
    r = await client.get("/api/uploads", headers=bearer(NOBODY))
    assert r.status == 403


SOME_ID = "0123456789abcdef0123456789abcdef"


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize("query", [
    {"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "abc"}, {"limit": ""},
    {"limit": "1e2"}, {"limit": "٣"}, {"limit": "9" * 30},
    {"cursor": ""}, {"cursor": "not-base64!"}, {"cursor": b64({"a": 1})},
    {"cursor": b64([1.0, "../../etc/passwd"])}, {"cursor": b64(["x", SOME_ID])},
    {"cursor": b64([True, SOME_ID])}, {"cursor": b64([1.0])},
    {"cursor": "A" * 5000}, {"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()},
], ids=lambda q: repr(q)[:40])
async def test_a_bad_limit_or_cursor_is_400(make_client: ClientFactory,
                                            query: dict[str, str]) -> None:
    client = await bearer_gateway(make_client)
    upload = await create(client, bearer(ALICE))
    r = await client.get("/api/uploads", params=query, headers=bearer(ALICE))
    assert r.status == 400, await r.text()
    assert (await r.json())["error"] == "ERR_INVALID_QUERY"
    assert await listing(client, ALICE) == [upload]
