"""``--allowed-types``: the claimed type and the file name at creation, the first bytes at
finish (``protocol.filetypes``, ``gateway.screening``).

In-process gateways (a real HTTP server on loopback) with a real post-finish hook receiver.
A type or name that is not accepted is refused at creation (415, a size over its type's
limit 413) on tus, the session API and the IETF draft, with nothing created; a file whose
bytes are not what it claimed is rejected at finish: never delivered, its bytes removed, the
reason in its status, in the user's list and in the post-finish hook. What the store keeps
of a rejected upload runs on both stores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from gateway.keys import CONFIG, RUNTIME
from gateway.uploads import Uploads
from tests.conftest import ClientFactory
from tests.gateway.test_ietf import complete, interop, send
from tests.gateway.test_screening import ELF_HEADER, MP4, PDF, PNG
from tests.helpers import TUS, error_code, metadata, patch_headers, path_of

Client = TestClient[Any, Any]
KiB = 1024
MiB = 1024 * KiB
ALLOWED = "video/*=5GiB,image/*=50MiB,application/pdf"
# An executable that says it is a video: an ELF header, then padding.
FAKE_CLIP = ELF_HEADER + bytes(4096 - len(ELF_HEADER))
# A real MP4's first boxes (ftyp, free, mdat, moov), then more media data.
REAL_CLIP = MP4 + bytes(4096 - len(MP4))


# --- a post-finish hook receiver ---------------------------------------------------------------
class Receiver:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    hook.url = str(server.make_url("/hook"))
    yield hook
    await server.close()


# --- helpers -----------------------------------------------------------------------------------
def uploads_of(client: Client) -> Uploads:
    uploads: Uploads = client.app[RUNTIME].require()
    return uploads


def delivered(client: Client) -> dict[str, bytes]:
    folder: Path = client.app[CONFIG].data_dir / "complete"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


async def code_of(r: ClientResponse) -> str | None:
    return error_code(r.method, r.status, r.content_type, await r.read())


def claim(filename: str | None, filetype: str | None) -> dict[str, str]:
    pairs = {k: v for k, v in (("filename", filename), ("filetype", filetype)) if v is not None}
    return {"Upload-Metadata": metadata(**pairs)} if pairs else {}


async def post(client: Client, length: int | None, **headers: str) -> ClientResponse:
    size = {"Upload-Defer-Length": "1"} if length is None else {"Upload-Length": str(length)}
    return await client.post("/files/", headers={**TUS, **size, **headers})


async def upload(client: Client, data: bytes, filename: str, filetype: str | None) -> str:
    """Create and send a whole file over tus; its id."""
    r = await post(client, len(data), **claim(filename, filetype))
    assert r.status == 201, await r.text()
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=data, headers=patch_headers(0))
    assert r.status == 204, await r.text()
    return url.rsplit("/", 1)[1]


async def status_of(client: Client, upload_id: str) -> dict[str, Any]:
    r = await client.get(f"/api/upload/status/{upload_id}")
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def assert_nothing_created(client: Client) -> None:
    assert await uploads_of(client).store.upload_ids() == []
    r = await client.get("/api/uploads")
    assert (await r.json())["uploads"] == []


async def wait_for_calls(receiver: Receiver, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(receiver.calls) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the hook got {len(receiver.calls)} calls, not {count}")
        await asyncio.sleep(0.02)


# --- accepted ----------------------------------------------------------------------------------
async def test_allowed_types_are_delivered(make_client: ClientFactory) -> None:
    client = await make_client(allowed_types=ALLOWED)
    png = await upload(client, PNG, "pic.png", "image/png")
    # No claim: the name's extension stands for it, at creation and at finish.
    unlabelled = await upload(client, MP4, "old.mp4", None)
    clip = await upload(client, REAL_CLIP, "clip.mp4", "video/mp4")
    r = await client.post("/api/upload/create-session",
                          json={"filename": "doc.pdf", "fileSize": len(PDF),
                                "contentType": "application/pdf"})
    assert r.status == 201, await r.text()
    pdf = (await r.json())["id"]
    r = await client.post(f"/api/upload/stream/{pdf}", data=PDF)
    assert (await r.json())["status"] == "completed"
    assert delivered(client) == {"pic.png": PNG, "old.mp4": MP4, "clip.mp4": REAL_CLIP,
                                 "doc.pdf": PDF}
    for upload_id in (png, unlabelled, clip, pdf):
        state = await status_of(client, upload_id)
        assert state["status"] == "drained" and "rejected" not in state


# --- refused at creation -----------------------------------------------------------------------
REFUSED: list[tuple[str | None, str | None, str]] = [
    ("notes.txt", "text/plain", "type-not-allowed"),
    ("setup.exe", "application/x-msdownload", "type-not-allowed"),
    ("archive.zip", "application/zip", "type-not-allowed"),
    # Without a claim, the name's extension is the claim.
    ("README", None, "type-missing"),
    ("notes.txt", None, "type-not-allowed"),
    ("clip.mp4", "video", "type-invalid"),
    # The name is a second witness: it must be accepted and agree with the claim.
    ("clip.exe", "video/mp4", "name-not-allowed"),
    ("clip.mp4.exe", "video/mp4", "name-not-allowed"),
    ("photo.png", "video/mp4", "name-mismatch"),
    ("report.pdf", "image/png", "name-mismatch"),
]


@pytest.mark.parametrize(("filename", "filetype", "reason"), REFUSED,
                         ids=[f"{n}-{t}" for n, t, _ in REFUSED])
async def test_a_type_or_name_not_accepted_is_refused_at_creation(
        make_client: ClientFactory, filename: str, filetype: str | None, reason: str) -> None:
    client = await make_client(allowed_types=ALLOWED)
    r = await post(client, 1000, **claim(filename, filetype))
    assert r.status == 415 and await code_of(r) == "ERR_TYPE_NOT_ALLOWED", await r.text()
    assert "Location" not in r.headers
    # The session API says why in its JSON.
    body: dict[str, Any] = {"filename": filename, "fileSize": 1000}
    if filetype is not None:
        body["contentType"] = filetype
    r = await client.post("/api/upload/create-session", json=body)
    if filetype is None or "/" in filetype:
        assert r.status == 415, await r.text()
        answer = await r.json()
        assert answer["error"] == "ERR_TYPE_NOT_ALLOWED"
        assert answer["reason"] == reason
        assert answer["allowed"] == ["video/*=5GiB", "image/*=50MiB", "application/pdf"]
    else:
        # Not a media type at all: the session API refuses the field itself.
        assert r.status == 400 and await code_of(r) == "ERR_INVALID_JSON"
    await assert_nothing_created(client)


async def test_a_disallowed_type_is_refused_on_the_ietf_draft(
        make_client: ClientFactory) -> None:
    client = await make_client(allowed_types=ALLOWED)
    port = client.server.port
    assert port is not None
    exchange = await send(port, "POST", "/files/", {
        **interop(6), **complete(6, True), "Content-Type": "application/x-msdownload",
        "Content-Disposition": 'attachment; filename="setup.exe"'}, FAKE_CLIP)
    answer = exchange.answer
    assert answer.status == 415
    assert answer.problem()["code"] == "ERR_TYPE_NOT_ALLOWED"
    assert all("location" not in reply.headers for reply in exchange.interim)
    assert "location" not in answer.headers
    # A claim the name contradicts, too.
    exchange = await send(port, "POST", "/files/", {
        **interop(6), **complete(6, True), "Content-Type": "video/mp4",
        "Content-Disposition": 'attachment; filename="clip.exe"'}, FAKE_CLIP)
    assert exchange.answer.status == 415
    await assert_nothing_created(client)
    # An accepted one goes through and is delivered.
    exchange = await send(port, "POST", "/files/", {
        **interop(6), **complete(6, True), "Content-Type": "image/png",
        "Content-Disposition": 'attachment; filename="pic.png"'}, PNG)
    assert exchange.answer.status in (200, 201), exchange.answer
    assert delivered(client) == {"pic.png": PNG}


async def test_a_size_over_its_types_limit_is_413(make_client: ClientFactory) -> None:
    """The exact entry wins over its family: PNGs up to 64 KiB, other images 50 MiB."""
    client = await make_client(allowed_types="video/*=1MiB,image/png=64KiB,image/*=50MiB")
    for filename, filetype, limit in (("clip.mp4", "video/mp4", MiB),
                                      ("pic.png", "image/png", 64 * KiB)):
        r = await post(client, limit + 1, **claim(filename, filetype))
        assert r.status == 413 and await code_of(r) == "ERR_UPLOAD_TOO_LARGE", filename
        r = await client.post("/api/upload/create-session", json={
            "filename": filename, "fileSize": limit + 1, "contentType": filetype})
        assert r.status == 413, await r.text()
        answer = await r.json()
        assert (answer["error"], answer["reason"], answer["max_bytes"]) == (
            "ERR_UPLOAD_TOO_LARGE", "too-large", limit)
    await assert_nothing_created(client)
    r = await post(client, 64 * KiB + 1, **claim("pic.jpg", "image/jpeg"))
    assert r.status == 201, await r.text()
    r = await post(client, MiB, **claim("clip.mp4", "video/mp4"))
    assert r.status == 201, await r.text()


@pytest.mark.both_stores
async def test_a_deferred_length_over_its_types_limit_is_413(make_client: ClientFactory) -> None:
    client = await make_client(allowed_types="video/*=1MiB")
    r = await post(client, None, **claim("clip.mp4", "video/mp4"))
    assert r.status == 201, await r.text()
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=REAL_CLIP[:100],
                           headers=patch_headers(0, **{"Upload-Length": str(MiB + 1)}))
    assert r.status == 413 and await code_of(r) == "ERR_UPLOAD_TOO_LARGE", await r.text()
    r = await client.head(url, headers=TUS)
    assert (r.headers["Upload-Offset"], r.headers.get("Upload-Defer-Length")) == ("0", "1")
    r = await client.patch(url, data=REAL_CLIP,
                           headers=patch_headers(0, **{"Upload-Length": str(len(REAL_CLIP))}))
    assert r.status == 204, await r.text()
    assert delivered(client) == {"clip.mp4": REAL_CLIP}


# --- rejected at finish ------------------------------------------------------------------------
async def send_fake_clip(client: Client) -> tuple[str, str]:
    """An executable named clip.mp4 claiming video/mp4, sent whole: its URL and the reason
    it was rejected."""
    r = await post(client, len(FAKE_CLIP), **claim("clip.mp4", "video/mp4"))
    assert r.status == 201, await r.text()
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=FAKE_CLIP, headers=patch_headers(0))
    # Every byte was taken: the PATCH itself succeeded; the verdict is the upload's status.
    assert r.status == 204, await r.text()
    state = await status_of(client, url.rsplit("/", 1)[1])
    assert state["status"] == "rejected", state
    reason: str = state["rejected"]
    return url, reason


@pytest.mark.both_stores
async def test_an_executable_named_clip_mp4_is_rejected_at_finish(
        make_client: ClientFactory, receiver: Receiver) -> None:
    """Its name and claim pass at creation; its first bytes are an ELF executable, so at
    finish it is rejected: never delivered, its bytes removed, the reason in its status,
    in the list and in the post-finish hook."""
    client = await make_client(allowed_types=ALLOWED, hook_post_finish=receiver.url,
                               hook_retry_s=0.05)
    url, reason = await send_fake_clip(client)
    upload_id = url.rsplit("/", 1)[1]
    assert "executable" in reason and "video/mp4" in reason, reason
    state = await status_of(client, upload_id)
    assert state["sink"]["status"] == "rejected" and state["sink"]["error"] == reason
    assert state["complete"] is True and state["links"]["download"] is None
    assert delivered(client) == {}
    assert not uploads_of(client).store.data_path(upload_id).exists()
    # The record stays, so the status can say why; the bytes are gone for good: 410, as for
    # any upload whose bytes this gateway no longer has (404 would say it never existed).
    r = await client.get(url)
    assert r.status == 410, await r.text()
    r = await client.head(url, headers=TUS)
    assert r.status == 200 and r.headers["Upload-Offset"] == str(len(FAKE_CLIP))
    r = await client.get("/api/uploads")
    [listed] = (await r.json())["uploads"]
    assert (listed["id"], listed["status"], listed["rejected"]) == (
        upload_id, "rejected", reason)
    await wait_for_calls(receiver, 1)
    await asyncio.sleep(0.3)  # several hook scans: nothing more is sent
    [call] = receiver.calls
    assert (call["type"], call["upload"]["id"]) == ("post-finish", upload_id)


async def test_the_post_finish_hook_says_why_an_upload_was_rejected(
        make_client: ClientFactory, receiver: Receiver) -> None:
    client = await make_client(allowed_types=ALLOWED, hook_post_finish=receiver.url,
                               hook_retry_s=0.05)
    _, reason = await send_fake_clip(client)
    await wait_for_calls(receiver, 1)
    sent = receiver.calls[0]["upload"]
    assert (sent.get("status"), sent.get("rejected")) == ("rejected", reason), sent


async def test_a_download_of_a_rejected_upload_says_it_was_rejected(
        make_client: ClientFactory) -> None:
    client = await make_client(allowed_types=ALLOWED)
    url, _ = await send_fake_clip(client)
    r = await client.get(url)
    assert r.status == 410
    text = await r.text()
    assert "rejected" in text and await code_of(r) != "ERR_DELIVERED_FILE_REMOVED", text


@pytest.mark.both_stores
async def test_a_real_mp4_named_clip_mp4_passes_at_finish(make_client: ClientFactory,
                                                          receiver: Receiver) -> None:
    client = await make_client(allowed_types=ALLOWED, hook_post_finish=receiver.url,
                               hook_retry_s=0.05)
    upload_id = await upload(client, REAL_CLIP, "clip.mp4", "video/mp4")
    state = await status_of(client, upload_id)
    assert state["status"] == "drained" and "rejected" not in state
    assert state["links"]["download"] is not None
    assert delivered(client) == {"clip.mp4": REAL_CLIP}
    r = await client.get(f"/files/{upload_id}")
    assert r.status == 200 and await r.read() == REAL_CLIP
    await wait_for_calls(receiver, 1)
    assert receiver.calls[0]["upload"]["id"] == upload_id
    # The hook reports the finish, not the delivery (which may still be under way).
    sent = receiver.calls[0]["upload"]
    assert (sent["status"], sent["rejected"]) == ("finished", None), sent


async def test_parallel_parts_are_not_files_their_final_is(make_client: ClientFactory) -> None:
    """tus-js-client's parallel uploads send partials without a type: they are pieces, so
    only the final is held to the list, at creation and by its bytes at the finish."""
    client = await make_client(allowed_types=ALLOWED)
    halves = (REAL_CLIP[:2048], REAL_CLIP[2048:])
    parts = []
    for half in halves:
        r = await post(client, len(half), **{"Upload-Concat": "partial"})
        assert r.status == 201, await r.text()
        parts.append(path_of(r.headers["Location"]))
    joined = "final;" + " ".join(parts)
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": joined,
                                              **claim("clip.exe", "video/mp4")})
    assert (r.status, await code_of(r)) == (415, "ERR_TYPE_NOT_ALLOWED")
    r = await client.post("/files/", headers={**TUS, "Upload-Concat": joined,
                                              **claim("clip.mp4", "video/mp4")})
    assert r.status == 201, await r.text()
    final_id = path_of(r.headers["Location"]).rsplit("/", 1)[1]
    for part, half in zip(parts, halves, strict=True):
        r = await client.patch(part, data=half, headers=patch_headers(0))
        assert r.status == 204, await r.text()
    assert (await status_of(client, final_id))["status"] == "drained"
    assert delivered(client) == {"clip.mp4": REAL_CLIP}
