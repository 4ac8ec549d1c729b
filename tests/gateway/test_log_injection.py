"""Request data cannot forge log lines: control characters are escaped in every field.

A path like ``/files/x%0a<a whole fake line>`` is decoded by the server into a real line
break; written as is, it would start a line of its own that looks like any other record.
In ``--log-format text`` every control character (and the Unicode line separators) of a
record's message and fields is written as ``\\xNN`` (``\\uNNNN``), and the lines of a
traceback are indented, so a line that starts at the margin is always a record of its own.
JSON lines are safe by construction (the encoder escapes them); they are checked too.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import GatewayProcess
from tests.helpers import gateway_logging

Gateways = Callable[..., GatewayProcess]
# What a record's first line starts with in the text format: its time.
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
HOSTILE_PATH = ("/files/x%0a2026-01-01%2000:00:00,000%20INFO%20gateway.access:%20FORGED"
                "%0dcr%1b[2Jesc%c2%85nel%e2%80%a8ls")


def raw_request(port: int, target: str, *headers: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                     + b"".join(h + b"\r\n" for h in headers) + b"Connection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_control_characters_in_requests_cannot_forge_log_lines(
        gateway_process: Gateways, log_format: str) -> None:
    gw = gateway_process("--log-format", log_format)
    # Header values may carry bytes beyond ASCII, which decode to C1 controls and line
    # separators (NEL, U+2028); the gateway logs no header, but nothing may come of them.
    answer = raw_request(gw.port, HOSTILE_PATH, b"User-Agent: agent\xc2\x85\xe2\x80\xa8x",
                         b"Tus-Resumable: 1.0.0")
    assert answer.startswith(b"HTTP/1.1 404"), answer
    # A raw control character in a header is refused by the HTTP parser itself.
    answer = raw_request(gw.port, "/files/", b"User-Agent: agent\x1b[31mFORGED-HEADER")
    assert answer.startswith(b"HTTP/1.0 400"), answer
    deadline = time.monotonic() + 10
    while "FORGED" not in gw.log():
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    gw.terminate()
    lines = gw.log().splitlines()
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) == 1, lines  # the path stayed on its own record's line
    for line in lines:
        assert not any(ch in line for ch in "\x1b\r\x85\u2028"), line
        assert "FORGED-HEADER" not in line
        if log_format == "json":
            json.loads(line)
        else:
            assert RECORD_START.match(line) or line.startswith(" "), line
    if log_format == "text":
        assert r"x\x0a2026-01-01" in forged[0]
        assert r"FORGED\x0dcr\x1b[2Jesc\x85nel\u2028ls" in forged[0]
        assert RECORD_START.match(forged[0])
    else:
        record = json.loads(forged[0])
        assert record["path"].startswith("/files/x\n2026-01-01")


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    with gateway_logging("debug", "text") as stream:
        yield stream


def test_text_format_escapes_control_characters_in_every_field(text_log: io.StringIO) -> None:
    log = logging.getLogger("gateway.test")
    log.warning("message\nFORGED %s", "arg\rFORGED\x1b",
                extra={"path": "/x\nFORGED\x00", "k\ney": "v\u2028FORGED\x7f\x85",
                       "n": 5, "nested": {"a": "b\nFORGED"}})
    try:
        raise ValueError("bad\nFORGED value")
    except ValueError:
        log.exception("it failed\nFORGED")
    lines = text_log.getvalue().splitlines()
    records = [line for line in lines if RECORD_START.match(line)]
    assert len(records) == 2, lines
    for line in lines:
        assert RECORD_START.match(line) or line.startswith(" "), line
        assert not any(ch in line for ch in "\x00\x1b\x7f\x85\u2028"), line
    first = records[0]
    assert r"message\x0aFORGED arg\x0dFORGED\x1b" in first
    # Field values are JSON, as before, whose escapes cover the C0 controls; the rest is
    # escaped the same way as the message.
    assert r'path="/x\nFORGED\u0000"' in first
    assert r'k\x0aey="v\u2028FORGED\u007f\u0085"' in first
    assert r'nested={"a": "b\nFORGED"}' in first and "n=5" in first
    # The traceback stays readable below its record, each line indented.
    assert r"it failed\x0aFORGED" in records[1]
    assert any(line.startswith(" ") and "ValueError: bad" in line for line in lines)
