"""Structured logs: one JSON line per request and per upload event, no secrets, a level.

The process tests read what a real ``tus-gateway serve`` wrote; the formatter and filter
tests log through the same handler ``serve`` installs.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.logs import LoopBatchingHandler, SecretFilter, log_event
from tests.conftest import GatewayProcess
from tests.helpers import OCTETS, TUS, gateway_logging

Gateways = Callable[..., GatewayProcess]
Line = dict[str, Any]

BEARER_SECRET = "s3cret-token"
WRONG_SECRET = "wr0ng-token-value"
NOTION_SECRET = "secret_n0tionIntegrationValue42"


def request(method: str, url: str, body: bytes | None = None, /,
            **headers: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers={**TUS, **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def log_lines(gw: GatewayProcess) -> tuple[str, list[Line]]:
    """The whole log, and each line parsed: every line must be one JSON object."""
    assert gw.log_path is not None
    text = gw.log_path.read_text()
    lines = []
    for raw in text.splitlines():
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {raw!r}")
    return text, lines


def wait_for(gw: GatewayProcess, found: Callable[[list[Line]], bool]) -> tuple[str, list[Line]]:
    """Access lines are written just after the answer goes out: give them a moment."""
    deadline = time.monotonic() + 10
    while True:
        text, lines = log_lines(gw)
        if found(lines) or time.monotonic() > deadline:
            return text, lines
        time.sleep(0.05)


def access(lines: list[Line], method: str, path: str) -> list[Line]:
    return [line for line in lines if line["logger"] == "gateway.access"
            and line.get("method") == method and line.get("path") == path]


def events(lines: list[Line], upload_id: str) -> list[str]:
    return [line["event"] for line in lines
            if line["logger"] == "gateway.events" and line.get("upload_id") == upload_id]


def test_one_json_line_per_request_and_upload_event(gateway_process: Gateways,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The Notion token is configured (the directory sink ignores it) so that the startup
    # configuration line has a secret to leak.
    monkeypatch.setenv("NOTION_TOKEN", NOTION_SECRET)
    gw = gateway_process("--log-level", "debug", "--auth", "bearer",
                         "--auth-tokens", BEARER_SECRET)
    auth = {"Authorization": f"Bearer {BEARER_SECRET}"}
    status, headers = request("POST", gw.url, **auth, **{"Upload-Length": "11"})
    assert status == 201
    location = headers["Location"]
    upload_id = location.rsplit("/", 1)[-1]
    path = f"/files/{upload_id}"
    status, _ = request("PATCH", location, b"hello world", **auth, **{
        "Upload-Offset": "0", "Content-Type": OCTETS})
    assert status == 204
    status, _ = request("HEAD", location, **auth)
    assert status == 200
    status, headers = request("POST", gw.url, **auth, **{"Upload-Length": "5"})
    doomed = headers["Location"]
    doomed_id = doomed.rsplit("/", 1)[-1]
    assert request("DELETE", doomed, **auth)[0] == 204
    status, _ = request("POST", gw.url, Authorization=f"Bearer {WRONG_SECRET}",
                        **{"Upload-Length": "5"})
    assert status == 403

    text, lines = wait_for(gw, lambda ls: len(access(ls, "DELETE", f"/files/{doomed_id}")) == 1
                           and len(access(ls, "POST", "/files/")) == 3)
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys(), line
        ts = datetime.datetime.fromisoformat(line["ts"])
        assert ts.utcoffset() == datetime.timedelta(0), line["ts"]

    posts = access(lines, "POST", "/files/")
    assert [p["status"] for p in posts] == [201, 201, 403]
    assert posts[0]["upload_id"] == upload_id and "upload_id" not in posts[2]
    [patch] = access(lines, "PATCH", path)
    assert patch["status"] == 204 and patch["upload_id"] == upload_id
    assert patch["bytes_in"] == 11 and patch["remote"] == "127.0.0.1"
    assert isinstance(patch["duration_ms"], int | float) and patch["duration_ms"] >= 0
    assert patch["level"] == "info" and patch["msg"] == f"PATCH {path} 204"
    [head] = access(lines, "HEAD", path)
    assert head["status"] == 200 and "bytes_out" in head
    assert len(access(lines, "DELETE", f"/files/{doomed_id}")) == 1

    assert events(lines, upload_id) == ["created", "finished"]
    assert events(lines, doomed_id) == ["created", "terminated"]
    created = next(line for line in lines if line.get("event") == "created")
    assert created["length"] == 11 and created["level"] == "info"

    # The debug level shows the effective configuration, with every secret masked.
    [config_line] = [line for line in lines if line["msg"] == "effective configuration"]
    assert config_line["level"] == "debug"
    assert config_line["config"]["notion_token"] == "***"
    assert config_line["config"]["auth_tokens"] == ["***"]
    for secret in (BEARER_SECRET, WRONG_SECRET, NOTION_SECRET):
        assert secret not in text, f"{secret} leaked into the log"


def test_log_level_warning_drops_info_lines(gateway_process: Gateways) -> None:
    gw = gateway_process("--log-level", "warning")
    status, headers = request("POST", gw.url, **{"Upload-Length": "3"})
    assert status == 201
    assert request("PATCH", headers["Location"], b"abc",
                   **{"Upload-Offset": "0", "Content-Type": OCTETS})[0] == 204
    time.sleep(0.5)  # what would have been logged has been by now
    _, lines = log_lines(gw)
    assert not [line for line in lines if line["level"] in ("debug", "info")], lines


def test_text_format_is_one_line_per_record(gateway_process: Gateways) -> None:
    gw = gateway_process("--log-format", "text")
    assert request("POST", gw.url, **{"Upload-Length": "3"})[0] == 201
    deadline = time.monotonic() + 10
    while "gateway.access: POST /files/ 201" not in gw.log():
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    line = next(raw for raw in gw.log().splitlines() if "gateway.access: POST" in raw)
    assert " INFO " in line and "status=201" in line and 'method="POST"' in line


# --- the formatter and the filter, through the handler ``serve`` installs ------------------
@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with gateway_logging("debug", "json", ["my-configured-secret-value"]) as stream:
        yield stream


def parsed(stream: io.StringIO) -> list[Line]:
    return [json.loads(raw) for raw in stream.getvalue().splitlines()]


def test_json_lines_carry_extra_fields(captured: io.StringIO) -> None:
    log_event("created", "0" * 32, length=5, msg="not the message")
    logging.getLogger("gateway.test").warning("disk %s is full", "sda",
                                              extra={"upload_id": "1" * 32})
    first, second = parsed(captured)
    assert first["event"] == "created" and first["upload_id"] == "0" * 32
    assert first["length"] == 5 and first["msg"] == "upload created"
    assert first["msg_"] == "not the message"  # a clashing field is renamed, not dropped
    assert first["logger"] == "gateway.events" and first["level"] == "info"
    assert second["msg"] == "disk sda is full" and second["level"] == "warning"
    assert second["ts"].endswith("Z")


def test_secrets_are_masked_wherever_they_appear(captured: io.StringIO) -> None:
    log = logging.getLogger("gateway.test")
    log.info("headers: Authorization: Bearer abc.DEF-123_token")
    log.info("%s", "proxy said authorization=Basic dXNlcjpwYXNz")
    log.info("connecting to redis://worker:hunter2pass@cache:6379/0")
    log.info("notion tokens secret_ABCDEFGHabcdefgh12345678 and ntn_4567890123abcdef")
    log.info("query token=t0ps3cr3t&x=1 auth_secret: 'zzzz-secret-zzzz'")
    log.info("value my-configured-secret-value inline",
             extra={"detail": {"nested": ["my-configured-secret-value"]}})
    try:
        raise RuntimeError("failed with Bearer abc.DEF-123_token")
    except RuntimeError:
        log.exception("boom")
    out = captured.getvalue()
    for secret in ("abc.DEF-123_token", "dXNlcjpwYXNz", "hunter2pass",
                   "ABCDEFGHabcdefgh12345678", "4567890123abcdef", "t0ps3cr3t",
                   "zzzz-secret-zzzz", "my-configured-secret-value"):
        assert secret not in out, secret
    lines = parsed(captured)
    assert lines[2]["msg"] == "connecting to redis://worker:***@cache:6379/0"
    assert lines[0]["msg"] == "headers: Authorization: Bearer ***"
    assert lines[5]["detail"] == {"nested": ["***"]}
    assert "RuntimeError" in lines[-1]["exc"]


def test_ordinary_text_is_left_alone() -> None:
    text = ("PATCH /files/0123456789abcdef0123456789abcdef 204 from http://127.0.0.1:1080/files/"
            " at 12:30:45, key tus:{abc}:info")
    assert SecretFilter(["abc"]).mask(text) == text  # too short to be treated as a secret


class _Writes(io.StringIO):
    """A stream that remembers each write it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _batching(name: str) -> tuple[_Writes, LoopBatchingHandler, logging.Logger]:
    """A logger of its own whose lines go, bare, through the handler ``serve`` installs."""
    stream = _Writes()
    handler = LoopBatchingHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return stream, handler, logger


async def test_lines_of_one_loop_turn_are_written_together_and_in_order() -> None:
    import asyncio

    stream, handler, logger = _batching("tests.batching")
    try:
        for n in range(3):
            logger.info("turn one %d", n)
        assert stream.writes == []  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        assert stream.writes == ["turn one 0\nturn one 1\nturn one 2\n"]
        # A line from another thread is written at once, after what the loop logged first.
        logger.info("loop line")
        await asyncio.to_thread(logger.info, "thread line")
        assert stream.writes[1:] == ["loop line\nthread line\n"]
        # A stop writes what waits, without waiting for the turn to end.
        logger.info("last words")
        handler.flush()
        assert stream.getvalue().endswith("thread line\nlast words\n")
        await asyncio.sleep(0)
        assert stream.getvalue().count("last words") == 1
        # Many lines in one turn are written before they pile up.
        for _ in range(2000):
            logger.info("x" * 100)
        assert len(stream.writes) > 3
        assert sum(len(w) for w in stream.writes[3:]) > LoopBatchingHandler.MAX_PENDING
    finally:
        logger.removeHandler(handler)
        handler.flush()


def test_a_loop_that_stops_before_its_flush_does_not_hold_back_the_next_loops_lines() -> None:
    import asyncio

    stream, handler, logger = _batching("tests.batching.loops")

    async def log_and_stop(text: str) -> None:
        logger.info(text)
        asyncio.get_running_loop().stop()  # the flush scheduled above never runs here

    async def log_and_yield(text: str) -> None:
        logger.info(text)
        await asyncio.sleep(0)

    try:
        first = asyncio.new_event_loop()
        task = first.create_task(log_and_stop("from the first loop"))
        first.run_forever()
        assert task.done()
        first.close()
        assert stream.writes == []
        asyncio.run(log_and_yield("from the second loop"))
        assert stream.getvalue() == "from the first loop\nfrom the second loop\n"
    finally:
        logger.removeHandler(handler)
        handler.flush()
