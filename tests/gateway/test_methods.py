"""Every method gets an answer on the upload URLs, in the tus error format, and nothing is
logged as an error.

The gateway's rule: a method it implements somewhere (the tus methods) or a standard HTTP
method (RFC 9110 and PATCH) that the URL does not allow gets 405 with ``Allow``; a method it
does not know at all (WebDAV's, made-up tokens, lowercase spellings: methods are
case-sensitive) gets 501. Both carry the tus error body and ``Tus-Resumable``.

Some tokens never reach the gateway: aiohttp's C parser (llhttp) answers an unknown token with
its own 400 before any application code runs. Those are sent on the wire all the same, to
check that they are answered too; their tus answers are checked through
``X-HTTP-Method-Override``, which reaches the gateway whatever the parser.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]
ID_LIKE = "0" * 32
URLS = ("/files/", "/files/" + ID_LIKE)

# (method, status, code)
KNOWN_NOT_ALLOWED = [("TRACE", 405, "ERR_METHOD_NOT_ALLOWED"),
                     ("PUT", 405, "ERR_METHOD_NOT_ALLOWED")]
NOT_IMPLEMENTED = [("PROPFIND", 501, "ERR_METHOD_NOT_IMPLEMENTED"),
                   ("MKCOL", 501, "ERR_METHOD_NOT_IMPLEMENTED"),
                   ("PURGE", 501, "ERR_METHOD_NOT_IMPLEMENTED"),
                   ("M-SEARCH", 501, "ERR_METHOD_NOT_IMPLEMENTED")]
# Tokens llhttp may refuse before the gateway sees them.
ODD_TOKENS = ["FOO", "get", "Patch", "CONNECTX", "X" * 300, "BREW", "!#$%&'*+-.^_`|~"]


async def raw_request(client: Client, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send a request head on a fresh connection; read the whole answer (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    assert data, f"no answer to {head[:60]!r}: the connection was dropped"
    status_line, _, rest = data.partition(b"\r\n")
    raw_headers, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in raw_headers.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def request_head(method: str, url: str, **extra: str) -> str:
    fields = {"Host": "127.0.0.1", "Tus-Resumable": "1.0.0", "Origin": "https://app.example",
              "Connection": "close", **extra}
    return f"{method} {url} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"


def assert_tus_answer(status: int, headers: dict[str, str], body: bytes,
                      expected: int, code: str, url: str) -> None:
    assert status == expected, body
    assert body.startswith(code.encode() + b":"), body
    assert headers["tus-resumable"] == "1.0.0"
    if expected == 405:
        allowed = {m.strip() for m in headers["allow"].split(",")}
        assert allowed == ({"OPTIONS", "POST"} if url == "/files/" else
                           {"OPTIONS", "HEAD", "PATCH", "DELETE", "GET"})
    # A browser may read the error: the CORS headers are on it as on any other answer.
    assert headers["access-control-allow-origin"] == "https://app.example"


def assert_clean_log(caplog: pytest.LogCaptureFixture) -> None:
    # aiohttp notes a token its parser refused at debug level, traceback included: only an
    # operator who asked for --log-level debug sees it, and it is no error there either.
    bad = [r for r in caplog.records
           if r.levelno >= logging.WARNING or (r.exc_info and r.levelno >= logging.INFO)]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


async def test_unimplemented_methods_get_an_answer_and_log_no_error(
        client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for url in URLS:
        for method, status, code in KNOWN_NOT_ALLOWED + NOT_IMPLEMENTED:
            got = await raw_request(client, request_head(method, url))
            assert_tus_answer(*got, status, code, url)
            # The same through the override header, on a method the URL allows.
            got = await raw_request(client, request_head(
                "POST", url, **{"X-HTTP-Method-Override": method, "Content-Length": "0"}))
            assert_tus_answer(*got, status, code, url)
        for token in ODD_TOKENS:
            status, headers, body = await raw_request(client, request_head(token, url))
            if status != 400:  # not refused by the parser: then it is the gateway's 501
                assert_tus_answer(status, headers, body, 501, "ERR_METHOD_NOT_IMPLEMENTED",
                                  url)
            got = await raw_request(client, request_head(
                "POST", url, **{"X-HTTP-Method-Override": token, "Content-Length": "0"}))
            # The override is read case-insensitively (as before), so "get" means GET.
            if token.upper() in ("GET", "PATCH"):
                continue
            assert_tus_answer(*got, 501, "ERR_METHOD_NOT_IMPLEMENTED", url)
        # CONNECT takes an authority, not a path: aiohttp routes it nowhere (404). Named by
        # the override, it is a known method the URL does not take.
        status, _, _ = await raw_request(client, request_head("CONNECT", url))
        assert status == 404
        got = await raw_request(client, request_head(
            "POST", url, **{"X-HTTP-Method-Override": "CONNECT", "Content-Length": "0"}))
        assert_tus_answer(*got, 405, "ERR_METHOD_NOT_ALLOWED", url)
    assert_clean_log(caplog)
