"""Limits a client cannot exceed: the size of a final concatenation, the finals that wait for
one partial, the uploads it leaves unfinished, and empty PATCHes sent in a loop.

In-process gateways (a real HTTP server on loopback); the limits the store keeps (finals
waiting for a partial, open uploads) over both state stores. Every refusal is a 4xx with a
stable code that changes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.auth import mint_token
from gateway.clock import ManualClock
from gateway.keys import CONFIG
from gateway.limits import EmptyPatches
from tests.conftest import ClientFactory
from tests.gateway.test_ietf import complete, interop, send
from tests.helpers import TUS, patch_headers, path_of

Client = TestClient[Any, Any]
KiB = 1024
MiB = 1024 * KiB
SECRET = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


async def post(client: Client, length: int | None = None, /, **headers: str) -> ClientResponse:
    h = {**TUS, **headers}
    if length is not None:
        h["Upload-Length"] = str(length)
    return await client.post("/files/", headers=h)


async def create(client: Client, length: int | None = None, /, **headers: str) -> str:
    r = await post(client, length, **headers)
    assert r.status == 201, await r.text()
    return path_of(r.headers["Location"])


async def code_of(r: ClientResponse) -> str:
    return (await r.text()).split(":", 1)[0]


def data_files(client: Client) -> list[Path]:
    return sorted((client.app[CONFIG].data_dir / "uploads").glob("*.bin"))


def final_of(*urls: str) -> dict[str, str]:
    return {"Upload-Concat": "final;" + " ".join(urls)}


PARTIAL = {"Upload-Concat": "partial"}
DEFERRED_PARTIAL = {"Upload-Concat": "partial", "Upload-Defer-Length": "1"}


# --- concatenation -----------------------------------------------------------------------------
async def test_a_final_naming_a_partial_200_times_is_refused_at_creation(
        make_client: ClientFactory) -> None:
    """The partial's bytes so far (its length is deferred), counted once per mention, already
    pass --max-size: 413 at once, and nothing is created."""
    client = await make_client(max_size_bytes=MiB)
    deferred = await create(client, **DEFERRED_PARTIAL)
    r = await client.patch(deferred, data=b"x" * 8 * KiB, headers=patch_headers(0))
    assert r.status == 204
    known = await create(client, 8 * KiB, **PARTIAL)
    before = data_files(client)
    for partial in (deferred, known):
        r = await post(client, **final_of(*[partial] * 200))
        assert r.status == 413 and await code_of(r) == "ERR_UPLOAD_TOO_LARGE", partial
    assert data_files(client) == before


@pytest.mark.both_stores
async def test_a_final_that_passes_max_size_once_its_partial_ends_is_not_assembled(
        make_client: ClientFactory) -> None:
    """A final made while its partial's length was still unknown: when the partial finishes,
    the final would be 200 times its size. It is removed (410) instead of assembled; the
    partial itself is fine."""
    client = await make_client(max_size_bytes=MiB)
    partial = await create(client, **DEFERRED_PARTIAL)
    r = await post(client, **final_of(*[partial] * 200))
    assert r.status == 201, await r.text()
    final = path_of(r.headers["Location"])
    r = await client.patch(partial, data=b"x" * 8 * KiB,
                           headers=patch_headers(0, **{"Upload-Length": str(8 * KiB)}))
    assert r.status == 204, await r.text()
    r = await client.head(final, headers=TUS)
    assert r.status == 410
    r = await client.get(f"/api/upload/status/{final.rsplit('/', 1)[1]}")
    assert r.status == 410
    assert not any((client.app[CONFIG].data_dir / "complete").iterdir())
    assert [p.name for p in data_files(client)] == [partial.rsplit("/", 1)[1] + ".bin"]
    r = await client.head(partial, headers=TUS)
    assert r.status == 200 and r.headers["Upload-Offset"] == str(8 * KiB)


async def test_a_partial_may_be_named_twice_and_counts_twice(make_client: ClientFactory) -> None:
    client = await make_client(max_size_bytes=10)
    partial = await create(client, 5, **PARTIAL)
    await client.patch(partial, data=b"abcde", headers=patch_headers(0))
    r = await post(client, **final_of(partial, partial))
    assert r.status == 201
    r = await client.get(path_of(r.headers["Location"]))
    assert await r.read() == b"abcdeabcde"
    r = await post(client, **final_of(partial, partial, partial))
    assert r.status == 413 and await code_of(r) == "ERR_UPLOAD_TOO_LARGE"


@pytest.mark.both_stores
async def test_finals_waiting_for_one_partial_are_bounded(make_client: ClientFactory) -> None:
    """The partial's last PATCH assembles every final waiting for it, so only a few may
    wait: one more is refused (409) until the partial is finished, and then made at once."""
    client = await make_client(max_finals_per_partial=3)
    partial = await create(client, 3, **PARTIAL)
    other = await create(client, 1, **PARTIAL)
    finals = [await create(client, **final_of(partial, partial)) for _ in range(3)]
    before = data_files(client)
    r = await post(client, **final_of(other, partial))
    assert r.status == 409 and await code_of(r) == "ERR_TOO_MANY_FINALS"
    assert data_files(client) == before
    # The refused final did not take a place in the other partial's queue either.
    for _ in range(3):
        await create(client, **final_of(other))
    r = await client.patch(partial, data=b"abc", headers=patch_headers(0))
    assert r.status == 204
    for final in finals:
        r = await client.head(final, headers=TUS)
        assert r.headers["Upload-Offset"] == r.headers["Upload-Length"] == "6"
    late = await create(client, **final_of(partial))
    assert (await client.head(late, headers=TUS)).headers["Upload-Offset"] == "3"


# --- open uploads --------------------------------------------------------------------------------
async def assert_refused(r: ClientResponse, code: str) -> None:
    assert r.status == 429, await r.text()
    assert int(r.headers["Retry-After"]) > 0
    assert await code_of(r) == code


async def ietf_create(client: Client) -> tuple[int, dict[str, Any]]:
    port = client.server.port
    assert port is not None
    exchange = await send(port, "POST", "/files/", {**interop(6), **complete(6, False)})
    answer = exchange.answer
    return answer.status, {**answer.headers, "problem": answer.problem()
                           if answer.status >= 400 else None}


@pytest.mark.both_stores
async def test_open_uploads_are_bounded_in_total(make_client: ClientFactory) -> None:
    client = await make_client(max_open_uploads=3, max_open_uploads_per_client=0)
    partial = await create(client, 4, **PARTIAL)
    plain = await create(client, 4)
    doomed = await create(client, 4)
    before = data_files(client)
    await assert_refused(await post(client, 4), "ERR_OPEN_UPLOADS_LIMIT")
    await assert_refused(await post(client, **final_of(partial)), "ERR_OPEN_UPLOADS_LIMIT")
    status, answer = await ietf_create(client)
    assert status == 429 and answer["problem"]["code"] == "ERR_OPEN_UPLOADS_LIMIT"
    assert int(answer["retry-after"]) > 0
    assert data_files(client) == before
    # Finishing an upload frees its place, and so does deleting one.
    r = await client.patch(plain, data=b"done", headers=patch_headers(0))
    assert r.status == 204
    await create(client, 4)
    await assert_refused(await post(client, 4), "ERR_OPEN_UPLOADS_LIMIT")
    r = await client.delete(doomed, headers=TUS)
    assert r.status == 204
    await create(client, 0)  # finished at once: it takes no place
    await create(client, 4)
    await assert_refused(await post(client, 4), "ERR_OPEN_UPLOADS_LIMIT")


@pytest.mark.both_stores
async def test_open_uploads_are_bounded_per_address(make_client: ClientFactory) -> None:
    client = await make_client(max_open_uploads=100, max_open_uploads_per_client=2)
    await create(client, 4)
    await create(client, 4, **{"X-Forwarded-For": "192.0.2.1"})
    # Without --behind-proxy, forwarding headers are the client's own words: ignored.
    for spoofed in ({"X-Forwarded-For": "192.0.2.2"}, {"Forwarded": "for=192.0.2.3"}):
        await assert_refused(await post(client, 4, **spoofed), "ERR_CLIENT_OPEN_UPLOADS_LIMIT")


@pytest.mark.both_stores
async def test_open_uploads_behind_a_proxy_count_the_address_the_proxy_saw(
        make_client: ClientFactory) -> None:
    """The nearest entry is the one the proxy wrote; the ones before it, the client's own
    claims, change nothing."""
    client = await make_client(max_open_uploads=100, max_open_uploads_per_client=2,
                               behind_proxy=True)
    await create(client, 4, **{"X-Forwarded-For": "203.0.113.9, 10.0.0.1"})
    await create(client, 4, **{"X-Forwarded-For": "198.51.100.7,10.0.0.1"})
    await assert_refused(await post(client, 4, **{"X-Forwarded-For": "10.0.0.1"}),
                         "ERR_CLIENT_OPEN_UPLOADS_LIMIT")
    # The proxy may add its own header line after the client's.
    r = await client.post("/files/", headers=[*TUS.items(), ("Upload-Length", "4"),
                                              ("X-Forwarded-For", "192.0.2.50"),
                                              ("X-Forwarded-For", "10.0.0.1")])
    await assert_refused(r, "ERR_CLIENT_OPEN_UPLOADS_LIMIT")
    await create(client, 4, **{"X-Forwarded-For": "10.0.0.1, 10.0.0.2"})
    # Forwarded (RFC 7239): the last element's for=, without its port.
    await create(client, 4, Forwarded='for=192.0.2.60, for="[2001:db8::17]:4711"')
    await create(client, 4, Forwarded='for="[2001:DB8::17]:80";proto=https')
    await assert_refused(await post(client, 4, Forwarded='for="[2001:db8::17]"'),
                         "ERR_CLIENT_OPEN_UPLOADS_LIMIT")


@pytest.mark.both_stores
async def test_open_uploads_are_bounded_per_bearer_token(make_client: ClientFactory) -> None:
    tokens = ("tok-one-5e0c2a", "tok-two-9b1f7d")
    client = await make_client(auth="bearer", auth_tokens=tokens, max_open_uploads=100,
                               max_open_uploads_per_client=2)
    one = {"Authorization": f"Bearer {tokens[0]}"}
    await create(client, 4, **one)
    await create(client, 4, **one)
    await assert_refused(await post(client, 4, **one), "ERR_CLIENT_OPEN_UPLOADS_LIMIT")
    await create(client, 4, Authorization=f"Bearer {tokens[1]}")  # same address, other token


@pytest.mark.both_stores
async def test_open_uploads_are_bounded_per_token_subject(make_client: ClientFactory) -> None:
    """With HMAC tokens the subject is the client: a user's fresh tokens share one limit."""
    client = await make_client(auth="hmac", auth_secret=SECRET, max_open_uploads=100,
                               max_open_uploads_per_client=2)

    def token(sub: str | None) -> dict[str, str]:
        minted = mint_token(SECRET, 600, now=time.time() + len(sub or ""), sub=sub)
        return {"Authorization": f"Bearer {minted}"}
    await create(client, 4, **token("alice"))
    await create(client, 4, **token("alice"))
    await assert_refused(await post(client, 4, **token("alice")),
                         "ERR_CLIENT_OPEN_UPLOADS_LIMIT")
    await create(client, 4, **token("bob"))
    # Without a subject, each token is its own client.
    nameless = token(None)
    await create(client, 4, **nameless)
    await create(client, 4, **nameless)
    await assert_refused(await post(client, 4, **nameless), "ERR_CLIENT_OPEN_UPLOADS_LIMIT")


# --- empty PATCH loops ------------------------------------------------------------------------
async def test_a_loop_of_empty_patches_gets_429_and_bytes_still_go_through(
        make_client: ClientFactory) -> None:
    client = await make_client(empty_patch_interval_s=30.0, clock=ManualClock())
    url = await create(client, 10)
    r = await client.patch(url, data=b"", headers=patch_headers(0))
    assert r.status == 204 and r.headers["Upload-Offset"] == "0"
    for _ in range(50):
        r = await client.patch(url, data=b"", headers=patch_headers(0))
        assert r.status == 429, await r.text()
        assert 0 < int(r.headers["Retry-After"]) <= 30
        assert await code_of(r) == "ERR_EMPTY_PATCH_TOO_SOON"
    r = await client.patch(url, data=b"abc", headers=patch_headers(0))
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"
    # Another upload is not held back by this one's loop.
    other = await create(client, 10)
    r = await client.patch(other, data=b"", headers=patch_headers(0))
    assert r.status == 204


async def test_an_empty_patch_that_does_something_is_not_held_back(
        make_client: ClientFactory) -> None:
    """Declaring the deferred length, and so finishing the upload, is work: it is taken
    even right after an empty PATCH that did nothing."""
    client = await make_client(empty_patch_interval_s=30.0, clock=ManualClock())
    url = await create(client, **{"Upload-Defer-Length": "1"})
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    r = await client.patch(url, data=b"", headers=patch_headers(3))
    assert r.status == 204
    r = await client.patch(url, data=b"", headers=patch_headers(3, **{"Upload-Length": "3"}))
    assert r.status == 204, await r.text()
    r = await client.head(url, headers=TUS)
    assert r.headers["Upload-Length"] == r.headers["Upload-Offset"] == "3"


async def test_an_empty_patch_is_taken_again_once_the_interval_has_passed(
        make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = await make_client(empty_patch_interval_s=30.0, clock=clock)
    url = await create(client, 10)
    assert (await client.patch(url, data=b"", headers=patch_headers(0))).status == 204
    clock.advance(29.5)
    r = await client.patch(url, data=b"", headers=patch_headers(0))
    assert r.status == 429 and r.headers["Retry-After"] == "1"
    clock.advance(0.5)
    assert (await client.patch(url, data=b"", headers=patch_headers(0))).status == 204


def test_the_empty_patch_bookkeeping_stays_bounded() -> None:
    patches = EmptyPatches(interval_s=1.0, max_entries=8)
    for n in range(100):
        patches.hit(f"{n:032x}", now=0.0)
    assert len(patches) == 8
    # The oldest went first: the newest is still held back, an evicted one is not.
    assert patches.retry_after(f"{99:032x}", now=0.5) == 1
    assert patches.retry_after(f"{0:032x}", now=0.5) is None
    # Entries older than the interval are dropped as time passes.
    patches.hit("f" * 32, now=5.0)
    assert len(patches) == 1
