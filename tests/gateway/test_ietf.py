"""The IETF resumable uploads draft, interop versions 3 to 9, next to tus on the same URLs.

Every exchange is written by hand on a raw socket, so the 104 (Upload Resumption Supported)
interim response is seen on the wire as a client sees it, before the final response. Each
test runs once per interop version, on the disk store (a cut-off creation on Redis too: its
bytes are kept by the store). The last tests drive tus-js-client's ``ietf-draft-03`` and
``ietf-draft-05`` modes against a real gateway.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from protocol import errors, ietf
from protocol.headers import Headers
from tests.clients.support import assert_delivered, random_file
from tests.clients.test_tus_js import requests_of, run_js
from tests.conftest import ClientFactory, GatewayProcess

VERSIONS = list(range(3, 10))
HOST = "127.0.0.1"
PROBLEM = "https://iana.org/assignments/http-problem-types#"


# --- a hand-written HTTP/1.1 exchange --------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    @property
    def offset(self) -> int:
        return int(self.headers["upload-offset"])

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/problem+json"), \
            self.headers
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Exchange:
    """Interim replies in order, then the final one (None if the connection was cut)."""

    interim: list[Reply] = field(default_factory=list)
    final: Reply | None = None

    @property
    def answer(self) -> Reply:
        assert self.final is not None, f"no final response; interim: {self.interim}"
        return self.final


async def _read_head(reader: asyncio.StreamReader) -> Reply:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"{name} twice in {lines}"
            headers[name.lower()] = value.strip()
    return Reply(int(status), headers)


async def read_reply(reader: asyncio.StreamReader, exchange: Exchange, method: str) -> Reply:
    """Read interim replies into ``exchange`` until the final one, which is returned."""
    while True:
        reply = await _read_head(reader)
        if 100 <= reply.status < 200:
            exchange.interim.append(reply)
            continue
        length = int(reply.headers.get("content-length", "0"))
        if method != "HEAD" and length:
            reply.body = await asyncio.wait_for(reader.readexactly(length), 10)
        exchange.final = reply
        return reply


def _request_head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send(port: int, method: str, path: str, headers: dict[str, str],
               body: bytes = b"") -> Exchange:
    """One whole request on its own connection."""
    if body or method in ("POST", "PATCH"):
        headers = {"Content-Length": str(len(body)), **headers}
    reader, writer = await asyncio.open_connection(HOST, port)
    exchange = Exchange()
    try:
        writer.write(_request_head(method, path, port, headers) + body)
        await writer.drain()
        await read_reply(reader, exchange, method)
    finally:
        writer.close()
    return exchange


# --- per-version request headers ------------------------------------------------------------
def interop(version: int) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(version)}


def complete(version: int, done: bool) -> dict[str, str]:
    """-01 (interop 3) says Upload-Incomplete, the inverse; later drafts Upload-Complete."""
    if version == 3:
        return {"Upload-Incomplete": "?0" if done else "?1"}
    return {"Upload-Complete": "?1" if done else "?0"}


def is_complete(version: int, reply: Reply) -> bool:
    if version == 3:
        assert "upload-complete" not in reply.headers
        return reply.headers["upload-incomplete"] == "?0"
    assert "upload-incomplete" not in reply.headers
    return reply.headers["upload-complete"] == "?1"


def append_headers(version: int, offset: int, done: bool) -> dict[str, str]:
    headers = {**interop(version), "Upload-Offset": str(offset), **complete(version, done)}
    if version >= 6:
        headers["Content-Type"] = "application/partial-upload"
    return headers


def append_status(version: int) -> int:
    return 201 if version <= 6 else 204


@dataclass
class Gateway:
    port: int
    client: TestClient[Any, Any]

    async def download(self, location: str) -> bytes:
        async with self.client.get(URL(location).path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()

    async def create(self, version: int, body: bytes = b"", done: bool = False,
                     extra: dict[str, str] | None = None) -> tuple[str, Exchange]:
        exchange = await send(self.port, "POST", "/files/",
                              {**interop(version), **complete(version, done), **(extra or {})},
                              body)
        location = exchange.answer.headers["location"]
        return URL(location).path, exchange


@pytest.fixture
async def gateway(make_client: ClientFactory) -> Gateway:
    client: TestClient[Any, Any] = await make_client()
    port = client.server.port
    assert port is not None
    return Gateway(port, client)


def check_interim(version: int, exchange: Exchange, location: str) -> None:
    """Exactly one 104, with the interop version and the upload's Location (and from -05 on,
    its limits)."""
    interims = [r for r in exchange.interim if r.status == 104]
    assert len(interims) == 1, exchange.interim
    interim = interims[0]
    assert interim.headers["upload-draft-interop-version"] == str(version)
    assert interim.headers["location"] == location
    assert ("upload-limit" in interim.headers) == (version >= 6)


# --- creation --------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
async def test_creation_in_one_request(gateway: Gateway, version: int) -> None:
    body = os.urandom(1000)
    _, exchange = await gateway.create(
        version, body, done=True, extra={"Content-Disposition": 'attachment; filename="a.bin"'})
    answer = exchange.answer
    assert answer.status == 201
    check_interim(version, exchange, answer.headers["location"])
    assert answer.offset == 1000
    assert is_complete(version, answer)
    assert answer.headers["upload-draft-interop-version"] == str(version)
    assert await gateway.download(answer.headers["location"]) == body
    # The file name came as representation metadata, as the draft carries it.
    async with gateway.client.get(URL(answer.headers["location"]).path) as resp:
        assert 'filename="a.bin"' in resp.headers["Content-Disposition"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.both_stores
async def test_creation_cut_off_then_resumed(gateway: Gateway, version: int) -> None:
    body = os.urandom(300_000)
    sent = 120_000
    reader, writer = await asyncio.open_connection(HOST, gateway.port)
    exchange = Exchange()
    headers = {**interop(version), **complete(version, True), "Content-Length": str(len(body))}
    writer.write(_request_head("POST", "/files/", gateway.port, headers))
    await writer.drain()
    # The 104 arrives before any byte of the body was sent: that is what makes a cut-off
    # creation resumable.
    first = await _read_head(reader)
    assert first.status == 104, first
    exchange.interim.append(first)
    location = first.headers["location"]
    check_interim(version, exchange, location)
    writer.write(body[:sent])
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.transport.abort()

    head = (await send(gateway.port, "HEAD", URL(location).path, interop(version))).answer
    assert head.status == 204
    assert 0 < head.offset <= sent
    assert not is_complete(version, head)
    assert head.headers["upload-length"] == str(len(body))  # from Content-Length with ?1
    assert head.headers["cache-control"] == "no-store"
    assert ("upload-limit" in head.headers) == (version >= 6)

    offset = head.offset
    patch = (await send(gateway.port, "PATCH", URL(location).path,
                        append_headers(version, offset, True), body[offset:])).answer
    assert patch.status == append_status(version), patch
    assert patch.offset == len(body)
    assert is_complete(version, patch)
    assert await gateway.download(location) == body


@pytest.mark.parametrize("version", VERSIONS)
async def test_incremental_upload_completes(gateway: Gateway, version: int) -> None:
    """An empty creation with the flag "incomplete", two appends, the last one completing:
    the length is learnt only from the last request."""
    path, exchange = await gateway.create(version)
    created = exchange.answer
    assert created.status == 201
    check_interim(version, exchange, created.headers["location"])
    assert created.offset == 0
    assert not is_complete(version, created)
    assert "upload-length" not in created.headers

    first = (await send(gateway.port, "PATCH", path, append_headers(version, 0, False),
                        b"a" * 500)).answer
    assert first.status == append_status(version)
    assert first.offset == 500
    assert not is_complete(version, first)
    head = (await send(gateway.port, "HEAD", path, interop(version))).answer
    assert (head.offset, is_complete(version, head)) == (500, False)

    last = (await send(gateway.port, "PATCH", path, append_headers(version, 500, True),
                       b"b" * 300)).answer
    assert last.status == append_status(version)
    assert last.offset == 800
    assert is_complete(version, last)
    head = (await send(gateway.port, "HEAD", path, interop(version))).answer
    assert (head.offset, is_complete(version, head)) == (800, True)
    assert head.headers["upload-length"] == "800"
    assert await gateway.download(created.headers["location"]) == b"a" * 500 + b"b" * 300

    # "If the upload is already complete, the server MUST NOT modify the upload resource and
    # MUST respond with a 400 (Bad Request)".
    again = (await send(gateway.port, "PATCH", path, append_headers(version, 800, True),
                        b"c")).answer
    assert again.status == 400
    assert again.problem()["type"] == PROBLEM + "completed-upload"


@pytest.mark.parametrize("version", VERSIONS)
async def test_empty_append_completes(gateway: Gateway, version: int) -> None:
    path, _ = await gateway.create(version, b"x" * 10)
    done = (await send(gateway.port, "PATCH", path, append_headers(version, 10, True))).answer
    assert done.status == append_status(version)
    assert (done.offset, is_complete(version, done)) == (10, True)


@pytest.mark.parametrize("version", VERSIONS)
async def test_mismatched_offset_is_409_with_expected_offset(gateway: Gateway,
                                                             version: int) -> None:
    path, _ = await gateway.create(version, b"x" * 10)
    reply = (await send(gateway.port, "PATCH", path, append_headers(version, 5, False),
                        b"y" * 5)).answer
    assert reply.status == 409
    assert reply.offset == 10
    assert not is_complete(version, reply)
    assert reply.headers["upload-draft-interop-version"] == str(version)
    problem = reply.problem()
    assert problem["type"] == PROBLEM + "mismatching-upload-offset"
    assert (problem["expected-offset"], problem["provided-offset"]) == (10, 5)
    head = (await send(gateway.port, "HEAD", path, interop(version))).answer
    assert head.offset == 10  # nothing was appended


@pytest.mark.parametrize("version", VERSIONS)
async def test_cancellation(gateway: Gateway, version: int) -> None:
    path, _ = await gateway.create(version, b"x" * 10)
    gone = (await send(gateway.port, "DELETE", path, interop(version))).answer
    assert gone.status == 204
    head = (await send(gateway.port, "HEAD", path, interop(version))).answer
    assert head.status == 404  # "If the server does not consider the upload ... active"
    patch = (await send(gateway.port, "PATCH", path, append_headers(version, 10, True),
                        b"y")).answer
    assert patch.status == 404
    assert (await send(gateway.port, "DELETE", path, interop(version))).answer.status == 404


# --- what differs between versions -------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
async def test_append_media_type(gateway: Gateway, version: int) -> None:
    """From -04 (interop 6) an append must be application/partial-upload; before, the draft
    says nothing about its type."""
    path, _ = await gateway.create(version, b"x" * 10)
    headers = append_headers(version, 10, False)
    headers["Content-Type"] = "application/octet-stream"
    reply = (await send(gateway.port, "PATCH", path, headers, b"y" * 5)).answer
    if version >= 6:
        assert reply.status == 415
        assert (await send(gateway.port, "HEAD", path, interop(version))).answer.offset == 10
    else:
        assert reply.status == 201
        assert reply.offset == 15


@pytest.mark.parametrize("version", VERSIONS)
async def test_append_without_completeness_flag(gateway: Gateway, version: int) -> None:
    """Up to -05 a missing flag means the append ends the upload; from -06 (interop 7) the
    flag is required."""
    path, _ = await gateway.create(version, b"x" * 10)
    headers = append_headers(version, 10, True)
    del headers["Upload-Incomplete" if version == 3 else "Upload-Complete"]
    reply = (await send(gateway.port, "PATCH", path, headers, b"y" * 5)).answer
    if version >= 7:
        assert reply.status == 400
    else:
        assert reply.status == 201
        assert (reply.offset, is_complete(version, reply)) == (15, True)


@pytest.mark.parametrize("version", VERSIONS)
async def test_limits(gateway: Gateway, version: int) -> None:
    """Upload-Limit from -05 on: min-size=0 when nothing else applies, and the remaining
    lifetime as ``expires`` (interop 6) or ``max-age`` (7 and later)."""
    options = (await send(gateway.port, "OPTIONS", "/files/", interop(version))).answer
    assert options.status == 204
    path, _ = await gateway.create(version, b"x" * 10)
    head = (await send(gateway.port, "HEAD", path, interop(version))).answer
    for reply in (options, head):
        if version < 6:
            assert "upload-limit" not in reply.headers
            continue
        limits = dict(p.strip().partition("=")[::2] for p in
                      reply.headers["upload-limit"].split(","))
        assert limits["min-size"] == "0"
        key = "expires" if version == 6 else "max-age"
        assert 0 < int(limits[key]) <= 86400, limits
        assert ({"expires", "max-age"} - {key}).isdisjoint(limits)
    # -09 (interop 8) asks for Accept-Patch on OPTIONS; -12 (interop 9) withdraws it.
    assert ("accept-patch" in options.headers) == (version == 8)


@pytest.mark.parametrize("version", VERSIONS)
async def test_head_and_delete_refuse_upload_fields(gateway: Gateway, version: int) -> None:
    path, _ = await gateway.create(version, b"x" * 10)
    for method in ("HEAD", "DELETE"):
        reply = (await send(gateway.port, method, path,
                            {**interop(version), "Upload-Offset": "10"})).answer
        assert reply.status == 400, method
    assert (await send(gateway.port, "HEAD", path, interop(version))).answer.offset == 10


@pytest.mark.parametrize("version", VERSIONS)
async def test_inconsistent_length(gateway: Gateway, version: int) -> None:
    exchange = await send(gateway.port, "POST", "/files/",
                          {**interop(version), **complete(version, True),
                           "Upload-Length": "20"}, b"x" * 10)
    assert exchange.answer.status == 400
    assert exchange.interim == []  # refused before anything was created
    assert exchange.answer.problem()["type"] == PROBLEM + "inconsistent-upload-length"


@pytest.mark.parametrize("version", [3, 6, 8, 9])
async def test_chunked_append_past_the_length(gateway: Gateway, version: int) -> None:
    """No Content-Length to check up front: the body is refused once it runs past the length,
    and none of it is kept."""
    path, _ = await gateway.create(version, extra={"Upload-Length": "10"})
    headers = {**append_headers(version, 0, True), "Transfer-Encoding": "chunked"}
    reader, writer = await asyncio.open_connection(HOST, gateway.port)
    writer.write(_request_head("PATCH", path, gateway.port, headers)
                 + b"14\r\n" + b"z" * 20 + b"\r\n0\r\n\r\n")
    await writer.drain()
    reply = await read_reply(reader, Exchange(), "PATCH")
    writer.close()
    assert reply.status == 400
    assert reply.problem()["type"] == PROBLEM + "inconsistent-upload-length"
    assert (await send(gateway.port, "HEAD", path, interop(version))).answer.offset == 0


@pytest.mark.parametrize("raw", ["2", "10", "5.0", "abc", "6, 7"])
async def test_unknown_interop_version_gets_no_104(gateway: Gateway, raw: str) -> None:
    exchange = await send(gateway.port, "POST", "/files/",
                          {"Upload-Draft-Interop-Version": raw, "Upload-Complete": "?1"}, b"x")
    assert exchange.interim == []
    assert exchange.answer.status == 400
    assert exchange.answer.problem()["code"] == "ERR_UNSUPPORTED_INTEROP_VERSION"


@pytest.mark.parametrize("version", VERSIONS)
async def test_creation_without_flag_is_refused(gateway: Gateway, version: int) -> None:
    exchange = await send(gateway.port, "POST", "/files/", interop(version), b"x")
    assert exchange.interim == []
    assert exchange.answer.status == 400


async def test_expect_continue_gets_104_and_100(gateway: Gateway) -> None:
    """The 104 does not replace the 100 a client waits for before sending its body."""
    reader, writer = await asyncio.open_connection(HOST, gateway.port)
    headers = {**interop(8), **complete(8, True), "Content-Length": "4",
               "Expect": "100-continue"}
    writer.write(_request_head("POST", "/files/", gateway.port, headers))
    await writer.drain()
    exchange = Exchange()
    exchange.interim.append(await _read_head(reader))
    exchange.interim.append(await _read_head(reader))
    assert [r.status for r in exchange.interim] == [104, 100]
    writer.write(b"data")
    await writer.drain()
    answer = await read_reply(reader, exchange, "POST")
    writer.close()
    assert (answer.status, answer.offset) == (201, 4)


async def test_creation_needs_a_token_when_auth_is_on(make_client: ClientFactory) -> None:
    client: TestClient[Any, Any] = await make_client(auth="bearer", auth_tokens=("tok",))
    port = client.server.port
    assert port is not None
    refused = await send(port, "POST", "/files/", {**interop(6), **complete(6, True)}, b"x")
    assert refused.interim == []  # nothing was created, so nothing to resume
    assert refused.answer.status == 401
    assert "www-authenticate" in refused.answer.headers
    assert refused.answer.problem()["code"] == "ERR_AUTH_REQUIRED"
    accepted = await send(port, "POST", "/files/", {**interop(6), **complete(6, True),
                                                    "Authorization": "Bearer tok"}, b"x")
    assert accepted.answer.status == 201
    assert [r.status for r in accepted.interim] == [104]


# --- one upload, two protocols ---------------------------------------------------------------
@pytest.mark.parametrize("version", [3, 8, 9])
async def test_tus_resumes_a_draft_upload_and_back(gateway: Gateway, version: int) -> None:
    path, _ = await gateway.create(version, b"a" * 10, extra={"Upload-Length": "30"})
    tus = {"Tus-Resumable": "1.0.0"}
    head = (await send(gateway.port, "HEAD", path, tus)).answer
    assert (head.status, head.headers["upload-offset"], head.headers["upload-length"]) == \
        (200, "10", "30")
    patch = (await send(gateway.port, "PATCH", path,
                        {**tus, "Upload-Offset": "10",
                         "Content-Type": "application/offset+octet-stream"}, b"b" * 10)).answer
    assert (patch.status, patch.offset) == (204, 20)
    last = (await send(gateway.port, "PATCH", path, append_headers(version, 20, True),
                       b"c" * 10)).answer
    assert (last.offset, is_complete(version, last)) == (30, True)
    assert await gateway.download(path) == b"a" * 10 + b"b" * 10 + b"c" * 10


# --- protocol rules without a server ---------------------------------------------------------
@pytest.mark.parametrize(("raw", "value"), [("?1", True), ("?0", False), (" ?1 ", True),
                                            ("?1;a=1", True), ('?0;x="y"', False)])
def test_sf_boolean(raw: str, value: bool) -> None:
    assert ietf.parse_sf_boolean(raw, "X") is value


@pytest.mark.parametrize("raw", ["1", "true", "?", "?2", "?10", "?1,?0", "?1;", "", "?1 x"])
def test_sf_boolean_rejects(raw: str) -> None:
    with pytest.raises(errors.InvalidHeader):
        ietf.parse_sf_boolean(raw, "X")


@pytest.mark.parametrize("raw", ["-1", "1.0", "0x10", "+1", "1234567890123456", "", "1 2"])
def test_sf_integer_rejects(raw: str) -> None:
    with pytest.raises(errors.InvalidHeader):
        ietf.parse_sf_integer(raw, "X")


def test_interim_refuses_line_breaks() -> None:
    with pytest.raises(ValueError, match="interim"):
        ietf.format_interim([("Location", "http://x/\r\nSet-Cookie: a=b")])


def test_problem_maps_gone_to_404() -> None:
    problem = ietf.problem(ietf.DRAFTS[6], errors.Gone())
    assert problem.status == 404
    assert problem.headers[ietf.INTEROP_HEADER] == "6"
    assert ietf.draft_of(Headers({"Upload-Draft-Interop-Version": "6"})) is ietf.DRAFTS[6]


# --- tus-js-client -----------------------------------------------------------------------------
Gateways = Callable[..., GatewayProcess]


@pytest.mark.parametrize(("protocol", "version"), [("ietf-draft-03", "5"),
                                                   ("ietf-draft-05", "6")])
@pytest.mark.parametrize("chunk_size", [None, 1_000_000])
def test_tus_js_client_ietf(gateway_process: Gateways, tmp_path: Path, protocol: str,
                            version: str, chunk_size: int | None) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "draft.bin", 2_500_000)
    result = run_js({"endpoint": gw.url, "file": str(source), "protocol": protocol,
                     "chunkSize": chunk_size, "metadata": {"filename": "draft.bin"}},
                    tmp_path, gw)
    posts = requests_of(result, "POST")
    patches = requests_of(result, "PATCH")
    assert len(posts) == 1 and patches
    for req in posts + patches:
        assert req["headers"]["Upload-Draft-Interop-Version"] == version
        assert "Tus-Resumable" not in req["headers"]
    # tus-js-client 4.3.1 reading a file in chunks may flag its last chunk ?0: the upload's
    # length (sent at creation) is what completes it then, and the answer says so.
    assert patches[-1]["responseHeaders"]["Upload-Complete"] == "?1"
    if chunk_size is not None:
        assert len(patches) == 3
        assert patches[0]["responseHeaders"]["Upload-Complete"] == "?0"
    assert_delivered(gw, result["url"], source, "draft.bin")
