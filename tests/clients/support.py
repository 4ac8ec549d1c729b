"""Shared checks for the real-client tests: random files, SHA-256, HEAD and GET over loopback."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

from tests.conftest import GatewayProcess

MiB = 1024 * 1024
HTTP_TIMEOUT_S = 30


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def head(url: str, auth: dict[str, str] | None = None) -> Message:
    """HEAD an upload URL (with ``auth`` headers when the gateway asks for credentials);
    returns the response headers."""
    req = urllib.request.Request(url, method="HEAD",
                                 headers={"Tus-Resumable": "1.0.0", **(auth or {})})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
        assert resp.status == 200, resp.status
        headers: Message = resp.headers
        return headers


def head_offset(url: str, auth: dict[str, str] | None = None) -> int:
    return int(head(url, auth)["Upload-Offset"])


def download(url: str, auth: dict[str, str] | None = None) -> tuple[bytes, Message]:
    """GET a finished upload: its bytes and the response headers."""
    req = urllib.request.Request(url, headers=auth or {})
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
        assert resp.status == 200, resp.status
        return resp.read(), resp.headers


def url_of(uploader: Any) -> str:
    """A tuspy uploader's upload URL (tuspy does not type it)."""
    url = uploader.url
    assert isinstance(url, str), url
    return url


def assert_delivered(gw: GatewayProcess, url: str, source: Path, filename: str,
                     auth: dict[str, str] | None = None) -> None:
    """The finished upload is byte-exact both in complete/<filename> and over GET <url>."""
    expected = sha256_file(source)
    size = source.stat().st_size
    delivered = gw.data_dir / "complete" / filename
    assert delivered.is_file(), (
        f"{delivered} is missing; complete/ holds "
        f"{sorted(p.name for p in delivered.parent.iterdir()) if delivered.parent.is_dir() else []}"
        f"\n{gw.log()}")
    assert delivered.stat().st_size == size
    assert sha256_file(delivered) == expected, "complete/ file differs from what was sent"
    assert head_offset(url, auth) == size
    body, _headers = download(url, auth)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected, "GET body differs from what was sent"
