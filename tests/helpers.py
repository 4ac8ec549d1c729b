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
