"""Per-user quotas (``gateway.quotas``): the bytes a user's uploads hold and how many are open.

In-process gateways (a real HTTP server on loopback), over both state stores since the
account lives in the store: a refusal is 429 ``ERR_QUOTA_EXCEEDED`` with Retry-After and a
JSON body that names the limit, what is used, the quota and what was asked for, on every way
of creating an upload (tus, the session API, the IETF draft) and when a deferred length is
declared; it creates and changes nothing. Bytes come back when an upload is delivered
(the directory sink delivers at finish), deleted, aborted, expired or rejected; users with
their own figures (HMAC claims) are counted apart; concurrent creations, on one instance or
two sharing Redis, cannot together pass the quota.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.auth import mint_token
from gateway.keys import CONFIG, RUNTIME
from gateway.uploads import Uploads
from tests.conftest import ClientFactory, GatewayProcess
from tests.gateway.test_ietf import complete, interop, send
from tests.gateway.test_screening import ELF_HEADER
from tests.helpers import TUS, bearer, metadata, patch_headers, path_of

Client = TestClient[Any, Any]
SECRET = "4f9a1c7e2b8d3f6a0e5c9b1d7a2f8e4c"


def uploads_of(client: Client) -> Uploads:
    uploads: Uploads = client.app[RUNTIME].require()
    return uploads


def token(sub: str, **claims: int) -> dict[str, str]:
    return bearer(mint_token(SECRET, 3600, now=time.time(), sub=sub, **claims))  # type: ignore[arg-type]


async def post(client: Client, length: int | None = None, /, **headers: str) -> ClientResponse:
    h = {**TUS, **headers}
    if length is None:
        h["Upload-Defer-Length"] = "1"
    else:
        h["Upload-Length"] = str(length)
    return await client.post("/files/", headers=h)


async def create(client: Client, length: int | None = None, /, **headers: str) -> str:
    r = await post(client, length, **headers)
    assert r.status == 201, await r.text()
    return path_of(r.headers["Location"])


async def finish(client: Client, url: str, length: int, **headers: str) -> None:
    r = await client.patch(url, data=b"q" * length, headers=patch_headers(0, **headers))
    assert r.status == 204, await r.text()


async def refusal(r: ClientResponse, limit: str, *, used: int, quota: int,
                  requested: int) -> dict[str, Any]:
    """A quota refusal the client can read by machine: which limit, how much is used, the
    quota, what was asked for, and when to retry."""
    assert r.status == 429, await r.text()
    retry_after = int(r.headers["Retry-After"])
    assert retry_after > 0
    assert r.content_type == "application/json", await r.text()
    body: dict[str, Any] = await r.json()
    assert body["error"] == "ERR_QUOTA_EXCEEDED"
    assert body["message"]
    assert {k: body[k] for k in ("limit", "used", "quota", "requested", "retry_after")} == {
        "limit": limit, "used": used, "quota": quota, "requested": requested,
        "retry_after": retry_after}
    return body


async def ids(client: Client) -> list[str]:
    return sorted(await uploads_of(client).store.upload_ids())


def delivered(client: Client) -> list[str]:
    folder: Path = client.app[CONFIG].data_dir / "complete"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def session(client: Client, size: int, **headers: str) -> ClientResponse:
    return await client.post("/api/upload/create-session",
                             json={"filename": "s.bin", "fileSize": size}, headers=headers)


# --- the byte quota --------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_the_byte_quota_refuses_a_creation_until_a_delivery_frees_bytes(
        make_client: ClientFactory) -> None:
    client = await make_client(quota_bytes=1000)
    first = await create(client, 600)
    before = await ids(client)
    await refusal(await post(client, 500), "bytes", used=600, quota=1000, requested=500)
    await refusal(await session(client, 500), "bytes", used=600, quota=1000, requested=500)
    port = client.server.port
    assert port is not None
    exchange = await send(port, "POST", "/files/", {**interop(6), **complete(6, False),
                                                    "Upload-Length": "500"})
    answer = exchange.answer
    assert answer.status == 429 and int(answer.headers["retry-after"]) > 0
    problem = answer.problem()
    assert (problem["code"], problem["limit"], problem["used"], problem["quota"]) == (
        "ERR_QUOTA_EXCEEDED", "bytes", 600, 1000)
    assert await ids(client) == before
    # Up to the quota exactly is fine; one byte more is not.
    second = await create(client, 400)
    await refusal(await post(client, 1), "bytes", used=1000, quota=1000, requested=1)
    # The directory sink delivers at finish: the 600 bytes are free again.
    await finish(client, first, 600)
    assert len(delivered(client)) == 1
    await create(client, 500)
    await refusal(await post(client, 101), "bytes", used=900, quota=1000, requested=101)
    await finish(client, second, 400)
    await create(client, 500)


@pytest.mark.both_stores
async def test_a_late_length_declaration_is_held_to_the_quota(
        make_client: ClientFactory) -> None:
    client = await make_client(quota_bytes=1000)
    deferred = await create(client)
    await create(client, 600)
    r = await client.patch(deferred, data=b"abc",
                           headers=patch_headers(0, **{"Upload-Length": "500"}))
    await refusal(r, "bytes", used=600, quota=1000, requested=500)
    r = await client.head(deferred, headers=TUS)
    assert r.headers["Upload-Offset"] == "0" and r.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in r.headers
    # A length that fits is taken, with the bytes.
    r = await client.patch(deferred, data=b"abc",
                           headers=patch_headers(0, **{"Upload-Length": "400"}))
    assert r.status == 204, await r.text()
    r = await client.head(deferred, headers=TUS)
    assert (r.headers["Upload-Offset"], r.headers["Upload-Length"]) == ("3", "400")
    await refusal(await post(client, 1), "bytes", used=1000, quota=1000, requested=1)


@pytest.mark.both_stores
async def test_bytes_sent_to_a_deferred_upload_count_against_the_quota(
        make_client: ClientFactory) -> None:
    """While its length is deferred an upload holds the bytes it has so far: they cannot
    be used to pass the quota."""
    client = await make_client(quota_bytes=1000)
    deferred = await create(client)
    r = await client.patch(deferred, data=b"d" * 900, headers=patch_headers(0))
    assert r.status == 204, await r.text()
    await refusal(await post(client, 500), "bytes", used=900, quota=1000, requested=500)


@pytest.mark.both_stores
async def test_deleting_or_aborting_an_upload_frees_its_bytes(
        make_client: ClientFactory) -> None:
    client = await make_client(quota_bytes=1000)
    doomed = await create(client, 800)
    await refusal(await post(client, 300), "bytes", used=800, quota=1000, requested=300)
    r = await client.delete(doomed, headers=TUS)
    assert r.status == 204
    await create(client, 300)
    r = await session(client, 700)
    assert r.status == 201, await r.text()
    aborted = (await r.json())["id"]
    await refusal(await session(client, 1), "bytes", used=1000, quota=1000, requested=1)
    r = await client.post(f"/api/upload/abort/{aborted}")
    assert r.status == 200, await r.text()
    r = await session(client, 700)
    assert r.status == 201, await r.text()


@pytest.mark.both_stores
async def test_an_expired_upload_frees_its_bytes(make_client: ClientFactory) -> None:
    client = await make_client(quota_bytes=1000, expire_after_s=60.0)
    stale = await create(client, 800)
    await refusal(await post(client, 300), "bytes", used=800, quota=1000, requested=300)
    assert await uploads_of(client).expire_due(time.time() + 120) == 1
    r = await client.head(stale, headers=TUS)
    assert r.status == 410
    await create(client, 300)


@pytest.mark.both_stores
async def test_a_rejected_upload_frees_its_bytes(make_client: ClientFactory) -> None:
    client = await make_client(quota_bytes=1000, allowed_types="video/*")
    claim = {"Upload-Metadata": metadata(filename="clip.mp4", filetype="video/mp4")}
    fake = await create(client, 600, **claim)
    await refusal(await post(client, 600, **claim), "bytes", used=600, quota=1000,
                  requested=600)
    r = await client.patch(fake, data=ELF_HEADER + bytes(600 - len(ELF_HEADER)),
                           headers=patch_headers(0))
    assert r.status == 204, await r.text()
    r = await client.get(f"/api/upload/status/{fake.rsplit('/', 1)[1]}")
    assert (await r.json())["status"] == "rejected"
    await create(client, 600, **claim)


# --- per user --------------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_each_user_has_their_own_quota_and_account(make_client: ClientFactory) -> None:
    """HMAC claims override the gateway's figures per user; one user's uploads never count
    against another's."""
    client = await make_client(auth="hmac", auth_secret=SECRET, quota_bytes=1000)
    alice = token("alice", quota_bytes=100)
    bob = token("bob", quota_bytes=5000)
    carol = token("carol")
    await refusal(await post(client, 101, **alice), "bytes", used=0, quota=100, requested=101)
    await create(client, 100, **alice)
    await create(client, 3000, **bob)
    await refusal(await post(client, 2001, **bob), "bytes", used=3000, quota=5000,
                  requested=2001)
    await refusal(await session(client, 2001, **bob), "bytes", used=3000, quota=5000,
                  requested=2001)
    await create(client, 2000, **bob)
    # Carol has the gateway's quota, and the others' uploads do not count for her.
    await refusal(await post(client, 1001, **carol), "bytes", used=0, quota=1000,
                  requested=1001)
    await create(client, 1000, **carol)
    await refusal(await post(client, 1, **alice), "bytes", used=100, quota=100, requested=1)
    # A user's own uploads quota.
    dave = token("dave", quota_uploads=1)
    await create(client, 10, **dave)
    await refusal(await post(client, 10, **dave), "uploads", used=1, quota=1, requested=1)
    await create(client, 10, **token("erin", quota_uploads=1))


# --- the uploads quota -----------------------------------------------------------------------
@pytest.mark.both_stores
async def test_the_uploads_quota_counts_unfinished_uploads(make_client: ClientFactory) -> None:
    client = await make_client(quota_uploads=2, max_open_uploads_per_client=5)
    first = await create(client, 10)
    second = await create(client, 10)
    before = await ids(client)
    await refusal(await post(client, 10), "uploads", used=2, quota=2, requested=1)
    await refusal(await session(client, 10), "uploads", used=2, quota=2, requested=1)
    assert await ids(client) == before
    await finish(client, first, 10)
    await create(client, 0)  # finished at once: it is not left open
    await create(client, 10)
    await refusal(await post(client, 10), "uploads", used=2, quota=2, requested=1)
    r = await client.delete(second, headers=TUS)
    assert r.status == 204
    await create(client, 10)
    await refusal(await post(client, 10), "uploads", used=2, quota=2, requested=1)


# --- at the same time ------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_concurrent_creations_cannot_together_pass_the_byte_quota(
        make_client: ClientFactory) -> None:
    client = await make_client(quota_bytes=1000)
    answers = await asyncio.gather(*[post(client, 600) for _ in range(6)],
                                   *[session(client, 600) for _ in range(6)])
    statuses = sorted(r.status for r in answers)
    assert statuses == [201] + [429] * 11, [await r.text() for r in answers]
    assert len(await ids(client)) == 1
    await refusal(await post(client, 401), "bytes", used=600, quota=1000, requested=401)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_two_instances_sharing_redis_keep_one_account(make_client: ClientFactory,
                                                           tmp_path: Path) -> None:
    """The account is the store's: creations on two instances at once cannot together pass
    the quota, and a delivery on one frees bytes for the other."""
    shared = tmp_path / "shared"
    settings: dict[str, Any] = {"auth": "hmac", "auth_secret": SECRET, "data_dir": shared}
    one = await make_client(**settings)
    two = await make_client(**settings)
    alice = token("alice", quota_bytes=1000)
    answers = await asyncio.gather(*[post(c, 600, **alice) for c in (one, two) * 4])
    created = [r for r in answers if r.status == 201]
    assert len(created) == 1, [await r.text() for r in answers]
    for r in answers:
        if r.status != 201:
            await refusal(r, "bytes", used=600, quota=1000, requested=600)
    made = path_of(created[0].headers["Location"])
    await refusal(await post(one, 401, **alice), "bytes", used=600, quota=1000, requested=401)
    await refusal(await post(two, 401, **alice), "bytes", used=600, quota=1000, requested=401)
    # Delivered through the other instance than the one asked next.
    await finish(two, made, 600, **alice)
    await create(one, 1000, **alice)
    await refusal(await post(two, 1, **alice), "bytes", used=1000, quota=1000, requested=1)


def test_the_bytes_held_survive_a_restart_of_the_disk_store(tmp_path: Path) -> None:
    """After SIGKILL and a restart, the disk store counts each owner's held bytes again from
    its records: the quota still refuses what it refused before."""
    gw = GatewayProcess(tmp_path / "data", ["--quota-size", "1000"])
    gw.start()
    try:
        req = urllib.request.Request(gw.url, method="POST",
                                     headers={**TUS, "Upload-Length": "800"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201
        gw.kill()
        gw.start()
        req = urllib.request.Request(gw.url, method="POST",
                                     headers={**TUS, "Upload-Length": "300"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 429
        body = json.loads(refused.value.read())
        assert (body["error"], body["limit"], body["used"]) == ("ERR_QUOTA_EXCEEDED", "bytes",
                                                                800)
    finally:
        gw.kill()


async def test_a_client_refused_again_and_again_is_looked_at_once_in_a_while(
        make_client: ClientFactory) -> None:
    """A refusal first looks at the client's uploads again (up to 1,000 records read); a
    client hammering the quota gets that look once per RECONCILE_EVERY_S, not per request."""
    client = await make_client(quota_bytes=1000)
    for _ in range(5):
        await create(client, 150)
    quotas = uploads_of(client).quotas
    reads = 0
    read = quotas._read

    async def counted(upload_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await read(upload_id)
    quotas._read = counted
    for _ in range(20):
        await refusal(await post(client, 300), "bytes", used=750, quota=1000, requested=300)
    assert reads == 5, "one look at the five uploads, then none for the next refusals"
