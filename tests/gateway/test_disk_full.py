"""A full disk: the gateway's data directory on a small tmpfs that the test mounts itself.

What must hold when the spool's filesystem fills (ENOSPC) in the middle of a body: the bytes
written before it stay and count (HEAD reports exactly them, and they are exact), the client
gets 507 with a stable code and Retry-After, the log has one warning and no traceback, and the
upload resumes to a byte-exact file once space is back. A record that cannot be written
changes nothing. ``min_free_disk`` refuses new uploads and PATCHes before the disk is full,
and health says so. Mounting needs root; without it the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import GatewayConfig, parse_field
from gateway.keys import CONFIG
from tests.helpers import TUS, patch_headers, path_of

KiB = 1024
MiB = 1024 * KiB
DISK_BYTES = 8 * MiB
Client = TestClient[Any, Any]
MakeClient = Callable[..., Any]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of the test's own, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs",
                               str(mount_point)], capture_output=True, text=True, check=False)
        refused = done.stderr.strip() or f"exit status {done.returncode}"
    except FileNotFoundError:
        done, refused = None, "no mount command"
    if done is None or done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root or CAP_SYS_ADMIN): {refused}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.fixture
async def on_small_disk(small_disk: Path,
                        make_client: MakeClient) -> AsyncIterator[Callable[..., Any]]:
    """In-process gateways whose data dir is on the small disk; closed before the unmount
    (this fixture's teardown runs before ``small_disk``'s)."""
    async def factory(**overrides: Any) -> Client:
        client: Client = await make_client(data_dir=small_disk / "data", **overrides)
        return client
    yield factory


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(disk: Path, leave: int) -> Path:
    """A ballast file that leaves about ``leave`` bytes free (to the page)."""
    ballast = disk / "ballast"
    size = max(free_bytes(disk) - leave, 0)
    block = b"\0" * MiB
    with ballast.open("ab", buffering=0) as f:
        while size > 0:
            try:
                size -= f.write(block[:min(size, MiB)])
            except OSError:
                break  # full already: close enough to what was asked
    return ballast


def payload(size: int) -> bytes:
    return os.urandom(size)


async def create(client: Client, length: int | None) -> str:
    headers = {**TUS}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    r = await client.post("/files/", headers=headers)
    assert r.status == 201, await r.text()
    return path_of(r.headers["Location"])


async def head_offset(client: Client, path: str) -> int:
    r = await client.head(path, headers=TUS)
    assert r.status == 200
    return int(r.headers["Upload-Offset"])


def data_file(client: Client, path: str) -> Path:
    data_dir: Path = client.app[CONFIG].data_dir
    return data_dir / "uploads" / f"{path.rsplit('/', 1)[1]}.bin"


def assert_full_disk_answer(status: int, headers: Any, body: str) -> None:
    assert status == 507, body
    assert body.startswith("ERR_INSUFFICIENT_STORAGE"), body
    assert int(headers["Retry-After"]) > 0


def disk_log(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """(warnings about the disk, anything at error level or with a traceback)."""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name.startswith("gateway") and "space" in r.getMessage()]
    bad = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
           if r.levelno >= logging.ERROR or r.exc_info]
    return warnings, bad


async def resume_and_verify(client: Client, ballast: Path, path: str, data: bytes) -> None:
    """After a 507: HEAD's offset is what the data file holds, those bytes are exact; then
    space comes back and the rest of the body completes the file byte for byte."""
    offset = await head_offset(client, path)
    assert 0 < offset < len(data), offset
    stored = data_file(client, path).read_bytes()
    assert len(stored) >= offset
    assert stored[:offset] == data[:offset], "the bytes before the full disk are not exact"
    ballast.unlink()
    r = await client.patch(path, headers=patch_headers(offset),
                           data=io.BytesIO(data[offset:]))
    assert r.status == 204, await r.text()
    assert int(r.headers["Upload-Offset"]) == len(data)
    r = await client.get(path)
    assert r.status == 200
    assert await r.read() == data


# --- ENOSPC in the middle of a body ------------------------------------------------------------
@pytest.mark.both_stores
async def test_disk_full_mid_patch_keeps_the_bytes_before_it(
        on_small_disk: Callable[..., Any], small_disk: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await on_small_disk(min_free_disk="0")
    data = payload(3 * MiB + 12_345)
    path = await create(client, len(data))
    # Room for a little over a megabyte, not a whole number of write buffers: the write that
    # meets the end of the disk lands partly.
    ballast = fill(small_disk, MiB + 100 * KiB)
    r = await client.patch(path, headers=patch_headers(0), data=io.BytesIO(data))
    assert_full_disk_answer(r.status, r.headers, await r.text())
    offset = await head_offset(client, path)
    if not client.app[CONFIG].redis.url:
        # The disk store's offset IS the file size: nothing past it.
        assert data_file(client, path).stat().st_size == offset
    warnings, bad = disk_log(caplog)
    assert len(warnings) == 1, warnings
    assert not bad, bad
    await resume_and_verify(client, ballast, path, data)


@pytest.mark.both_stores
async def test_disk_full_in_creation_with_upload(
        on_small_disk: Callable[..., Any], small_disk: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await on_small_disk(min_free_disk="0")
    data = payload(3 * MiB + 777)
    ballast = fill(small_disk, MiB + 60 * KiB)
    r = await client.post("/files/", data=io.BytesIO(data), headers={
        **TUS, "Upload-Length": str(len(data)),
        "Content-Type": "application/offset+octet-stream"})
    assert_full_disk_answer(r.status, r.headers, await r.text())
    # The upload exists now: the answer says where, so the client can resume it.
    path = path_of(r.headers["Location"])
    warnings, bad = disk_log(caplog)
    assert len(warnings) == 1, warnings
    assert not bad, bad
    await resume_and_verify(client, ballast, path, data)


@pytest.mark.both_stores
async def test_disk_full_mid_checksummed_patch_keeps_nothing_of_it(
        on_small_disk: Callable[..., Any], small_disk: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A body with Upload-Checksum cannot be verified once cut short: none of it stays."""
    client = await on_small_disk(min_free_disk="0")
    data = payload(2 * MiB + 99)
    path = await create(client, len(data))
    ballast = fill(small_disk, MiB + 40 * KiB)
    checksum = "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()
    r = await client.patch(path, data=io.BytesIO(data), headers={
        **patch_headers(0), "Upload-Checksum": checksum})
    assert_full_disk_answer(r.status, r.headers, await r.text())
    assert await head_offset(client, path) == 0
    if not client.app[CONFIG].redis.url:
        assert data_file(client, path).stat().st_size == 0
    ballast.unlink()
    r = await client.patch(path, data=io.BytesIO(data), headers={
        **patch_headers(0), "Upload-Checksum": checksum})
    assert r.status == 204, await r.text()
    r = await client.get(path)
    assert await r.read() == data
    assert not disk_log(caplog)[1]


# --- records that cannot be written ------------------------------------------------------------
@pytest.mark.parametrize("backend", ["disk"], indirect=True)  # Redis keeps records elsewhere
async def test_record_writes_on_a_full_disk_change_nothing(
        on_small_disk: Callable[..., Any], small_disk: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client = await on_small_disk(min_free_disk="0")
    deferred = await create(client, None)
    uploads = small_disk / "data" / "uploads"
    ballast = fill(small_disk, 0)
    before = sorted(p.name for p in uploads.iterdir())

    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert_full_disk_answer(r.status, r.headers, await r.text())
    assert sorted(p.name for p in uploads.iterdir()) == before

    # Declaring the length rewrites the record: refused, and the record stays as it was.
    r = await client.patch(deferred, headers={**patch_headers(0), "Upload-Length": "5"})
    assert_full_disk_answer(r.status, r.headers, await r.text())
    assert sorted(p.name for p in uploads.iterdir()) == before
    r = await client.head(deferred, headers=TUS)
    assert r.headers.get("Upload-Defer-Length") == "1" and "Upload-Length" not in r.headers

    # A checksummed body writes its stage marker first: refused, nothing left behind.
    digest = base64.b64encode(hashlib.sha1(b"hello").digest()).decode()
    r = await client.patch(deferred, data=b"hello", headers={
        **patch_headers(0), "Upload-Checksum": f"sha1 {digest}"})
    assert_full_disk_answer(r.status, r.headers, await r.text())
    assert sorted(p.name for p in uploads.iterdir()) == before
    assert await head_offset(client, deferred) == 0

    warnings, bad = disk_log(caplog)
    assert len(warnings) == 3, warnings  # one per refused request
    assert not bad, bad
    ballast.unlink()
    r = await client.patch(deferred, headers={**patch_headers(0), "Upload-Length": "5"},
                           data=b"hello")
    assert r.status == 204, await r.text()


# --- min_free_disk -----------------------------------------------------------------------------
async def wait_health(client: Client, status: str) -> dict[str, Any]:
    for _ in range(60):  # the monitor samples twice a second
        r = await client.get("/api/system/health")
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        if body["components"]["disk"]["status"] == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"health did not turn {status}: {body}")


@pytest.mark.parametrize("backend", ["disk"], indirect=True)  # one admission path for both
async def test_min_free_disk_refuses_new_work_before_the_disk_is_full(
        on_small_disk: Callable[..., Any], small_disk: Path) -> None:
    client = await on_small_disk(min_free_disk="50%")
    body = await wait_health(client, "healthy")
    disk = body["components"]["disk"]
    assert disk["min_free_bytes"] == DISK_BYTES // 2
    assert disk["free_bytes"] > DISK_BYTES // 2
    path = await create(client, 1000)

    ballast = fill(small_disk, 2 * MiB)
    body = await wait_health(client, "degraded")
    assert body["status"] == "degraded"
    disk = body["components"]["disk"]
    assert disk["free_bytes"] < disk["min_free_bytes"] == DISK_BYTES // 2
    assert 0 < disk["free_percent"] < 50 and disk["min_free"] == "50%"
    assert disk["total_bytes"] == DISK_BYTES

    r = await client.post("/files/", headers={**TUS, "Upload-Length": "10"})
    assert_full_disk_answer(r.status, r.headers, await r.text())
    r = await client.patch(path, headers=patch_headers(0), data=b"x" * 1000)
    assert_full_disk_answer(r.status, r.headers, await r.text())
    assert await head_offset(client, path) == 0

    ballast.unlink()
    await wait_health(client, "healthy")
    r = await client.patch(path, headers=patch_headers(0), data=b"x" * 1000)
    assert r.status == 204, await r.text()
    await create(client, 10)


@pytest.mark.parametrize(("raw", "ok"), [("1%", True), ("0.5%", True), ("256MiB", True),
                                         ("0", True), ("100%", False), ("-1%", False),
                                         ("lots", False), ("5%%", False)])
def test_min_free_disk_is_a_size_or_a_percent(raw: str, ok: bool) -> None:
    value = parse_field("min_free_disk", raw)
    if ok:
        GatewayConfig(min_free_disk=value).validate()
    else:
        with pytest.raises(ValueError, match="min_free_disk"):
            GatewayConfig(min_free_disk=value).validate()


@pytest.mark.parametrize("backend", ["disk"], indirect=True)  # Redis keeps tombstones itself
async def test_delete_frees_space_on_a_full_disk(
        on_small_disk: Callable[..., Any], small_disk: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Removing an upload is how space comes back (DELETE, the expiry sweep): a full disk
    must not refuse it for want of room for the tombstone."""
    client = await on_small_disk(min_free_disk="0")
    path = await create(client, 2 * MiB)
    r = await client.patch(path, headers=patch_headers(0), data=io.BytesIO(payload(MiB)))
    assert r.status == 204
    fill(small_disk, 0)
    free = free_bytes(small_disk)
    r = await client.delete(path, headers=TUS)
    assert r.status == 204, await r.text()
    assert free_bytes(small_disk) > free + MiB // 2
    r = await client.head(path, headers=TUS)
    assert r.status == 410
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
