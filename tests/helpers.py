"""Small helpers for tests that speak tus over HTTP."""

from __future__ import annotations

import base64
from typing import Any

from yarl import URL

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def path_of(location: str) -> str:
    """The path of an absolute Location, for aiohttp's test client."""
    return URL(location).path


def patch_headers(offset: int, **extra: str) -> dict[str, str]:
    return {**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **extra}


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def metadata(**pairs: Any) -> str:
    return ",".join(f"{k} {b64(v)}" if v else k for k, v in pairs.items())
