"""Functional tests through a real server, one per item of the tus conformance checklist.

Each test is named after the checklist number it proves (TUS-GEN-01 → test_gen_01_...), so
the coverage can be read off the test names. Items that need a dropped or stalled connection
live in test_faults.py, crash recovery in test_crash.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.clock import ManualClock
from protocol.decisions import ALL_EXTENSIONS
from protocol.headers import parse_http_date
from tests.conftest import ClientFactory
from tests.helpers import OCTETS, TUS, b64, metadata, patch_headers, path_of

Client = TestClient[Any, Any]


async def create(client: Client, length: int | None = None, /, **headers: str) -> str:
    h = {**TUS, **headers}
    if length is not None:
        h["Upload-Length"] = str(length)
    r = await client.post("/files/", headers=h)
    assert r.status == 201, await r.text()
    return path_of(r.headers["Location"])


async def head(client: Client, url: str) -> ClientResponse:
    return await client.head(url, headers=TUS)


async def upload(client: Client, data: bytes, /, **headers: str) -> str:
    url = await create(client, len(data), **headers)
    r = await client.patch(url, data=data, headers=patch_headers(0))
    assert r.status == 204, await r.text()
    return url


def data_dir(client: Client) -> Path:
    from gateway.keys import CONFIG
    return client.app[CONFIG].data_dir  # type: ignore[no-any-return]


async def error_code(r: ClientResponse) -> str:
    return (await r.text()).split(":", 1)[0]


# --- 1.1 general -------------------------------------------------------------------------------
async def test_gen_01_tus_resumable_on_every_response(client: Client) -> None:
    url = await create(client, 3)
    responses = [
        await client.post("/files/", headers={**TUS, "Upload-Length": "1"}),
        await head(client, url),
        await client.patch(url, data=b"abc", headers=patch_headers(0)),
        await head(client, "/files/" + "0" * 32),  # errors too
        await client.patch(url, data=b"x", headers=patch_headers(9)),
        await client.delete(url, headers=TUS),
        await client.options("/files/"),
    ]
    for r in responses:
        assert r.headers.get("Tus-Resumable") == "1.0.0", (r.method, r.status)


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0", "1.0"])
async def test_gen_02_unsupported_version_is_412_and_changes_nothing(
        client: Client, version: str | None) -> None:
    h = {} if version is None else {"Tus-Resumable": version}
    r = await client.post("/files/", headers={**h, "Upload-Length": "3"})
    assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0"
    assert await error_code(r) == "ERR_UNSUPPORTED_VERSION"
    assert "Location" not in r.headers
    url = await create(client, 3)
    r = await client.patch(url, data=b"abc", headers={**h, "Upload-Offset": "0",
                                                      "Content-Type": OCTETS})
    assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0"
    for method in ("HEAD", "DELETE"):
        r = await client.request(method, url, headers=h)
        assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0"
    assert (await head(client, url)).headers["Upload-Offset"] == "0"  # nothing changed
    assert list((data_dir(client) / "uploads").glob("*.bin")).__len__() == 1


async def test_gen_03_method_override(client: Client) -> None:
    url = await create(client, 3)
    r = await client.post(url, data=b"abc", headers={
        **patch_headers(0), "X-HTTP-Method-Override": "PATCH"})
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert r.status == 200 and r.headers["Upload-Offset"] == "3"
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert r.status == 204
    assert (await head(client, url)).status == 410
    r = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "TRACE"})
    assert r.status == 405


@pytest.mark.both_stores
async def test_gen_05_unknown_is_404_removed_is_410(client: Client) -> None:
    unknown = "/files/" + "a" * 32
    for method in ("HEAD", "PATCH", "DELETE"):
        r = await client.request(method, unknown, headers=patch_headers(0))
        assert r.status == 404, method
    url = await create(client, 3)
    assert (await client.delete(url, headers=TUS)).status == 204
    for method in ("HEAD", "PATCH", "DELETE"):
        r = await client.request(method, url, headers=patch_headers(0))
        assert r.status == 410, method


async def test_gen_06_ids_are_unguessable_and_validated(client: Client) -> None:
    urls = {await create(client, 1) for _ in range(20)}
    assert len(urls) == 20
    for url in urls:
        upload_id = url.rsplit("/", 1)[1]
        assert len(upload_id) == 32 and int(upload_id, 16) >= 0  # 128 random bits, hex
    for bad in ("..%2f..%2fetc%2fpasswd", "%2e%2e", "A" * 32, "a" * 31, "a" * 33, "x.info"):
        r = await head(client, "/files/" + bad)
        assert r.status == 404, bad


async def test_gen_07_errors_have_stable_codes_and_head_has_no_body(client: Client) -> None:
    url = await create(client, 3)
    r = await client.patch(url, data=b"x", headers=patch_headers(1))
    assert r.status == 409 and (await r.text()).startswith("ERR_MISMATCHED_OFFSET: ")
    r = await head(client, "/files/" + "0" * 32)
    assert r.status == 404 and await r.read() == b""


# --- 1.2 OPTIONS -------------------------------------------------------------------------------
async def test_opt_01_to_04_discovery(make_client: ClientFactory) -> None:
    client = await make_client(max_size_bytes=1 << 30)
    r = await client.options("/files/")
    assert r.status in (200, 204)
    assert r.headers["Tus-Version"] == "1.0.0"
    assert r.headers["Tus-Extension"].split(",") == list(ALL_EXTENSIONS)
    assert r.headers["Tus-Max-Size"] == str(1 << 30)
    assert "sha1" in r.headers["Tus-Checksum-Algorithm"].split(",")


async def test_opt_02_extensions_follow_configuration(make_client: ClientFactory) -> None:
    client = await make_client(expire_after_s=0,
                               extensions=("creation", "termination", "checksum"))
    r = await client.options("/files/")
    assert r.headers["Tus-Extension"] == "creation,termination,checksum"
    assert "Tus-Max-Size" not in r.headers
    # What is not announced is not honoured either.
    r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": "1"})
    assert r.status == 400
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Upload-Concat": "partial"})
    assert r.status == 400
    r = await client.post("/files/", data=b"a", headers={**TUS, "Upload-Length": "1",
                                                         "Content-Type": OCTETS})
    assert r.status == 400 and await error_code(r) == "ERR_BODY_NOT_ALLOWED"


async def test_opt_05_options_ignores_tus_resumable(client: Client) -> None:
    r = await client.options("/files/", headers={"Tus-Resumable": "0.0.1"})
    assert r.status in (200, 204)


async def test_opt_06_cors_preflight_and_exposed_headers(client: Client) -> None:
    r = await client.options("/files/", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] in ("*", "https://app.example")
    assert "PATCH" in r.headers["Access-Control-Allow-Methods"]
    allowed = r.headers["Access-Control-Allow-Headers"].upper()
    for name in ("TUS-RESUMABLE", "UPLOAD-OFFSET", "CONTENT-TYPE"):
        assert name in allowed
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Origin": "https://app.example"})
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    for name in ("location", "upload-offset", "upload-length", "upload-metadata",
                 "upload-defer-length", "upload-concat", "upload-expires", "tus-resumable",
                 "tus-version", "tus-max-size", "tus-extension"):
        assert name in exposed, name


async def test_opt_06_cors_origin_list(make_client: ClientFactory) -> None:
    client = await make_client(cors_origins=("https://good.example",))
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Origin": "https://good.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://good.example"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client.options("/files/", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status == 403


# --- 1.3 HEAD ----------------------------------------------------------------------------------
async def test_head_01_to_04_offset_length_no_store(client: Client) -> None:
    url = await create(client, 5)
    r = await head(client, url)
    assert r.status == 200 and r.headers["Upload-Offset"] == "0"
    assert r.headers["Upload-Length"] == "5" and r.headers["Cache-Control"] == "no-store"
    assert await r.read() == b""
    await client.patch(url, data=b"hello", headers=patch_headers(0))
    r = await head(client, url)
    assert r.headers["Upload-Offset"] == "5"  # also when complete


async def test_head_05_not_found_has_no_offset(client: Client) -> None:
    r = await head(client, "/files/" + "b" * 32)
    assert r.status == 404 and "Upload-Offset" not in r.headers


async def test_head_06_metadata_echoed_as_given(client: Client) -> None:
    raw = metadata(filename="a.txt", is_confidential="", other="ü")
    url = await create(client, 1, **{"Upload-Metadata": raw})
    assert (await head(client, url)).headers["Upload-Metadata"] == raw


async def test_head_07_deferred_length(client: Client) -> None:
    url = await create(client, **{"Upload-Defer-Length": "1"})
    r = await head(client, url)
    assert r.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in r.headers


async def test_head_08_concat_echoed(client: Client) -> None:
    url = await create(client, 1, **{"Upload-Concat": "partial"})
    assert (await head(client, url)).headers["Upload-Concat"] == "partial"


async def test_head_09_offset_is_usable_at_once(client: Client) -> None:
    url = await create(client, 10)
    await client.patch(url, data=b"12345", headers=patch_headers(0))
    offset = int((await head(client, url)).headers["Upload-Offset"])
    r = await client.patch(url, data=b"67890", headers=patch_headers(offset))
    assert r.status == 204 and r.headers["Upload-Offset"] == "10"


async def test_head_10_upload_expires_on_head(client: Client) -> None:
    url = await create(client, 10)
    r = await head(client, url)
    assert parse_http_date(r.headers["Upload-Expires"]) > 0


# --- 1.4 PATCH ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ctype", [None, "application/octet-stream", "text/plain"])
async def test_patch_01_wrong_content_type_is_415(client: Client, ctype: str | None) -> None:
    url = await create(client, 3)
    h = {**TUS, "Upload-Offset": "0"}
    if ctype:
        h["Content-Type"] = ctype
    r = await client.patch(url, data=b"abc", headers=h)
    assert r.status == 415 and await error_code(r) == "ERR_INVALID_CONTENT_TYPE"
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


async def test_patch_02_missing_offset_is_400(client: Client) -> None:
    url = await create(client, 3)
    r = await client.patch(url, data=b"abc", headers={**TUS, "Content-Type": OCTETS})
    assert r.status == 400 and await error_code(r) == "ERR_INVALID_OFFSET"


async def test_patch_03_mismatch_is_409_with_offset_and_unchanged(client: Client) -> None:
    url = await create(client, 6)
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    for wrong in (0, 2, 4, 6):
        r = await client.patch(url, data=b"xyz", headers=patch_headers(wrong))
        assert r.status == 409 and r.headers["Upload-Offset"] == "3"
    r = await client.get(url)
    assert r.status == 409  # still unfinished: nothing was appended
    await client.patch(url, data=b"def", headers=patch_headers(3))
    assert await (await client.get(url)).read() == b"abcdef"


async def test_patch_04_success_is_204_with_new_offset(client: Client) -> None:
    url = await create(client, 6)
    r = await client.patch(url, data=b"abcd", headers=patch_headers(0))
    assert r.status == 204 and r.headers["Upload-Offset"] == "4"
    assert await r.read() == b""


async def test_patch_05_unknown_upload(client: Client) -> None:
    r = await client.patch("/files/" + "c" * 32, data=b"a", headers=patch_headers(0))
    assert r.status == 404


async def test_patch_08_body_past_length_is_413_and_stores_nothing(client: Client) -> None:
    url = await create(client, 4)
    r = await client.patch(url, data=b"abcdef", headers=patch_headers(0))
    assert r.status == 413 and await error_code(r) == "ERR_UPLOAD_SIZE_EXCEEDED"
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


async def _chunked(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_patch_08_chunked_body_past_length_is_413_and_stores_nothing(
        client: Client) -> None:
    url = await create(client, 100_000)
    parts = [b"x" * 60_000, b"y" * 60_000]
    r = await client.patch(url, data=_chunked(parts), headers=patch_headers(0))
    assert r.status == 413
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


async def test_patch_09_chunked_bodies_are_accepted(client: Client) -> None:
    url = await create(client, 9)
    r = await client.patch(url, data=_chunked([b"abc", b"def", b"ghi"]),
                           headers=patch_headers(0))
    assert r.status == 204 and r.headers["Upload-Offset"] == "9"


async def test_patch_10_empty_patches(client: Client) -> None:
    url = await create(client, 3)
    r = await client.patch(url, data=b"", headers=patch_headers(0))
    assert r.status == 204 and r.headers["Upload-Offset"] == "0"
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    r = await client.patch(url, data=b"", headers=patch_headers(3))
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"
    r = await client.patch(url, data=b"d", headers=patch_headers(3))
    assert r.status == 413


async def test_patch_11_offset_counts_stored_bytes_not_content_length(client: Client) -> None:
    url = await create(client, 10)
    r = await client.patch(url, data=_chunked([b"ab", b"cd"]), headers=patch_headers(0))
    assert r.headers["Upload-Offset"] == "4"
    size = (data_dir(client) / "uploads" / (url.rsplit("/", 1)[1] + ".bin")).stat().st_size
    assert size == 4


@pytest.mark.both_stores
async def test_patch_12_finish_runs_once_for_a_retried_final_patch(
        make_client: ClientFactory) -> None:
    # Back to back, as here, empty PATCHes are otherwise held back (test_limits.py).
    client = await make_client(empty_patch_interval_s=0)
    url = await create(client, 3, **{"Upload-Metadata": metadata(filename="once.txt")})
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    for _ in range(3):
        r = await client.patch(url, data=b"", headers=patch_headers(3))
        assert r.status == 204
    assert sorted(p.name for p in (data_dir(client) / "complete").iterdir()) == ["once.txt"]


# --- 1.5 creation ------------------------------------------------------------------------------
async def test_cre_01_02_03_length_rules(client: Client) -> None:
    r = await client.post("/files/", headers=TUS)
    assert r.status == 400 and await error_code(r) == "ERR_MISSING_LENGTH"
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Upload-Defer-Length": "1"})
    assert r.status == 400 and await error_code(r) == "ERR_AMBIGUOUS_LENGTH"
    for value in ("0", "2", "true", ""):
        r = await client.post("/files/", headers={**TUS, "Upload-Defer-Length": value})
        assert r.status == 400, value
    assert not list((data_dir(client) / "uploads").glob("*.bin"))


async def test_cre_04_too_large_is_413(make_client: ClientFactory) -> None:
    client = await make_client(max_size_bytes=100)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "101"})
    assert r.status == 413 and await error_code(r) == "ERR_UPLOAD_TOO_LARGE"
    assert (await client.post("/files/", headers={**TUS, "Upload-Length": "100"})).status == 201


async def test_cre_05_created_with_location_at_offset_0(client: Client) -> None:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert r.status == 201
    loc = r.headers["Location"]
    assert loc.startswith(f"http://127.0.0.1:{client.port}/files/")
    assert (await head(client, path_of(loc))).headers["Upload-Offset"] == "0"


async def test_cre_06_zero_length_is_complete_at_creation(client: Client) -> None:
    url = await create(client, 0, **{"Upload-Metadata": metadata(filename="empty.txt")})
    r = await head(client, url)
    assert r.headers["Upload-Offset"] == "0" and r.headers["Upload-Length"] == "0"
    assert "Upload-Expires" not in r.headers
    assert (data_dir(client) / "complete" / "empty.txt").read_bytes() == b""


async def test_cre_07_08_metadata_grammar_and_sanitising(client: Client) -> None:
    for bad in ("a", "a !!", "a YQ==,a YQ==", "a,,b", "a YQ"):
        r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                                  "Upload-Metadata": bad})
        if bad == "a":
            assert r.status == 201  # a key with no value is valid
        else:
            assert r.status == 400 and await error_code(r) == "ERR_INVALID_METADATA", bad
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1",
                                              "Upload-Metadata": "a " + b64("x" * 5000)})
    assert r.status == 400 and await error_code(r) == "ERR_METADATA_TOO_LARGE"


async def test_cre_09_expires_in_201(client: Client) -> None:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5"})
    assert parse_http_date(r.headers["Upload-Expires"]) > 0


async def test_cre_10_content_type_on_empty_post_is_ignored(client: Client) -> None:
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "5",
                                              "Content-Type": "application/json"})
    assert r.status == 201


@pytest.mark.parametrize("headers,expected", [
    ({"X-Forwarded-Host": "up.example.com", "X-Forwarded-Proto": "https"},
     "https://up.example.com/files/"),
    ({"Forwarded": 'for=1.2.3.4;proto=https;host="pub.example:8443", for=5.6.7.8'},
     "https://pub.example:8443/files/"),
    ({"X-Forwarded-Host": "evil.example/x?", "X-Forwarded-Proto": "javascript"}, None),
])
async def test_cre_11_location_behind_proxy(make_client: ClientFactory, headers: dict[str, str],
                                            expected: str | None) -> None:
    client = await make_client(behind_proxy=True)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "1", **headers})
    if expected is None:  # a forwarded host that is no host[:port] is refused, not ignored
        assert r.status == 400 and await error_code(r) == "ERR_INVALID_HOST"
    else:
        assert r.headers["Location"].startswith(expected)
    direct = await make_client()
    r = await direct.post("/files/", headers={**TUS, "Upload-Length": "1", **headers})
    assert r.headers["Location"].startswith(f"http://127.0.0.1:{direct.port}/files/")


# --- 1.6 creation-with-upload ------------------------------------------------------------------
async def test_cwu_02_post_with_data(client: Client) -> None:
    r = await client.post("/files/", data=b"hello", headers={
        **TUS, "Upload-Length": "10", "Content-Type": OCTETS})
    assert r.status == 201 and r.headers["Upload-Offset"] == "5"
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=b"world", headers=patch_headers(5))
    assert await (await client.get(url)).read() == b"helloworld"


async def test_cwu_03_post_body_in_another_type_is_415(client: Client) -> None:
    r = await client.post("/files/", data=b"hello", headers={
        **TUS, "Upload-Length": "10", "Content-Type": "text/plain"})
    assert r.status == 415
    assert not list((data_dir(client) / "uploads").glob("*.bin"))


async def test_cwu_04_expect_continue_is_answered_after_checks(client: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                     b"Upload-Length: 5\r\nUpload-Metadata: a !!\r\nContent-Length: 5\r\n"
                     b"Content-Type: application/offset+octet-stream\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 400")  # refused before any byte was sent
    finally:
        writer.close()
        await writer.wait_closed()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                     b"Upload-Length: 5\r\nContent-Length: 5\r\n"
                     b"Content-Type: application/offset+octet-stream\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 100")
        await reader.readline()
        writer.write(b"hello")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 201")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_cwu_05_location_kept_when_first_bytes_fail(client: Client) -> None:
    r = await client.post("/files/", data=b"hello", headers={
        **TUS, "Upload-Length": "5", "Content-Type": OCTETS,
        "Upload-Checksum": "sha1 " + base64.b64encode(bytes(20)).decode()})
    assert r.status == 460 and "Location" in r.headers
    url = path_of(r.headers["Location"])
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


async def test_cwu_06_final_post_with_data_is_403(client: Client) -> None:
    part = await upload(client, b"a", **{"Upload-Concat": "partial"})
    r = await client.post("/files/", data=b"x", headers={
        **TUS, "Upload-Concat": f"final;{part}", "Content-Type": OCTETS})
    assert r.status == 403


# --- 1.7 creation-defer-length -----------------------------------------------------------------
async def test_def_02_03_05_declare_length_later(client: Client) -> None:
    url = await create(client, **{"Upload-Defer-Length": "1",
                                  "Upload-Metadata": metadata(filename="deferred.bin")})
    r = await client.patch(url, data=b"abc", headers=patch_headers(0))
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"
    assert (await head(client, url)).headers["Upload-Defer-Length"] == "1"
    r = await client.patch(url, data=b"", headers=patch_headers(3, **{"Upload-Length": "2"}))
    assert r.status == 400 and await error_code(r) == "ERR_LENGTH_BELOW_OFFSET"
    r = await client.patch(url, data=b"de", headers=patch_headers(3, **{"Upload-Length": "5"}))
    assert r.status == 204 and r.headers["Upload-Offset"] == "5"
    h = (await head(client, url)).headers
    assert h["Upload-Length"] == "5" and "Upload-Defer-Length" not in h
    r = await client.patch(url, data=b"", headers=patch_headers(5, **{"Upload-Length": "6"}))
    assert r.status == 400 and await error_code(r) == "ERR_LENGTH_ALREADY_SET"
    assert (data_dir(client) / "complete" / "deferred.bin").read_bytes() == b"abcde"


async def test_def_05_length_on_an_empty_trailing_patch(client: Client) -> None:
    url = await create(client, **{"Upload-Defer-Length": "1"})
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    r = await client.patch(url, data=b"", headers=patch_headers(3, **{"Upload-Length": "3"}))
    assert r.status == 204
    assert await (await client.get(url)).read() == b"abc"


async def test_def_04_deferred_body_capped_by_max_size(make_client: ClientFactory) -> None:
    client = await make_client(max_size_bytes=10)
    url = await create(client, **{"Upload-Defer-Length": "1"})
    r = await client.patch(url, data=_chunked([b"x" * 8, b"y" * 8]), headers=patch_headers(0))
    assert r.status == 413
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


# --- 1.8 termination ---------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_term_02_03_delete_frees_storage_and_answers_410(client: Client) -> None:
    url = await create(client, 5)
    await client.patch(url, data=b"ab", headers=patch_headers(0))
    upload_id = url.rsplit("/", 1)[1]
    assert (await client.delete(url, headers=TUS)).status == 204
    assert not list((data_dir(client) / "uploads").glob(upload_id + "*"))
    assert (await head(client, url)).status == 410
    assert (await client.get(url)).status == 410
    done = await upload(client, b"xyz")  # finished uploads can be terminated too
    assert (await client.delete(done, headers=TUS)).status == 204


async def test_term_05_delete_unknown_is_404(client: Client) -> None:
    assert (await client.delete("/files/" + "d" * 32, headers=TUS)).status == 404


# --- 1.9 checksum ------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
async def test_csum_02_04_match_is_204(client: Client, algorithm: str) -> None:
    url = await create(client, 6)
    digest = base64.b64encode(hashlib.new(algorithm, b"abc").digest()).decode()
    r = await client.patch(url, data=b"abc", headers=patch_headers(
        0, **{"Upload-Checksum": f"{algorithm} {digest}"}))
    assert r.status == 204 and r.headers["Upload-Offset"] == "3"


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512"])
async def test_csum_04_mismatch_is_460_and_discards(client: Client, algorithm: str) -> None:
    url = await create(client, 600_000)
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    body = b"z" * 500_000  # bigger than a write buffer, so bytes did reach the disk
    digest = base64.b64encode(hashlib.new(algorithm, b"other").digest()).decode()
    r = await client.patch(url, data=body, headers=patch_headers(
        3, **{"Upload-Checksum": f"{algorithm} {digest}"}))
    assert r.status == 460 and await error_code(r) == "ERR_CHECKSUM_MISMATCH"
    assert (await head(client, url)).headers["Upload-Offset"] == "3"
    upload_id = url.rsplit("/", 1)[1]
    assert (data_dir(client) / "uploads" / f"{upload_id}.bin").stat().st_size == 3
    assert not (data_dir(client) / "uploads" / f"{upload_id}.stage").exists()
    r = await client.patch(url, data=b"def", headers=patch_headers(3))
    assert r.status == 204 and r.headers["Upload-Offset"] == "6"


async def test_csum_04_05_unsupported_or_malformed_is_400(client: Client) -> None:
    url = await create(client, 6)
    for value, code in [("crc32 AAAAAA==", "ERR_UNSUPPORTED_CHECKSUM"),
                        ("sha1", "ERR_INVALID_CHECKSUM"),
                        ("sha1 not-base64!", "ERR_INVALID_CHECKSUM"),
                        ("sha1 " + base64.b64encode(b"short").decode(), "ERR_INVALID_CHECKSUM")]:
        r = await client.patch(url, data=b"abc", headers=patch_headers(
            0, **{"Upload-Checksum": value}))
        assert r.status == 400 and await error_code(r) == code, value
    assert (await head(client, url)).headers["Upload-Offset"] == "0"


async def test_csum_07_checksum_on_creation_with_upload(client: Client) -> None:
    digest = base64.b64encode(hashlib.sha256(b"hey").digest()).decode()
    r = await client.post("/files/", data=b"hey", headers={
        **TUS, "Upload-Length": "3", "Content-Type": OCTETS,
        "Upload-Checksum": f"sha256 {digest}"})
    assert r.status == 201 and r.headers["Upload-Offset"] == "3"


# --- 1.11 expiration ---------------------------------------------------------------------------
async def test_exp_02_03_upload_expires_on_patch(make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = await make_client(clock=clock)
    url = await create(client, 6)
    r = await client.patch(url, data=b"abc", headers=patch_headers(0))
    first = parse_http_date(r.headers["Upload-Expires"])
    assert r.headers["Upload-Expires"].endswith(" GMT")
    clock.advance(1.1)
    r = await client.patch(url, data=b"d", headers=patch_headers(3))
    assert parse_http_date(r.headers["Upload-Expires"]) >= first  # sliding expiry


@pytest.mark.both_stores
async def test_exp_04_05_expired_uploads_answer_410_and_are_removed(
        make_client: ClientFactory) -> None:
    clock = ManualClock()
    client = await make_client(expire_after_s=1.0, sweep_interval_s=0.2, clock=clock)
    url = await create(client, 10)
    await client.patch(url, data=b"abc", headers=patch_headers(0))
    done = await upload(client, b"done")  # finished uploads do not expire
    upload_id = url.rsplit("/", 1)[1]
    # Well past the expiry: the stores stamp the last byte with the real time, which has
    # moved on a little since the clock was made.
    clock.advance(5.0)  # the sweeper's turn is due
    for _ in range(500):  # until its sweep, which reads and writes the store, is done
        await asyncio.sleep(0.01)
        if not (data_dir(client) / "uploads" / f"{upload_id}.bin").exists():
            break
    assert not (data_dir(client) / "uploads" / f"{upload_id}.bin").exists()
    assert (await head(client, url)).status == 410
    r = await client.patch(url, data=b"d", headers=patch_headers(3))
    assert r.status == 410
    assert (await head(client, done)).status == 200


# --- 1.12 / 1.13 concatenation -----------------------------------------------------------------
@pytest.mark.both_stores
async def test_cat_02_03_07_concatenate_finished_partials(client: Client) -> None:
    a = await upload(client, b"hello ", **{"Upload-Concat": "partial",
                                           "Upload-Metadata": metadata(filename="a")})
    b = await upload(client, b"world", **{"Upload-Concat": "partial"})
    r = await head(client, a)
    assert r.headers["Upload-Concat"] == "partial" and r.headers["Upload-Offset"] == "6"
    full_b = f"http://127.0.0.1:{client.port}{b}"  # absolute and relative URLs both work
    r = await client.post("/files/", headers={
        **TUS, "Upload-Concat": f"final;{a} {full_b}",
        "Upload-Metadata": metadata(filename="joined.txt")})
    assert r.status == 201
    final = path_of(r.headers["Location"])
    h = (await head(client, final)).headers
    assert h["Upload-Offset"] == h["Upload-Length"] == "11"
    assert h["Upload-Concat"] == f"final;{a} {b}"
    assert h["Upload-Metadata"] == metadata(filename="joined.txt")  # not the partial's
    assert await (await client.get(final)).read() == b"hello world"
    assert (data_dir(client) / "complete" / "joined.txt").read_bytes() == b"hello world"


async def test_cat_04_declared_length_must_match(client: Client) -> None:
    a = await upload(client, b"abc", **{"Upload-Concat": "partial"})
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}",
                                              "Upload-Length": "4"})
    assert r.status == 400 and await error_code(r) == "ERR_CONCAT_LENGTH_MISMATCH"
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}",
                                              "Upload-Length": "3"})
    assert r.status == 201


async def test_cat_05_patch_on_final_is_403(client: Client) -> None:
    a = await upload(client, b"abc", **{"Upload-Concat": "partial"})
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a}"})
    final = path_of(r.headers["Location"])
    r = await client.patch(final, data=b"x", headers=patch_headers(3))
    assert r.status == 403
    assert await (await client.get(final)).read() == b"abc"


@pytest.mark.both_stores
async def test_cat_06_09_bad_references(client: Client) -> None:
    plain = await upload(client, b"abc")
    cases = [
        (f"final;{plain}", 400, "ERR_CONCAT_NOT_PARTIAL"),
        ("final;/files/" + "e" * 32, 404, "ERR_UPLOAD_NOT_FOUND"),
        ("final;/files/../uploads/x", 400, "ERR_INVALID_CONCAT"),
        ("final;/etc/passwd", 400, "ERR_INVALID_CONCAT"),
        ("final;http://other.example/elsewhere/" + "e" * 32, 400, "ERR_INVALID_CONCAT"),
        ("final;", 400, "ERR_INVALID_CONCAT"),
    ]
    for value, status, code in cases:
        r = await client.post("/files/", headers={**TUS, "Upload-Concat": value})
        assert r.status == status and await error_code(r) == code, value
    # Nothing was created: no bytes at all (the plain upload's went with its delivery), and
    # no upload but the plain one.
    assert not list((data_dir(client) / "uploads").glob("*.bin"))
    from gateway.keys import RUNTIME
    assert await client.app[RUNTIME].require().store.upload_ids() == [plain.rsplit("/", 1)[1]]


@pytest.mark.both_stores
async def test_cat_08_same_partial_twice(client: Client) -> None:
    a = await upload(client, b"ab", **{"Upload-Concat": "partial"})
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {a} {a}"})
    assert await (await client.get(path_of(r.headers["Location"]))).read() == b"ababab"
    assert (await head(client, a)).status == 200  # partials are kept for reuse


@pytest.mark.both_stores
async def test_catu_01_02_03_final_before_partials_finish(client: Client) -> None:
    a = await create(client, 3, **{"Upload-Concat": "partial"})
    b = await create(client, **{"Upload-Concat": "partial", "Upload-Defer-Length": "1"})
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}",
                                              "Upload-Metadata": metadata(filename="u.txt")})
    assert r.status == 201
    final = path_of(r.headers["Location"])
    h = (await head(client, final)).headers
    assert "Upload-Offset" not in h and "Upload-Length" not in h  # TUS-CATU-02
    await client.patch(a, data=b"abc", headers=patch_headers(0))
    await client.patch(b, data=b"de", headers=patch_headers(0))
    assert "Upload-Offset" not in (await head(client, final)).headers
    await client.patch(b, data=b"f", headers=patch_headers(2, **{"Upload-Length": "3"}))
    h = (await head(client, final)).headers
    assert h["Upload-Offset"] == h["Upload-Length"] == "6"
    assert await (await client.get(final)).read() == b"abcdef"
    assert (data_dir(client) / "complete" / "u.txt").read_bytes() == b"abcdef"


# --- downloads and the directory sink ----------------------------------------------------------
async def test_get_downloads_a_finished_upload(client: Client) -> None:
    url = await upload(client, b"%PDF-1.4 x", **{"Upload-Metadata": metadata(
        filename="report 2026.pdf", filetype="application/pdf")})
    r = await client.get(url)
    assert r.status == 200 and await r.read() == b"%PDF-1.4 x"
    assert r.headers["Content-Length"] == "10"
    assert r.headers["Content-Type"] == "application/pdf"
    assert r.headers["Content-Disposition"].startswith('inline; filename="report 2026.pdf"')
    assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_get_never_serves_active_types(client: Client) -> None:
    for ftype in ("text/html", "image/svg+xml", "application/javascript", "text/html\r\nX: y"):
        url = await upload(client, b"<script>alert(1)</script>", **{
            "Upload-Metadata": metadata(filename="x.html", filetype=ftype)})
        r = await client.get(url)
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Content-Disposition"].startswith("attachment;")


async def test_get_unfinished_is_409(client: Client) -> None:
    url = await create(client, 5)
    r = await client.get(url)
    assert r.status == 409 and await error_code(r) == "ERR_UPLOAD_NOT_FINISHED"


@pytest.mark.parametrize("name,expected", [
    ("../../../../tmp/evil.txt", "evil.txt"),
    ("..", None),
    ("/etc/passwd", "passwd"),
    ("..\\..\\boot.ini", "boot.ini"),
    ("a/../../b.txt", "b.txt"),
    ("\x00\x01", None),
    ("normal.txt", "normal.txt"),
])
async def test_directory_sink_names_stay_inside(client: Client, name: str,
                                                expected: str | None) -> None:
    url = await upload(client, b"data", **{"Upload-Metadata": metadata(filename=name)})
    complete = data_dir(client) / "complete"
    files = list(complete.iterdir())
    assert len(files) == 1 and files[0].parent == complete
    assert files[0].name == (expected or url.rsplit("/", 1)[1])
    assert not (Path("/tmp") / "evil.txt").exists() or name != "../../../../tmp/evil.txt" or \
        (Path("/tmp") / "evil.txt").read_bytes() != b"data"


async def test_directory_sink_names_are_unique(client: Client) -> None:
    for i in range(3):
        await upload(client, f"v{i}".encode(), **{"Upload-Metadata": metadata(filename="a.txt")})
    complete = data_dir(client) / "complete"
    assert sorted(p.name for p in complete.iterdir()) == ["a (1).txt", "a (2).txt", "a.txt"]
    assert (complete / "a.txt").read_bytes() == b"v0"
    assert (complete / "a (2).txt").read_bytes() == b"v2"


async def test_cat_partials_are_not_delivered_on_their_own(client: Client) -> None:
    a = await upload(client, b"ab", **{"Upload-Concat": "partial"})
    b = await upload(client, b"cd", **{"Upload-Concat": "partial"})
    assert not list((data_dir(client) / "complete").iterdir())
    await client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}",
                                          "Upload-Metadata": metadata(filename="whole.bin")})
    assert [p.name for p in (data_dir(client) / "complete").iterdir()] == ["whole.bin"]


@pytest.mark.both_stores
async def test_directory_sink_delivers_once_across_restarts(make_client: ClientFactory,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "shared"
    first = await make_client(data_dir=root)
    taken = await upload(first, b"take me", **{"Upload-Metadata": metadata(filename="t.txt")})
    kept = await upload(first, b"keep me", **{"Upload-Metadata": metadata(filename="k.txt")})
    await first.close()
    (root / "complete" / "t.txt").unlink()  # a consumer took the file away
    second = await make_client(data_dir=root)
    assert sorted(p.name for p in (root / "complete").iterdir()) == ["k.txt"]
    assert (await second.head(taken, headers=TUS)).status == 200
    assert await (await second.get(kept)).read() == b"keep me"
    assert (await second.delete(taken, headers=TUS)).status == 204
    await second.close()
    third = await make_client(data_dir=root)
    assert sorted(p.name for p in (root / "complete").iterdir()) == ["k.txt"]
    await third.close()


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_directory_sink_journal_forgets_terminated_uploads(
        make_client: ClientFactory, tmp_path: Path) -> None:
    root = tmp_path / "shared"
    first = await make_client(data_dir=root)
    taken = await upload(first, b"take me", **{"Upload-Metadata": metadata(filename="t.txt")})
    kept = await upload(first, b"keep me", **{"Upload-Metadata": metadata(filename="k.txt")})
    assert (await first.delete(taken, headers=TUS)).status == 204
    await first.close()
    second = await make_client(data_dir=root)
    journal = (root / "delivered.log").read_text()
    assert kept.rsplit("/", 1)[1] in journal and taken.rsplit("/", 1)[1] not in journal
    await second.close()


async def test_gen_02_get_may_omit_the_version_but_not_name_another(client: Client) -> None:
    url = await upload(client, b"abc")
    assert (await client.get(url)).status == 200
    r = await client.get(url, headers={"Tus-Resumable": "0.2.2"})
    assert r.status == 412 and r.headers["Tus-Version"] == "1.0.0"


@pytest.mark.both_stores
async def test_catu_final_and_last_partial_byte_racing(client: Client) -> None:
    """Whichever of the final's POST and the partial's last PATCH lands first, the final
    is assembled exactly once."""
    for round_ in range(20):
        a = await upload(client, b"first-", **{"Upload-Concat": "partial"})
        b = await create(client, 6, **{"Upload-Concat": "partial"})
        await client.patch(b, data=b"seco", headers=patch_headers(0))
        post, last = await asyncio.gather(
            client.post("/files/", headers={**TUS, "Upload-Concat": f"final;{a} {b}"}),
            client.patch(b, data=b"nd", headers=patch_headers(4)))
        assert post.status == 201 and last.status == 204
        final = path_of(post.headers["Location"])
        h = (await head(client, final)).headers
        assert h.get("Upload-Offset") == "12", round_
        assert await (await client.get(final)).read() == b"first-second"
