"""What interop version 9 (draft-ietf-httpbis-resumable-upload-12) changes, one test per rule,
on a raw socket as in ``test_ietf``; the rules 9 shares with 3 to 8 run there for 9 too.
docs/ietf-draft.md lists which test covers which rule.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.clock import ManualClock
from tests.conftest import ClientFactory
from tests.gateway.test_ietf import (
    HOST,
    PROBLEM,
    Exchange,
    Gateway,
    Reply,
    _read_head,
    _request_head,
    append_headers,
    check_interim,
    complete,
    interop,
    is_complete,
    read_reply,
    send,
)

V9 = interop(9)


@pytest.fixture
async def gateway(make_client: ClientFactory) -> Gateway:
    client: TestClient[Any, Any] = await make_client()
    assert client.server.port is not None
    return Gateway(client.server.port, client)


def limits(reply: Reply) -> dict[str, str]:
    return dict(p.strip().partition("=")[::2] for p in reply.headers["upload-limit"].split(","))


def check_offset_answer(reply: Reply, offset: int, done: bool) -> None:
    """-12 "Server Behavior" of offset retrieval, for HEAD and GET alike."""
    assert reply.status == 204, reply
    assert reply.offset == offset
    assert is_complete(9, reply) == done
    assert limits(reply)["min-size"] == "0"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.body == b""


# --- offset retrieval with GET ----------------------------------------------------------------
async def test_get_retrieves_the_offset(gateway: Gateway) -> None:
    """-12: "It can fetch the offset by sending a HEAD or GET request"; GET answers what HEAD
    answers, without content. Interop 8 and a GET without the header keep the download."""
    path, _ = await gateway.create(9, b"x" * 10, extra={"Upload-Length": "30"})
    head = (await send(gateway.port, "HEAD", path, V9)).answer
    got = (await send(gateway.port, "GET", path, V9)).answer
    for reply in (head, got):
        check_offset_answer(reply, 10, False)
        assert reply.headers["upload-length"] == "30"
    assert {k: v for k, v in got.headers.items() if k != "date"} == \
        {k: v for k, v in head.headers.items() if k != "date"}

    older = (await send(gateway.port, "GET", path, interop(8))).answer
    assert "upload-offset" not in older.headers  # a download, as before interop 9
    bogus = (await send(gateway.port, "GET", path, {"Upload-Draft-Interop-Version": "10"})).answer
    assert "upload-offset" not in bogus.headers

    path, _ = await gateway.create(9, b"y" * 5, done=True)
    check_offset_answer((await send(gateway.port, "GET", path, V9)).answer, 5, True)
    assert await gateway.download(path) == b"y" * 5  # a plain GET still downloads


async def test_get_refusals(gateway: Gateway) -> None:
    """A GET for an unknown upload is a 404 problem; one with upload fields a 400, as HEAD."""
    missing = (await send(gateway.port, "GET", "/files/" + "0" * 32, V9)).answer
    assert missing.status == 404
    assert missing.headers["upload-draft-interop-version"] == "9"
    path, _ = await gateway.create(9, b"x" * 3)
    refused = (await send(gateway.port, "GET", path, {**V9, "Upload-Offset": "3"})).answer
    assert refused.status == 400
    assert refused.problem()["code"] == "ERR_INVALID_HEADER"


# --- Upload-Complete on the server's own answers ------------------------------------------------
async def test_error_answers_say_upload_complete_false(gateway: Gateway) -> None:
    """-12: in a creation or append response Upload-Complete "signals whether the response
    comes from the initial targeted resource"; false means the upload protocol's own answer,
    which every refusal is, even one about a completed upload."""
    path, _ = await gateway.create(9, b"x" * 10, done=True)
    after = (await send(gateway.port, "PATCH", path, append_headers(9, 10, False), b"y")).answer
    assert after.status == 400
    assert after.problem()["type"] == PROBLEM + "completed-upload"
    assert after.headers["upload-complete"] == "?0"

    open_path, _ = await gateway.create(9, b"x" * 10)
    wrong_type = {**append_headers(9, 10, False), "Content-Type": "text/plain"}
    refusals = [
        (await send(gateway.port, "PATCH", open_path, wrong_type, b"y")).answer,
        (await send(gateway.port, "PATCH", open_path, append_headers(9, 3, False), b"y")).answer,
        (await send(gateway.port, "POST", "/files/",
                    {**V9, **complete(9, True), "Upload-Length": "2"}, b"x")).answer,
    ]
    assert [r.status for r in refusals] == [415, 409, 400]
    assert all(r.headers["upload-complete"] == "?0" for r in refusals), refusals

    # Interop 8 answers the same refusal without the field: -11 asks for it on 409 only.
    old, _ = await gateway.create(8, b"x" * 10, done=True)
    before = (await send(gateway.port, "PATCH", old, append_headers(8, 10, False), b"y")).answer
    assert before.status == 400
    assert "upload-complete" not in before.headers


async def test_server_marks_the_upload_complete(gateway: Gateway) -> None:
    """-12: an upload is complete "when a response includes the Upload-Complete header field
    with a true value": an append flagged ?0 that reaches the known length gets ?1, HEAD says
    so, and the upload takes nothing more."""
    path, _ = await gateway.create(9, b"a" * 4, extra={"Upload-Length": "10"})
    last = (await send(gateway.port, "PATCH", path, append_headers(9, 4, False),
                       b"b" * 6)).answer
    assert (last.status, last.offset, last.headers["upload-complete"]) == (204, 10, "?1")
    check_offset_answer((await send(gateway.port, "HEAD", path, V9)).answer, 10, True)
    more = (await send(gateway.port, "PATCH", path, append_headers(9, 10, True))).answer
    assert (more.status, more.headers["upload-complete"]) == (400, "?0")
    assert await gateway.download(path) == b"a" * 4 + b"b" * 6


# --- creation without content -------------------------------------------------------------------
@pytest.mark.parametrize("done", [False, True])
async def test_creation_without_content(gateway: Gateway, done: bool) -> None:
    """-12: "This limit does not apply to upload creation requests with no content": an empty
    creation is always taken (and no min-append-size is ever announced)."""
    path, exchange = await gateway.create(9, b"", done=done)
    answer = exchange.answer
    assert (answer.status, answer.offset, is_complete(9, answer)) == (201, 0, done)
    check_interim(9, exchange, answer.headers["location"])
    for reply in (exchange.interim[0], answer):
        assert "min-append-size" not in limits(reply)
    if done:
        assert answer.headers["upload-length"] == "0"
        assert await gateway.download(path) == b""


# --- max-age counts down, the lifetime's end does not move earlier ------------------------------
async def test_max_age_decreases_but_not_the_end(make_client: ClientFactory) -> None:
    """-12: "the end of the upload resource's lifetime as implied by max-age SHOULD NOT
    decrease" (-11 said max-age itself should not): the value counts down as time passes,
    and an append moves the end later."""
    clock = ManualClock()
    client: TestClient[Any, Any] = await make_client(clock=clock, expire_after_s=3600)
    port = client.server.port
    assert port is not None
    path, exchange = await Gateway(port, client).create(9, b"x")
    ends = [clock.now() + int(limits(exchange.answer)["max-age"])]
    ages = [int(limits(exchange.answer)["max-age"])]
    for step in (100.0, 50.0):
        clock.advance(step)
        head = (await send(port, "HEAD", path, V9)).answer
        ages.append(int(limits(head)["max-age"]))
        ends.append(clock.now() + ages[-1])
    assert ages[0] > ages[1] > ages[2], ages
    assert ends[0] <= ends[1] <= ends[2] + 1, ends  # whole seconds: at most 1 s of rounding
    clock.advance(10.0)
    moved = (await send(port, "PATCH", path, append_headers(9, 1, False), b"y")).answer
    assert clock.now() + int(limits(moved)["max-age"]) > ends[-1] + 5


# --- min-size -------------------------------------------------------------------------------------
async def test_min_size_zero_offers_resumability_for_any_size(gateway: Gateway) -> None:
    """-12: min-size is the size "for the server to offer resumable uploads"; ours is 0, so a
    one-byte creation still gets its 104, and OPTIONS says so."""
    options = (await send(gateway.port, "OPTIONS", "/files/", V9)).answer
    assert limits(options)["min-size"] == "0"
    assert "accept-patch" not in options.headers  # -12: "Remove Accept-Patch from OPTIONS"
    _, exchange = await gateway.create(9, b"z", done=True)
    check_interim(9, exchange, exchange.answer.headers["location"])
    assert limits(exchange.interim[0])["min-size"] == "0"


# --- incremental delivery -------------------------------------------------------------------------
async def test_incremental_creation_is_stored_as_it_arrives(gateway: Gateway) -> None:
    """-12 recommends incremental delivery (``Incremental: ?1`` for intermediaries): the 104
    comes before any content, and each part sent is taken in before the next one is sent."""
    body = os.urandom(200_000)
    reader, writer = await asyncio.open_connection(HOST, gateway.port)
    headers = {**V9, **complete(9, True), "Incremental": "?1",
               "Content-Length": str(len(body))}
    writer.write(_request_head("POST", "/files/", gateway.port, headers))
    await writer.drain()
    exchange = Exchange()
    exchange.interim.append(await _read_head(reader))
    location = exchange.interim[0].headers["location"]
    check_interim(9, exchange, location)
    writer.write(body[:100_000])
    await writer.drain()
    upload_id = location.rsplit("/", 1)[1]
    stored = 0
    for _ in range(100):  # the first part is taken in while the second is not yet sent
        async with gateway.client.get(f"/api/upload/status/{upload_id}") as resp:
            stored = (await resp.json())["bytes_received"]
        if stored:
            break
        await asyncio.sleep(0.05)
    assert 0 < stored <= 100_000
    writer.write(body[100_000:])
    await writer.drain()
    answer = await read_reply(reader, exchange, "POST")
    writer.close()
    assert (answer.status, answer.offset, answer.headers["upload-complete"]) == \
        (201, len(body), "?1")
    assert await gateway.download(location) == body


# --- one upload across versions -------------------------------------------------------------------
async def test_one_upload_across_versions(gateway: Gateway) -> None:
    """An upload is one upload whichever interop version speaks to it: created with 3,
    appended with 6 and 8, retrieved with GET and finished with 9."""
    path, _ = await gateway.create(3, b"a" * 5)
    offset = 5
    for version in (6, 8):
        reply = (await send(gateway.port, "PATCH", path, append_headers(version, offset, False),
                            b"b" * 5)).answer
        offset += 5
        assert (reply.offset, is_complete(version, reply)) == (offset, False)
    check_offset_answer((await send(gateway.port, "GET", path, V9)).answer, offset, False)
    last = (await send(gateway.port, "PATCH", path, append_headers(9, offset, True),
                       b"c" * 5)).answer
    assert (last.status, last.offset, last.headers["upload-complete"]) == (204, 20, "?1")
    three = (await send(gateway.port, "HEAD", path, interop(3))).answer
    assert (three.offset, is_complete(3, three)) == (20, True)
    assert await gateway.download(path) == b"a" * 5 + b"b" * 10 + b"c" * 5


# --- a proxy that cannot pass interim responses on ------------------------------------------------
async def test_interim_responses_none_withholds_the_104(gateway: Gateway) -> None:
    """``X-Interim-Responses: none`` (set by deploy/nginx.conf): no 104, the URL comes with the
    201; any other value, or the field twice, is a 400 that creates nothing."""
    _, exchange = await gateway.create(9, b"abc", done=True,
                                       extra={"X-Interim-Responses": "none"})
    assert exchange.interim == []
    assert (exchange.answer.status, exchange.answer.offset) == (201, 3)
    assert await gateway.download(exchange.answer.headers["location"]) == b"abc"
    for bad in ("all", "", "none, none"):
        refused = await send(gateway.port, "POST", "/files/",
                             {**V9, **complete(9, True), "X-Interim-Responses": bad}, b"x")
        assert refused.interim == []
        assert refused.answer.status == 400, bad
        assert refused.answer.problem()["code"] == "ERR_INVALID_HEADER"
        assert "location" not in refused.answer.headers
