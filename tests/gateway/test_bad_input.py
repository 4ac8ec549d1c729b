"""Bad input gets a 4xx with a stable error code and changes nothing.

Every case runs against an upload with some bytes in it; the whole data directory (names,
sizes, record contents) is compared before and after the request.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.keys import CONFIG
from tests.helpers import OCTETS, TUS, b64, metadata, patch_headers, path_of

Client = TestClient[Any, Any]
ID_LIKE = "f" * 32


def snapshot(root: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != ".lock":
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
async def busy(make_client: Any) -> tuple[Client, str]:
    client: Client = await make_client(max_size_bytes=1000)
    r = await client.post("/files/", headers={**TUS, "Upload-Length": "100",
                                              "Upload-Metadata": metadata(filename="a.txt")})
    url = path_of(r.headers["Location"])
    r = await client.patch(url, data=b"x" * 10, headers=patch_headers(0))
    assert r.status == 204
    return client, url


POST_CASES: list[tuple[dict[str, str], bytes, int, str]] = [
    ({"Upload-Length": "-1"}, b"", 400, "ERR_INVALID_LENGTH"),
    ({"Upload-Length": "+5"}, b"", 400, "ERR_INVALID_LENGTH"),
    ({"Upload-Length": "1.0"}, b"", 400, "ERR_INVALID_LENGTH"),
    ({"Upload-Length": "0x10"}, b"", 400, "ERR_INVALID_LENGTH"),
    ({"Upload-Length": "1_0"}, b"", 400, "ERR_INVALID_LENGTH"),
    ({"Upload-Length": "99999999999999999999"}, b"", 400, "ERR_INVALID_LENGTH"),
    ({"Upload-Length": "1001"}, b"", 413, "ERR_UPLOAD_TOO_LARGE"),
    ({"Upload-Length": "5", "Upload-Metadata": "filename"}, b"", 201, ""),  # valid: no value
    ({"Upload-Length": "5", "Upload-Metadata": "filename !!"}, b"", 400, "ERR_INVALID_METADATA"),
    ({"Upload-Length": "5", "Upload-Metadata": "a YQ==,a YQ=="}, b"", 400,
     "ERR_INVALID_METADATA"),
    ({"Upload-Length": "5", "Upload-Metadata": "k\tv YQ=="}, b"", 400, "ERR_INVALID_METADATA"),
    ({"Upload-Length": "5", "Content-Type": "text/plain"}, b"abc", 415,
     "ERR_INVALID_CONTENT_TYPE"),
    ({"Upload-Length": "2", "Content-Type": OCTETS}, b"abc", 413, "ERR_UPLOAD_SIZE_EXCEEDED"),
    ({"Upload-Concat": "final;/files/../uploads/" + ID_LIKE}, b"", 400, "ERR_INVALID_CONCAT"),
    ({"Upload-Concat": "final;/files/%2e%2e%2f" + ID_LIKE}, b"", 400, "ERR_INVALID_CONCAT"),
    ({"Upload-Concat": "final;file:///etc/passwd"}, b"", 400, "ERR_INVALID_CONCAT"),
    ({"Upload-Concat": "final;/files/" + ID_LIKE}, b"", 404, "ERR_UPLOAD_NOT_FOUND"),
    ({"Upload-Concat": "partial;x", "Upload-Length": "1"}, b"", 400, "ERR_INVALID_CONCAT"),
    ({"Upload-Defer-Length": "yes"}, b"", 400, "ERR_INVALID_DEFER_LENGTH"),
]


@pytest.mark.parametrize("headers,body,status,code", POST_CASES)
async def test_bad_post_changes_nothing(busy: tuple[Client, str], headers: dict[str, str],
                                        body: bytes, status: int, code: str) -> None:
    client, _ = busy
    root = busy[0].app[CONFIG].data_dir
    before = snapshot(root)
    r = await client.post("/files/", data=body, headers={**TUS, **headers})
    assert r.status == status, await r.text()
    if status >= 400:
        assert (await r.text()).startswith(code + ":")
        assert snapshot(root) == before


def patch_cases(url_offset: int = 10) -> list[tuple[dict[str, str], bytes, int, str]]:
    return [
        ({"Upload-Offset": "-10"}, b"abc", 400, "ERR_INVALID_OFFSET"),
        ({"Upload-Offset": "1 0"}, b"abc", 400, "ERR_INVALID_OFFSET"),
        ({"Upload-Offset": "10.0"}, b"abc", 400, "ERR_INVALID_OFFSET"),
        ({"Upload-Offset": "ten"}, b"abc", 400, "ERR_INVALID_OFFSET"),
        ({"Upload-Offset": "9"}, b"abc", 409, "ERR_MISMATCHED_OFFSET"),
        ({"Upload-Offset": "11"}, b"abc", 409, "ERR_MISMATCHED_OFFSET"),
        ({"Upload-Offset": "10", "Content-Type": "text/plain"}, b"abc", 415,
         "ERR_INVALID_CONTENT_TYPE"),
        ({"Upload-Offset": "10"}, b"x" * 91, 413, "ERR_UPLOAD_SIZE_EXCEEDED"),
        ({"Upload-Offset": "10", "Upload-Length": "99"}, b"abc", 400, "ERR_LENGTH_ALREADY_SET"),
        ({"Upload-Offset": "10", "Upload-Length": "-1"}, b"abc", 400, "ERR_INVALID_LENGTH"),
        ({"Upload-Offset": "10", "Upload-Checksum": "sha1 " + b64(b"x" * 20)}, b"abc", 460,
         "ERR_CHECKSUM_MISMATCH"),
        ({"Upload-Offset": "10", "Upload-Checksum": "sha3 AAAA"}, b"abc", 400,
         "ERR_UNSUPPORTED_CHECKSUM"),
        ({"Upload-Offset": "10", "Tus-Resumable": "0.2.2"}, b"abc", 412,
         "ERR_UNSUPPORTED_VERSION"),
    ]


@pytest.mark.parametrize("headers,body,status,code", patch_cases())
async def test_bad_patch_changes_nothing(busy: tuple[Client, str], headers: dict[str, str],
                                         body: bytes, status: int, code: str) -> None:
    client, url = busy
    root = client.app[CONFIG].data_dir
    before = snapshot(root)
    r = await client.patch(url, data=body, headers={**TUS, "Content-Type": OCTETS, **headers})
    assert r.status == status, await r.text()
    assert (await r.text()).startswith(code + ":")
    assert snapshot(root) == before
    assert (await client.head(url, headers=TUS)).headers["Upload-Offset"] == "10"


@pytest.mark.parametrize("path", [
    "/files/" + "g" * 32, "/files/" + "F" * 32, "/files/..%2F..%2Fetc%2Fpasswd",
    "/files/%2e%2e", "/files/" + "f" * 31, "/files/" + "f" * 32 + ".info",
])
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET"])
async def test_unknown_or_malformed_ids(busy: tuple[Client, str], path: str,
                                        method: str) -> None:
    client, _ = busy
    root = client.app[CONFIG].data_dir
    before = snapshot(root)
    r = await client.request(method, path, data=b"abc" if method == "PATCH" else None,
                             headers=patch_headers(10))
    assert r.status == 404
    assert snapshot(root) == before


async def test_traversal_in_metadata_filename_stays_in_complete(busy: tuple[Client, str],
                                                                tmp_path: Path) -> None:
    client, _ = busy
    root = client.app[CONFIG].data_dir
    evil = "../" * 8 + str(tmp_path / "escaped.txt")
    r = await client.post("/files/", data=b"pwn", headers={
        **TUS, "Upload-Length": "3", "Content-Type": OCTETS,
        "Upload-Metadata": metadata(filename=evil)})
    assert r.status == 201
    assert not (tmp_path / "escaped.txt").exists()
    assert (root / "complete" / "escaped.txt").read_bytes() == b"pwn"
