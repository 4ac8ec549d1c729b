"""The fake Notion server enforces the File Upload API contract (docs/notion-contract.md §12).

Real HTTP against the ``fake_notion`` fixture, one test per rule group; rule numbers in
the docstrings are those of §12. Part sizes are the smallest the contract allows (5 MiB
non-final parts) so the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import subprocess
import sys
import time
import urllib.request
from typing import Any

import aiohttp
import pytest

from fake_notion import FakeConfig, Fault
from fake_notion.faults import (
    COMPLETE,
    PAGE_CREATE,
    RETRIEVE,
    SEND,
    FakeClock,
    RequestRecord,
    peak_burst,
)
from tests.notion.conftest import FakeNotionFactory, FakeNotionServer

MIB = 1024 * 1024
SCHEMA = {"Name": "title", "Key": "rich_text", "Size": "number", "File": "files",
          "Link": "url", "When": "date", "Kind": "select", "Made": "created_time"}


@pytest.fixture
def fake_notion_config() -> FakeConfig:
    """No rate limit here: these tests fire requests back to back on purpose, and
    ``test_rate_limit`` covers the limiter with its own server."""
    return FakeConfig(rate_per_s=0)


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def call(session: aiohttp.ClientSession, fx: FakeNotionServer, method: str, path: str,
               *, body: Any = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None,
               timeout_s: float | None = None) -> tuple[int, dict[str, Any], Any]:
    """One request; answers (status, JSON body or {"_text": ...}, headers)."""
    hdrs = fx.headers() if headers is None else headers
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    if body is not None:
        hdrs = {**hdrs, "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
    async with session.request(method, fx.url + path, data=data, headers=hdrs,
                               timeout=timeout) as resp:
        text = await resp.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"_text": text}
        return resp.status, parsed, resp.headers


async def create(session: aiohttp.ClientSession, fx: FakeNotionServer,
                 **body: Any) -> dict[str, Any]:
    status, answer, _ = await call(session, fx, "POST", "/v1/file_uploads", body=body)
    assert status == 200, answer
    return answer


async def send(session: aiohttp.ClientSession, fx: FakeNotionServer, upload_id: str,
               data: bytes, *, part_number: int | str | None = None,
               filename: str = "part", content_type: str | None = "application/octet-stream",
               token: str | None = None) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    if part_number is not None:
        form.add_field("part_number", str(part_number))
    form.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    async with session.post(f"{fx.url}/v1/file_uploads/{upload_id}/send", data=form,
                            headers=fx.headers(token)) as resp:
        return resp.status, await resp.json()


def assert_error(answer: dict[str, Any], headers: Any, status: int, code: str) -> None:
    """§8: the envelope, with the request ID in the body and the header."""
    assert answer["object"] == "error"
    assert (answer["status"], answer["code"]) == (status, code), answer
    assert isinstance(answer["message"], str) and answer["message"]
    assert answer["request_id"] == headers["x-notion-request-id"]


async def uploaded_single(session: aiohttp.ClientSession, fx: FakeNotionServer,
                          data: bytes = b"hello notion", name: str = "note.txt") -> str:
    upload = await create(session, fx, filename=name, content_type="text/plain")
    status, answer = await send(session, fx, upload["id"], data, filename=name,
                                content_type="text/plain")
    assert status == 200, answer
    return str(upload["id"])


def rich(text: str) -> dict[str, Any]:
    return {"rich_text": [{"type": "text", "text": {"content": text}}]}


def title(text: str) -> dict[str, Any]:
    return {"title": [{"text": {"content": text}}]}


async def test_auth_version_and_transport(fake_notion: FakeNotionServer) -> None:
    """Rules 1-3: token, Notion-Version, JSON, URL, IDs with or without dashes."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        status, answer, headers = await call(s, fx, "GET", "/v1/users/me", headers={})
        assert status == 401
        assert_error(answer, headers, 401, "unauthorized")
        status, answer, headers = await call(s, fx, "GET", "/v1/users/me",
                                             headers=fx.headers(token="ntn_wrong"))
        assert_error(answer, headers, 401, "unauthorized")
        status, answer, headers = await call(s, fx, "GET", "/v1/users/me",
                                             headers=fx.headers(version=None))
        assert_error(answer, headers, 400, "missing_version")
        status, answer, headers = await call(s, fx, "GET", "/v1/users/me",
                                             headers=fx.headers(version="2025-01-01"))
        assert_error(answer, headers, 400, "validation_error")
        status, answer, headers = await call(s, fx, "GET", "/v1/nothing")
        assert_error(answer, headers, 400, "invalid_request_url")
        status, answer, headers = await call(s, fx, "DELETE", "/v1/file_uploads")
        assert_error(answer, headers, 400, "invalid_request_url")
        status, answer, headers = await call(s, fx, "POST", "/v1/file_uploads", raw=b"{nope")
        assert_error(answer, headers, 400, "invalid_json")
        status, answer, headers = await call(s, fx, "POST", "/v1/pages",
                                             raw=b"{" + b" " * 500_000 + b"}")
        assert_error(answer, headers, 400, "validation_error")  # JSON bodies <= 500 KB

        status, me, headers = await call(s, fx, "GET", "/v1/users/me")
        assert status == 200 and me["request_id"] == headers["x-notion-request-id"]
        assert me["bot"]["workspace_limits"]["max_file_upload_size_in_bytes"] == \
            fx.fake.config.workspace_limit_bytes  # rule 14

        upload = await create(s, fx)  # ``{}`` is a valid single-part create (§3.1)
        assert (upload["filename"], upload["content_type"]) == (None, None)
        bare = upload["id"].replace("-", "")
        status, again, _ = await call(s, fx, "GET", f"/v1/file_uploads/{bare}")
        assert status == 200 and again["id"] == upload["id"]
        status, answer, headers = await call(s, fx, "GET", "/v1/file_uploads/not-a-uuid")
        assert_error(answer, headers, 400, "validation_error")

        # Rule 11: another integration's upload does not exist for this one.
        other = fx.fake.add_token()
        status, answer, headers = await call(s, fx, "GET", f"/v1/file_uploads/{upload['id']}",
                                             headers=fx.headers(token=other))
        assert_error(answer, headers, 404, "object_not_found")


@pytest.mark.parametrize(("body", "needle"), [
    ({"filename": "notes.md"}, "extension that is not supported"),
    ({"filename": "a.txt", "content_type": "application/octet-stream"}, "octet-stream"),
    ({"filename": "é" * 449 + ".txt"}, "900"),  # 898 + 4 = 902 bytes
    ({"mode": "multi_part", "filename": "v.mp4", "number_of_parts": 1001}, "1000"),
    ({"mode": "multi_part", "filename": "v.mp4", "number_of_parts": 0}, "number_of_parts"),
    ({"mode": "multi_part", "filename": "v.mp4", "number_of_parts": True}, "number_of_parts"),
    ({"mode": "multi_part", "number_of_parts": 2}, "filename"),
    ({"mode": "single_part", "filename": "a.txt", "number_of_parts": 2}, "number_of_parts"),
    ({"mode": "chunked"}, "mode"),
    ({"mode": "external_url", "external_url": "https://example.com/a.png"}, "external_url"),
    ({"filename": "photo.png", "content_type": "application/pdf"}, "does not match"),
    ({"filename": "noextension"}, "extension"),
])
async def test_create_rejects(fake_notion: FakeNotionServer, body: dict[str, Any],
                              needle: str) -> None:
    """Rules 5-8."""
    async with aiohttp.ClientSession() as s:
        status, answer, headers = await call(s, fake_notion, "POST", "/v1/file_uploads",
                                             body=body)
    assert status == 400
    assert_error(answer, headers, 400, "validation_error")
    assert needle in answer["message"]
    assert not fake_notion.fake.uploads


async def test_create_success_shapes(fake_notion: FakeNotionServer) -> None:
    """Rule 9: pending, +1 h expiry, own URLs, inferred types, number_of_parts."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        multi = await create(s, fx, mode="multi_part", filename="clip.mp4", number_of_parts=2)
        assert multi["content_type"] == "application/mp4"
        assert multi["status"] == "pending"
        assert multi["number_of_parts"] == {"total": 2, "sent": 0}
        assert multi["upload_url"] == f"{fx.url}/v1/file_uploads/{multi['id']}/send"
        assert multi["complete_url"] == f"{fx.url}/v1/file_uploads/{multi['id']}/complete"
        created = _parse(multi["created_time"])
        assert (_parse(multi["expiry_time"]) - created).total_seconds() == pytest.approx(3600)
        named = await create(s, fx, filename="scan", content_type="image/png")
        assert named["filename"] == "scan.png"  # extension added from the type (§2)
        status, answer, _ = await call(s, fx, "POST", "/v1/file_uploads",
                                       body={"filename": "x" * 896 + ".txt"})
        assert status == 200, answer  # exactly 900 bytes is allowed


def _parse(stamp: str) -> Any:
    from datetime import datetime
    return datetime.fromisoformat(stamp)


async def test_single_part_send(fake_notion: FakeNotionServer) -> None:
    """Rules 10-12: form data, one file, size and type checks, then ``uploaded``."""
    fx = fake_notion
    data = blob(300_000)
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx)
        status, answer = await send(s, fx, upload["id"], data, filename="pic.png",
                                    content_type="image/png")
        assert status == 200, answer
        assert answer["status"] == "uploaded"
        assert answer["content_length"] == len(data)
        assert (answer["filename"], answer["content_type"]) == ("pic.png", "image/png")
        assert "upload_url" not in answer
        assert await fx.fake.uploaded_sha256(upload["id"]) == hashlib.sha256(data).hexdigest()
        status, answer = await send(s, fx, upload["id"], data, filename="pic.png",
                                    content_type="image/png")
        assert status == 400 and "uploaded" in answer["message"]  # not pending any more

        # The part's declared type: octet-stream is refused, a mismatch too.
        fresh = await create(s, fx)
        status, answer = await send(s, fx, fresh["id"], data, filename="pic.png")
        assert status == 400 and "octet-stream" in answer["message"]
        typed = await create(s, fx, filename="a.txt", content_type="text/plain")
        status, answer = await send(s, fx, typed["id"], b"abc", content_type="image/png")
        assert status == 400 and "does not match" in answer["message"]
        status, answer = await send(s, fx, typed["id"], b"abc", part_number=1,
                                    content_type="text/plain")
        assert status == 400 and "part_number" in answer["message"]
        status, answer = await send(s, fx, typed["id"], b"", content_type="text/plain")
        assert status == 400 and "empty" in answer["message"]

        # Over 20 MiB in one send: 400 (and the client reads it, not a broken pipe).
        status, answer = await send(s, fx, typed["id"], bytes(20 * MIB + 1),
                                    content_type="text/plain")
        assert status == 400 and "exceeds" in answer["message"]
        status, answer = await send(s, fx, typed["id"], bytes(20 * MIB),
                                    content_type="text/plain")
        assert status == 200, answer

        # Rule 10: the body must be form data with a boundary and a ``file`` field.
        bare = await create(s, fx, filename="b.txt")
        path = f"/v1/file_uploads/{bare['id']}/send"
        status, answer, headers = await call(
            s, fx, "POST", path, raw=b"--x\r\n",
            headers={**fx.headers(), "Content-Type": "multipart/form-data"})
        assert_error(answer, headers, 400, "validation_error")
        assert "boundary" in answer["message"]
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("other", "1")
        form.add_field("x", "y")
        async with s.post(fx.url + path, data=form, headers=fx.headers()) as resp:
            assert resp.status == 400
            assert "`file`" in (await resp.json())["message"]
        status, answer, _ = await call(s, fx, "POST", "/v1/file_uploads/"
                                       "00000000-0000-0000-0000-000000000000/send", raw=b"")
        assert status == 404


async def test_multi_part_out_of_order_and_concurrent(fake_notion: FakeNotionServer) -> None:
    """Rule 13, 17: parts in any order at once; resend replaces; bytes assembled in order."""
    fx = fake_notion
    parts = [blob(5 * MIB, 1), blob(5 * MIB, 2), blob(1234, 3)]
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="clip.mp4",
                              content_type="video/mp4", number_of_parts=3)
        uid = upload["id"]
        # A first, wrong copy of part 2 that the resend must replace.
        status, answer = await send(s, fx, uid, blob(5 * MIB, 99), part_number=2)
        assert status == 200 and answer["number_of_parts"]["sent"] == 1
        results = await asyncio.gather(
            send(s, fx, uid, parts[2], part_number=3),
            send(s, fx, uid, parts[0], part_number=1),
            send(s, fx, uid, parts[1], part_number="2"))
        assert [r[0] for r in results] == [200, 200, 200], results
        status, state, _ = await call(s, fx, "GET", f"/v1/file_uploads/{uid}")
        assert state["status"] == "pending"
        assert state["number_of_parts"] == {"total": 3, "sent": 3}  # part 2 counted once
        assert state["content_length"] == sum(map(len, parts))
        status, done, _ = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete")
        assert status == 200, done
        assert done["status"] == "uploaded"
        assert "upload_url" not in done and "complete_url" not in done
        assert done["expiry_time"] == upload["expiry_time"]  # rule 18
    whole = b"".join(parts)
    assert await fx.fake.uploaded_sha256(uid) == hashlib.sha256(whole).hexdigest()
    assert await fx.fake.uploaded_bytes(uid) == whole
    assert fx.fake.count(SEND, 200) == 4


async def test_part_numbers_and_sizes(fake_notion: FakeNotionServer) -> None:
    """Rule 13: part_number a decimal in 1..total; non-final parts 5..20 MiB."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=2)
        uid = upload["id"]
        for bad in (0, 3, "1.0", "one", "-1"):
            status, answer = await send(s, fx, uid, b"x", part_number=bad)
            assert status == 400 and "part_number" in answer["message"], bad
        status, answer = await send(s, fx, uid, b"x")
        assert status == 400 and "part_number" in answer["message"]
        status, answer = await send(s, fx, uid, bytes(5 * MIB - 1), part_number=1)
        assert status == 400 and "between" in answer["message"]
        status, answer = await send(s, fx, uid, bytes(20 * MIB + 1), part_number=2)
        assert status == 400
        status, answer = await send(s, fx, uid, b"", part_number=2)
        assert status == 400 and "empty" in answer["message"]
        status, answer = await send(s, fx, uid, b"tail", part_number=2)  # last may be small
        assert status == 200 and answer["number_of_parts"]["sent"] == 1
        status, answer = await send(s, fx, uid, bytes(5 * MIB), part_number=1)
        assert status == 200 and answer["content_length"] == 5 * MIB + 4
    assert fx.fake.upload(uid).status == "pending"


async def test_a_part_cut_off_midway_is_not_stored(fake_notion: FakeNotionServer) -> None:
    """Rule 13: only whole parts count; a dropped connection leaves nothing behind."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=2)
    boundary = "cutoff"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"part_number\"\r\n\r\n1"
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"p\"\r\nContent-Type: application/pdf\r\n\r\n").encode()
    port = fx.server.port
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /v1/file_uploads/{upload['id']}/send HTTP/1.1\r\n"
                  f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {fx.token}\r\n"
                  "Notion-Version: 2022-06-28\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                  f"Content-Length: {len(head) + 6 * MIB}\r\n\r\n").encode() + head)
    writer.write(bytes(3 * MIB))  # half of the promised part, then hang up
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    for _ in range(100):  # the server notices the hang-up on its own schedule
        if fx.fake.count(SEND):
            break
        await asyncio.sleep(0.02)
    # Status 0 where the server cancels the handler (the test server); 400 otherwise.
    assert [r.status for r in fx.fake.log if r.endpoint == SEND] in ([0], [400])
    assert fx.fake.upload(upload["id"]).parts == {}
    leftovers = list((fx.fake.storage_dir / upload["id"]).glob("*"))
    assert leftovers == []


async def test_part_limits_follow_the_workspace(make_fake_notion: FakeNotionFactory) -> None:
    """Rule 14: a free workspace (5 MiB per file) caps the running total."""
    fx = await make_fake_notion(config=FakeConfig(rate_per_s=0, workspace_limit_bytes=5 * MIB))
    async with aiohttp.ClientSession() as s:
        status, me, _ = await call(s, fx, "GET", "/v1/users/me")
        assert me["bot"]["workspace_limits"]["max_file_upload_size_in_bytes"] == 5 * MIB
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=2)
        status, answer = await send(s, fx, upload["id"], bytes(5 * MIB), part_number=1)
        assert status == 200
        status, answer = await send(s, fx, upload["id"], b"1", part_number=2)
        assert status == 400 and "exceeds" in answer["message"]


async def test_complete_rules(fake_notion: FakeNotionServer) -> None:
    """Rule 16: only a pending multi-part upload with every part; once."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=3)
        uid = upload["id"]
        await send(s, fx, uid, bytes(5 * MIB), part_number=1)
        await send(s, fx, uid, b"end", part_number=3)
        status, answer, headers = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete",
                                             body={})
        assert_error(answer, headers, 400, "validation_error")
        assert "missing part numbers: 2" in answer["message"]
        status, answer, _ = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete",
                                       body={"parts": 3})
        assert status == 400  # complete takes no parameters
        await send(s, fx, uid, bytes(5 * MIB), part_number=2)
        status, done, _ = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete")
        assert status == 200 and done["content_length"] == 10 * MIB + 3
        status, answer, _ = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete")
        assert status == 400  # twice
        status, answer = await send(s, fx, uid, b"late", part_number=3)
        assert status == 400  # no sends after complete
        single = await uploaded_single(s, fx)
        status, answer, _ = await call(s, fx, "POST", f"/v1/file_uploads/{single}/complete")
        assert status == 400 and "multi_part" in answer["message"]


async def test_expiry_on_the_moved_clock(fake_notion: FakeNotionServer) -> None:
    """Rules 18-19: one hour from create, not extended by sends; then a new upload works."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=2)
        uid = upload["id"]
        fx.fake.clock.advance(3000)
        status, answer = await send(s, fx, uid, bytes(5 * MIB), part_number=1)
        assert status == 200 and answer["expiry_time"] == upload["expiry_time"]
        fx.fake.clock.advance(601)  # 3601 s after create
        status, answer = await send(s, fx, uid, b"end", part_number=2)
        assert status == 400 and "expired" in answer["message"]
        status, state, _ = await call(s, fx, "GET", f"/v1/file_uploads/{uid}")
        assert state["status"] == "expired" and "upload_url" not in state
        status, answer, _ = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete")
        assert status == 400 and "expired" in answer["message"]

        # An uploaded but never attached file expires too, and cannot be attached then.
        single = await uploaded_single(s, fx)
        db = fx.fake.add_database("Files", SCHEMA)
        fx.fake.clock.advance(3600)
        status, answer, _ = await call(s, fx, "POST", "/v1/pages", body={
            "parent": {"database_id": db}, "properties": {
                "File": {"files": [{"type": "file_upload", "file_upload": {"id": single}}]}}})
        assert status == 400 and "expired" in answer["message"]

        again = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=1)
        status, answer = await send(s, fx, again["id"], b"small", part_number=1)
        assert status == 200
        status, done, _ = await call(s, fx, "POST", f"/v1/file_uploads/{again['id']}/complete")
        assert status == 200 and done["status"] == "uploaded"


async def test_attach_clears_expiry(fake_notion: FakeNotionServer) -> None:
    """Rules 20, 23, 26: attach once, never expire, attach again; read back as a file."""
    fx = fake_notion
    db = fx.fake.add_database("Files", SCHEMA)
    data = b"attached bytes"
    async with aiohttp.ClientSession() as s:
        uid = await uploaded_single(s, fx, data, "report.txt")
        pending = (await create(s, fx, filename="p.txt"))["id"]

        def page(upload_id: str) -> dict[str, Any]:
            return {"parent": {"database_id": db.replace("-", "")}, "properties": {
                "Name": title("report"),
                "File": {"files": [{"type": "file_upload", "file_upload": {"id": upload_id}}]}}}

        status, answer, _ = await call(s, fx, "POST", "/v1/pages", body=page(pending))
        assert status == 400 and "pending" in answer["message"]
        status, answer, _ = await call(s, fx, "POST", "/v1/pages",
                                       body=page("00000000-0000-0000-0000-000000000001"))
        assert status == 404
        status, created, _ = await call(s, fx, "POST", "/v1/pages", body=page(uid))
        assert status == 200, created
        status, state, _ = await call(s, fx, "GET", f"/v1/file_uploads/{uid}")
        assert state["expiry_time"] is None and state["status"] == "uploaded"
        fx.fake.clock.advance(7200)
        status, state, _ = await call(s, fx, "GET", f"/v1/file_uploads/{uid}")
        assert state["status"] == "uploaded"
        status, second, _ = await call(s, fx, "POST", "/v1/pages", body=page(uid))
        assert status == 200, second

        status, read, _ = await call(s, fx, "GET", f"/v1/pages/{created['id']}")
        item = read["properties"]["File"]["files"][0]
        assert item["name"] == "report.txt" and item["type"] == "file"
        async with s.get(item["file"]["url"]) as resp:
            assert resp.status == 200 and await resp.read() == data
        fx.fake.clock.advance(3601)  # hosted URLs last one hour (§6)
        async with s.get(item["file"]["url"]) as resp:
            assert resp.status == 403

        # Another integration cannot attach this upload.
        other = fx.fake.add_token()
        status, answer, _ = await call(s, fx, "POST", "/v1/pages", body=page(uid),
                                       headers=fx.headers(token=other))
        assert status == 404


async def test_page_property_validation(fake_notion: FakeNotionServer) -> None:
    """Rule 23: names, types, read-only, sizes; nothing attached by a rejected page."""
    fx = fake_notion
    db = fx.fake.add_database("Files", SCHEMA)
    hidden = fx.fake.add_database("Private", {"Name": "title"}, shared_with=[])
    async with aiohttp.ClientSession() as s:
        uid = await uploaded_single(s, fx)
        attach = {"files": [{"type": "file_upload", "file_upload": {"id": uid}}]}

        async def post(props: dict[str, Any], parent: str = db) -> tuple[int, dict[str, Any]]:
            status, answer, _ = await call(s, fx, "POST", "/v1/pages", body={
                "parent": {"database_id": parent}, "properties": props})
            return status, answer

        cases: list[tuple[dict[str, Any], str]] = [
            ({"Nope": rich("x"), "File": attach}, "Nope is not a property that exists."),
            ({"Key": {"number": 3}, "File": attach}, "Key is expected to be rich_text."),
            ({"Size": {"number": "12"}}, "a number"),
            ({"Size": {"number": True}}, "a number"),
            ({"Key": rich("x" * 2001)}, "2000"),
            ({"Key": {"rich_text": [{"text": {"content": "a"}}] * 101}}, "100"),
            ({"Link": {"url": "https://e.com/" + "x" * 2000}}, "2000"),
            ({"When": {"date": {"start": "yesterday"}}}, "ISO 8601"),
            ({"Made": {"created_time": "2026-01-01T00:00:00Z"}}, "cannot be written"),
            ({"Kind": {"select": {"name": "a,b"}}}, "commas"),
            ({"Key": rich("a"), "p001": rich("b")}, "more than once"),
            ({"File": {"files": [{"type": "external", "external": {"url": "https://e"}}]}},
             "name"),
        ]
        for props, needle in cases:
            status, answer = await post(props)
            assert status == 400, (props, answer)
            assert needle in answer["message"], (needle, answer["message"])
        assert fx.fake.upload(uid).attached is False  # no partial effects
        status, answer = await post({"Name": title("x")}, parent=hidden)
        assert status == 404 and answer["code"] == "object_not_found"
        status, answer = await post({"Name": title("x")},
                                    parent="11111111-1111-1111-1111-111111111111")
        assert status == 404
        status, answer, _ = await call(s, fx, "POST", "/v1/pages",
                                       body={"parent": {"database_id": db}})
        assert status == 400 and "properties should be defined" in answer["message"]

        status, page = await post({
            "Name": title("name.bin"), "Key": rich("sha256:abc"), "Size": {"number": 12},
            "p004": {"url": "https://example.com"},  # "Link", by property ID
            "When": {"date": {"start": "2026-01-05"}},
            "Kind": {"type": "select", "select": {"name": "video"}},
            "File": {"files": [{"type": "file_upload", "file_upload": {"id": uid},
                                "name": "renamed.txt"}]}})
        assert status == 200, page
        props = page["properties"]
        assert props["Key"]["rich_text"][0]["plain_text"] == "sha256:abc"
        assert props["Size"]["number"] == 12
        assert props["Kind"]["select"]["name"] == "video"
        assert props["Link"] == {"id": "p004", "type": "url", "url": "https://example.com"}
        assert props["File"]["files"][0]["name"] == "renamed.txt"
        assert page["parent"] == {"type": "database_id", "database_id": db}


async def test_query_by_rich_text_equals(fake_notion: FakeNotionServer) -> None:
    """Rules 24-25: exact, case-sensitive ``equals``; compounds; page_size; cursors."""
    fx = fake_notion
    db = fx.fake.add_database("Files", SCHEMA)
    async with aiohttp.ClientSession() as s:
        for i, key in enumerate(["sha:a", "sha:ab", "SHA:A", "sha:a "]):
            status, page, _ = await call(s, fx, "POST", "/v1/pages", body={
                "parent": {"database_id": db},
                "properties": {"Name": title(f"f{i}"), "Key": rich(key), "Size": {"number": i}}})
            assert status == 200
            if key == "sha:a":
                wanted = page["id"]
        query = f"/v1/databases/{db}/query"

        async def ids(body: dict[str, Any]) -> list[str]:
            status, answer, _ = await call(s, fx, "POST", query, body=body)
            assert status == 200, answer
            assert answer["type"] == "page_or_database"
            return [r["id"] for r in answer["results"]]

        only = await ids({"filter": {"property": "Key", "rich_text": {"equals": "sha:a"}}})
        assert only == [wanted]
        assert len(await ids({"filter": {"property": "Name", "title": {"equals": "f2"}}})) == 1
        assert len(await ids({"filter": {"or": [
            {"property": "Key", "rich_text": {"equals": "sha:a"}},
            {"property": "Key", "rich_text": {"equals": "sha:ab"}}]}})) == 2
        assert await ids({"filter": {"and": [
            {"property": "Key", "rich_text": {"starts_with": "sha:a"}},
            {"property": "Size", "number": {"equals": 0}}]}}) == [wanted]
        assert await ids({"filter": {"property": "Key", "rich_text": {"equals": "nope"}}}) == []

        seen: list[str] = []
        cursor = None
        while True:
            body: dict[str, Any] = {"page_size": 1}
            if cursor:
                body["start_cursor"] = cursor
            status, answer, _ = await call(s, fx, "POST", query, body=body)
            seen += [r["id"] for r in answer["results"]]
            cursor = answer["next_cursor"]
            if not answer["has_more"]:
                break
        assert len(seen) == len(set(seen)) == 4

        bad: dict[str, Any]
        for bad in ({"page_size": 101}, {"page_size": 0},
                    {"filter": {"property": "Missing", "rich_text": {"equals": "x"}}},
                    {"filter": {"property": "Key", "title": {"equals": "x"}}},
                    {"filter": {"property": "Key", "rich_text": {"matches": "x"}}},
                    {"start_cursor": "bogus"},
                    {"filter": {"and": [{"or": [{"and": []}]}]}}):
            status, answer, headers = await call(s, fx, "POST", query, body=bad)
            assert_error(answer, headers, 400, "validation_error")
        status, answer, _ = await call(s, fx, "POST",
                                       "/v1/databases/22222222-2222-2222-2222-222222222222/query",
                                       body={})
        assert status == 404


async def test_query_path_is_gone_in_newer_versions(make_fake_notion: FakeNotionFactory) -> None:
    """Rule 24: under 2025-09-03 the database query path is an invalid URL."""
    fx = await make_fake_notion(config=FakeConfig(
        accepted_versions=frozenset({"2022-06-28", "2025-09-03"})))
    db = fx.fake.add_database("Files", {"Name": "title"})
    async with aiohttp.ClientSession() as s:
        status, answer, headers = await call(s, fx, "POST", f"/v1/databases/{db}/query",
                                             body={}, headers=fx.headers(version="2025-09-03"))
        assert_error(answer, headers, 400, "invalid_request_url")
        status, answer, _ = await call(s, fx, "POST", f"/v1/databases/{db}/query", body={})
        assert status == 200


async def test_switches_for_unconfirmed_behaviour(make_fake_notion: FakeNotionFactory) -> None:
    """§12 preamble: each UNCONFIRMED behaviour has a switch; the lenient side works."""
    fx = await make_fake_notion(config=FakeConfig(
        rate_per_s=0, resend_replaces_part=False, repeat_complete_is_error=False,
        complete_url_at_create=False, case_sensitive_equals=False, query_lag_s=5.0,
        allow_empty_file=True, max_parts=10_000))
    db = fx.fake.add_database("Files", SCHEMA)
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=5000)
        assert "complete_url" not in upload  # as OBS recorded it
        small = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=1)
        assert (await send(s, fx, small["id"], b"", part_number=1))[0] == 200
        status, answer = await send(s, fx, small["id"], b"again", part_number=1)
        assert status == 400 and "already been sent" in answer["message"]
        for _ in range(2):
            status, done, _ = await call(s, fx, "POST", f"/v1/file_uploads/{small['id']}/complete")
            assert status == 200 and done["status"] == "uploaded"
        status, _, _ = await call(s, fx, "POST", "/v1/pages", body={
            "parent": {"database_id": db}, "properties": {"Key": rich("MiXeD")}})
        query = {"filter": {"property": "Key", "rich_text": {"equals": "mixed"}}}
        status, found, _ = await call(s, fx, "POST", f"/v1/databases/{db}/query", body=query)
        assert found["results"] == []  # not visible yet: query_lag_s
        fx.fake.clock.advance(6)
        status, found, _ = await call(s, fx, "POST", f"/v1/databases/{db}/query", body=query)
        assert len(found["results"]) == 1  # and case-insensitive


async def test_list_uploads(fake_notion: FakeNotionServer) -> None:
    """Rule 22: the caller's uploads, newest first, status filter, page_size, cursor."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        first = await create(s, fx, filename="a.txt")
        done = await uploaded_single(s, fx)
        last = await create(s, fx, filename="c.txt")
        await create(s, fx, filename="other.txt")
        other = fx.fake.add_token()
        await call(s, fx, "POST", "/v1/file_uploads", body={}, headers=fx.headers(other))
        status, page1, _ = await call(s, fx, "GET", "/v1/file_uploads?page_size=2")
        assert status == 200 and page1["type"] == "file_upload" and page1["has_more"]
        status, page2, _ = await call(
            s, fx, "GET", f"/v1/file_uploads?page_size=2&start_cursor={page1['next_cursor']}")
        listed = [u["id"] for u in page1["results"] + page2["results"]]
        assert len(listed) == 4 and listed[1] == last["id"] and listed[3] == first["id"]
        status, uploaded, _ = await call(s, fx, "GET", "/v1/file_uploads?status=uploaded")
        assert [u["id"] for u in uploaded["results"]] == [done]
        for bad in ("page_size=101", "status=done", "start_cursor=zzz"):
            status, answer, _ = await call(s, fx, "GET", f"/v1/file_uploads?{bad}")
            assert (status, answer["code"]) == (400, "validation_error"), bad


async def test_rate_limit(make_fake_notion: FakeNotionFactory) -> None:
    """Rule 27: a token bucket; 429 with Retry-After and additional_data; sends count."""
    fx = await make_fake_notion(config=FakeConfig(rate_per_s=5.0, burst=4))
    fx.fake.clock.freeze()  # counts below must not depend on how fast this machine is
    async with aiohttp.ClientSession() as s:
        answers = await asyncio.gather(*(call(s, fx, "GET", "/v1/users/me")
                                         for _ in range(12)))
        statuses = [a[0] for a in answers]
        assert statuses.count(200) == 4 and statuses.count(429) == 8
        limited = next(a for a in answers if a[0] == 429)
        assert_error(limited[1], limited[2], 429, "rate_limited")
        retry_after = limited[2]["Retry-After"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert limited[1]["additional_data"] == {
            "rate_limit_reason": "public_api_request_rate_limit", "retry_after": retry_after}

        # Part sends spend the same budget (rule 4).
        fx.fake.clock.advance(int(retry_after))
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=9)
        codes = [(await send(s, fx, upload["id"], b"x", part_number=9))[0] for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]  # the create took the fourth token
        fx.fake.clock.advance(60)  # the fake clock refills the bucket
        status, _, _ = await call(s, fx, "GET", "/v1/users/me")
        assert status == 200

        fx.fake.block_token(fx.token)
        status, answer, headers = await call(s, fx, "GET", "/v1/users/me")
        assert answer["additional_data"]["rate_limit_reason"] == "public_api_request_blocked"
        assert "Retry-After" not in headers
    # The log shows no window above its budget, and every request was logged.
    assert fx.fake.peak_burst() <= fx.fake.config.burst
    assert fx.fake.count() == 12 + 1 + 5 + 1 + 1
    assert fx.fake.counts_by_status()[429] >= 9


def test_clock_freezes_and_moves() -> None:
    clock = FakeClock()
    clock.freeze()
    frozen = clock.monotonic()
    time.sleep(0.01)
    assert clock.monotonic() == frozen
    clock.advance(5)
    assert clock.monotonic() == frozen + 5
    clock.unfreeze()
    assert frozen + 5 <= clock.monotonic() < frozen + 5.5
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_peak_burst_sees_a_violation() -> None:
    """The log check can fail: 5 requests at one instant break a burst of 3."""
    def at(t: float) -> RequestRecord:
        return RequestRecord(t, "tok", "GET", "/v1/users/me", "users.me", 200)

    assert peak_burst([at(0.0)] * 5, rate=3.0) == 5
    assert peak_burst([at(i / 3) for i in range(30)], rate=3.0) == pytest.approx(1.0)
    assert peak_burst([at(0.0), at(10.0), at(10.0), at(10.0)], rate=3.0) == 3
    skipped = RequestRecord(0.0, "tok", "GET", "/", "users.me", 429, admitted=False)
    assert peak_burst([skipped] * 10, rate=3.0) == 0


@pytest.mark.parametrize(("status", "code"), [
    (500, "internal_server_error"), (502, "bad_gateway"), (503, "service_unavailable"),
    (504, "gateway_timeout"), (529, "service_overload"), (409, "conflict_error")])
async def test_status_faults(fake_notion: FakeNotionServer, status: int, code: str) -> None:
    """Rule 28: scripted 5xx/529/409 in Notion's envelope, once, then normal again."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx)
        fx.fake.faults.fail_next(RETRIEVE, status, retry_after_s=7)
        got, answer, headers = await call(s, fx, "GET", f"/v1/file_uploads/{upload['id']}")
        assert got == status
        assert_error(answer, headers, status, code)
        if status == 529:
            assert headers["Retry-After"] == "7"
            assert answer["additional_data"]["retry_after"] == "7"
        got, _, _ = await call(s, fx, "GET", f"/v1/file_uploads/{upload['id']}")
        assert got == 200
    assert fx.fake.faults.pending() == 0
    assert fx.fake.faults.injected == [(RETRIEVE, f"status:{status}")]


async def test_conflict_on_send_stores_nothing(fake_notion: FakeNotionServer) -> None:
    """Rule 15: 409 while "sending file contents failed"; the retry then succeeds."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=1)
        fx.fake.faults.conflict_next_sends(2)
        for _ in range(2):
            status, answer = await send(s, fx, upload["id"], b"data", part_number=1)
            assert status == 409 and answer["code"] == "conflict_error"
        assert fx.fake.upload(upload["id"]).parts == {}
        status, answer = await send(s, fx, upload["id"], b"data", part_number=1)
        assert status == 200 and answer["number_of_parts"]["sent"] == 1


async def test_page_created_then_503(fake_notion: FakeNotionServer) -> None:
    """Rule 28: the page exists although the answer was 503 naming it."""
    fx = fake_notion
    db = fx.fake.add_database("Files", SCHEMA)
    async with aiohttp.ClientSession() as s:
        fx.fake.faults.commit_then_503_next_page()
        status, answer, headers = await call(s, fx, "POST", "/v1/pages", body={
            "parent": {"database_id": db}, "properties": {"Key": rich("k1")}})
        assert_error(answer, headers, 503, "service_unavailable")
        committed = answer["additional_data"]["committed_resource_id"]
        assert answer["additional_data"]["retry_guidance"]
        status, found, _ = await call(s, fx, "POST", f"/v1/databases/{db}/query", body={
            "filter": {"property": "Key", "rich_text": {"equals": "k1"}}})
        assert [p["id"] for p in found["results"]] == [committed]
        # A page that fails validation keeps its own error: nothing was committed.
        fx.fake.faults.commit_then_503_next_page()
        status, answer, _ = await call(s, fx, "POST", "/v1/pages", body={
            "parent": {"database_id": db}, "properties": {"Bad": rich("x")}})
        assert status == 400
    assert len(fx.fake.pages_in(db)) == 1


async def test_slow_html_and_reset_faults(fake_notion: FakeNotionServer) -> None:
    """Rule 28: slow answers, HTML bodies, connection resets before and after the work."""
    fx = fake_notion
    async with aiohttp.ClientSession() as s:
        upload = await create(s, fx, mode="multi_part", filename="a.pdf", number_of_parts=2)
        uid = upload["id"]
        fx.fake.faults.slow_next(RETRIEVE, 0.4)
        with pytest.raises(asyncio.TimeoutError):
            await call(s, fx, "GET", f"/v1/file_uploads/{uid}", timeout_s=0.1)
        fx.fake.faults.slow_next(RETRIEVE, 0.2)
        started = time.monotonic()
        status, _, _ = await call(s, fx, "GET", f"/v1/file_uploads/{uid}")
        assert status == 200 and time.monotonic() - started >= 0.2

        # A client timeout on a slow page create: before the work, no page; after, a page.
        db = fx.fake.add_database("Files", SCHEMA)
        body = {"parent": {"database_id": db}, "properties": {"Key": rich("slow")}}
        fx.fake.faults.slow_next(PAGE_CREATE, 0.3)
        with pytest.raises(asyncio.TimeoutError):
            await call(s, fx, "POST", "/v1/pages", body=body, timeout_s=0.1)
        await asyncio.sleep(0.4)
        assert fx.fake.pages_in(db) == []
        fx.fake.faults.slow_next(PAGE_CREATE, 0.3, after=True)
        with pytest.raises(asyncio.TimeoutError):
            await call(s, fx, "POST", "/v1/pages", body=body, timeout_s=0.1)
        assert len(fx.fake.pages_in(db)) == 1
        await asyncio.sleep(0.4)  # the server notices the hang-up on its own schedule
        assert [r.status for r in fx.fake.log if r.endpoint == PAGE_CREATE] == [0, 0]

        fx.fake.faults.html_next(RETRIEVE, 502)
        async with s.get(f"{fx.url}/v1/file_uploads/{uid}", headers=fx.headers()) as resp:
            assert resp.status == 502 and resp.content_type == "text/html"
            assert "<html>" in await resp.text()

        # Reset before the work: the part is not stored.
        fx.fake.faults.reset_next(SEND)
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(s, fx, uid, bytes(5 * MIB), part_number=1)
        assert fx.fake.upload(uid).parts == {}
        # Reset after the work: the client saw nothing, but the part is there.
        fx.fake.faults.reset_next(SEND, after=True)
        with pytest.raises(aiohttp.ClientConnectionError):
            await send(s, fx, uid, bytes(5 * MIB), part_number=1)
        assert set(fx.fake.upload(uid).parts) == {1}
        fx.fake.faults.fail_next(COMPLETE, 503, after=True)
        await send(s, fx, uid, b"end", part_number=2)
        status, _, _ = await call(s, fx, "POST", f"/v1/file_uploads/{uid}/complete")
        assert status == 503
        status, state, _ = await call(s, fx, "GET", f"/v1/file_uploads/{uid}")
        assert state["status"] == "uploaded"  # the ambiguous complete did happen
    assert fx.fake.count(SEND, 0) == 2  # resets are logged with status 0


async def test_random_faults_are_seeded(make_fake_notion: FakeNotionFactory) -> None:
    """Rule 28: a share of requests fails, the same share for the same seed."""
    outcomes: list[list[int]] = []
    for _ in range(2):
        fx = await make_fake_notion(config=FakeConfig(rate_per_s=0), seed=42)
        fx.fake.faults.chance(Fault("status", 503), 0.3, endpoints=[RETRIEVE])
        fx.fake.faults.chance(Fault("status", 529), 0.2, endpoints=[RETRIEVE])
        async with aiohttp.ClientSession() as s:
            upload = await create(s, fx)  # not aimed at: never fails
            codes = [(await call(s, fx, "GET", f"/v1/file_uploads/{upload['id']}"))[0]
                     for _ in range(40)]
        outcomes.append(codes)
        assert 200 in codes and 503 in codes and 529 in codes
    assert outcomes[0] == outcomes[1]
    with pytest.raises(ValueError, match="unknown endpoint"):
        fx.fake.faults.fail_next("file_uploads.sned")
    with pytest.raises(ValueError):
        fx.fake.faults.chance(Fault(), 1.5)


async def test_page_create_faults_reach_the_log(fake_notion: FakeNotionServer) -> None:
    """Counters by endpoint and status cover faulted requests too."""
    fx = fake_notion
    db = fx.fake.add_database("Files", SCHEMA)
    fx.fake.faults.fail_next(PAGE_CREATE, 502)
    async with aiohttp.ClientSession() as s:
        status, _, _ = await call(s, fx, "POST", "/v1/pages", body={
            "parent": {"database_id": db}, "properties": {}})
        assert status == 502
    assert fx.fake.counts_by_endpoint()[PAGE_CREATE] == 1
    assert fx.fake.log[-1].fault == "status:502"
    assert fx.fake.pages_in(db) == []


def test_command_line_runs_the_fake(tmp_path: Any) -> None:
    """``main``: binds, prints the URL, token and database IDs, then serves."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fake_notion", "--port", "0", "--token", "tok",
         "--rate", "100", "--database", "Files:Name=title,Key=rich_text,File=files",
         "--storage-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["token"] == "tok" and set(started["databases"]) == {"Files"}
        assert started["url"].startswith("http://127.0.0.1:")
        request = urllib.request.Request(
            f"{started['url']}/v1/users/me",
            headers={"Authorization": "Bearer tok", "Notion-Version": "2022-06-28"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            me = json.loads(resp.read())
        assert me["bot"]["workspace_limits"]["max_file_upload_size_in_bytes"] > 0
        db = started["databases"]["Files"]
        request = urllib.request.Request(
            f"{started['url']}/v1/databases/{db}/query", data=b"{}", method="POST",
            headers={"Authorization": "Bearer tok", "Notion-Version": "2022-06-28"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["results"] == []
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def test_command_line_rejects_a_bad_schema() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fake_notion", "--port", "0",
         "--database", "Files:Key=rich_text"], capture_output=True, timeout=30, check=False)
    assert proc.returncode == 2 and b"title" in proc.stderr
