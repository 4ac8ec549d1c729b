"""Hostile requests against a real gateway process: it must answer every one and stay well.

Thousands of tus 1.0.0, IETF resumable-upload and user API requests, mutated from a fixed
seed by ``tests/fuzz/generator.py``, go to a real ``tus-gateway serve`` on each state backend
(JSON access log on, as shipped; ``--auth hmac`` and ``--behind-proxy`` so that the
Authorization and forwarding headers are read rather than ignored; an admin token;
``--allowed-types`` and ``--quota-size`` so that type claims, file names, sniffed bytes and
quotas are judged), each on a fresh connection that is never half-closed. Valid uploads
are mixed in, so the mutations reach the code behind the checks. A shorter run does the same
with ``--auth bearer`` and a ``subject=TOKEN`` list on the disk backend.

The user API is in it: the paged list, the event stream (an answer that is one is read up
to its first event and then left, as a browser leaving the page does), the session API,
signed download links, and signed tokens whose claims are hostile.

What must hold, for every request and afterwards:

- every request gets a complete HTTP answer (a status line, a body matching its framing, or
  for an event stream its first event, a status);
- no 5xx but two. 501: a method nobody here implements (aiohttp's answer for a method its
  parser knows but no route takes, and the gateway's ``ERR_METHOD_NOT_IMPLEMENTED``). 503
  only from admission control, with Retry-After and ``ERR_OVERLOADED``; the gateway runs
  with its default memory budget, so none is expected. Any other 503 (a store or a hook
  that failed) is a bug here, since nothing is down;
- every Location (of a 201, an error after creation, or a 104) is an upload URL and nothing
  more: scheme, host, ``/files/<id>``;
- the steps of valid sequences get their expected answers (GET and the signed link return
  the exact bytes, the owner's list pages to its end with the upload on it once, a finished
  upload's event stream ends with its final status);
- the log has no line at level error or critical, no "Traceback", no "Unhandled
  exception", and every line is one JSON object;
- the process is alive at the end, a clean upload (create, PATCH, HEAD, GET) comes back
  byte-exact, and the metrics carry no label a client made up.

The time taken, the answers by status, the memory (RSS) and the number of metric series after
the run are printed (``pytest -s`` shows them).

Reproducing and longer runs: the seed is printed and named in the failure report, with each
failing request as sent. ``FUZZ_REQUESTS=<n>`` sets the requests per backend (2,000 by
default; the bearer run does a quarter) and ``FUZZ_SEED=<n>`` the seed (``random`` for a
fresh one); ``make fuzz`` runs 100,000 per backend with a fresh seed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from gateway.auth import parse_tokens
from tests.conftest import ClientFactory, GatewayProcess
from tests.fuzz.generator import (
    ALLOWED_TYPES,
    OTHER_METHODS,
    TUS_METHODS,
    Fuzzer,
    SequenceFailed,
    WireRequest,
    signed_token,
)
from tests.fuzz.wire import Answer, exchange, parse
from tests.helpers import gateway_logging

Gateways = Callable[..., GatewayProcess]

DEFAULT_SEED = 20250611
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "2000"))
SECRET = "fuzz0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "fuzz-admin-0123456789"
# Per user: room for a few of the largest declared lengths the fuzzer sends (30 MiB), not
# for the 2**40 ones.
QUOTA_BYTES = 64 * 2**20
# With --auth bearer: subjects and their tokens, and tokens naming nobody (one holds an "=",
# one ends in base64 padding, each written as an operator would).
BEARER_USERS = {f"user-{n}": f"tok-user-{n}-{secrets.token_hex(4)}" for n in range(8)}
BEARER_ANONYMOUS = ("c29tZS10b2tlbg==", "tok=with=equals-" + secrets.token_hex(4))
BEARER_ENTRIES = (*(f"{sub}={token}" for sub, token in BEARER_USERS.items()),
                  BEARER_ANONYMOUS[0], "=" + BEARER_ANONYMOUS[1])
BAD_LOG_WORDS = ("Traceback", "Unhandled exception")
# Failures of one kind beyond this many are counted, not shown.
EXAMPLES_PER_KIND = 2


def fuzz_seed() -> int:
    text = os.environ.get("FUZZ_SEED", "").strip()
    if text == "random":
        return secrets.randbelow(2**32)
    return int(text) if text else DEFAULT_SEED


@dataclass
class Failure:
    kind: str
    index: int
    request: WireRequest
    answer: Answer | None
    detail: str = ""
    log: list[str] = field(default_factory=list)
    # A log line is read once the answer is in; it may belong to the request before.
    previous: WireRequest | None = None

    def signature(self) -> str:
        status = self.answer.status if self.answer is not None else None
        core = self.detail.split("\n", 1)[0][:80]
        return f"{self.kind} / {status} / {core}"

    def describe(self) -> str:
        raw = self.request.encode()
        shown = raw[:1500] + (f" ... ({len(raw)} bytes)".encode() if len(raw) > 1500 else b"")
        lines = [f"request #{self.index} ({self.request.label}): {shown!r}"]
        if self.answer is not None:
            lines.append(f"answer: {self.answer.describe()}")
        if self.detail:
            lines.append(f"detail: {self.detail}")
        for line in self.log[:4]:
            lines.append(f"log: {line[:1500]}")
        if self.log and self.previous is not None:
            raw = self.previous.encode()
            lines.append(f"(or the request before: {self.previous.label}: {raw[:600]!r})")
        return "\n    ".join(lines)


class LogWatch:
    """Reads the lines the gateway wrote since the last call and keeps the bad ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0
        self.lines = 0
        self.levels: dict[str, int] = {}

    def new_bad_lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.position)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.position += end + 1
        bad = []
        # Only "\n" ends a line: a JSON string may hold U+2028, which str.splitlines splits.
        for raw in data[:end].split(b"\n"):
            if not raw.strip():
                continue
            self.lines += 1
            text = raw.decode("utf-8", "replace")
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                bad.append(f"not a JSON line: {text}")
                continue
            level = str(line.get("level")) if isinstance(line, dict) else "?"
            self.levels[level] = self.levels.get(level, 0) + 1
            if level in ("error", "critical") or any(w in text for w in BAD_LOG_WORDS):
                bad.append(text)
        return bad


# Where an upload lives, and nothing else: a scheme, a host[:port], the upload's path.
UPLOAD_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:_]+/files/[0-9a-f]{32}")


def check_answer(answer: Answer) -> tuple[str, str] | None:
    """What is wrong with an answer to a complete request, as (kind, detail), or None."""
    if answer.status is None or not answer.complete:
        return "no complete answer", answer.problem
    if answer.status == 200 and (answer.header("content-type") or "").startswith(
            "text/event-stream") and not _starts_with_status(answer.body):
        return "an event stream that does not start with a status", answer.body[:300].decode(
            "utf-8", "replace")
    for location in answer.locations():
        if not UPLOAD_URL.fullmatch(location):
            return "Location is not an upload URL", location[:300]
    if answer.status >= 500:
        if answer.status == 501:
            return None
        if answer.status == 503 and answer.header("retry-after") \
                and b"ERR_OVERLOADED" in answer.body:
            return None
        return "5xx", answer.body[:300].decode("utf-8", "replace")
    return None


def _starts_with_status(body: bytes) -> bool:
    """Whether an event stream's first event is a status whose data is a JSON object."""
    first = body.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    fields = dict(line.partition(b":")[::2] for line in first.split(b"\n")
                  if line and not line.startswith(b":"))
    try:
        data = json.loads(fields.get(b"data", b""))
    except ValueError:
        return False
    return fields.get(b"event", b"").strip() == b"status" and isinstance(data, dict)


def request(method: str, url: str, body: bytes | None = None, /,
            **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Tus-Resumable": "1.0.0", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def clean_upload(gw: GatewayProcess, fuzzer: Fuzzer) -> str | None:
    """Create, PATCH every byte, HEAD, GET (a text file, as its metadata says); what went
    wrong, or None."""
    data = bytes(random.Random(0).choices(range(0x20, 0x7f), k=100_000))
    auth = {"Authorization": f"Bearer {fuzzer.token(sub='clean-upload')}"}
    status, headers, body = request("POST", gw.url, **{
        "Upload-Length": str(len(data)), **auth,
        "Upload-Metadata": "filename Y2xlYW4udHh0,filetype dGV4dC9wbGFpbg=="})
    if status != 201:
        return f"creation answered {status}: {body[:200]!r}"
    location = headers["Location"]
    status, headers, body = request("PATCH", location, data, **{
        "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream", **auth})
    if status != 204 or headers.get("Upload-Offset") != str(len(data)):
        return f"PATCH answered {status} {headers}: {body[:200]!r}"
    status, headers, _ = request("HEAD", location, **auth)
    if status != 200 or headers.get("Upload-Offset") != str(len(data)):
        return f"HEAD answered {status} {headers}"
    status, _, body = request("GET", location, **auth)
    if status != 200 or body != data:
        return f"GET answered {status} with {len(body)} bytes (the upload had {len(data)})"
    return None


@dataclass
class Series:
    """What /metrics shows after a run."""

    count: int = 0
    methods: set[str] = field(default_factory=set)  # tus_requests_total's method labels
    odd: list[str] = field(default_factory=list)  # label values no server would make up


# A label value that holds an upload id, or is longer than any name the gateway gives.
UPLOAD_ID_IN = re.compile(r"[0-9a-f]{32}")
MAX_LABEL_CHARS = 40
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_series(gw: GatewayProcess) -> Series | str:
    """The series /metrics shows (or what went wrong)."""
    status, _, body = request("GET", gw.url.replace("/files/", "/metrics"))
    if status != 200:
        return f"/metrics answered {status}: {body[:300]!r}"
    found = Series()
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        found.count += 1
        if "{" not in line:
            continue
        metric = line[:line.index("{")]
        for name, value in LABEL.findall(line[line.index("{") + 1:line.rindex("}")]):
            if metric == "tus_requests_total" and name == "method":
                found.methods.add(value)
            if len(value) > MAX_LABEL_CHARS or UPLOAD_ID_IN.search(value) or (
                    name == "status" and not re.fullmatch(r"[1-5][0-9][0-9]|other", value)):
                found.odd.append(f"{metric} {name}={value[:80]!r}")
    return found


@pytest.mark.timeout(120 + REQUESTS // 20)
@pytest.mark.both_stores
@pytest.mark.slow
def test_hostile_requests_get_answers_and_leave_no_trace(gateway_process: Gateways) -> None:
    """The fuzz run the module docstring describes, on one gateway per state backend."""
    seed = fuzz_seed()
    gw = gateway_process("--auth", "hmac", "--auth-secret", SECRET, "--behind-proxy",
                         "--auth-admin-tokens", ADMIN_TOKEN, "--allowed-types", ALLOWED_TYPES,
                         "--quota-size", str(QUOTA_BYTES))
    fuzz(gw, Fuzzer(seed, f"127.0.0.1:{gw.port}", SECRET, admin_token=ADMIN_TOKEN), REQUESTS)


@pytest.mark.timeout(120 + REQUESTS // 80)
@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.slow
def test_hostile_requests_with_bearer_tokens(gateway_process: Gateways) -> None:
    """The same with --auth bearer and a subject=TOKEN list, a quarter as long."""
    seed = fuzz_seed()
    gw = gateway_process("--auth", "bearer", "--auth-tokens", ",".join(BEARER_ENTRIES),
                         "--behind-proxy", "--auth-admin-tokens", ADMIN_TOKEN,
                         "--allowed-types", ALLOWED_TYPES, "--quota-size", str(QUOTA_BYTES))
    fuzz(gw, Fuzzer(seed, f"127.0.0.1:{gw.port}", SECRET, auth_mode="bearer",
                    users=BEARER_USERS, anonymous=BEARER_ANONYMOUS, admin_token=ADMIN_TOKEN),
         max(1, REQUESTS // 4))


def fuzz(gw: GatewayProcess, fuzzer: Fuzzer, requests: int) -> None:
    """Send ``requests`` of the fuzzer's requests to ``gw`` and check what the module
    docstring says must hold."""
    assert gw.proc is not None and gw.log_path is not None
    seed = fuzzer.seed
    print(f"\nfuzz: seed {seed}, {requests} requests, --auth {fuzzer.auth_mode}")
    watch = LogWatch(gw.log_path)
    watch.new_bad_lines()  # the startup lines
    rss_start = psutil.Process(gw.proc.pid).memory_info().rss
    failures: list[Failure] = []
    statuses: dict[int | None, int] = {}
    left_open = streams = 0
    previous: WireRequest | None = None
    started = time.monotonic()
    for index in range(requests):
        wire = fuzzer.next()
        answer = exchange("127.0.0.1", gw.port, wire.encode(), head=wire.is_head,
                          timeout_s=wire.timeout_s, stream=wire.stream)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        streams += answer.streaming
        left_open += not answer.closed and not answer.streaming
        wrong = check_answer(answer)
        if wrong is not None:
            failures.append(Failure(wrong[0], index, wire, answer, wrong[1]))
        try:
            fuzzer.observe(wire, answer)
        except SequenceFailed as exc:
            failures.append(Failure("valid request refused", index, wire, answer, str(exc)))
        bad = watch.new_bad_lines()
        if bad:
            failures.append(Failure("bad log line", index, wire, answer,
                                    _log_summary(bad[0]), bad, previous))
        if gw.proc.poll() is not None:
            failures.append(Failure("process died", index, wire, answer,
                                    f"exit code {gw.proc.returncode}"))
            break
        if index and index % 10_000 == 0:
            rss = psutil.Process(gw.proc.pid).memory_info().rss
            print(f"fuzz: {index} requests in {time.monotonic() - started:.0f} s, "
                  f"{len(failures)} failures, RSS {rss >> 20} MiB")
        previous = wire
    elapsed = time.monotonic() - started

    # Lines written after the last answer went out, and by event streams the client left
    # (each ends within about a second: gateway.events.CLIENT_CHECK_S).
    time.sleep(1.5 if streams else 0.2)
    tail = watch.new_bad_lines()
    if tail and previous is not None:
        failures.append(Failure("bad log line", index, previous, None,
                                _log_summary(tail[0]), tail))
    problems = []
    if gw.proc.poll() is None:
        wrong_upload = clean_upload(gw, fuzzer)
        if wrong_upload is not None:
            problems.append(f"a clean upload after the fuzzing failed: {wrong_upload}")
        metrics = metric_series(gw)
        if isinstance(metrics, str):
            problems.append(metrics)
            metrics = Series()
        made_up = metrics.methods - set(TUS_METHODS) - set(OTHER_METHODS)
        # At most one catch-all label for methods it does not count one by one.
        if len(made_up) > 1 or made_up & fuzzer.junk_overrides:
            problems.append(f"tus_requests_total has method labels a client made up: "
                            f"{sorted(made_up)[:20]} ({len(made_up)} in all)")
        if metrics.odd:
            problems.append(f"metric labels a client made up: {metrics.odd[:20]} "
                            f"({len(metrics.odd)} in all)")
        rss_end = psutil.Process(gw.proc.pid).memory_info().rss
        print(f"fuzz: {requests} requests in {elapsed:.1f} s; answers {_counts(statuses)}; "
              f"{streams} event streams left after their first event; log lines "
              f"{watch.lines} by level {watch.levels}; RSS {rss_start >> 20} MiB at start, "
              f"{rss_end >> 20} MiB after; {metrics.count} metric series, method labels "
              f"{sorted(metrics.methods)}; {len(fuzzer.pool)} uploads known; {left_open} "
              f"connections not closed after the answer")
    else:
        problems.append(f"the gateway is not running: {gw.log()[-2000:]}")

    if failures or problems:
        pytest.fail(_report(seed, requests, failures, problems), pytrace=False)


def _log_summary(line: str) -> str:
    """``level logger: msg`` and the exception's type and first line, to group failures."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return line[:200]
    if not isinstance(data, dict):
        return line[:200]
    summary = f"{data.get('level')} {data.get('logger')}: {data.get('msg')}"
    lines = str(data.get("exc", "")).splitlines()
    heads = [i for i, text in enumerate(lines) if text and not text[0].isspace()
             and not text.startswith("Traceback")]
    if heads:
        head = lines[heads[-1]]
        rest = [text.strip() for text in lines[heads[-1] + 1:] if text.strip()]
        kind, _, message = head.partition(":")
        message = message.strip()
        if message.endswith("message:") and rest:
            message = rest[0]  # aiohttp's HTTP errors: "400, message:" then the text
        summary += f" ({kind.rsplit('.', 1)[-1]}: {message[:100]})"
    return summary


def _counts(statuses: dict[int | None, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0])))


def _report(seed: int, requests: int, failures: list[Failure], problems: list[str]) -> str:
    kinds: dict[str, list[Failure]] = {}
    for failure in failures:
        kinds.setdefault(failure.signature(), []).append(failure)
    lines = [f"fuzz seed {seed}: {len(failures)} failing requests of {len(kinds)} kinds "
             f"in {requests} (again: FUZZ_SEED={seed} FUZZ_REQUESTS={REQUESTS} "
             f".venv/bin/pytest tests/gateway/test_fuzz.py)"]
    lines += problems
    for signature, group in kinds.items():
        lines.append(f"\n[{len(group)}x] {signature}")
        for failure in group[:EXAMPLES_PER_KIND]:
            lines.append("  " + failure.describe())
    return "\n".join(lines)


# --- what the fuzzer found, one case each --------------------------------------------------
# Requests aiohttp's HTTP parser refuses before any route sees them; each gets aiohttp's 400.
REFUSED_BY_THE_PARSER = (
    b"GET /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\n",  # no Host
    b"GET /files/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n",  # Host twice
    b"POST /files/\xc3\xa9 HTTP/1.1\r\nHost: a\r\n",  # a raw non-ASCII byte in the target
    b"POST * HTTP/1.1\r\nHost: a\r\n",  # asterisk form for POST
    b"GETT /files/ HTTP/1.1\r\nHost: a\r\n",  # no such method
    b"PATCH /files/ HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 9000 + b"\r\n",  # line too long
    b"HEAD /files/ HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n",  # NUL in a header value
    b"OPTIONS /files/ HTTP/1.1\r\nHost: a\r\nUpload Offset: 0\r\n",  # space in a header name
)


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_requests_the_parser_refuses_leave_no_error_in_the_log(
        gateway_process: Gateways) -> None:
    """aiohttp logged each of these at the error level with a traceback (its own, then one
    from the access logger, which read ``match_info`` of a request that was never routed)
    and wrote no access line. The client's 400 was right; the log must say so, calmly."""
    gw = gateway_process()
    assert gw.log_path is not None
    deadline = time.monotonic() + 10
    # The start-up probe's access line is written just after its answer.
    while b'"gateway.access"' not in gw.log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    watch = LogWatch(gw.log_path)
    watch.new_bad_lines()
    start = watch.position
    for head in REFUSED_BY_THE_PARSER:
        answer = exchange("127.0.0.1", gw.port, head + b"Connection: close\r\n\r\n",
                          head=False)
        assert answer.status == 400 and answer.complete, answer.describe()
    time.sleep(0.2)
    bad = watch.new_bad_lines()
    assert not bad, "\n".join(bad)
    text = gw.log_path.read_bytes()[start:].decode()
    lines = [json.loads(raw) for raw in text.split("\n") if raw.strip()]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert [line["status"] for line in access] == [400] * len(REFUSED_BY_THE_PARSER)
    refused = [line for line in lines if line["msg"].startswith("refused a malformed request")]
    # The first request of a connection with a method the parser does not know is logged
    # by aiohttp at the debug level already (scanners and TLS on a plain port look like that).
    assert len(refused) == len(REFUSED_BY_THE_PARSER) - 1, refused
    assert all(line["level"] == "info" and line["status"] == 400 and "exc" not in line
               for line in refused), refused
    assert any("Host" in line["msg"] for line in refused), refused


def test_a_refused_request_is_one_calm_line_and_a_real_error_stays_an_error() -> None:
    """The same records through the handler ``serve`` installs: a parser refusal is an info
    line without traceback, silent at --log-level warning; other aiohttp errors keep their
    level and traceback."""
    from aiohttp.http_exceptions import BadHttpMessage


    def emit(level: str, exc: BaseException) -> list[dict[str, object]]:
        with gateway_logging(level, "json") as stream:
            try:
                raise exc
            except BaseException:
                logging.getLogger("aiohttp.server").exception(
                    "Error handling request from %s", "192.0.2.7")
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    refused = BadHttpMessage("Missing 'Host' header in request.\n\n  b'GET / HTTP/1.1'")
    [line] = emit("info", refused)
    assert line["level"] == "info" and "exc" not in line, line
    assert line["msg"] == ("refused a malformed request from 192.0.2.7: "
                           "400 Missing 'Host' header in request."), line
    assert emit("warning", refused) == []
    [line] = emit("info", RuntimeError("a bug"))
    assert line["level"] == "error" and "RuntimeError: a bug" in str(line["exc"]), line


async def raw_exchange(port: int, data: bytes) -> Answer:
    """``exchange`` for tests whose gateway runs on this event loop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        received = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    return parse(received, head=False)


def nested_token(depth: int) -> str:
    """Correctly signed, with a payload nested deeper than Python's JSON parser recurses."""
    return signed_token(SECRET, b'{"exp": 99999999999, "x": ' + b"[" * depth + b"]" * depth
                        + b"}")


BAD_TOKENS: list[tuple[str, bytes]] = [
    ("bytes past UTF-8 after a good token", b"good\x92\xbc"),
    ("bytes past UTF-8 alone", b"\xff\xfe.\xff"),
    ("a payload nested 2000 deep", nested_token(2000).encode()),
]


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.parametrize("mode", ["hmac", "bearer"])
@pytest.mark.parametrize("draft", [False, True])
@pytest.mark.parametrize("case,token", BAD_TOKENS, ids=[c for c, _ in BAD_TOKENS])
async def test_a_token_that_is_no_token_is_refused_not_a_crash(
        make_client: ClientFactory, mode: str, draft: bool, case: str, token: bytes) -> None:
    """A bearer value with bytes that are not UTF-8 made the token check encode it and fail
    (500, traceback), for both auth modes; a signed payload nested past the JSON parser's
    recursion limit did the same. Both are tokens the gateway does not accept: 403."""
    client = await make_client(auth=mode, auth_secret=SECRET, auth_tokens=("s3cret-token",))
    good = Fuzzer(1, "x", SECRET).token().encode() if mode == "hmac" else b"s3cret-token"
    value = token.replace(b"good", good)
    protocol = (b"Upload-Draft-Interop-Version: 6\r\nUpload-Complete: ?1\r\n" if draft
                else b"Tus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n")
    answer = await raw_exchange(client.server.port,
                                b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\n" + protocol
                                + b"Authorization: Bearer " + value + b"\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert answer.status == 403 and b"ERR_AUTH_INVALID" in answer.body, answer.describe()


LISTED_ORIGIN = "https://app.example"
# (case, the gateway's --cors-origins, Origin, Access-Control-Request-Method, -Headers)
PREFLIGHTS: list[tuple[str, tuple[str, ...], bytes, bytes, bytes]] = [
    ("a header name past UTF-8", ("*",), b"https://app.example", b"PATCH",
     b"upload-offset,\x94"),
    ("a method past UTF-8", ("*",), b"https://app.example", b"PATCH\xe9", b"upload-offset"),
    ("an unlisted origin past UTF-8", (LISTED_ORIGIN,), b"https://app.example\xff", b"PATCH",
     b"upload-offset"),
    # Browsers serialize an origin in ASCII (RFC 6454: the host in its punycode form).
    ("a non-ASCII origin", ("*",), "https://\u00e9.example".encode(), b"POST",
     b"upload-length"),
]


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.parametrize("case,origins,origin,method,names", PREFLIGHTS,
                         ids=[c for c, *_ in PREFLIGHTS])
async def test_a_preflight_that_is_not_text_is_refused_not_a_crash(
        make_client: ClientFactory, case: str, origins: tuple[str, ...], origin: bytes,
        method: bytes, names: bytes) -> None:
    """aiohttp-cors writes the origin, method and header names it refuses into its 403; with
    bytes that are not UTF-8 that text could not be encoded (500, traceback). A browser
    sends these as ASCII tokens and an ASCII origin, so anything else is refused."""
    client = await make_client(cors_origins=origins)
    for path in (b"/files/", b"/files", b"/files/" + b"0" * 32):
        answer = await raw_exchange(client.server.port, b"OPTIONS " + path + b" HTTP/1.1\r\n"
                                    b"Host: 127.0.0.1\r\nOrigin: " + origin + b"\r\n"
                                    b"Access-Control-Request-Method: " + method + b"\r\n"
                                    b"Access-Control-Request-Headers: " + names + b"\r\n"
                                    b"Connection: close\r\n\r\n")
        assert answer.status == 403, answer.describe()
        assert answer.header("access-control-allow-origin") is None, answer.describe()


EXPECT_PATHS = (b"GET /metrics", b"GET /api/system/health", b"GET /", b"GET /static/x.js",
                b"GET /nowhere", b"POST /metrics", b"GET /api/upload/status/abc")


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
def test_an_expect_value_that_is_not_text_gets_417_on_every_route(
        gateway_process: Gateways) -> None:
    """aiohttp's own Expect handler put the value into its 417 text; with bytes that are not
    UTF-8 that answer failed to encode: a 500 and a traceback on every route but the upload
    URLs, before any middleware ran. Routes that do not exist (404/405) went the same way."""
    gw = gateway_process()
    assert gw.log_path is not None
    watch = LogWatch(gw.log_path)
    watch.new_bad_lines()
    for start in EXPECT_PATHS:
        for value in (b"100-continue\xff", b"\xc3\x28", b"something-else"):
            answer = exchange("127.0.0.1", gw.port, start + b" HTTP/1.1\r\nHost: x\r\nExpect: "
                              + value + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                              head=False)
            assert answer.complete and answer.status == 417, (start, value, answer.describe())
    # The expectation the gateway understands still works, and unknown routes keep their
    # 404 and 405.
    for start, status in ((b"GET /api/system/health", 200), (b"GET /nowhere", 404),
                          (b"POST /metrics", 405), (b"DELETE /api/system/health", 405)):
        answer = exchange("127.0.0.1", gw.port, start + b" HTTP/1.1\r\nHost: x\r\n"
                          b"Expect: 100-continue\r\nContent-Length: 0\r\n"
                          b"Connection: close\r\n\r\n", head=False)
        assert answer.complete and answer.status == status, (start, answer.describe())
    time.sleep(0.2)
    bad = watch.new_bad_lines()
    assert not bad, "\n".join(bad)



# Routes aiohttp-cors gives an OPTIONS route of its own (for preflights): every route but the
# upload URLs, whose views answer OPTIONS themselves.
PREFLIGHT_ROUTES = (b"/api/upload/status/" + b"0" * 32, b"/api/sink/retry/" + b"0" * 32,
                    b"/api/uploads", b"/api/upload/events/" + b"0" * 32,
                    b"/api/upload/create-session", b"/api/upload/stream/" + b"0" * 32,
                    b"/api/upload/abort/" + b"0" * 32, b"/metrics", b"/api/system/health")


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_an_expect_value_that_is_not_text_gets_417_on_options_too(
        make_client: ClientFactory) -> None:
    """The fuzzer's ``OPTIONS /api/upload/create-session`` with ``Expect: 100-continue`` and
    four bytes past UTF-8 got a 500 and an error line with a traceback (UnicodeEncodeError
    in aiohttp's ``_default_expect_handler``): the OPTIONS route aiohttp-cors adds to each
    route for preflights has aiohttp's Expect handler, not ``expect_continue``, as
    test_an_expect_value_that_is_not_text_gets_417_on_every_route fixed for the rest."""
    client = await make_client()
    for path in PREFLIGHT_ROUTES:
        for value in (b"100-continue\xb5\x8a\x95\x80", b"\xc3\x28"):
            answer = await raw_exchange(client.server.port, b"OPTIONS " + path + b" HTTP/1.1"
                                        b"\r\nHost: x\r\nExpect: " + value + b"\r\n"
                                        b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            assert answer.status == 417, (path, value, answer.describe())


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.parametrize("value", [b"attachment; filename=\xe6\x97\xa5.txt\xfd",
                                   b'attachment; filename="\xe6\x97\xa5.txt\xac\x81\xb9"'])
async def test_a_draft_file_name_with_text_and_bytes_past_utf8_is_no_crash(
        make_client: ClientFactory, value: bytes) -> None:
    """The fuzzer's draft 7 creation with ``Content-Disposition: attachment;
    filename=<UTF-8 "日"> .txt`` and a byte past UTF-8 after it got a 500 and an error line
    (UnicodeEncodeError from ``email.message.Message.get_filename``, which takes such a str
    for raw bytes and encodes it as ASCII): a name the gateway cannot read is no name, or a
    400, never a 500."""
    client = await make_client()
    answer = await raw_exchange(client.server.port,
                                b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                b"Upload-Draft-Interop-Version: 7\r\nUpload-Complete: ?1\r\n"
                                b"Content-Disposition: " + value + b"\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert answer.status in (201, 400), answer.describe()

# A bare token as `openssl rand -base64 16` makes them: it ends in base64 padding.
PADDED = "c29tZS10b2tlbg=="


def test_a_bare_token_ending_in_base64_padding_is_that_token() -> None:
    """The bearer run's anonymous token ``c29tZS10b2tlbg==``, written bare in --auth-tokens,
    was read as the subject ``c29tZS10b2tlbg`` whose token is ``=``: the real token was
    refused, and ``Bearer =`` let anyone in as that subject. The padding is no token."""
    assert parse_tokens((PADDED, "alice=a==", "=b=", "bob=", "carol=x")) == (
        (None, PADDED), ("alice", "a=="), (None, "b="), (None, "bob="), ("carol", "x"))


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
async def test_the_padding_of_a_bare_token_lets_nobody_in(make_client: ClientFactory) -> None:
    client = await make_client(auth="bearer", auth_tokens=(PADDED,))
    for token, status in ((PADDED, 201), ("=", 403), ("==", 403)):
        response = await client.post("/files/", headers={
            "Tus-Resumable": "1.0.0", "Upload-Length": "5", "Authorization": f"Bearer {token}",
            "Upload-Metadata": "filename YS50eHQ="})
        assert response.status == status, (token, await response.text())


@pytest.mark.parametrize("backend", ["disk"], indirect=True)
@pytest.mark.parametrize("value", ["bytes \u0661-\u0662/\u0664", "bytes 0-\u0661/4",
                                   "bytes 0-1/\uff14", "\u00a0bytes 0-1/4"])
async def test_a_content_range_in_other_digits_is_refused(make_client: ClientFactory,
                                                          value: str) -> None:
    """The session stream matched Content-Range with ``\\d``, which takes any script's
    digits, and int() reads them: Arabic-Indic ``bytes 1-2/4`` was taken as ``bytes 1-2/4``
    (and a no-break space around it was stripped). A header value is ASCII: anything else
    is 400, and nothing lands."""
    client = await make_client()
    created = await client.post("/api/upload/create-session",
                                json={"filename": "a.txt", "fileSize": 4})
    upload_id = (await created.json())["upload_id"]
    answer = await raw_exchange(client.server.port,
                                f"POST /api/upload/stream/{upload_id} HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\nContent-Range: ".encode()
                                + value.encode() + b"\r\nContent-Length: 2\r\n"
                                b"Connection: close\r\n\r\nab")
    assert answer.status == 400 and b"ERR_INVALID_HEADER" in answer.body, answer.describe()
    status = await client.get(f"/api/upload/status/{upload_id}")
    assert (await status.json())["offset"] == 0
