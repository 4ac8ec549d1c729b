"""The earlier app's session API (``gateway.user_api``): create-session, stream, abort.

The deployment check of the earlier app runs as written, with the real ``curl`` against a
real gateway process started with its defaults. The rest runs on in-process gateways (a real
HTTP server on loopback): a streaming client cut off mid-file resumes by sending only the
rest or the whole file again, and every bad input is a 4xx with a stable code that creates
and changes nothing. What the store keeps across a cut connection runs on both stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.keys import CONFIG, RUNTIME
from gateway.uploads import Uploads
from notion_sink.windows import plan_parts
from tests.conftest import ClientFactory, GatewayProcess
from tests.helpers import TUS, bearer, error_code

Client = TestClient[Any, Any]
KiB = 1024
MiB = 1024 * KiB
ALICE = "tok-alice-2f7c9e1b"
BOB = "tok-bob-8a3d6c0e"


# --- helpers -----------------------------------------------------------------------------------
def uploads_of(client: Client) -> Uploads:
    uploads: Uploads = client.app[RUNTIME].require()
    return uploads


def data_dir(client: Client) -> Path:
    path: Path = client.app[CONFIG].data_dir
    return path


def delivered(client: Client) -> dict[str, bytes]:
    """What the directory sink delivered: name -> bytes."""
    folder = data_dir(client) / "complete"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


async def code_of(r: ClientResponse) -> str | None:
    return error_code(r.method, r.status, r.content_type, await r.read())


async def create_session(client: Client, filename: str, size: int,
                         content_type: str | None = None, **headers: str) -> dict[str, Any]:
    body: dict[str, Any] = {"filename": filename, "fileSize": size}
    if content_type is not None:
        body["contentType"] = content_type
    r = await client.post("/api/upload/create-session", json=body, headers=headers)
    assert r.status == 201, await r.text()
    answer: dict[str, Any] = await r.json()
    return answer


async def status_of(client: Client, upload_id: str, **headers: str) -> dict[str, Any]:
    r = await client.get(f"/api/upload/status/{upload_id}", headers=headers)
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def stream(client: Client, upload_id: str, body: bytes, **headers: str) -> dict[str, Any]:
    # A large body from a file-like object: aiohttp warns that raw bytes block its loop.
    payload = io.BytesIO(body) if len(body) > MiB else body
    r = await client.post(f"/api/upload/stream/{upload_id}", data=payload, headers=headers)
    assert r.status == 200, await r.text()
    answer: dict[str, Any] = await r.json()
    return answer


async def listed(client: Client, **headers: str) -> list[str]:
    r = await client.get("/api/uploads", headers=headers)
    assert r.status == 200, await r.text()
    return [u["id"] for u in (await r.json())["uploads"]]


def spooled(client: Client) -> list[str]:
    """Every file of the spool and records (nothing may appear after a refusal)."""
    root = data_dir(client) / "uploads"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


async def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- the earlier app's deployment check, with curl ---------------------------------------------
def curl(*args: str) -> tuple[int, bytes]:
    """Run curl; the answer's status and body."""
    assert shutil.which("curl"), "curl is needed for the deployment check"
    done = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args],
                          capture_output=True, timeout=60, check=True)
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), body


def test_the_deployment_check_with_curl(gateway_process: Callable[..., GatewayProcess],
                                        tmp_path: Path) -> None:
    gw = gateway_process()
    base = f"http://127.0.0.1:{gw.port}"
    status, body = curl("-X", "POST", f"{base}/api/upload/create-session",
                        "-H", "Content-Type: application/json",
                        "-d", '{"filename": "test.txt", "fileSize": 1024}')
    assert status == 201, body
    answer = json.loads(body)
    upload_id = answer["upload_id"]
    assert answer == {
        "upload_id": upload_id, "id": upload_id, "filename": "test.txt", "file_size": 1024,
        "tus_url": f"{base}/files/{upload_id}",
        "stream_url": f"/api/upload/stream/{upload_id}",
        "status_url": f"/api/upload/status/{upload_id}",
        "events_url": f"/api/upload/events/{upload_id}",
        "upload_type": "single", "part_size": 1024, "total_parts": 1,
    }
    data = os.urandom(1024)
    source = tmp_path / "test.txt"
    source.write_bytes(data)
    status, body = curl("-X", "POST", base + answer["stream_url"],
                        "--data-binary", f"@{source}")
    assert status == 200, body
    streamed = json.loads(body)
    assert (streamed["status"], streamed["offset"], streamed["file_size"]) == (
        "completed", 1024, 1024)
    status, body = curl(base + answer["status_url"])
    assert status == 200, body
    seen = json.loads(body)
    assert (seen["offset"], seen["length"], seen["complete"], seen["status"]) == (
        1024, 1024, True, "drained")
    assert (gw.data_dir / "complete" / "test.txt").read_bytes() == data
    # The tus view of the same upload agrees.
    status, _ = curl("-I", "-H", "Tus-Resumable: 1.0.0", answer["tus_url"])
    assert status == 200


# --- a stream cut off mid-file -----------------------------------------------------------------
CHUNK = 64 * KiB


async def cut_stream(client: Client, upload_id: str, data: bytes, cut_after: int) -> int:
    """Stream ``data`` from an async generator, stop sending after ``cut_after`` bytes and,
    once the gateway has read them, cancel the request (the connection is closed). The
    number of bytes sent."""
    sent = 0
    stalled = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(data), CHUNK):
            if sent >= cut_after:
                stalled.set()
                await asyncio.Event().wait()  # until the request is cancelled
            chunk = data[start:start + CHUNK]
            sent += len(chunk)
            yield chunk

    request = asyncio.ensure_future(
        client.post(f"/api/upload/stream/{upload_id}", data=body()))
    await asyncio.wait_for(stalled.wait(), 30)

    async def all_read() -> bool:
        return bool((await status_of(client, upload_id))["bytes_received"] == sent)
    await wait_for(all_read, "the gateway to read what was sent")
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    assert request.cancelled()
    return sent


@pytest.mark.both_stores
@pytest.mark.parametrize("resume", ["rest", "whole"])
async def test_a_stream_cut_off_mid_file_resumes(make_client: ClientFactory,
                                                 resume: str) -> None:
    """The bytes read before the cut are kept and the status says how many; then the client
    sends (rest) only what is missing from that offset, or (whole) the whole file again,
    whose first bytes the gateway reads and drops. Either way the file is byte-exact."""
    client = await make_client()
    data = os.urandom(8 * MiB)
    upload_id = (await create_session(client, "movie.bin", len(data)))["id"]
    sent = await cut_stream(client, upload_id, data, cut_after=3 * MiB)
    assert sent == 3 * MiB

    async def kept() -> bool:
        return bool((await status_of(client, upload_id))["offset"] == sent)
    await wait_for(kept, "the status offset to show the bytes kept")
    state = await status_of(client, upload_id)
    assert (state["complete"], state["length"]) == (False, len(data))
    r = await client.head(f"/files/{upload_id}", headers=TUS)
    assert r.headers["Upload-Offset"] == str(sent)
    assert delivered(client) == {}
    if resume == "rest":
        answer = await stream(client, upload_id, data[sent:], **{"Upload-Offset": str(sent)})
    else:
        answer = await stream(client, upload_id, data)
    assert (answer["status"], answer["offset"], answer["file_size"]) == (
        "completed", len(data), len(data))
    assert delivered(client) == {"movie.bin": data}
    # Sending the whole file once more changes nothing.
    again = await stream(client, upload_id, data)
    assert (again["status"], again["offset"]) == ("completed", len(data))
    assert delivered(client) == {"movie.bin": data}


@pytest.mark.both_stores
async def test_a_stream_in_pieces_by_content_range(make_client: ClientFactory) -> None:
    """Content-Range says where each piece starts; an overlapping piece is dropped where the
    upload already has its bytes."""
    client = await make_client()
    data = os.urandom(300 * KiB)
    upload_id = (await create_session(client, "pieces.bin", len(data)))["id"]
    total = len(data)
    first = await stream(client, upload_id, data[:100 * KiB],
                         **{"Content-Range": f"bytes 0-{100 * KiB - 1}/{total}"})
    assert (first["status"], first["offset"]) == ("incomplete", 100 * KiB)
    overlap = await stream(client, upload_id, data[50 * KiB:200 * KiB],
                           **{"Content-Range": f"bytes {50 * KiB}-{200 * KiB - 1}/{total}"})
    assert overlap["offset"] == 200 * KiB
    last = await stream(client, upload_id, data[200 * KiB:],
                        **{"Content-Range": f"bytes {200 * KiB}-{total - 1}/{total}"})
    assert (last["status"], last["offset"]) == ("completed", total)
    assert delivered(client) == {"pieces.bin": data}


# --- abort -------------------------------------------------------------------------------------
@pytest.mark.both_stores
async def test_abort_removes_the_upload(make_client: ClientFactory) -> None:
    client = await make_client()
    upload_id = (await create_session(client, "gone.bin", 1000))["id"]
    assert (await stream(client, upload_id, b"x" * 400))["offset"] == 400
    spool = uploads_of(client).store.data_path(upload_id)
    assert spool.exists()
    r = await client.post(f"/api/upload/abort/{upload_id}")
    assert r.status == 200, await r.text()
    assert await r.json() == {"status": "aborted", "upload_id": upload_id}
    r = await client.head(f"/files/{upload_id}", headers=TUS)
    assert r.status in (404, 410)
    for method, path in (("GET", f"/api/upload/status/{upload_id}"),
                         ("POST", f"/api/upload/stream/{upload_id}"),
                         ("POST", f"/api/upload/abort/{upload_id}")):
        r = await client.request(method, path, data=b"x" if method == "POST" else None)
        assert r.status in (404, 410), (method, path, await r.text())
        assert await code_of(r) in ("ERR_UPLOAD_NOT_FOUND", "ERR_UPLOAD_GONE")
    assert not spool.exists()
    assert await listed(client) == []
    assert delivered(client) == {}


async def test_abort_of_an_unknown_upload_is_404(make_client: ClientFactory) -> None:
    client = await make_client()
    for upload_id in ("0123456789abcdef0123456789abcdef", "not-an-id", "x" * 300):
        r = await client.post(f"/api/upload/abort/{upload_id}")
        assert r.status == 404 and await code_of(r) == "ERR_UPLOAD_NOT_FOUND", upload_id


# --- bad inputs --------------------------------------------------------------------------------
def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


BAD_SESSIONS: list[tuple[str, bytes]] = [
    ("not json", b"filename=test.txt&fileSize=1024"),
    ("empty", b""),
    ("not utf-8", b'{"filename": "\xff\xfe", "fileSize": 1}'),
    ("array", _json([{"filename": "a.txt", "fileSize": 1}])),
    ("string", _json("a.txt")),
    ("null", b"null"),
    ("nested deep", b"[" * 10_000 + b"]" * 10_000),
    ("no fileSize", _json({"filename": "a.txt"})),
    ("null fileSize", _json({"filename": "a.txt", "fileSize": None})),
    ("negative fileSize", _json({"filename": "a.txt", "fileSize": -1})),
    ("bool fileSize", _json({"filename": "a.txt", "fileSize": True})),
    ("float fileSize", _json({"filename": "a.txt", "fileSize": 1.5})),
    ("float exp fileSize", b'{"filename": "a.txt", "fileSize": 1e3}'),
    ("infinite fileSize", b'{"filename": "a.txt", "fileSize": 1e999}'),
    ("string fileSize", _json({"filename": "a.txt", "fileSize": "1024"})),
    ("2**63 fileSize", _json({"filename": "a.txt", "fileSize": 2**63})),
    ("5000-digit fileSize", b'{"filename": "a.txt", "fileSize": ' + b"9" * 5000 + b"}"),
    ("no filename", _json({"fileSize": 1})),
    ("empty filename", _json({"filename": "", "fileSize": 1})),
    ("blank filename", _json({"filename": "   ", "fileSize": 1})),
    ("number filename", _json({"filename": 7, "fileSize": 1})),
    ("huge filename", _json({"filename": "a" * 300 + ".txt", "fileSize": 1})),
    ("huge multibyte filename", _json({"filename": "\u00e9" * 101, "fileSize": 1})),
    ("bad contentType", _json({"filename": "a.txt", "fileSize": 1, "contentType": "nope"})),
    ("contentType with a newline", _json({"filename": "a.txt", "fileSize": 1,
                                          "contentType": "text/plain\r\nX-Evil: 1"})),
    ("number contentType", _json({"filename": "a.txt", "fileSize": 1, "contentType": 5})),
    ("body over 16 KiB", _json({"filename": "a.txt", "fileSize": 1, "pad": "x" * 17_000})),
]


async def assert_nothing_created(client: Client) -> None:
    assert await listed(client) == []
    assert spooled(client) == []
    assert await uploads_of(client).store.upload_ids() == []


@pytest.mark.parametrize(("case", "body"), BAD_SESSIONS, ids=[c for c, _ in BAD_SESSIONS])
async def test_a_bad_create_session_is_400_and_creates_nothing(
        make_client: ClientFactory, case: str, body: bytes) -> None:
    client = await make_client()
    r = await client.post("/api/upload/create-session", data=body,
                          headers={"Content-Type": "application/json"})
    assert r.status == 400, await r.text()
    assert r.content_type == "application/json"
    assert await code_of(r) == "ERR_INVALID_JSON"
    assert (await r.json())["message"]
    await assert_nothing_created(client)


async def test_a_large_body_without_a_length_is_refused_too(make_client: ClientFactory) -> None:
    """A chunked body gives no Content-Length to refuse it by: it is read up to the bound."""
    client = await make_client()

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"filename": "a.txt", "fileSize": 1, "pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    r = await client.post("/api/upload/create-session", data=chunked(),
                          headers={"Content-Type": "application/json"})
    assert r.status == 400 and await code_of(r) == "ERR_INVALID_JSON", await r.text()
    await assert_nothing_created(client)


async def test_create_session_over_the_maximum_size_is_413(make_client: ClientFactory) -> None:
    client = await make_client(max_size_bytes=MiB)
    r = await client.post("/api/upload/create-session",
                          json={"filename": "a.bin", "fileSize": MiB + 1})
    assert r.status == 413 and await code_of(r) == "ERR_UPLOAD_TOO_LARGE"
    await assert_nothing_created(client)
    await create_session(client, "a.bin", MiB)


STREAM_REFUSALS: list[tuple[dict[str, str], bytes, int, str]] = [
    ({"Upload-Offset": "5"}, b"f", 409, "ERR_MISMATCHED_OFFSET"),
    ({"Upload-Offset": "99999999999"}, b"f", 409, "ERR_MISMATCHED_OFFSET"),
    ({"Content-Range": "bytes 5-5/10"}, b"f", 409, "ERR_MISMATCHED_OFFSET"),
    ({"Upload-Offset": "-1"}, b"f", 400, "ERR_INVALID_OFFSET"),
    ({"Upload-Offset": "1e3"}, b"f", 400, "ERR_INVALID_OFFSET"),
    ({"Upload-Offset": ""}, b"f", 400, "ERR_INVALID_OFFSET"),
    ({"Upload-Offset": "9" * 30}, b"f", 400, "ERR_INVALID_OFFSET"),
    ({"Content-Range": "garbage"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "bytes=0-0/10"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "items 0-0/10"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "bytes 0-0"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "bytes a-b/10"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "bytes */10"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "bytes -1-0/10"}, b"f", 400, "ERR_INVALID_HEADER"),
    # The last byte before the first, or past the total: not a range.
    ({"Content-Range": "bytes 4-2/10"}, b"f", 400, "ERR_INVALID_HEADER"),
    ({"Content-Range": "bytes 4-10/10"}, b"f", 400, "ERR_INVALID_HEADER"),
    # A total other than the upload's length: the body is from another file.
    ({"Content-Range": "bytes 4-4/11"}, b"f", 400, "ERR_INCONSISTENT_LENGTH"),
    # More than the upload has room for.
    ({}, b"abcdefghijk", 413, "ERR_UPLOAD_SIZE_EXCEEDED"),
    ({"Upload-Offset": "4"}, b"efghijk", 413, "ERR_UPLOAD_SIZE_EXCEEDED"),
]


@pytest.mark.both_stores
@pytest.mark.parametrize(("headers", "body", "status", "code"), STREAM_REFUSALS,
                         ids=[f"{h}-{len(b)}" for h, b, _, _ in STREAM_REFUSALS])
async def test_a_bad_stream_is_refused_and_changes_nothing(
        make_client: ClientFactory, headers: dict[str, str], body: bytes, status: int,
        code: str) -> None:
    client = await make_client()
    upload_id = (await create_session(client, "ten.bin", 10))["id"]
    assert (await stream(client, upload_id, b"abcd"))["offset"] == 4
    spool = uploads_of(client).store.data_path(upload_id)
    before = spool.read_bytes()
    r = await client.post(f"/api/upload/stream/{upload_id}", data=body, headers=headers)
    assert r.status == status, await r.text()
    assert await code_of(r) == code
    if status == 409:
        assert r.headers["Upload-Offset"] == "4"
        assert (await r.json())["offset"] == 4
    state = await status_of(client, upload_id)
    assert (state["offset"], state["length"], state["complete"]) == (4, 10, False)
    assert spool.read_bytes() == before
    # The upload goes on from where it was.
    done = await stream(client, upload_id, b"efghij", **{"Upload-Offset": "4"})
    assert (done["status"], done["offset"]) == ("completed", 10)
    assert delivered(client) == {"ten.bin": b"abcdefghij"}


async def test_a_stream_to_an_unknown_upload_is_404(make_client: ClientFactory) -> None:
    client = await make_client()
    for upload_id in ("0123456789abcdef0123456789abcdef", "x.y", "a" * 200):
        r = await client.post(f"/api/upload/stream/{upload_id}", data=b"abc")
        assert r.status == 404 and await code_of(r) == "ERR_UPLOAD_NOT_FOUND", upload_id
    await assert_nothing_created(client)


# --- how the sink will send it -----------------------------------------------------------------
@pytest.mark.parametrize(("size", "kind"), [
    (0, "single"), (1024, "single"), (20 * MiB, "single"), (20 * MiB + 1, "multipart"),
    (100 * MiB, "multipart"), (10 * 1024 * MiB, "multipart"), (19 * 1024 * MiB, "multipart"),
])
async def test_the_part_plan_is_the_sinks(make_client: ClientFactory, size: int,
                                          kind: str) -> None:
    """Up to 20 MiB in one part; above, the parts the Notion sink will send (the window,
    grown so that no file needs more than 1,000 parts). Nothing is sent yet."""
    client = await make_client()
    answer = await create_session(client, "big.bin", size)
    window = client.app[CONFIG].notion.window_bytes
    assert answer["upload_type"] == kind
    if kind == "single":
        assert (answer["part_size"], answer["total_parts"]) == (size, 1)
    else:
        plan = plan_parts(size, window)
        assert (answer["part_size"], answer["total_parts"]) == (
            plan.part_size, plan.number_of_parts)
        assert answer["total_parts"] <= 1000
        assert answer["total_parts"] == math.ceil(size / answer["part_size"])
    if size == 100 * MiB:
        assert (answer["part_size"], answer["total_parts"]) == (5 * MiB, 20)
    state = await status_of(client, answer["id"])
    assert (state["offset"], state["length"], state["complete"]) == (0, size, size == 0)
    if size:
        assert uploads_of(client).store.data_path(answer["id"]).stat().st_size == 0


# --- with auth ---------------------------------------------------------------------------------
async def test_with_auth_only_the_creator_streams_and_aborts(make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=(f"alice={ALICE}", f"bob={BOB}"))
    body = {"filename": "a.txt", "fileSize": 10}
    r = await client.post("/api/upload/create-session", json=body)
    assert r.status == 401 and await code_of(r) == "ERR_AUTH_REQUIRED"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await client.post("/api/upload/create-session", json=body,
                          headers=bearer("tok-nobody-00000000"))
    assert r.status == 403 and await code_of(r) == "ERR_AUTH_INVALID"
    assert await uploads_of(client).store.upload_ids() == []
    upload_id = (await create_session(client, "a.txt", 10, **bearer(ALICE)))["id"]
    await stream(client, upload_id, b"abcd", **bearer(ALICE))
    for path in (f"/api/upload/stream/{upload_id}", f"/api/upload/abort/{upload_id}"):
        r = await client.post(path, data=b"efghij", headers=bearer(BOB))
        assert r.status == 404 and await code_of(r) == "ERR_UPLOAD_NOT_FOUND", path
        r = await client.post(path, data=b"efghij")
        assert r.status == 401 and await code_of(r) == "ERR_AUTH_REQUIRED", path
    state = await status_of(client, upload_id, **bearer(ALICE))
    assert (state["offset"], state["complete"]) == (4, False)
    assert await listed(client, **bearer(BOB)) == []
    assert await listed(client, **bearer(ALICE)) == [upload_id]
    done = await stream(client, upload_id, b"abcdefghij", **bearer(ALICE))
    assert done["status"] == "completed"
    assert delivered(client) == {"a.txt": b"abcdefghij"}
