"""Small helpers for tests that speak tus over HTTP."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
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


@contextlib.contextmanager
def gateway_logging(level: str, log_format: str,
                    secrets: Iterable[str] = ()) -> Iterator[io.StringIO]:
    """The root logger set up as ``serve`` sets it up, writing into a string; the logging
    set-up before it is restored afterwards."""
    from gateway.logs import setup_logging

    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging(level, log_format, secrets, stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        logging.captureWarnings(False)


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def error_code(method: str, status: int, content_type: str, body: bytes) -> str | None:
    """The stable error code of a gateway answer, whichever form it took: JSON on the API
    (``error``), problem details on the IETF draft (``code``), ``CODE: message`` text on
    tus; None for a success and for HEAD (no body)."""
    if status < 400 or method == "HEAD":
        return None
    if content_type.endswith("json"):
        import json

        answer = json.loads(body)
        code = answer.get("error") or answer.get("code")
        return str(code) if code is not None else None
    return body.decode(errors="replace").partition(":")[0]
